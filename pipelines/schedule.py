"""Stage windows and training cadence of the nightly cycle, from one settings file.

The file is ``afterbell.toml`` in the checkout (or the path in ``$AFTERBELL_CONFIG``). Times are
America/New_York wall-clock times; the calendar (exchange_calendars) decides sessions, early closes
and DST. Everything here is pure apart from :func:`load_config`.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

NEW_YORK = ZoneInfo("America/New_York")

#: Stage task groups in cycle order (CONTRACT.md).
STAGE_ORDER: tuple[str, ...] = (
    "close_analysis", "light_training", "data_processing", "heavy_training", "validation",
    "pre_market",
)  # fmt: skip

Cadence = Literal["session", "weekly", "monthly", "never"]


@dataclass(frozen=True)
class StageWindows:
    """Earliest New York start time of each stage after the close of its session.

    ``close_analysis`` starts at the close (16:00, or the early close). A time earlier than 16:00
    falls on the calendar day after the session (``validation`` at 02:00); ``pre_market`` is on the
    morning of the **next session** (Monday after a Friday, Tuesday after a Monday holiday).
    """

    light_training: time = time(17, 0)
    data_processing: time = time(19, 0)
    heavy_training: time = time(22, 0)
    validation: time = time(2, 0)
    pre_market: time = time(7, 0)


@dataclass(frozen=True)
class CadenceConfig:
    """How often each kind of training runs (``session``, ``weekly`` = last session of the
    week, ``monthly`` = last session of the month, ``never``)."""

    lstm_retrain: Cadence = "weekly"
    full_retrain: Cadence = "monthly"


@dataclass(frozen=True)
class PoolConfig:
    """Airflow pools: training never starves live serving."""

    training_slots: int = 1
    serving_slots: int = 2


@dataclass(frozen=True)
class TuningConfig:
    """Optuna hyperparameter search of the monthly full retrain (``[tuning]``).

    Parameters
    ----------
    n_trials : int
        Trial budget of the session's study; trials already finished (complete or pruned) by an
        earlier run of the same session count against it. ``0`` turns tuning off.
    timeout_minutes : float
        Time budget of one run: no trial starts after it (the running one finishes, so a run can
        overrun by at most one trial, itself bounded by ``trial_max_epochs``).
    trial_max_epochs : int
        Epoch budget of a trial (at most the final fit's ``max_epochs``); the final model is
        refitted with the best parameters and the full budget.
    trial_train_rows : int
        Trials train on the most recent this-many training windows (``0``: all of them); the
        final fit uses every training window. Validation windows are never subsampled.
    hidden, layers : (int, int)
        Inclusive ranges of the LSTM hidden units (sampled on a log scale) and stacked layers.
    dropout : (float, float)
        Inclusive range of the dropout rate, in ``[0, 1)``.
    lr : (float, float)
        Inclusive range of the Adam learning rate (log scale, ``> 0``).
    sampler_startup_trials : int
        ``TPESampler(n_startup_trials=...)``: random trials before TPE models the search space
        (Optuna's default, 10, would make a budget of 8 trials a pure random search).
    pruner_startup_trials : int
        ``MedianPruner(n_startup_trials=...)``: trials completed before any is pruned.
    pruner_warmup_steps : int
        ``MedianPruner(n_warmup_steps=...)``: epochs of a trial before it can be pruned.
    seed : int
        Seed of the TPE sampler (the trials' training seed is the model's).
    """

    n_trials: int = 8
    timeout_minutes: float = 10.0
    trial_max_epochs: int = 6
    trial_train_rows: int = 20_000
    hidden: tuple[int, int] = (16, 64)
    layers: tuple[int, int] = (1, 2)
    dropout: tuple[float, float] = (0.0, 0.3)
    lr: tuple[float, float] = (1e-3, 1e-2)
    sampler_startup_trials: int = 4
    pruner_startup_trials: int = 3
    pruner_warmup_steps: int = 2
    seed: int = 7

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"[tuning] {key} = {getattr(self, key)!r}: {why}")

        for key in ("n_trials", "trial_train_rows", "sampler_startup_trials",
                    "pruner_startup_trials", "pruner_warmup_steps", "seed"):
            if getattr(self, key) < 0:
                raise bad(key, "must be >= 0")
        if self.trial_max_epochs < 1:
            raise bad("trial_max_epochs", "must be >= 1")
        if not (math.isfinite(self.timeout_minutes) and self.timeout_minutes > 0):
            raise bad("timeout_minutes", "must be a positive number of minutes")
        for key, low in (("hidden", 1), ("layers", 1), ("dropout", 0.0), ("lr", 0.0)):
            lo, hi = getattr(self, key)
            if not lo <= hi:
                raise bad(key, "need [low, high] with low <= high")
            if lo < low or (key == "lr" and lo <= 0):
                raise bad(key, f"low must be {'> 0' if key == 'lr' else f'>= {low}'}")
        if self.dropout[1] >= 1:
            raise bad("dropout", "high must be < 1")

    @property
    def enabled(self) -> bool:
        """True when the full retrain runs a study (``n_trials > 0``)."""
        return self.n_trials > 0


@dataclass(frozen=True)
class CycleConfig:
    windows: StageWindows = field(default_factory=StageWindows)
    cadence: CadenceConfig = field(default_factory=CadenceConfig)
    pools: PoolConfig = field(default_factory=PoolConfig)
    #: The ``[monitoring]`` table, validated by :class:`pipelines.monitoring.MonitorThresholds`.
    monitoring: Mapping[str, Any] = field(default_factory=dict)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    #: The ``[validation]`` table (promotion gate), validated by :class:`pipelines.gate.GateConfig`.
    validation: Mapping[str, Any] = field(default_factory=dict)
    #: The ``[limits]`` table (position limits, circuit breakers), validated by
    #: :class:`pipelines.orders.Limits`.
    limits: Mapping[str, Any] = field(default_factory=dict)
    #: The ``[sizing]`` table, validated by :class:`models.sizing.SizingSpec`.
    sizing: Mapping[str, Any] = field(default_factory=dict)


def config_path() -> Path:
    from pipelines.settings import REPO_ROOT

    return Path(os.environ.get("AFTERBELL_CONFIG") or REPO_ROOT / "afterbell.toml")


def _section(cls: type, table: Mapping[str, Any], name: str, path: Path) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ValueError(f"{path}: [{name}] has unknown keys {unknown}; known: {sorted(known)}")
    values: dict[str, Any] = {}
    for key, raw in table.items():
        default = getattr(cls(), key)
        if isinstance(default, time):
            try:
                values[key] = time.fromisoformat(str(raw))
            except ValueError:
                raise ValueError(f"{path}: [{name}] {key} = {raw!r} is not HH:MM") from None
        elif isinstance(default, int) and not isinstance(default, bool):
            if not isinstance(raw, int) or raw < 1:
                raise ValueError(f"{path}: [{name}] {key} must be a positive integer")
            values[key] = raw
        else:
            if name == "cadence" and raw not in ("session", "weekly", "monthly", "never"):
                raise ValueError(f"{path}: [cadence] {key} = {raw!r}: use session, weekly, "
                                 "monthly or never")
            values[key] = raw
    return cls(**values)


def _number(raw: Any, integer: bool) -> bool:
    if isinstance(raw, bool):
        return False
    return isinstance(raw, int) if integer else isinstance(raw, int | float)


def _tuning_section(table: Mapping[str, Any], path: Path) -> TuningConfig:
    """:class:`TuningConfig` of the ``[tuning]`` table: types, then ranges, naming the key."""
    known = {f.name for f in fields(TuningConfig)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ValueError(f"{path}: [tuning] has unknown keys {unknown}; known: {sorted(known)}")
    defaults = TuningConfig()
    values: dict[str, Any] = {}
    for key, raw in table.items():
        default = getattr(defaults, key)
        if isinstance(default, tuple):
            integer = isinstance(default[0], int)
            if not (isinstance(raw, list) and len(raw) == 2
                    and all(_number(v, integer) for v in raw)):
                kind = "integers" if integer else "numbers"
                raise ValueError(f"{path}: [tuning] {key} = {raw!r}: use [low, high] ({kind})")
            values[key] = tuple(int(v) if integer else float(v) for v in raw)
        elif isinstance(default, int):
            if not _number(raw, integer=True):
                raise ValueError(f"{path}: [tuning] {key} = {raw!r}: must be an integer")
            values[key] = raw
        else:
            if not _number(raw, integer=False):
                raise ValueError(f"{path}: [tuning] {key} = {raw!r}: must be a number")
            values[key] = float(raw)
    try:
        return TuningConfig(**values)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def load_config(path: Path | None = None) -> CycleConfig:
    """Read the settings file; a missing file gives the defaults, a bad one a clear error."""
    p = path or config_path()
    if not p.exists():
        return CycleConfig()
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{p}: not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - {"windows", "cadence", "pools", "monitoring", "tuning",
                                 "validation", "limits", "sizing"})
    if unknown:
        raise ValueError(f"{p}: unknown sections {unknown}")
    return CycleConfig(
        windows=_section(StageWindows, raw.get("windows", {}), "windows", p),
        cadence=_section(CadenceConfig, raw.get("cadence", {}), "cadence", p),
        pools=_section(PoolConfig, raw.get("pools", {}), "pools", p),
        monitoring=dict(raw.get("monitoring", {})),
        tuning=_tuning_section(raw.get("tuning", {}), p),
        validation=_checked(raw.get("validation", {}), "validation", p),
        limits=_checked(raw.get("limits", {}), "limits", p),
        sizing=_checked(raw.get("sizing", {}), "sizing", p),
    )


def _checked(table: Mapping[str, Any], name: str, path: Path) -> dict[str, Any]:
    """The ``[validation]`` / ``[limits]`` / ``[sizing]`` table, checked now by the dataclass
    that reads it, so a bad settings file fails when it is read, naming the file."""
    if name == "validation":
        from pipelines.gate import GateConfig

        check: Any = GateConfig.from_mapping
    elif name == "sizing":
        from models.sizing import SizingSpec

        check = SizingSpec.from_mapping
    else:
        from pipelines.orders import Limits

        check = Limits.from_mapping
    try:
        check(table)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return dict(table)


def window_times(session: date, windows: StageWindows) -> dict[str, datetime]:
    """UTC start time of every stage of ``session``'s run."""
    from pipelines import calendar

    close = calendar.session_close(session).to_pydatetime()
    close_local = close.astimezone(NEW_YORK)
    out: dict[str, datetime] = {"close_analysis": close}
    for name in STAGE_ORDER[1:]:
        at: time = getattr(windows, name)
        if name == "pre_market":
            day = calendar.next_session(session)
        elif at < time(16, 0):
            day = session + timedelta(days=1)
        else:
            day = session
        local = datetime.combine(day, at, tzinfo=NEW_YORK)
        out[name] = max(local, close_local).astimezone(ZoneInfo("UTC"))
    return out


def is_last_session_of_week(session: date) -> bool:
    from pipelines import calendar

    nxt = calendar.next_session(session)
    return nxt.isocalendar()[:2] != session.isocalendar()[:2]


def is_last_session_of_month(session: date) -> bool:
    from pipelines import calendar

    nxt = calendar.next_session(session)
    return (nxt.year, nxt.month) != (session.year, session.month)


def _due(cadence: Cadence, session: date) -> bool:
    if cadence == "session":
        return True
    if cadence == "weekly":
        return is_last_session_of_week(session)
    if cadence == "monthly":
        return is_last_session_of_month(session)
    return False


@dataclass(frozen=True)
class TrainingPlan:
    """What the heavy stage does tonight, and why (shown in the task log)."""

    run: bool
    kind: Literal["none", "lstm", "full"]
    reason: str


def training_plan(
    session: date,
    cadence: CadenceConfig,
    *,
    has_model: bool,
    retrain_reasons: tuple[str, ...] = (),
) -> TrainingPlan:
    """Decide tonight's heavy training from the calendar, the registry and monitoring."""
    if not has_model:
        return TrainingPlan(True, "full", "no model registered yet: bootstrap training")
    if _due(cadence.full_retrain, session):
        return TrainingPlan(True, "full",
                            f"full retrain: {session} is due ({cadence.full_retrain} cadence)")
    if retrain_reasons:
        return TrainingPlan(True, "lstm", "retrain requested by monitoring: "
                            + "; ".join(retrain_reasons))
    if _due(cadence.lstm_retrain, session):
        return TrainingPlan(True, "lstm",
                            f"LSTM retrain: {session} is due ({cadence.lstm_retrain} cadence)")
    return TrainingPlan(
        False, "none",
        f"no retrain on {session}: not the last session of the week or month "
        f"(cadence lstm={cadence.lstm_retrain}, full={cadence.full_retrain}) and monitoring "
        "requested none",
    )
