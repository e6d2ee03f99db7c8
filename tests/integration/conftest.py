"""Fixtures shared by the integration tests: one small nightly cycle, run once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.options import HestonParams, Market, heston_chain
from tests.conftest import SESSION, planted_secret_env, small_env

AFTERBELL = [sys.executable, "-m", "pipelines.cli"]

#: An option chain ingested before the cycle: priced under Heston with known parameters, which
#: the light stage's calibration must recover.
CHAIN_SPOT, CHAIN_RATE = 267.0, 0.0125
CHAIN_HESTON = HestonParams(v0=0.01, kappa=2.5, theta=0.03, sigma=0.4, rho=-0.75)
CHAIN = heston_chain(Market(CHAIN_SPOT, CHAIN_RATE), CHAIN_HESTON,
                     strikes=(240.0, 255.0, 267.0, 280.0, 295.0), expiries=(0.1, 0.25, 0.5))


class _CycleRun:
    """The commands of :func:`cycle`, run on a background thread from construction on."""

    def __init__(self, root: Path) -> None:
        self.home = root / "afterbell"
        # secrets planted for test_end_to_end's scan of every output (issue 8)
        self.env = {**os.environ, **small_env(self.home), **planted_secret_env()}
        self.ingest: subprocess.CompletedProcess[str] | None = None
        self.run: subprocess.CompletedProcess[str] | None = None
        self.error: BaseException | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._stopped = False
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._work, name="small-cycle", daemon=True)
        self.thread.start()

    def _call(self, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        with self._lock:
            if self._stopped:
                raise RuntimeError("the test session ended before the small cycle")
            self._proc = subprocess.Popen(args, env=self.env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True)
        try:
            out, err = self._proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.communicate()
            raise
        return subprocess.CompletedProcess(args, self._proc.returncode, out, err)

    def _work(self) -> None:
        try:
            chain = self.home.parent / "spy_chain.csv"
            CHAIN.to_csv(chain, index=False)
            self.ingest = self._call(
                [*AFTERBELL, "options", "ingest-chain", "--session", SESSION.isoformat(),
                 "--symbol", "SPY", "--chain", str(chain), "--spot", str(CHAIN_SPOT),
                 "--rate", str(CHAIN_RATE)], timeout=120,
            )
            if self.ingest.returncode != 0:
                return
            self.run = self._call([*AFTERBELL, "run", "--session", SESSION.isoformat()],
                                  timeout=900)
        except BaseException as exc:  # reported by the cycle fixture, in the test's thread
            self.error = exc

    def stop(self) -> None:
        """End the command still running, if any (a session that ended early)."""
        with self._lock:
            self._stopped = True
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()
        self.thread.join(timeout=30)


@pytest.fixture(scope="session")
def _cycle_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_CycleRun]:
    run = _CycleRun(tmp_path_factory.mktemp("e2e"))
    try:
        yield run
    finally:
        run.stop()


@pytest.fixture(scope="session", autouse=True)
def _cycle_started_early(request: pytest.FixtureRequest) -> None:
    """Start the small cycle with the first integration test when a selected test needs it.

    The first integration test is the backfill's (test_backfill.py), whose Airflow stack runs
    one task at a time and leaves the second core mostly idle: the cycle (about 3 minutes of
    work, in its own home, with its own Airflow DB, MLflow and Feast stores; no port shared) runs
    beside it instead of after it.
    """
    if any("cycle" in getattr(item, "fixturenames", ()) for item in request.session.items):
        request.getfixturevalue("_cycle_run")


@pytest.fixture(scope="session")
def cycle(_cycle_run: _CycleRun) -> tuple[dict[str, str], Path, str]:
    """``afterbell run`` of the small configuration (tests/conftest.py) for SESSION, after
    ``afterbell options ingest-chain`` of :data:`CHAIN` as SPY's chain of the session.

    The environment carries :func:`tests.conftest.planted_secret_env` (the serving token among
    them): no output may contain those values.

    Returns the environment, the home and the run's stdout. Tests that change the state must
    work on a copy of the home (``shutil.copytree``); reading it, or ingesting input that must be
    rejected, is fine. The commands run on a background thread started with the first
    integration test (see ``_cycle_started_early``); this waits for them.
    """
    _cycle_run.thread.join(timeout=1200)
    assert not _cycle_run.thread.is_alive(), "the small cycle did not finish in 20 minutes"
    if _cycle_run.error is not None:
        raise _cycle_run.error
    ingest = _cycle_run.ingest
    assert ingest is not None
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    proc = _cycle_run.run
    assert proc is not None
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    return _cycle_run.env, _cycle_run.home, proc.stdout
