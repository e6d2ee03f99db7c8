"""Optuna search of the full retrain (pipelines.tuning): budget, persistence, pruning through the
Lightning callback, the [tuning] settings, and the heavy stage's use of it."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import date
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from models.lstm import LSTMSpec
from pipelines import tuning
from pipelines.schedule import TuningConfig, load_config
from pipelines.settings import WINDOW_COLUMNS, Settings, TrainConfig

LOOKBACK = 5
F = len(WINDOW_COLUMNS)
SPEC = LSTMSpec(lookback=LOOKBACK, hidden=4, batch_size=64, max_epochs=6, patience=2, seed=3,
                base_feature=WINDOW_COLUMNS.index("garch_forecast"))
#: A budget whose pruner never prunes (more startup trials than the budget).
CONFIG = TuningConfig(n_trials=3, trial_max_epochs=2, trial_train_rows=0, hidden=(2, 8),
                      layers=(1, 2), dropout=(0.0, 0.3), lr=(1e-3, 3e-2),
                      sampler_startup_trials=2, pruner_startup_trials=10, pruner_warmup_steps=0,
                      seed=11)


def _windows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    level = np.exp(rng.normal(np.log(0.18), 0.5, size=(n, 1, 1)))
    X = (level * np.exp(rng.normal(0, 0.1, (n, LOOKBACK, F)))).astype(np.float32)
    y = (X[:, -1, F - 1] * np.exp(rng.normal(0, 0.1, n))).astype(np.float64)
    return X, y


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'optuna.db'}"


class FakeFit:
    """Stands in for ``fit_lstm``: records what each trial trains on, a loss from the spec."""

    def __init__(self, sleep: float = 0.0) -> None:
        self.calls: list[tuple[LSTMSpec, int, int, int]] = []
        self.sleep = sleep

    def __call__(self, spec: LSTMSpec, x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray,
                 y_va: np.ndarray, callbacks: Any = ()) -> SimpleNamespace:
        self.calls.append((spec, len(x_tr), round(float(y_tr[0]) * 1e6), len(callbacks)))
        time.sleep(self.sleep)
        loss = abs(np.log(spec.lr / 5e-3)) + spec.hidden / 100 + spec.layers / 10 + spec.dropout
        return SimpleNamespace(valid_loss=[loss + 1.0, loss])


@pytest.fixture
def fake_fit(monkeypatch: pytest.MonkeyPatch) -> FakeFit:
    import models.lstm

    fake = FakeFit()
    monkeypatch.setattr(models.lstm, "fit_lstm", fake)
    return fake


# ----------------------------------------------------------------------------- budget, storage
def test_budget_is_kept_and_a_second_call_reuses_the_finished_study(
    storage: str, fake_fit: FakeFit,
) -> None:
    X, y = _windows(60)
    args = (SPEC, X[:40], y[:40], X[40:], y[40:])
    first = tuning.tune_lstm(*args, CONFIG, storage=storage, study_name="m:2017-12-29")
    assert (first.n_trials, first.n_new, first.n_pruned) == (3, 3, 0) and len(fake_fit.calls) == 3
    assert first.best_value == min(
        abs(np.log(s.lr / 5e-3)) + s.hidden / 100 + s.layers / 10 + s.dropout
        for s, *_ in fake_fit.calls
    )
    again = tuning.tune_lstm(*args, CONFIG, storage=storage, study_name="m:2017-12-29")
    assert again.n_new == 0 and len(fake_fit.calls) == 3  # no trial beyond the budget
    assert again.to_record() == first.to_record()  # same best parameters, value and counts
    more = tuning.tune_lstm(*args, replace(CONFIG, n_trials=4), storage=storage,
                            study_name="m:2017-12-29")
    assert (more.n_trials, more.n_new) == (4, 1)  # a larger budget extends the same study
    other = tuning.tune_lstm(*args, CONFIG, storage=storage, study_name="m:2017-12-28")
    assert other.n_new == 3  # another session's study is another study


def test_trials_are_seeded_capped_subsampled_and_pruned_through_the_callback(
    storage: str, fake_fit: FakeFit, tmp_path: Path,
) -> None:
    X, y = _windows(100)
    y[:] = np.arange(1, 101) / 1e6  # identifies the windows a trial trained on
    cfg = replace(CONFIG, trial_train_rows=30, trial_max_epochs=2)
    a = tuning.tune_lstm(SPEC, X[:80], y[:80], X[80:], y[80:], cfg, storage=storage,
                         study_name="a")
    for spec, rows, first_y, n_callbacks in fake_fit.calls:
        assert rows == 30 and first_y == 51  # the most recent 30 of 80 windows
        assert spec.max_epochs == 2 and spec.seed == SPEC.seed and spec.lookback == LOOKBACK
        assert n_callbacks == 1  # the Optuna pruning callback
        assert 2 <= spec.hidden <= 8 and 1 <= spec.layers <= 2 and 1e-3 <= spec.lr <= 3e-2
    params = [c[0] for c in fake_fit.calls]
    b = tuning.tune_lstm(SPEC, X[:80], y[:80], X[80:], y[80:], cfg,
                         storage=f"sqlite:///{tmp_path / 'other.db'}", study_name="a")
    assert [c[0] for c in fake_fit.calls[3:]] == params  # seeded sampler: same trials
    assert a.best_params == b.best_params
    assert params[0] == replace(SPEC, max_epochs=2)  # the configured architecture goes first
    tuning.tune_lstm(SPEC, X[:80], y[:80], X[80:], y[80:], cfg, storage=storage,
                     study_name="c", seed=12)
    assert [c[0] for c in fake_fit.calls[6:]] != params  # the seed is the sampler's
    outside = replace(SPEC, hidden=64)  # not in the space: not tried as such
    tuning.tune_lstm(outside, X[:80], y[:80], X[80:], y[80:], cfg, storage=storage,
                     study_name="d")
    assert all(c[0].hidden <= 8 for c in fake_fit.calls[9:])


def test_best_params_make_the_final_spec() -> None:
    result = tuning.TuningResult("s", best_params={"hidden": 24, "layers": 2, "dropout": 0.2,
                                                   "lr": 0.004})
    final = tuning.best_spec(SPEC, result)
    assert (final.hidden, final.layers, final.dropout, final.lr) == (24, 2, 0.2, 0.004)
    assert final.max_epochs == SPEC.max_epochs and final.seed == SPEC.seed  # the full budget
    assert final.lookback == SPEC.lookback and final.base_feature == SPEC.base_feature
    assert tuning.best_spec(SPEC, tuning.TuningResult("s")) == SPEC  # no complete trial
    trial = tuning.trial_spec(SPEC, {"hidden": 24}, replace(CONFIG, trial_max_epochs=99))
    assert trial.max_epochs == SPEC.max_epochs and trial.hidden == 24  # never above the final


def test_timeout_stops_starting_trials(storage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import models.lstm

    fake = FakeFit(sleep=1.2)  # each trial outlasts the 1 s budget
    monkeypatch.setattr(models.lstm, "fit_lstm", fake)
    X, y = _windows(60)
    result = tuning.tune_lstm(SPEC, X[:40], y[:40], X[40:], y[40:],
                              replace(CONFIG, n_trials=5, timeout_minutes=1 / 60),
                              storage=storage, study_name="t")
    assert result.n_new == 1 and len(fake.calls) == 1


def test_real_trials_report_every_epoch_and_a_worse_one_is_pruned(storage: str) -> None:
    """Real Lightning fits: the callback reports ``val_loss`` every epoch; in a study that already
    holds two perfect trials (loss 0 at every epoch) the median pruner, once it is on, stops the
    next trial after its first epoch."""
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution

    study = optuna.create_study(storage=storage, study_name="p", direction="minimize")
    for hidden in (4, 5):
        study.add_trial(optuna.trial.create_trial(
            params={"hidden": hidden, "layers": 1, "dropout": 0.1, "lr": 0.01},
            distributions={"hidden": IntDistribution(2, 8, log=True),
                           "layers": IntDistribution(1, 2),
                           "dropout": FloatDistribution(0.0, 0.3),
                           "lr": FloatDistribution(1e-3, 3e-2, log=True)},
            value=0.0, intermediate_values={0: 0.0, 1: 0.0},
        ))
    X, y = _windows(300)
    args = (SPEC, X[:200], y[:200], X[200:], y[200:])
    cfg = replace(CONFIG, n_trials=3, trial_max_epochs=2, pruner_startup_trials=5)
    first = tuning.tune_lstm(*args, cfg, storage=storage, study_name="p")  # pruner still off
    assert (first.n_new, first.n_complete, first.n_pruned) == (1, 3, 0)
    real = study.trials[2]
    assert sorted(real.intermediate_values) == [0, 1]  # val_loss reported every epoch
    assert real.value == min(real.intermediate_values.values()) > 0
    second = tuning.tune_lstm(*args, replace(cfg, n_trials=4, pruner_startup_trials=1),
                              storage=storage, study_name="p")
    assert (second.n_new, second.n_complete, second.n_pruned) == (1, 3, 1)
    pruned = study.get_trials(states=(optuna.trial.TrialState.PRUNED,))
    assert [sorted(t.intermediate_values) for t in pruned] == [[0]]
    assert pruned[0].intermediate_values[0] > 0
    assert second.best_value == 0.0 and second.best_trial in (0, 1)


def test_study_storage_and_name(tmp_path: Path) -> None:
    s = Settings(home=tmp_path / "home")
    url = tuning.study_storage(s, environ={})
    assert url == f"sqlite:///{tmp_path / 'home' / 'optuna' / 'optuna.db'}"
    assert (tmp_path / "home" / "optuna").is_dir()
    pg = "postgresql+psycopg://bot:secret@db:5432/afterbell_optuna"
    assert tuning.study_storage(s, environ={tuning.STORAGE_ENV: pg}) == pg
    assert "secret" not in tuning.redact(pg) and "db:5432" in tuning.redact(pg)
    name = tuning.study_name("garch_lstm_vol", "2018-12-31", SPEC, CONFIG, 100, 20)
    assert name.startswith("garch_lstm_vol:2018-12-31:")
    assert name == tuning.study_name("garch_lstm_vol", "2018-12-31", SPEC,
                                     replace(CONFIG, n_trials=50, timeout_minutes=1), 100, 20)
    assert name != tuning.study_name("garch_lstm_vol", "2018-12-31", SPEC,
                                     replace(CONFIG, hidden=(4, 8)), 100, 20)
    assert name != tuning.study_name("garch_lstm_vol", "2018-12-31", SPEC, CONFIG, 101, 20)


# ------------------------------------------------------------------------------------ config
def test_tuning_section_defaults_and_errors(tmp_path: Path) -> None:
    shipped = load_config(Path(__file__).resolve().parents[2] / "afterbell.toml")
    assert shipped.tuning == TuningConfig() and shipped.tuning.enabled
    assert load_config(tmp_path / "missing.toml").tuning == TuningConfig()
    ok = tmp_path / "ok.toml"
    ok.write_text("[tuning]\nn_trials = 0\nlr = [1e-4, 1e-2]\ntimeout_minutes = 1\n")
    cfg = load_config(ok).tuning
    assert not cfg.enabled and cfg.lr == (1e-4, 1e-2) and cfg.timeout_minutes == 1.0
    assert cfg.hidden == TuningConfig().hidden
    bad = tmp_path / "bad.toml"
    for body, key in [
        ("n_trials = -1", "n_trials"),
        ("n_trials = 2.5", "n_trials"),
        ("n_trials = true", "n_trials"),
        ("timeout_minutes = 0", "timeout_minutes"),
        ('timeout_minutes = "20"', "timeout_minutes"),
        ("trial_max_epochs = 0", "trial_max_epochs"),
        ("hidden = [64, 16]", "hidden"),
        ("hidden = [16.5, 64]", "hidden"),
        ("layers = [0, 2]", "layers"),
        ("layers = 2", "layers"),
        ("dropout = [0.1, 1.0]", "dropout"),
        ("lr = [0, 0.01]", "lr"),
        ("lr = [0.001]", "lr"),
        ("pruner_warmup_steps = -2", "pruner_warmup_steps"),
        ("lookback = [10, 20]", "lookback"),
    ]:
        bad.write_text(f"[tuning]\n{body}\n")
        with pytest.raises(ValueError, match=rf"\[tuning\].*{key}") as err:
            load_config(bad)
        assert str(bad) in str(err.value)
    with pytest.raises(ValueError, match="dropout"):
        TuningConfig(dropout=(0.3, 0.1))


# ----------------------------------------------------------------------------- heavy stage
def _fake_dataset(sessions: int = 120, symbols: int = 3) -> tuple[pd.DataFrame, Any]:
    from pipelines.datasets import Segments

    days = pd.bdate_range("2016-01-04", periods=sessions)
    X, y = _windows(sessions * symbols, seed=5)
    frame = pd.DataFrame({
        "symbol": np.tile([f"S{i}" for i in range(symbols)], sessions),
        "session": np.repeat(days, symbols),
        "seq": list(X.reshape(len(X), -1).astype(np.float64)),
        "target": y,
        "target_1": 0.9 * y,  # the extra heads' labels (Settings.extra_horizons)
        "target_22": 1.1 * y,
    })
    d = [x.date() for x in days]
    seg = Segments(train=(d[0], d[79]), valid=(d[85], d[104]), test=(d[110], d[-1]))
    return frame, seg


def test_full_retrain_tunes_and_registers_the_best_model_weekly_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import optuna
    from mlflow import MlflowClient

    from pipelines import registry, stages

    config = tmp_path / "afterbell.toml"
    config.write_text("[tuning]\nn_trials = 2\ntrial_max_epochs = 1\nhidden = [2, 6]\n"
                      "sampler_startup_trials = 1\n")
    monkeypatch.setenv("AFTERBELL_CONFIG", str(config))
    monkeypatch.delenv(tuning.STORAGE_ENV, raising=False)
    monkeypatch.setattr(stages, "_dataset", lambda s, d: _fake_dataset())
    s = Settings(home=tmp_path / "afterbell",
                 train=TrainConfig(lookback=LOOKBACK, hidden=4, max_epochs=2, batch_size=64))
    weekly, monthly = date(2017, 12, 22), date(2017, 12, 29)
    for day, kind in ((weekly, "lstm"), (monthly, "full")):
        runs = s.runs_dir / f"session={day.isoformat()}"
        runs.mkdir(parents=True)
        (runs / "plan_training.json").write_text(json.dumps({"kind": kind, "run": True}))

    lstm = stages.train_challenger(weekly.isoformat(), settings=s)
    assert "tuning" not in lstm
    assert not (s.home / "optuna").exists()
    full = stages.train_challenger(monthly.isoformat(), settings=s)
    record = full["tuning"]
    assert record["n_trials"] == 2 and record["study"].startswith(f"{s.model_name}:2017-12-29:")

    version = registry.version_for_session(s, monthly.isoformat())
    assert version is not None and version.tags["tuning_study"] == record["study"]
    assert registry.alias_version(s, "challenger") == version  # registered as the challenger
    plain = registry.version_for_session(s, weekly.isoformat())
    assert plain is not None and "tuning_study" not in plain.tags
    run = MlflowClient(s.tracking_uri).get_run(version.run_id)
    best = record["best_params"]
    assert {k: run.data.params[f"tuning.{k}"] for k in best} == {k: str(v) for k, v in best.items()}
    assert run.data.params["spec.hidden"] == str(best["hidden"])  # the final fit used them
    assert run.data.params["spec.max_epochs"] == "2"  # with the full epoch budget
    assert run.data.metrics["tuning.n_trials"] == 2
    assert "tuning.n_pruned" in run.data.metrics and "tuning.best_value" in run.data.metrics

    again = stages.train_challenger(monthly.isoformat(), settings=s)
    assert again["reused"] and again["version"] == full["version"]
    study = optuna.load_study(study_name=record["study"], storage=tuning.study_storage(s))
    assert len(study.trials) == 2  # the re-run neither trained nor tuned again


def test_claim_counts_done_and_running_trials_in_one_snapshot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another worker finishing its trial while this one claims must not open a trial beyond
    the budget (counted in two reads, that trial was neither done nor running: 9 of 8 trials
    once in CI)."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    study.tell(study.ask(), 1.0)
    other = study.ask()  # the other worker's running trial, leased
    other.set_user_attr(tuning.LEASE_ATTR, time.time() + 60)
    real = study.get_trials
    reads: list[int] = []

    def racing(*args: Any, **kwargs: Any) -> Any:
        reads.append(1)
        if len(reads) == 2:  # the other worker tells its result between two reads
            study.tell(other.number, 2.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(study, "get_trials", racing)
    claim = tuning._claim(study, tuning._StudyLock("memory", "s"), n_trials=2)
    assert claim is True  # wait for the running trial, open none
    assert len(real(deepcopy=False)) == 2
    assert real(deepcopy=False)[1].state in (TrialState.RUNNING, TrialState.COMPLETE)
