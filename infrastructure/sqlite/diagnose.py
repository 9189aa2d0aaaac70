"""Why the embedded SQLite store cannot be used, in one line for an operator.

SQLite says "unable to open database file" or "attempt to write a readonly database" for a
file or directory it may not write; this names which, and the setting that fixes it.
Only looks at the file system; changes nothing.
"""
from __future__ import annotations

import os

from infrastructure.settings import Settings, SettingsError

FIX = "set KEEL_DATABASE_URL=sqlite:///<a writable path> (or --database-url)"


def store_problem(settings: Settings) -> SettingsError | None:
    """The cause when the store's file or directory is missing or not writable; None when both look usable."""
    path = settings.sqlite_file
    if path is None:
        return None
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        return SettingsError(f"the embedded store's directory {directory} does not exist: {FIX}")
    if not os.access(directory, os.W_OK):
        return SettingsError(f"the embedded store's directory {directory} is not writable (SQLite writes its "
                             f"journal beside the file): make it writable, or {FIX}")  # fmt: skip
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return SettingsError(f"the embedded store {path} is read-only: make it writable, or {FIX}")
    return None
