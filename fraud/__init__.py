"""Fraud scoring on the ledger's event stream: simulator, features, rules, model, consumer (docs/fraud.md)."""
