"""Start real `keel` subprocesses (`keel serve`, `keel worker NAME`) and make API keys for them.

Used by the end-to-end tests and by `keel chaos`, which kills and restarts these processes on
purpose. A process started here inherits the caller's environment minus every KEEL_* variable,
plus exactly the `env` it is given, so a test never picks up the developer's settings.
This module must never print or log a token.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from infrastructure.keys import new_key
from infrastructure.settings import Settings
from keel.bootstrap import build

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(env: dict[str, str]) -> dict[str, str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    full_env.update(env)
    full_env.setdefault("KEEL_LOG_LEVEL", "WARNING")
    return full_env


class ServerProcess:
    """`keel serve` on `port` (a free one unless given: a restart reuses the old port)."""

    def __init__(
        self, env: dict[str, str], cwd: Path, log_path: Path, workers: int = 1, port: int | None = None
    ) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "keel.cli", "serve", "--port", str(self.port), "--workers", str(workers)],
            cwd=cwd,
            env=child_env(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"keel serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.base_url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"keel serve did not become ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def make_token(settings: Settings, role: str, tenant: str | None = None) -> str:
    container = build(settings, start_writer=False)
    try:
        key, token = new_key(role, tenant)
        container.keys.add(key)
        return token
    finally:
        container.close()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
