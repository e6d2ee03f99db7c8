"""Optuna hyperparameter search of the GARCH-LSTM, run by the monthly full retrain.

One persistent study per model and session (:func:`study_name`), in the storage of
:func:`study_storage`: SQLite under ``$AFTERBELL_HOME/optuna/`` by default, or the SQLAlchemy URL
in ``$AFTERBELL_OPTUNA_STORAGE`` (PostgreSQL in production, e.g.
``postgresql+psycopg://user@host:5432/afterbell_optuna``; the database must exist, Optuna creates
its tables). The budget, search space, sampler and pruner come from ``afterbell.toml``
``[tuning]`` (:class:`~pipelines.schedule.TuningConfig`).

:func:`tune_lstm` samples the LSTM's ``hidden``, ``layers``, ``dropout`` and ``lr`` with a seeded
TPE sampler, after a first trial of the configured architecture (when it lies in the search
space), so a search only changes the model when a trial beats the configuration. Each trial is a
:func:`~models.lstm.fit_lstm` on the most recent ``trial_train_rows`` training windows for at
most ``trial_max_epochs`` epochs, minimising the best validation L1 loss, and Optuna's Lightning
callback reports ``val_loss`` every epoch to a median pruner. The lookback is not searched: it
shapes the Feast window table. The caller then refits the model with :func:`best_spec` (every
training window, the full epoch budget, the same seed).

Re-running a session is safe: the study is loaded, and trials it already finished (complete or
pruned) count against ``n_trials``, so a finished study runs no new trial and gives the same best
parameters. A trial left running by a crashed run is not counted (a new one replaces it). The
sampler is seeded, so an uninterrupted study is reproducible; one resumed after a crash samples
its remaining trials from a restarted generator.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.schedule import TuningConfig
from pipelines.settings import Settings

if TYPE_CHECKING:
    import optuna

    from models.lstm import LSTMSpec

__all__ = [
    "STORAGE_ENV",
    "TUNED_PARAMS",
    "TuningResult",
    "best_spec",
    "redact",
    "study_name",
    "study_storage",
    "trial_spec",
    "tune_lstm",
]

log = logging.getLogger("afterbell.tuning")

#: Environment variable holding the study storage URL (SQLAlchemy); unset: SQLite in the home.
STORAGE_ENV = "AFTERBELL_OPTUNA_STORAGE"
#: The :class:`~models.lstm.LSTMSpec` fields the search samples.
TUNED_PARAMS: tuple[str, ...] = ("hidden", "layers", "dropout", "lr")
#: The metric the pruning callback reads (logged by ``GarchLSTMModule`` every epoch).
MONITOR = "val_loss"


@dataclass(frozen=True)
class TuningResult:
    """Outcome of a study.

    Parameters
    ----------
    study_name : str
        Name of the study in its storage.
    best_params : dict of str to int or float
        Parameters of the best complete trial (empty when no trial completed).
    best_value : float
        Its best validation L1 loss (NaN when no trial completed).
    best_trial : int
        Its number in the study (-1 when no trial completed).
    n_complete, n_pruned : int
        Complete and pruned trials in the study, whichever run finished them.
    n_new : int
        Trials this call ran (0 when an earlier run of the session had used the budget).
    elapsed_s : float
        Wall-clock seconds of this call.
    """

    study_name: str
    best_params: dict[str, Any] = field(default_factory=dict)
    best_value: float = math.nan
    best_trial: int = -1
    n_complete: int = 0
    n_pruned: int = 0
    n_new: int = 0
    elapsed_s: float = 0.0

    @property
    def n_trials(self) -> int:
        """Finished trials (complete and pruned): what counts against the budget."""
        return self.n_complete + self.n_pruned

    def to_record(self) -> dict[str, Any]:
        """The deterministic part, for the stage record (no timing, no per-call counts)."""
        return {
            "study": self.study_name,
            "best_params": dict(sorted(self.best_params.items())),
            "best_value": self.best_value if math.isfinite(self.best_value) else None,
            "best_trial": self.best_trial,
            "n_trials": self.n_trials,
            "n_pruned": self.n_pruned,
        }


def study_storage(settings: Settings, environ: Mapping[str, str] | None = None) -> str:
    """SQLAlchemy URL of the Optuna storage.

    ``$AFTERBELL_OPTUNA_STORAGE`` when set (PostgreSQL in production), otherwise
    ``sqlite:///$AFTERBELL_HOME/optuna/optuna.db`` (its folder is created).
    """
    env = os.environ if environ is None else environ
    url = env.get(STORAGE_ENV, "").strip()
    if url:
        return url
    folder = Path(settings.home) / "optuna"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'optuna.db'}"


def redact(url: str) -> str:
    """The storage URL with any password masked, for logs."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable storage URL>"


