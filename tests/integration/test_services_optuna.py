"""One Optuna search shared by two worker processes on PostgreSQL (production profile).

Two interpreters run :func:`pipelines.tuning.tune_lstm` (the real objective: a Lightning fit of
the GARCH-LSTM per trial, on small synthetic windows) on one study in a fresh PostgreSQL database,
the storage of ``AFTERBELL_PROFILE=production`` settings (:func:`pipelines.tuning.study_storage`).
They start together (a barrier after their imports) and must finish exactly the budget between
them: no trial beyond it, no trial number twice, no parameters twice, both workers contributing,
and both reporting the study's best trial. The storage URL carries a planted password (the
machine's PostgreSQL trusts loopback and ignores it): it must not appear in the workers' logs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from pipelines.settings import REPO_ROOT
from tests.services import pg_database  # noqa: F401 (fixture)

pytestmark = pytest.mark.services

N_TRIALS = 8
WORKERS = 2
STUDY = "garch_lstm_vol:2018-12-31:services"
PLANTED_PASSWORD = f"optuna-secret-{uuid.uuid4().hex}"

#: One worker: imports, data, then waits at the barrier, then the project's search.
WORKER = textwrap.dedent(
    """
    import json, logging, os, sys, time
    from pathlib import Path

    import numpy as np

    from models.lstm import LSTMSpec
    from pipelines import tuning
    from pipelines.schedule import TuningConfig
    from pipelines.settings import WINDOW_COLUMNS, Settings

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    folder, index = Path(sys.argv[1]), int(sys.argv[2])
    settings = Settings.from_env()
    storage = tuning.study_storage(settings)
    F, L = len(WINDOW_COLUMNS), 5
    rng = np.random.default_rng(0)  # the same data in both workers
    level = np.exp(rng.normal(np.log(0.18), 0.5, size=(240, 1, 1)))
    X = (level * np.exp(rng.normal(0, 0.1, (240, L, F)))).astype(np.float32)
    y = (X[:, -1, F - 1] * np.exp(rng.normal(0, 0.1, 240))).astype(np.float32)
    spec = LSTMSpec(lookback=L, hidden=4, batch_size=64, max_epochs=4, patience=2, seed=3,
                    base_feature=WINDOW_COLUMNS.index("garch_forecast"))
    config = TuningConfig(n_trials=int(os.environ["N_TRIALS"]), trial_max_epochs=2,
                          trial_train_rows=0, hidden=(2, 8), layers=(1, 2), dropout=(0.0, 0.3),
                          lr=(1e-3, 3e-2), sampler_startup_trials=3, pruner_startup_trials=3,
                          pruner_warmup_steps=0, seed=11, timeout_minutes=5)
    (folder / f"ready-{index}").touch()
    while not (folder / "go").exists():
        time.sleep(0.05)
    result = tuning.tune_lstm(spec, X[:180], y[:180], X[180:], y[180:], config,
                              storage=storage, study_name=os.environ["STUDY"])
    print(json.dumps({"pid": os.getpid(), "n_new": result.n_new,
                      "record": result.to_record(), "storage": tuning.redact(storage)}))
    """
)


def _start_workers(folder: Path, storage: str) -> list[subprocess.Popen[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFTERBELL_")}
    env.update({
        "AFTERBELL_HOME": str(folder / "home"),
        "AFTERBELL_PROFILE": "production",
        "AFTERBELL_OPTUNA_STORAGE": storage,
        "N_TRIALS": str(N_TRIALS),
        "STUDY": STUDY,
        "OMP_NUM_THREADS": "1",
    })
    procs = []
    for i in range(WORKERS):  # output to files: a full pipe would stall a worker
        with open(folder / f"out-{i}", "w") as out, open(folder / f"err-{i}", "w") as err:
            procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(folder), str(i)],
                                          cwd=REPO_ROOT, env=env, stdout=out, stderr=err,
                                          text=True))
    return procs


def _output(folder: Path, index: int) -> tuple[str, str]:
    return (folder / f"out-{index}").read_text(), (folder / f"err-{index}").read_text()


def _with_password(url: str, password: str) -> str:
    """``url`` (``postgresql+psycopg://user@host...``) with ``password`` written into it."""
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{password}@{host}"


def test_two_worker_processes_share_one_study_on_postgres(
    tmp_path: Path,
    pg_database: str,  # noqa: F811 (fixture)
) -> None:
    import optuna
    from optuna.trial import TrialState

    storage = _with_password(pg_database, PLANTED_PASSWORD)
    t0 = time.monotonic()
    procs = _start_workers(tmp_path, storage)
    try:
        while not all((tmp_path / f"ready-{i}").exists() for i in range(WORKERS)):
            dead = [i for i, p in enumerate(procs) if p.poll() is not None]
            assert not dead, _output(tmp_path, dead[0])[1][-4000:]
            assert time.monotonic() - t0 < 240, "workers not ready within 240 s"
            time.sleep(0.1)
        t_ready = time.monotonic()
        (tmp_path / "go").touch()
        for p in procs:
            p.wait(timeout=300)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    t_search = time.monotonic() - t_ready
    outputs = [_output(tmp_path, i) for i in range(WORKERS)]
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-4000:]
        assert PLANTED_PASSWORD not in out + err  # the URL is logged masked
        assert "postgres:***@127.0.0.1" in err, err[-2000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]

    study = optuna.load_study(study_name=STUDY, storage=storage)
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    # Exactly the budget: nothing failed, nothing left running, nothing beyond it.
    assert len(finished) == len(trials) == N_TRIALS, [(t.number, t.state) for t in trials]
    assert sorted(t.number for t in trials) == list(range(N_TRIALS))
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(params)) == N_TRIALS, params  # no trial repeated another's parameters
    # Both workers ran trials, and together exactly the budget.
    assert all(r["n_new"] >= 1 for r in results), results
    assert sum(r["n_new"] for r in results) == N_TRIALS
    assert study.user_attrs[  # each worker joined once and sampled from its own seed
        "afterbell_workers"] == WORKERS
    # Every worker returned after the whole budget finished: the same best trial, the study's.
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(complete, key=lambda t: float(t.value or 0.0))
    assert study.best_trial.number == best.number
    for r in results:
        assert r["record"]["n_trials"] == N_TRIALS
        assert r["record"]["best_trial"] == best.number
        assert r["record"]["best_value"] == pytest.approx(best.value)
        assert r["record"]["best_params"] == dict(sorted(best.params.items()))
        assert PLANTED_PASSWORD not in r["storage"]
    print(f"\n{WORKERS} workers ready after {t_ready - t0:.1f} s; {N_TRIALS} trials in "
          f"{t_search:.1f} s: {[r['n_new'] for r in results]} per worker, "
          f"{sum(t.state == TrialState.PRUNED for t in trials)} pruned")
