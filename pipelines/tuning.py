"""Optuna hyperparameter search of the GARCH-LSTM, run by the monthly full retrain.

One persistent study per model and session (:func:`study_name`), in the storage of
:func:`study_storage`: SQLite under ``$AFTERBELL_HOME/optuna/`` in the embedded profile,
PostgreSQL in the production one (:attr:`~pipelines.settings.Settings.optuna_storage_url`), or the
SQLAlchemy URL in ``$AFTERBELL_OPTUNA_STORAGE`` (e.g.
``postgresql+psycopg://user@host:5432/afterbell_optuna``; the database must exist, Optuna creates
its tables; a password comes from ``PGPASSWORD``, and one written in the URL is masked in logs).
The budget, search space, sampler and pruner come from ``afterbell.toml`` ``[tuning]``
(:class:`~pipelines.schedule.TuningConfig`).

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
parameters. The sampler is seeded, so an uninterrupted study is reproducible; one resumed after a
crash samples its remaining trials from another seed.

Several workers (processes, machines) may run :func:`tune_lstm` on one study at the same time,
on a shared storage (PostgreSQL): together they run exactly ``n_trials`` trials. Each trial is
claimed under a lock (a PostgreSQL advisory lock; a lock file next to a SQLite database) that
counts the finished trials and the running ones still held by a live worker; a worker holds its
running trial by a lease (user attribute ``afterbell_lease``, renewed every few seconds). A trial
left running by a crashed worker loses its lease within :data:`LEASE_SECONDS`: it is marked
failed and not counted (a new one replaces it). A worker returns once the whole budget has
finished (or the timeout has passed), so every worker reports the same best trial. The n-th
worker to join a study samples from the seed ``seed + n``, so workers do not repeat each other's
trials (the first one keeps the configured seed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
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
#: Seconds a worker's claim on a running trial lasts without renewal (renewed every quarter).
LEASE_SECONDS = 60.0
#: User attribute of a running trial: the wall-clock time (epoch seconds) its lease ends.
LEASE_ATTR = "afterbell_lease"
#: Study user attribute: how many workers have joined the study (the next one's seed offset).
WORKERS_ATTR = "afterbell_workers"
#: Seconds between two looks at the study while other workers finish the last trials.
WAIT_SECONDS = 0.5


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
        Complete and pruned trials in the study, whichever run (or worker) finished them.
    n_new : int
        Trials this call ran (0 when an earlier run of the session, or other workers, had used
        the budget).
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

    Parameters
    ----------
    settings : Settings
        Its :attr:`~pipelines.settings.Settings.optuna_storage` when set; otherwise
        ``$AFTERBELL_OPTUNA_STORAGE`` of ``environ``; otherwise the profile's default
        (:attr:`~pipelines.settings.Settings.optuna_storage_url`: SQLite in the home, embedded;
        PostgreSQL, production).
    environ : mapping, optional
        The environment (default: ``os.environ``).

    Returns
    -------
    str
        The URL; a SQLite database's folder is created.
    """
    env = os.environ if environ is None else environ
    url = settings.optuna_storage.strip() or env.get(STORAGE_ENV, "").strip()
    url = url or settings.optuna_storage_url
    sqlite = _sqlite_path(url)
    if sqlite is not None:
        sqlite.parent.mkdir(parents=True, exist_ok=True)
    return url


def redact(url: str) -> str:
    """The storage URL with any password masked, for logs."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from pipelines.settings import redact_url

    try:
        return redact_url(make_url(url).render_as_string(hide_password=True))
    except ArgumentError:
        return "<unparsable storage URL>"


def _sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None for other URLs, in-memory SQLite)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _lock_key(name: str) -> int:
    """A signed 64-bit advisory-lock key for the study ``name``."""
    digest = hashlib.sha256(f"afterbell.optuna:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class _StudyLock:
    """Mutual exclusion of the workers of one study while they claim trials.

    PostgreSQL: a transaction-scoped advisory lock on a connection of its own; SQLite: an
    exclusive ``flock`` of ``<database>.lock``; other storages: none (one worker at a time).
    """

    def __init__(self, storage: str, name: str) -> None:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        self._key = _lock_key(name)
        self._engine: Any = None
        self._file: Path | None = _sqlite_path(storage)
        try:
            backend = make_url(storage).get_backend_name()
        except ArgumentError:
            backend = ""
        if backend == "postgresql":
            from sqlalchemy import create_engine
            from sqlalchemy.pool import NullPool

            self._engine = create_engine(storage, poolclass=NullPool)

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock for the ``with`` block."""
        if self._engine is not None:
            from sqlalchemy import text

            with self._engine.begin() as conn:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": self._key})
                yield
        elif self._file is not None:
            import fcntl

            with open(f"{self._file}.lock", "a+b") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
        else:
            yield

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


