"""The ledger's business model: accounts, transfers, money rules and their events.

Pure Python. Nothing here performs I/O, reads settings or knows how events are stored.
"""
