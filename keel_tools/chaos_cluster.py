"""The processes `keel chaos` runs and breaks: a throwaway PostgreSQL cluster of its own (initdb
into a temporary directory, its own port, fsync on; as the `postgres` OS user when run as root),
the API processes and one process per worker, each restartable, with the faults the nemesis
injects (SIGKILL, an immediate PostgreSQL stop, SIGSTOP). It must never be pointed at a database
it did not create: `close()` stops and deletes the cluster.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from keel_tools.procs import ServerProcess, child_env, free_port, make_token

PG_START_TIMEOUT_S = 60
TENANT = "chaos"  # the one tenant of the bank's accounts (the API processes' token is for it)


# ---- PostgreSQL cluster of our own -----------------------------------------------------------


def _pg_bindir() -> Path:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
        if (Path(out) / "pg_ctl").exists():
            return Path(out)
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), reverse=True)
    if candidates:
        return candidates[0].parent
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    raise RuntimeError("PostgreSQL server binaries (pg_ctl, initdb) not found")


def _runuser() -> str:
    found = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if found is None:
        raise RuntimeError("runuser (util-linux) is needed to run PostgreSQL as the postgres user")
    return found


class PgCluster:
    """A throwaway PostgreSQL cluster on its own port that the nemesis may crash."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.port = port
        self.bindir = _pg_bindir()
        # PostgreSQL refuses to run as root. runuser lives in /usr/sbin, which a minimal PATH
        # (cron, CI) may leave out.
        self._as_postgres = [_runuser(), "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as_postgres:
            shutil.chown(root, user="postgres", group="postgres")

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/keel"

    def _run(self, *args: str, timeout: float = PG_START_TIMEOUT_S) -> None:
        subprocess.run(
            [*self._as_postgres, *args], check=True, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def init(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self.start()
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE keel")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                  "-t", str(PG_START_TIMEOUT_S), "start")  # fmt: skip

    def crash(self) -> None:
        """Immediate stop: no checkpoint, every backend killed; the next start runs recovery."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            if self.running():
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


# ---- processes ---------------------------------------------------------------------------------


class WorkerProcess:
    def __init__(self, name: str, env: dict[str, str], cwd: Path, log_path: Path) -> None:
        self.name = name
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "keel.cli", "worker", name],
            cwd=cwd, env=child_env(env), stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class Cluster:
    """PostgreSQL + two API processes + the workers, each restartable by the nemesis."""

    def __init__(self, root: Path, api_count: int = 2) -> None:
        from infrastructure.settings import load_settings
        from keel.bootstrap import migrate

        self.root = root
        pg_root = root / "pg"
        pg_root.mkdir()
        self.pg = PgCluster(pg_root, free_port())
        self.pg.init()
        self.settings = load_settings({}, database_url=self.pg.dsn)
        migrate(self.settings)
        self.token = make_token(self.settings, "banking", TENANT)
        # The history check reads each account's own events (with versions) as an auditor.
        self.auditor_token = make_token(self.settings, "auditor")
        self.key_id = self.token.split("_")[1]
        from infrastructure.audit_keys import new_holder_kek

        # No rate limit (the writers outrun the default 100 requests/s of one key), and a holder
        # KEK for this throwaway cluster (`keel serve` refuses PostgreSQL without one).
        self.env = {
            "KEEL_DATABASE_URL": self.pg.dsn,
            "KEEL_LOG_LEVEL": "WARNING",
            "KEEL_RATE_LIMIT_PER_S": "0",
            "KEEL_HOLDER_KEK": new_holder_kek(set()),
        }
        self.ports = [free_port() for _ in range(api_count)]
        self.apis: list[ServerProcess] = [self._start_api(i) for i in range(api_count)]
        from keel.workers import WORKERS

        self.worker_names = sorted(WORKERS)
        self.workers = [self._start_worker(n) for n in self.worker_names]
        self.urls = [f"http://127.0.0.1:{p}" for p in self.ports]
        self.paused: set[int] = set()  # pids stopped by the nemesis

    def _start_api(self, index: int) -> ServerProcess:
        return ServerProcess(self.env, cwd=self.root, log_path=self.root / f"api-{index}.log", port=self.ports[index])

    def _start_worker(self, name: str) -> WorkerProcess:
        return WorkerProcess(name, self.env, cwd=self.root, log_path=self.root / f"worker-{name}.log")

    # ---- faults ------------------------------------------------------------------------------

    def kill_api(self, index: int) -> None:
        self.apis[index].proc.kill()
        self.apis[index].proc.wait()
        self.apis[index].stop()
        self.apis[index] = self._start_api(index)

    def kill_worker(self, index: int) -> None:
        self.workers[index].proc.kill()
        self.workers[index].proc.wait()
        self.workers[index].stop()
        self.workers[index] = self._start_worker(self.worker_names[index])

    def restart_pg(self, down_s: float) -> None:
        self.pg.crash()
        time.sleep(down_s)
        self.pg.start()

    def pause(self, proc: subprocess.Popen[bytes], seconds: float) -> None:
        self.paused.add(proc.pid)
        proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            proc.send_signal(signal.SIGCONT)
            self.paused.discard(proc.pid)

    def heal(self) -> None:
        """Everything running again: PostgreSQL up, no process stopped or dead."""
        if not self.pg.running():
            self.pg.start()
        for i, api in enumerate(self.apis):
            api.proc.send_signal(signal.SIGCONT)
            if api.proc.poll() is not None:
                self.apis[i].stop()
                self.apis[i] = self._start_api(i)
        for i, w in enumerate(self.workers):
            w.proc.send_signal(signal.SIGCONT)
            if w.proc.poll() is not None:
                self.workers[i].stop()
                self.workers[i] = self._start_worker(self.worker_names[i])

    def close(self) -> None:
        for api in self.apis:
            with contextlib.suppress(Exception):
                api.proc.send_signal(signal.SIGCONT)
                api.stop()
        for w in self.workers:
            with contextlib.suppress(Exception):
                w.stop()
        self.pg.destroy()
