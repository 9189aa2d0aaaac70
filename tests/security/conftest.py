"""One real `keel serve` (embedded SQLite) for the security tests, with keys of every role."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Api, start_sqlite_api


@pytest.fixture(scope="package")
def security_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    running = start_sqlite_api(tmp_path_factory.mktemp("security"))
    try:
        yield running
    finally:
        running.close()
