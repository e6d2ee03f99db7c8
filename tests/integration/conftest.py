"""Fixtures shared by the integration tests: one small nightly cycle, run once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SESSION, small_env

AFTERBELL = [sys.executable, "-m", "pipelines.cli"]


@pytest.fixture(scope="session")
def cycle(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path, str]:
    """``afterbell run`` of the small configuration (tests/conftest.py) for SESSION.

    Returns the environment, the home and the run's stdout. Tests that change the state must
    work on a copy of the home (``shutil.copytree``); reading it, or ingesting input that must be
    rejected, is fine.
    """
    home = tmp_path_factory.mktemp("e2e") / "afterbell"
    env = {**os.environ, **small_env(home)}
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
