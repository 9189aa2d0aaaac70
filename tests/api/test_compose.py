"""docker-compose.yml runs only real `keel` subcommands with settings Keel actually reads, and
its defaults are safe: secrets come from files outside the repository and the image, and the API
is published on 127.0.0.1 unless the operator says otherwise. Docker does not run here: the file
is checked by reading it."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from infrastructure.settings import ENV_VARS
from keel.cli import build_parser
from keel.workers import WORKERS

ROOT = Path(__file__).resolve().parents[2]
# Variables compose itself reads (from .env) that are not Keel settings.
COMPOSE_ONLY_VARS = {"KEEL_PUBLISH_HOST"}
_INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")


def _unset_env_value(text: str) -> str:
    """What compose makes of `text` when no variable is set: ${VAR:-default} -> default."""
    return _INTERPOLATION.sub(lambda m: m.group(2) or "", text)


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
    # ${VAR} interpolations: a Keel setting, or one of compose's own, documented in .env.example
    example = (ROOT / ".env.example").read_text()
    for var, _ in _INTERPOLATION.findall((ROOT / "docker-compose.yml").read_text()):
        assert var in ENV_VARS or var in COMPOSE_ONLY_VARS, f"${{{var}}} is neither a Keel setting nor compose's own"
        assert re.search(rf"^{var}=", example, re.M), f"{var} is not documented in .env.example"


def test_api_ports_are_bound_to_localhost_by_default(compose: dict[str, Any]) -> None:
    published = 0
    for name, service in compose["services"].items():
        for port in service.get("ports") or []:
            assert isinstance(port, str), f"service {name}: use the short \"HOST:PORT:PORT\" form"
            host = _unset_env_value(port).rsplit(":", 2)[0]
            assert host == "127.0.0.1", f"service {name}: {port} is published on {host or 'every interface'} by default"
            assert "KEEL_PUBLISH_HOST" in port, f"service {name}: the operator cannot choose where {port} is published"
            published += 1
    assert published and not compose["services"]["postgres"].get("ports")  # the database is never published


def test_no_password_or_key_is_written_in_the_file(compose: dict[str, Any]) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    secretive = re.compile(r"PASSWORD|SECRET|_KEY$|_KEK$|SIGNING_KEY")
    for name, service in compose["services"].items():
        for var, value in _env(service).items():
            value = str(value)
            assert not re.search(r"://[^/@\s]+:[^/@\s]*@", value), f"service {name}: {var} has a password in its URL"
            if secretive.search(var) and not var.endswith("_FILE"):
                pytest.fail(f"service {name}: {var} is set in the file; secrets come as files (…_FILE) from ./secrets/")
            if var.endswith("_FILE") and secretive.search(var):
                # handed in as a Docker secret this service is given, from a file under ./secrets/
                assert value.startswith("/run/secrets/"), f"service {name}: {var}={value}"
                secret = value.removeprefix("/run/secrets/")
                given = service.get("secrets") or []
                assert secret in given, f"service {name} reads {value} but is not given secret {secret}"
                assert compose["secrets"][secret]["file"].startswith("./secrets/")
    assert "POSTGRES_PASSWORD_FILE" in _env(compose["services"]["postgres"])
    assert not re.search(r"(?i)password[ \t]*[:=][ \t]*['\"]?\w", text.replace("PASSWORD_FILE", ""))


def test_every_keel_service_has_the_keys_it_refuses_to_start_without(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if (service.get("command") or [None])[0] == "keel":
            env = _env(service)
            for var in ("KEEL_DATA_KEY_FILE", "KEEL_HOLDER_KEK_FILE", "KEEL_DATABASE_PASSWORD_FILE"):
                assert var in env, f"service {name}: no {var}"


def test_secrets_stay_out_of_git_and_the_image() -> None:
    gitignore = set((ROOT / ".gitignore").read_text().split())
    dockerignore = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {"secrets/", "var/", ".env"} <= gitignore and ".env.example" not in gitignore
    assert {"secrets", "var", ".venv", ".env"} <= dockerignore


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
    from keel.serve import IN_PROCESS_WORKERS_SERVER

    services = [s.get("command") or [] for s in compose["services"].values()]
    run = {c[2] for c in services if c[:2] == ["keel", "worker"] and len(c) > 2}
    missing = set(WORKERS) - run - set(IN_PROCESS_WORKERS_SERVER)
    assert not missing, f"workers with no compose service: {sorted(missing)}"
