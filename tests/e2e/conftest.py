"""One real server per test module and database (module-scoped), with keys of every role.

The servers run without a rate limit (`KEEL_RATE_LIMIT_PER_S=0`, unless a test passes its own):
the tests drive far more than the default 100 requests/s through one key. On PostgreSQL they get
a holder key-encryption key (KEEL_HOLDER_KEK), without which `keel serve` refuses to start.
"""
from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from infrastructure.settings import Settings, load_settings
from tests.conftest import PG_DSN, require_postgres
from tests.e2e.server import ServerProcess, auth, make_token

# One KEK for every PostgreSQL server of this session (a second server on the same schema must
# unwrap the first one's holder keys).
E2E_HOLDER_KEK = "he2e:" + base64.b64encode(os.urandom(32)).decode()
UNLIMITED = {"KEEL_RATE_LIMIT_PER_S": "0"}


@dataclass
class Api:
    """A running server, its settings, and a client per role (two banking tenants)."""

    server: ServerProcess
    settings: Settings
    tokens: dict[str, str]
    clients: dict[str, httpx.Client] = field(default_factory=dict)
    # Worker processes beside the server (on PostgreSQL: `keel worker projections`).
    workers: list[subprocess.Popen] = field(default_factory=list)

    def client(self, who: str) -> httpx.Client:
        if who not in self.clients:
            headers = auth(self.tokens[who]) if who in self.tokens else {}
            self.clients[who] = httpx.Client(base_url=self.server.base_url, headers=headers, timeout=30)
        return self.clients[who]

    @property
    def bank(self) -> httpx.Client:
        return self.client("bank_a")

    def close(self) -> None:
        for c in self.clients.values():
            c.close()
        for w in self.workers:
            w.terminate()
            w.wait(15)
        self.server.stop()


def _tokens(settings: Settings) -> dict[str, str]:
    return {
        "bank_a": make_token(settings, "banking", f"tenant-a-{uuid.uuid4().hex[:6]}"),
        "bank_b": make_token(settings, "banking", f"tenant-b-{uuid.uuid4().hex[:6]}"),
        "auditor": make_token(settings, "auditor"),
        "analyst": make_token(settings, "analyst"),
        "admin": make_token(settings, "admin"),
    }


def start_sqlite_api(tmp: Path, **env: str) -> Api:
    # The newcomer's setup (no KEEL_* settings but `env`, and no rate limit), the default SQLite
    # file under ./var/ with the key files the store makes beside it.
    settings = load_settings({}, database_url=f"sqlite:///{tmp}/var/keel.db")
    server = ServerProcess(UNLIMITED | env, cwd=tmp, log_path=tmp / "serve.log")
    return _with_tokens(server, settings)


def _with_tokens(server: ServerProcess, settings: Settings) -> Api:
    try:
        return Api(server=server, settings=settings, tokens=_tokens(settings))
    except BaseException:
        server.stop()  # never leave a server running behind a failed fixture
        raise


def migrated_pg_settings(schemas: list[str]) -> Settings:
    """A fresh schema, created the operator's way: `keel migrate` as a subprocess."""
    require_postgres()
    schema = f"keel_e2e_{uuid.uuid4().hex[:12]}"
    schemas.append(schema)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env.update({"KEEL_DATABASE_URL": PG_DSN, "KEEL_DATABASE_SCHEMA": schema, "KEEL_HOLDER_KEK": E2E_HOLDER_KEK})
    subprocess.run([sys.executable, "-m", "keel.cli", "migrate"], env=env, check=True, capture_output=True, timeout=120)
    return load_settings(env)


def start_pg_api(tmp: Path, schemas: list[str], settings: Settings | None = None, **env: str) -> Api:
    settings = settings or migrated_pg_settings(schemas)
    kek = settings.holder_kek or E2E_HOLDER_KEK
    server = ServerProcess(
        {"KEEL_DATABASE_URL": PG_DSN, "KEEL_DATABASE_SCHEMA": settings.database_schema, "KEEL_HOLDER_KEK": kek}
        | UNLIMITED
        | env,
        cwd=tmp,
        log_path=tmp / f"serve-{uuid.uuid4().hex[:6]}.log",
    )
    api = _with_tokens(server, settings)
    # On PostgreSQL the read models are kept by their own worker process (SPEC §10).
    worker_env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    worker_env.update(KEEL_DATABASE_URL=PG_DSN, KEEL_DATABASE_SCHEMA=settings.database_schema, KEEL_HOLDER_KEK=kek)
    worker_env.update({"KEEL_LOG_LEVEL": "WARNING"} | env)  # the caller's env wins, as for the server
    api.workers.append(
        subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "keel.cli", "worker", "projections"], cwd=Path(__file__).resolve().parents[2], env=worker_env
        )
    )
    return api


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pg_session_schemas: list[str]
) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp(f"api-{request.param}")
    running = start_pg_api(tmp, pg_session_schemas) if request.param == "postgres" else start_sqlite_api(tmp)
    try:
        yield running
    finally:
        running.close()
