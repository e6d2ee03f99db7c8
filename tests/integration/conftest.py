"""Fixtures shared by the integration tests: one small nightly cycle, run once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.options import HestonParams, Market, heston_chain
from tests.conftest import SESSION, small_env

AFTERBELL = [sys.executable, "-m", "pipelines.cli"]

#: An option chain ingested before the cycle: priced under Heston with known parameters, which
#: the light stage's calibration must recover.
CHAIN_SPOT, CHAIN_RATE = 267.0, 0.0125
CHAIN_HESTON = HestonParams(v0=0.01, kappa=2.5, theta=0.03, sigma=0.4, rho=-0.75)
CHAIN = heston_chain(Market(CHAIN_SPOT, CHAIN_RATE), CHAIN_HESTON,
                     strikes=(240.0, 255.0, 267.0, 280.0, 295.0), expiries=(0.1, 0.25, 0.5))


@pytest.fixture(scope="session")
def cycle(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path, str]:
    """``afterbell run`` of the small configuration (tests/conftest.py) for SESSION, after
    ``afterbell options ingest-chain`` of :data:`CHAIN` as SPY's chain of the session.

    Returns the environment, the home and the run's stdout. Tests that change the state must
    work on a copy of the home (``shutil.copytree``); reading it, or ingesting input that must be
    rejected, is fine.
    """
    home = tmp_path_factory.mktemp("e2e") / "afterbell"
    env = {**os.environ, **small_env(home)}
    chain = home.parent / "spy_chain.csv"
    CHAIN.to_csv(chain, index=False)
    ingest = subprocess.run(
        [*AFTERBELL, "options", "ingest-chain", "--session", SESSION.isoformat(), "--symbol",
         "SPY", "--chain", str(chain), "--spot", str(CHAIN_SPOT), "--rate", str(CHAIN_RATE)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    proc = subprocess.run(
        [*AFTERBELL, "run", "--session", SESSION.isoformat()],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    return env, home, proc.stdout