def study_name(
    model_name: str,
    session: str,
    spec_base: LSTMSpec,
    config: TuningConfig,
    n_train: int,
    n_valid: int,
) -> str:
    """``{model}:{session}:{fingerprint}``: one study per model and session.

    The fingerprint (8 hex digits) hashes what makes trial values comparable: the search space,
    the trial budget per trial (epochs, rows), the untuned part of the spec and the segment sizes.
    The budget (``n_trials``, ``timeout_minutes``), the sampler and the pruner are left out, so a
    re-run with a larger ``n_trials`` extends the same study, while a changed search space starts
    a new one instead of mixing incomparable trials.
    """
    key = {
        "space": {k: list(getattr(config, k)) for k in TUNED_PARAMS},
        "trial_max_epochs": config.trial_max_epochs,
        "trial_train_rows": config.trial_train_rows,
        "spec": {k: v for k, v in asdict(spec_base).items() if k not in TUNED_PARAMS},
        "rows": [int(n_train), int(n_valid)],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    return f"{model_name}:{session}:{digest}"


def trial_spec(spec_base: LSTMSpec, params: Mapping[str, Any], config: TuningConfig) -> LSTMSpec:
    """The spec a trial trains: ``params`` on ``spec_base``, at most ``trial_max_epochs``."""
    return replace(spec_base, **dict(params),
                   max_epochs=min(spec_base.max_epochs, config.trial_max_epochs))


def best_spec(spec_base: LSTMSpec, result: TuningResult) -> LSTMSpec:
    """The final model's spec: the best trial's parameters on ``spec_base`` (its full epoch
    budget and seed); ``spec_base`` itself when no trial completed."""
    return replace(spec_base, **result.best_params)


def _suggest(trial: optuna.trial.Trial, config: TuningConfig) -> dict[str, Any]:
    return {
        "hidden": trial.suggest_int("hidden", *config.hidden, log=True),
        "layers": trial.suggest_int("layers", *config.layers),
        "dropout": trial.suggest_float("dropout", *config.dropout),
        "lr": trial.suggest_float("lr", *config.lr, log=True),
    }


def _base_params(spec_base: LSTMSpec, config: TuningConfig) -> dict[str, Any] | None:
    """The configured architecture as a trial's parameters, or None when it lies outside the
    search space (a fixed value outside it would widen the space the sampler models)."""
    params = {k: getattr(spec_base, k) for k in TUNED_PARAMS}
    inside = all(getattr(config, k)[0] <= v <= getattr(config, k)[1] for k, v in params.items())
    return params if inside else None


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna's per-trial INFO lines off (this module logs its own); restored on exit."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def tune_lstm(
    spec_base: LSTMSpec,
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    x_va: np.ndarray,
    y_va: np.ndarray,
    config: TuningConfig,
    *,
    storage: str,
    study_name: str,
    seed: int | None = None,
) -> TuningResult:
    """Run (or resume) the study ``study_name`` within the budget of ``config``.

    Parameters
    ----------
    spec_base : LSTMSpec
        The configured spec; trials change only :data:`TUNED_PARAMS` and cap ``max_epochs``.
    x_tr, x_va : numpy.ndarray
        Training and validation windows ``(N, lookback, n_features)``, oldest first.
    y_tr, y_va : numpy.ndarray
        Their targets, ``(N,)`` or ``(N, len(spec_base.horizons))``.
    config : TuningConfig
        Budget, search space, sampler and pruner settings.
    storage : str
        SQLAlchemy URL of the study storage (:func:`study_storage`).
    study_name : str
        Name of the persistent study (:func:`study_name`).
    seed : int, optional
        Seed of the TPE sampler; ``config.seed`` when omitted.

    Returns
    -------
    TuningResult
        Best parameters and value over every finished trial of the study.

    Notes
    -----
    Trials the study already finished (complete or pruned) count against ``config.n_trials``;
    at most the rest run, and none starts after ``config.timeout_minutes``. A trial whose
    training raises fails the call (Optuna records it as failed; it does not count).
    """
    import optuna
    from optuna.trial import TrialState
    from optuna_integration import PyTorchLightningPruningCallback

    from models.lstm import fit_lstm

    t0 = time.monotonic()
    rows = config.trial_train_rows
    xt, yt = (x_tr[-rows:], y_tr[-rows:]) if rows and len(x_tr) > rows else (x_tr, y_tr)
    finished = (TrialState.COMPLETE, TrialState.PRUNED)

    def objective(trial: optuna.trial.Trial) -> float:
        spec = trial_spec(spec_base, _suggest(trial, config), config)
        pruning = PyTorchLightningPruningCallback(trial, monitor=MONITOR)
        fitted = fit_lstm(spec, xt, yt, x_va, y_va, callbacks=[pruning])
        return float(np.min(fitted.valid_loss))

    def progress(study: optuna.study.Study, trial: optuna.trial.FrozenTrial) -> None:
        done = len(study.get_trials(deepcopy=False, states=finished))
        if trial.state == TrialState.COMPLETE:
            outcome = f"valid MAE {trial.value:.5f}"
        elif trial.state == TrialState.PRUNED:
            outcome = f"pruned after {len(trial.intermediate_values)} epoch(s)"
        else:
            outcome = trial.state.name.lower()
        log.info("study %s: trial %d (%d/%d) %s, params %s", study.study_name, trial.number,
                 done, config.n_trials, outcome, trial.params)

    with _quiet_optuna():
        study = optuna.create_study(
            storage=storage,
            study_name=study_name,
            load_if_exists=True,
            direction="minimize",
            sampler=optuna.samplers.TPESampler(
                seed=config.seed if seed is None else seed,
                n_startup_trials=config.sampler_startup_trials,
            ),
            pruner=optuna.pruners.MedianPruner(
                n_startup_trials=config.pruner_startup_trials,
                n_warmup_steps=config.pruner_warmup_steps,
            ),
        )
        base = _base_params(spec_base, config)
        if base is not None and not study.get_trials(deepcopy=False):
            study.enqueue_trial(base)  # a new study first tries the configured architecture
        before = len(study.get_trials(deepcopy=False, states=finished))
        remaining = max(0, config.n_trials - before)
        log.info("study %s in %s: %d trial(s) finished, %d to run (budget %d trials, %g min); "
                 "%d training windows per trial", study_name, redact(storage), before, remaining,
                 config.n_trials, config.timeout_minutes, len(xt))
        if remaining:
            study.optimize(objective, n_trials=remaining, timeout=config.timeout_minutes * 60.0,
                           catch=(), callbacks=[progress], gc_after_trial=False)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    result = TuningResult(
        study_name=study_name,
        n_complete=len(complete),
        n_pruned=len(pruned),
        n_new=len(complete) + len(pruned) - before,
        elapsed_s=time.monotonic() - t0,
    )
    if complete:
        best = study.best_trial
        value = math.nan if best.value is None else float(best.value)
        result = replace(result, best_params=dict(best.params), best_value=value,
                         best_trial=best.number)
    log.info("study %s: best trial %d, valid MAE %.5f, params %s (%d complete, %d pruned, "
             "%.1fs)", study_name, result.best_trial, result.best_value, result.best_params,
             result.n_complete, result.n_pruned, result.elapsed_s)
    return result
