"""The README's curl session, run verbatim (bar host, port and the venv path) against `keel serve`
started with no configuration in an empty directory — what a newcomer does on a clean clone."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.e2e.server import ServerProcess

README = Path(__file__).resolve().parents[2] / "README.md"


def _section_block(title: str) -> str:
    text = README.read_text()
    section = text.split(f"## {title}", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, f"no sh block under '## {title}'"
    return match.group(1)


def test_quick_start_runs_keel_serve() -> None:
    assert "keel serve" in _section_block("Quick start (Python 3.11)")


def test_curl_session_moves_money(tmp_path: Path) -> None:
    server = ServerProcess({}, cwd=tmp_path, log_path=tmp_path / "serve.log")
    try:
        script = _section_block("Move money with curl")
        script = script.replace(".venv/bin/keel", f"{sys.executable} -m keel.cli")
        script = script.replace("localhost:8000", f"127.0.0.1:{server.port}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script.replace("curl -s", "curl -s -w '\\n%{http_code}\\n'")],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr
    out = done.stdout
    lines = out.splitlines()
    statuses = [line for line in lines if re.fullmatch(r"\d{3}", line)]
    assert statuses == ["201", "201", "201", "201", "200", "200", "422"], out
    assert '"kind":"transfer"' in out and '"posted":7500' in out and '"posted":2500' in out
    assert '"code":"insufficient_funds"' in out and '"available":7500' in out
    assert (tmp_path / "var" / "keel.db").exists()


def _as_commands(script: str, port: int) -> str:
    script = re.sub(r"(^|\$\()keel ", lambda m: f"{m.group(1)}{sys.executable} -m keel.cli ", script, flags=re.M)
    return script.replace("localhost:8000", f"127.0.0.1:{port}")


def test_audit_block_ends_with_ok_true_against_the_running_server(tmp_path: Path) -> None:
    """The README's audit block verbatim (bar host, port and how `keel` is found), with the
    restart it asks for, against `keel serve` on the embedded default in an empty directory."""
    block = _section_block("Audit, integrity and privacy")
    before, after = block.split("# restart `keel serve`", 1)
    after = after.split("\n", 1)[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    server = ServerProcess({}, cwd=tmp_path, log_path=tmp_path / "serve.log")
    try:
        token = subprocess.run([sys.executable, "-m", "keel.cli", "keys", "create", "--role", "banking", "--tenant",
                                "acme"], cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        import httpx

        r = httpx.post(f"{server.base_url}/v1/accounts", json={"currency": "EUR"}, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 201, r.text
        first = subprocess.run(["bash", "-euo", "pipefail", "-c", _as_commands(before, server.port)],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert first.returncode == 0, first.stderr
        server.stop()
        server = ServerProcess({}, cwd=tmp_path, log_path=tmp_path / "serve2.log", port=server.port)
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", _as_commands(after, server.port)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)  # fmt: skip
    finally:
        server.stop()
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert '"ok":true' in done.stdout.replace(" ", ""), done.stdout
    assert "signed by unknown key" not in done.stdout
