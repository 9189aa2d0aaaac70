"""Adapters: settings, event-store persistence (PostgreSQL, SQLite), the stored event format,
ciphers and keys. Implements what `application` needs; holds no business rules.
"""
