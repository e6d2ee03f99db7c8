"""A real, scheduled Airflow stack for integration tests: api-server, scheduler, dag-processor.

The three services run as separate subprocesses, each in its own process group (session), and
:meth:`AirflowStack.stop` always ends them: SIGTERM to the whole group, then SIGKILL to whatever
is left (LocalExecutor workers and task supervisors may ignore SIGTERM), then SIGKILL to any
straggler that carries this stack's private ``AIRFLOW_HOME`` in its environment (a process that
left the group with ``setsid``). Only processes this stack started are ever signalled.

The metadata DB (SQLite) is read directly and read-only: no airflow import in the test process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

SERVICES: dict[str, list[str]] = {
    "api-server": ["api-server", "--host", "127.0.0.1", "--port", "{port}"],
    "scheduler": ["scheduler"],
    "dag-processor": ["dag-processor"],
}


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AirflowError(RuntimeError):
    """An airflow CLI call failed, or the stack did not reach the expected state."""


class AirflowStack:
    """Start, query and stop an Airflow deployment that lives under ``env['AIRFLOW_HOME']``."""

    def __init__(self, env: Mapping[str, str], port: int, log_dir: Path) -> None:
        self.env = dict(env)
        self.port = port
        self.home = Path(self.env["AIRFLOW_HOME"])
        self.db = Path(self.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///"))
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[Any] = []

    # ------------------------------------------------------------------ CLI
    def airflow(self, *args: str, timeout: float = 180) -> str:
        """Run ``airflow ARGS`` in the stack's environment; its output; AirflowError on failure."""
        proc = subprocess.run(["airflow", *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)
        out = proc.stdout + proc.stderr
        if proc.returncode != 0:
            raise AirflowError(f"`airflow {' '.join(args)}` exited {proc.returncode}:\n{out[-4000:]}")
        return out

    # ------------------------------------------------------------------ services
    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name, args in SERVICES.items():
            log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
            self._logs.append(log)
            argv = ["airflow", *(a.format(port=self.port) for a in args)]
            self.procs[name] = subprocess.Popen(
                argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise AirflowError(f"airflow {name} exited {proc.returncode}:\n"
                                   + self.service_log(name))

    def service_log(self, name: str, lines: int = 40) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.is_file():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def wait_api(self, timeout: float = 120) -> None:
        """Wait until the api-server answers its health endpoint (task processes need it)."""
        url = f"http://127.0.0.1:{self.port}/api/v2/monitor/health"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            time.sleep(0.5)
        raise AirflowError(f"api-server not up on port {self.port} after {timeout:.0f} s:\n"
                           + self.service_log("api-server"))

    def stop(self, grace: float = 10.0) -> list[str]:
        """Stop every service and its children; names of the processes that needed SIGKILL."""
        killed: list[str] = []
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for name, proc in self.procs.items():
            # the leader may be gone while workers of its group linger: signal the group anyway
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
                killed.append(name)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for pid in self.stragglers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(f"pid {pid}")
        for log in self._logs:
            log.close()
        self._logs.clear()
        return killed

    def stragglers(self) -> list[int]:
        """Live processes (other than this one) whose environment holds this AIRFLOW_HOME."""
        marker = f"AIRFLOW_HOME={self.home}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes()
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if marker in environ.split(b"\0") and stat.rsplit(")", 1)[-1].split()[0] != "Z":
                found.append(int(entry.name))
        return found

    # ------------------------------------------------------------------ metadata DB (read-only)
    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        try:
            yield con
        finally:
            con.close()

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        for attempt in range(5):
            try:
                with self._db() as con:
                    return con.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:  # "database is locked" under a writer
                if "locked" not in str(exc) or attempt == 4:
                    raise
                time.sleep(0.5)
        raise AssertionError("unreachable")

    def latest_backfill_id(self, dag_id: str) -> int | None:
        rows = self.query("SELECT max(id) FROM backfill WHERE dag_id = ?", (dag_id,))
        return rows[0][0] if rows else None

    def backfill_runs(self, backfill_id: int) -> list[dict[str, Any]]:
        """The DAG runs of a backfill (created or cleared for it), in logical-date order."""
        rows = self.query(
            "SELECT r.id, r.run_id, r.logical_date, r.state, r.start_date, r.end_date, "
            "r.clear_number FROM backfill_dag_run b JOIN dag_run r ON r.id = b.dag_run_id "
            "WHERE b.backfill_id = ? ORDER BY r.logical_date",
            (backfill_id,),
        )
        keys = ("id", "run_id", "logical_date", "state", "start_date", "end_date", "clear_number")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        rows = self.query(
            "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
            (dag_id, run_id),
        )
        return {task_id: state or "none" for task_id, state in rows}

    def task_log_tail(self, dag_id: str, run_id: str, task_id: str, lines: int = 60) -> str:
        base = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        logs = sorted(base.glob("**/attempt=*.log"), key=lambda p: p.stat().st_mtime)
        if not logs:
            return f"(no log under {base})"
        text = logs[-1].read_text(errors="replace").splitlines()
        return f"{logs[-1]}:\n" + "\n".join(text[-lines:])

    def wait_backfill(self, dag_id: str, backfill_id: int, expected: int,
                      timeout: float) -> list[dict[str, Any]]:
        """Wait until the backfill's ``expected`` runs all succeeded and it is marked complete.

        Fails fast, with the failed tasks' log tails, as soon as a run or a task fails or a
        service dies.
        """
        deadline = time.monotonic() + timeout
        runs: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            self.check_alive()
            runs = self.backfill_runs(backfill_id)
            failed_tasks = [
                (run["run_id"], task)
                for run in runs
                for task, state in self.task_states(dag_id, run["run_id"]).items()
                if state in ("failed", "upstream_failed", "up_for_retry")
            ]
            if failed_tasks or any(run["state"] == "failed" for run in runs):
                details = "\n\n".join(
                    self.task_log_tail(dag_id, run_id, task)
                    for run_id, task in failed_tasks if task
                )
                raise AirflowError(
                    f"backfill {backfill_id} failed: runs {[(r['logical_date'], r['state']) for r in runs]}, "
                    f"tasks {failed_tasks}\n{details}"
                )
            done = self.query("SELECT completed_at FROM backfill WHERE id = ?", (backfill_id,))
            if (len(runs) == expected and all(r["state"] == "success" for r in runs)
                    and done and done[0][0] is not None):
                return runs
            time.sleep(2)
        states = [(r["logical_date"], r["state"]) for r in runs]
        raise AirflowError(f"backfill {backfill_id} not done after {timeout:.0f} s: {states}\n"
                           f"scheduler log:\n{self.service_log('scheduler')}")
