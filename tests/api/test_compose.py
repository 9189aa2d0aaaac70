"""docker-compose.yml runs only real `keel` subcommands with settings Keel actually reads."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from infrastructure.settings import ENV_VARS
from keel.cli import build_parser
from keel.workers import WORKERS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return env


def test_every_command_is_a_real_subcommand(compose: dict[str, Any]) -> None:
    parser = build_parser()
    commands = 0
    for name, service in compose["services"].items():
        command = service.get("command")
        if not command or command[0] != "keel":
            continue
        commands += 1
        try:
            args = parser.parse_args(command[1:])
        except SystemExit:
            pytest.fail(f"service {name}: `{' '.join(command)}` is not a valid keel command")
        if args.command == "worker":
            assert args.name in WORKERS, f"service {name}: unknown worker {args.name}"
    assert commands >= 3


def test_every_keel_variable_is_read_by_the_settings(compose: dict[str, Any]) -> None:
    seen = set()
    for name, service in compose["services"].items():
        for var in _env(service):
            if var.startswith("KEEL_"):
                assert var in ENV_VARS, f"service {name}: {var} is not in infrastructure.settings.ENV_VARS"
                seen.add(var)
    assert "KEEL_DATABASE_URL" in seen


def test_topology(compose: dict[str, Any]) -> None:
    services = compose["services"]
    pg = services["postgres"]
    assert pg["image"] == "postgres:15" and pg["healthcheck"]["test"] and pg["volumes"]
    assert compose["volumes"] is not None and "pgdata" in compose["volumes"]
    assert services["migrate"]["command"] == ["keel", "migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    api = services["api"]
    assert api["deploy"]["replicas"] == 2
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert _env(api)["KEEL_DATABASE_URL"].startswith("postgresql://")
    workers = [s["command"][2] for s in services.values() if s.get("command", [None, None])[:2] == ["keel", "worker"]]
    assert "expiry" in workers
    assert (ROOT / "Dockerfile").exists()


def test_every_worker_runs_somewhere(compose: dict[str, Any]) -> None:
    """Each background worker is a compose service, or runs inside every `keel serve` on PostgreSQL."""
    from keel.serve import IN_PROCESS_WORKERS_PG

    services = [s.get("command") or [] for s in compose["services"].values()]
    run = {c[2] for c in services if c[:2] == ["keel", "worker"] and len(c) > 2}
    missing = set(WORKERS) - run - set(IN_PROCESS_WORKERS_PG)
    assert not missing, f"workers with no compose service: {sorted(missing)}"
