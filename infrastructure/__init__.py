"""Adapters: implements what `application` needs; holds no business rules.

`postgres/` and `sqlite/` each expose one factory, `open_store(settings)`, returning the Store
(store.py) that bundles everything that differs by database; they are the only code that knows
which database it is. Over both: the one SQL helper (sql.py), every table (schema.py) and the
numbered migrations that make them (migrations/), and the adapters written once over the helper
(idempotency, claims, API keys, audit, read models, read side). Besides: settings, the stored
event format (mapper.py) and key material (audit_keys.py).
"""