class _Lease:
    """Keeps a worker's claim on its running trial alive: renews :data:`LEASE_ATTR` every
    quarter of :data:`LEASE_SECONDS` in a daemon thread until the ``with`` block ends."""

    def __init__(self, trial: optuna.trial.Trial) -> None:
        self._trial = trial
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="afterbell-optuna-lease",
                                        daemon=True)

    def renew(self) -> None:
        self._trial.set_user_attr(LEASE_ATTR, time.time() + LEASE_SECONDS)

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_SECONDS / 4):
            try:
                self.renew()
            except Exception:  # a lost renewal is retried; the lease may lapse
                log.warning("could not renew the lease of trial %d", self._trial.number,
                            exc_info=True)

    def __enter__(self) -> _Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


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


def _live_running(study: optuna.study.Study,
                  trials: Sequence[optuna.trial.FrozenTrial]) -> int:
    """Running trials of ``trials`` held by a live worker; the others (lease lapsed or never
    taken: a crashed worker's) are marked failed. Call it under the study's lock."""
    from optuna.trial import TrialState

    now, live = time.time(), 0
    for t in (t for t in trials if t.state == TrialState.RUNNING):
        lease = t.user_attrs.get(LEASE_ATTR)
        if isinstance(lease, int | float) and lease > now:
            live += 1
            continue
        log.warning("study %s: trial %d is running without a live worker (lease %s); marked "
                    "failed", study.study_name, t.number, "lapsed" if lease else "never taken")
        study.tell(t.number, state=TrialState.FAIL)
    return live


def _claim(study: optuna.study.Study, lock: _StudyLock, n_trials: int,
           ) -> optuna.trial.Trial | bool:
    """Under the lock: a new trial (leased to this worker) when the budget has room, True
    when other workers still run its last trials, False when the budget has finished."""
    from optuna.trial import TrialState

    with lock.held():
        # one snapshot for both counts: read apart, a trial another worker finished between
        # them would be neither done nor running, and a trial beyond the budget asked for
        trials = study.get_trials(deepcopy=False)
        done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        if done >= n_trials:
            return False
        if done + _live_running(study, trials) >= n_trials:
            return True
        trial = study.ask()
        _Lease(trial).renew()
        return trial


def _run_budget(
    study: optuna.study.Study,
    objective: Callable[[optuna.trial.Trial], float],
    lock: _StudyLock,
    n_trials: int,
    *,
    timeout: float,
    progress: Callable[[optuna.study.Study, optuna.trial.FrozenTrial], None],
) -> int:
    """Claim and run trials until the study's budget has finished or ``timeout`` seconds have
    passed; returns how many trials this worker finished (complete or pruned)."""
    import optuna
    from optuna.trial import TrialState

    mine, deadline = 0, time.monotonic() + timeout
    while time.monotonic() < deadline:
        claim = _claim(study, lock, n_trials)
        if claim is False:
            break
        if claim is True:
            time.sleep(WAIT_SECONDS)
            continue
        assert not isinstance(claim, bool)
        trial = claim
        with _Lease(trial):
            try:
                value = objective(trial)
            except optuna.TrialPruned:
                frozen = study.tell(trial, state=TrialState.PRUNED)
            except BaseException:
                study.tell(trial, state=TrialState.FAIL)
                raise
            else:
                frozen = study.tell(trial, value)
        if frozen.state in (TrialState.COMPLETE, TrialState.PRUNED):
            mine += 1
        progress(study, frozen)
    return mine


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
    at most the rest run, and none starts after ``config.timeout_minutes``. Other workers may
    run the same study at the same time: the budget is shared (see the module's notes), and the
    call returns once every trial of the budget has finished. A trial whose training raises
    fails the call (Optuna records it as failed; it does not count).
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

    lock = _StudyLock(storage, study_name)
    try:
        with _quiet_optuna():
            with lock.held():  # also keeps two workers from creating the tables at once
                study = optuna.create_study(
                    storage=storage,
                    study_name=study_name,
                    load_if_exists=True,
                    direction="minimize",
                    pruner=optuna.pruners.MedianPruner(
                        n_startup_trials=config.pruner_startup_trials,
                        n_warmup_steps=config.pruner_warmup_steps,
                    ),
                )
                joined = int(study.user_attrs.get(WORKERS_ATTR, 0))
                study.set_user_attr(WORKERS_ATTR, joined + 1)
                base = _base_params(spec_base, config)
                if base is not None and not study.get_trials(deepcopy=False):
                    study.enqueue_trial(base)  # a new study first tries the configured spec
                before = len(study.get_trials(deepcopy=False, states=finished))
            study.sampler = optuna.samplers.TPESampler(
                seed=(config.seed if seed is None else seed) + joined,
                n_startup_trials=config.sampler_startup_trials,
            )
            log.info("study %s in %s: %d trial(s) finished, %d to run (budget %d trials, "
                     "%g min; worker %d); %d training windows per trial", study_name,
                     redact(storage), before, max(0, config.n_trials - before), config.n_trials,
                     config.timeout_minutes, joined + 1, len(xt))
            n_mine = _run_budget(study, objective, lock, config.n_trials,
                                 timeout=config.timeout_minutes * 60.0, progress=progress)
    finally:
        lock.close()
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    result = TuningResult(
        study_name=study_name,
        n_complete=len(complete),
        n_pruned=len(pruned),
        n_new=n_mine,
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
