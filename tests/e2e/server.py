"""Start the real `keel serve` as a subprocess on a free port, and make API keys for it.

The helpers live in keel_tools.procs (also used by `keel chaos`); this module keeps the tests' imports.
"""
from __future__ import annotations

from keel_tools.procs import STARTUP_TIMEOUT_S, STOP_TIMEOUT_S, ServerProcess, auth, free_port, make_token

__all__ = ["STARTUP_TIMEOUT_S", "STOP_TIMEOUT_S", "ServerProcess", "auth", "free_port", "make_token"]
