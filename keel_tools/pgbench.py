"""The reference both benchmarks report against: pgbench's TPC-B-like TPS on the same server,
and that server's durability settings (a figure measured without fsync is refused, not printed).

Shared by `keel bench ledger` and `keel bench http`; it must never touch a database but the
scratch one it creates and drops.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from urllib.parse import urlparse

import psycopg

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


def pgbench_tps(dsn: str, clients: int, seconds: float) -> float:
    """pgbench's built-in TPC-B-like TPS with `clients` clients, in a scratch database."""
    exe = shutil.which("pgbench")
    if exe is None:
        raise RuntimeError("pgbench is not installed (Debian: postgresql-client)")
    u = urlparse(dsn)
    scratch = f"keel_pgbench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{scratch}"')
    env = dict(os.environ, PGHOST=u.hostname or "127.0.0.1", PGPORT=str(u.port or 5432), PGUSER=u.username or "postgres")
    if u.password:
        env["PGPASSWORD"] = u.password
    try:
        subprocess.run([exe, "-i", "-q", "-s", "10", scratch], env=env, check=True, capture_output=True)
        out = subprocess.run(
            [exe, "-n", "-c", str(clients), "-j", "2", "-T", str(int(max(1, seconds))), scratch],
            env=env, check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
    m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out) or re.search(r"tps = ([0-9.]+)", out)
    if not m:
        raise RuntimeError(f"could not read pgbench output: {out[-500:]}")
    return float(m.group(1))


def server_settings(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        return {k: conn.execute(f"SHOW {k}").fetchone()[0] for k in ("fsync", "synchronous_commit", "server_version")}
