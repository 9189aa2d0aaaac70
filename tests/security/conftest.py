"""One real `keel serve` (embedded SQLite) for the security tests, with keys of every role."""
from __future__ import annotations

import base64
import os
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Api, start_sqlite_api


@pytest.fixture(scope="package")
def security_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    # With an audit signing key, so the public-key and checkpoint routes have something to show.
    signing_key = base64.b64encode(os.urandom(32)).decode()
    running = start_sqlite_api(tmp_path_factory.mktemp("security"), KEEL_AUDIT_SIGNING_KEY=signing_key)
    try:
        yield running
    finally:
        running.close()
