"""Point-in-time correctness of the training path, proven by a property test.

For every feature view (``market_features``, ``garch_features``, ``lstm_window``) the offline table
is built the way the pipeline builds it, once from real bars and once from the same bars with every
input after a session ``t`` changed (each value multiplied by a random factor, rows after ``t``
removed, a new symbol and extra sessions inserted after ``t``). Both are written to their own
offline store (``AFTERBELL_HOME``) and read back through the training path,
:func:`pipelines.feature_store.historical_features`, with both join engines. Entity rows at or
before the close of ``t`` must get identical frames; entity rows after it must not (so the test
sees the perturbation and can fail).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pipelines import feature_store as fs
from pipelines.calendar import closes_for, session_close, sessions_between
from pipelines.schema import BAR_PRICE_COLUMNS, GARCH_COLUMNS
from pipelines.settings import WINDOW_COLUMNS, Settings
from tests.feast_tables import restored_environ

SYMBOLS = ("AAPL", "SPX")  # a close-only stock and an OHLCV index of the replay source
NEW_SYMBOL = "MSFT"  # inserted after t only
SESSIONS: tuple[date, ...] = tuple(sessions_between("2016-01-04", "2017-12-29"))
EXTRA_SESSIONS: tuple[date, ...] = tuple(sessions_between("2018-01-02", "2018-02-28"))
#: Small GARCH and window settings: the property test refits GARCH on every example.
HORIZON, REFIT_EVERY, MIN_OBS, LOOKBACK = 5, 60, 100, 10
#: ``t`` leaves room for GARCH rows and windows before it and for sessions after it.
T_FIRST, T_LAST = MIN_OBS + LOOKBACK + 5, len(SESSIONS) - 15
VIEWS: tuple[fs.ViewName, ...] = (
    "market_features", "garch_features", "lstm_window", "option_features"
)
#: A lake without ingested Treasury curves: the straddles use the packaged T-bill rates.
NO_CURVES = Path(__file__).resolve().parent / "no-such-lake"
ENV_KEYS = ("AFTERBELL_HOME", "AFTERBELL_FEAST_REGISTRY_URL", "AFTERBELL_REDIS_URL")


# ------------------------------------------------------------------------------- pipeline tables
def _garch_table(features: pd.DataFrame) -> pd.DataFrame:
    """The ``garch`` table as :func:`pipelines.stages.refit_garch` writes it on a fresh lake.

    For the last session ``d`` of ``features``: the stage's own per-symbol function
    (:func:`pipelines.stages.garch_rows`: GARCH, EGARCH and EWMA; history rows from
    expanding-window refits on the returns before ``d``, the row of ``d`` from fits on every
    return up to ``d``); symbols without ``MIN_OBS`` returns or without a return on ``d`` are
    skipped, as in the stage.
    """
    from pipelines.stages import garch_rows, light_specs

    d = features["session"].max()
    specs = light_specs(HORIZON)
    rows = []
    for symbol, g in features.groupby("symbol", sort=True):
        r = g.set_index("session")["ret_1"].dropna()
        if len(r) < MIN_OBS or r.index[-1] != d:
            continue
        out, _ = garch_rows(r, specs, history=list(r.index[:-1]), refit_every=REFIT_EVERY,
                            min_obs=MIN_OBS)
        rows.append(out.assign(symbol=symbol))
    out = pd.concat(rows).rename_axis("session").reset_index()
    out["event_timestamp"] = closes_for(out["session"])
    return out[["symbol", "session", "event_timestamp", *GARCH_COLUMNS]]


def _view_tables(bars: pd.DataFrame, vix: pd.Series) -> dict[fs.ViewName, pd.DataFrame]:
    """Offline tables of the four views from canonical bars and VIX closes (close analysis ->
    light training -> data processing, as in :mod:`pipelines.stages`)."""
    from pipelines.features import build_windows, compute_features
    from pipelines.rates import rates_for
    from pipelines.stages import option_rows

    features = compute_features(bars, vix=vix)
    garch = _garch_table(features)
    windows = build_windows(features, garch, LOOKBACK, WINDOW_COLUMNS)
    sessions = sorted({t.date() for t in garch["session"]})
    options = option_rows(garch, rates_for(NO_CURVES, sessions))
    return {"market_features": features, "garch_features": garch, "lstm_window": windows,
            "option_features": options}


def _write_store(home: Path, tables: Mapping[fs.ViewName, pd.DataFrame]) -> Settings:
    settings = Settings(home=home, universe=(*SYMBOLS, NEW_SYMBOL))
    for view, table in tables.items():
        fs.write_offline_table(settings, view, table)
    fs.apply_repo(settings)
    return settings


# ----------------------------------------------------------------------------- perturbations
@dataclass(frozen=True)
class Perturbation:
    """How the inputs after session ``SESSIONS[t_index]`` are changed."""

    t_index: int
    seed: int
    #: Probability of removing each row after ``t`` (the last session's rows are kept: the GARCH
    #: stage only fits symbols that have a bar on the session it runs for).
    drop: float
    #: Append real bars of the sessions after the original data (``EXTRA_SESSIONS``).
    extend: bool
    #: Insert a symbol that has bars after ``t`` only (``NEW_SYMBOL``).
    new_symbol: bool

    @property
    def t(self) -> date:
        return SESSIONS[self.t_index]

    def apply(self, bars: pd.DataFrame, vix: pd.Series) -> tuple[pd.DataFrame, pd.Series]:
        """``bars`` and ``vix`` with every value after ``t`` multiplied by a random factor, and
        bar rows after ``t`` removed or inserted; values up to ``t`` are left as they are."""
        from pipelines.sources import ReplaySource

        rng = np.random.default_rng(self.seed)
        t = pd.Timestamp(self.t)
        extra = []
        if self.extend:
            extra.append(ReplaySource(SYMBOLS).bars(list(EXTRA_SESSIONS)))
        if self.new_symbol:
            after = [d for d in (*SESSIONS, *(EXTRA_SESSIONS if self.extend else ())) if d > self.t]
            extra.append(ReplaySource((NEW_SYMBOL,)).bars(after))
        out = pd.concat([bars, *extra], ignore_index=True)
        late = (out["session"] > t).to_numpy()
        last = (out["session"] == out["session"].max()).to_numpy()
        out = out[~(late & ~last & (rng.random(len(out)) < self.drop))].reset_index(drop=True)
        late = (out["session"] > t).to_numpy()
        for col in (*BAR_PRICE_COLUMNS, "volume"):
            factor = np.where(late, np.exp(rng.normal(0.0, 0.05, size=len(out))), 1.0)
            out[col] = out[col].astype("float64") * factor
        late_vix = np.asarray(vix.index > t)
        vix_factor = np.where(late_vix, np.exp(rng.normal(0.0, 0.05, size=len(vix))), 1.0)
        return (
            out.sort_values(["session", "symbol"], kind="stable").reset_index(drop=True),
            vix * vix_factor,
        )


@st.composite
def perturbations(draw: st.DrawFn) -> Perturbation:
    return Perturbation(
        t_index=draw(st.integers(T_FIRST, T_LAST)),
        seed=draw(st.integers(0, 2**32 - 1)),
        drop=draw(st.sampled_from([0.0, 0.1, 0.3])),
        extend=draw(st.booleans()),
        # Always: the new symbol has no row at or before t, so an entity row of it at the close
        # of t is where a join that reads forward (or "nearest") would pick up a row after t.
        new_symbol=True,
    )


# ------------------------------------------------------------------------------- entity rows
def _entity_rows(p: Perturbation) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Entity rows at or before the close of ``t`` (closes, instants between closes, the close
    of ``t`` itself and one second before it), and entity rows at the closes after ``t``."""
    rng = np.random.default_rng(p.seed + 1)
    before = list(SESSIONS[: p.t_index + 1])
    picked = [before[0], *rng.choice(before, size=40, replace=False).tolist()]
    close_t = session_close(p.t)
    rows: list[tuple[str, pd.Timestamp]] = []
    for symbol in (*SYMBOLS, NEW_SYMBOL):
        rows += [(symbol, close_t), (symbol, close_t - pd.Timedelta(seconds=1))]
        for d in picked:
            back = pd.Timedelta(seconds=int(rng.integers(0, 3 * 86_400)))
            rows.append((symbol, session_close(d) - back * int(rng.integers(0, 2))))
    early = pd.DataFrame(rows, columns=["symbol", "event_timestamp"])
    after = [d for d in SESSIONS if d > p.t]
    late = pd.DataFrame(
        [(symbol, session_close(d)) for symbol in SYMBOLS for d in after],
        columns=["symbol", "event_timestamp"],
    )
    return early, late


def _refs(view: str) -> list[str]:
    return [f"{view}:{c}" for c in fs.VIEW_COLUMNS[view]]


ALL_REFS = [ref for view in VIEWS for ref in _refs(view)]


def _part(frame: pd.DataFrame, view: str, part: str) -> pd.DataFrame:
    """The rows of one part of the entity frame and the columns of one view, comparable:
    ``seq`` arrays as tuples (arrays do not compare in ``assert_frame_equal``) and integer
    features ``int64``, or ``Int64`` where this part has nulls (the dtype of the whole answer
    depends on the other part's rows too)."""
    out = frame.loc[frame["part"] == part, ["symbol", "event_timestamp", *fs.VIEW_COLUMNS[view]]]
    out = out.reset_index(drop=True)
    if "seq" in out.columns:
        out["seq"] = [
            tuple(np.asarray(v, dtype="float64").tolist())
            if isinstance(v, list | np.ndarray)
            else None
            for v in out["seq"]
        ]
    if "asof" in out.columns:
        out["asof"] = out["asof"].astype("Int64" if out["asof"].isna().any() else "int64")
    return out


# ----------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def env_restored() -> Iterator[None]:
    with restored_environ(ENV_KEYS):
        yield


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    """Real daily bars of ``SYMBOLS`` over ``SESSIONS``."""
    from pipelines.sources import ReplaySource

    return ReplaySource(SYMBOLS).bars(list(SESSIONS))


@pytest.fixture(scope="module")
def vix() -> pd.Series:
    """Real VIX closes, the other input of the market features."""
    from pipelines.features import load_vix

    return load_vix()


@pytest.fixture(scope="module")
def original(
    env_restored: None,
    bars: pd.DataFrame,
    vix: pd.Series,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    """Offline store of the unperturbed inputs."""
    return _write_store(tmp_path_factory.mktemp("original"), _view_tables(bars, vix))


# -------------------------------------------------------------------------------------- tests
def test_perturbation_changes_only_rows_after_t(bars: pd.DataFrame, vix: pd.Series) -> None:
    p = Perturbation(t_index=T_FIRST, seed=3, drop=0.3, extend=True, new_symbol=True)
    changed, changed_vix = p.apply(bars, vix)
    t = pd.Timestamp(p.t)
    pd.testing.assert_series_equal(changed_vix[changed_vix.index <= t], vix[vix.index <= t])
    assert (changed_vix[changed_vix.index > t] != vix[vix.index > t]).all()
    head = changed[changed["session"] <= t].reset_index(drop=True)
    pd.testing.assert_frame_equal(head, bars[bars["session"] <= t].reset_index(drop=True))
    tail = changed[changed["session"] > t]
    assert NEW_SYMBOL in set(tail["symbol"]) and tail["session"].max() > bars["session"].max()
    merged = bars[bars["session"] > t].merge(tail, on=["symbol", "session"], suffixes=("", "_p"))
    assert len(merged) < len(bars[bars["session"] > t])  # rows removed
    assert (merged["close"] != merged["close_p"]).all()  # every remaining value changed


@settings(
    max_examples=5,
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=(HealthCheck.too_slow,),
)
@given(p=perturbations())
def test_no_feature_at_or_before_t_changes(
    original: Settings, bars: pd.DataFrame, vix: pd.Series, p: Perturbation
) -> None:
    early, late = _entity_rows(p)
    entity = pd.concat([early.assign(part="early"), late.assign(part="late")], ignore_index=True)
    with tempfile.TemporaryDirectory(prefix="afterbell-pit-") as tmp:
        perturbed = _write_store(Path(tmp), _view_tables(*p.apply(bars, vix)))
        for engine in ("asof", "feast"):
            a, b = (
                fs.historical_features(store, entity, ALL_REFS, engine=engine)  # type: ignore[arg-type]
                for store in (original, perturbed)
            )
            for view in VIEWS:
                a_early, b_early = (_part(f, view, "early") for f in (a, b))
                pd.testing.assert_frame_equal(
                    a_early, b_early, obj=f"{engine} {view} at or before {p.t}"
                )
                assert a_early[list(fs.VIEW_COLUMNS[view])].notna().any().any(), (engine, view)
                a_late, b_late = (_part(f, view, "late") for f in (a, b))
                assert not a_late.equals(b_late), (
                    f"{engine} {view}: the change after {p.t} is unseen"
                )


def test_a_one_session_look_ahead_is_caught(
    env_restored: None, bars: pd.DataFrame, vix: pd.Series
) -> None:
    """The property detects a feature that peeks one session ahead.

    Both tables get the same bug (``ret_1`` of session ``s`` holds the return of ``s + 1``): the
    entity row at the close of ``t`` then reads a value built from the perturbed bars of ``t + 1``.
    """

    def peeking(tables: dict[fs.ViewName, pd.DataFrame]) -> dict[fs.ViewName, pd.DataFrame]:
        market = tables["market_features"].sort_values(["symbol", "session"])
        market["ret_1"] = market.groupby("symbol")["ret_1"].shift(-1)
        return {**tables, "market_features": market}

    p = Perturbation(t_index=T_FIRST + 50, seed=5, drop=0.0, extend=False, new_symbol=False)
    early, _ = _entity_rows(p)
    refs = _refs("market_features")
    with tempfile.TemporaryDirectory(prefix="afterbell-pit-") as tmp:
        left = _write_store(Path(tmp) / "a", peeking(_view_tables(bars, vix)))
        right = _write_store(Path(tmp) / "b", peeking(_view_tables(*p.apply(bars, vix))))
        for engine in ("asof", "feast"):
            a = fs.historical_features(left, early, refs, engine=engine)  # type: ignore[arg-type]
            b = fs.historical_features(right, early, refs, engine=engine)  # type: ignore[arg-type]
            at_t = a["event_timestamp"] == session_close(p.t)
            assert not a.loc[at_t, "ret_1"].equals(b.loc[at_t, "ret_1"]), engine
            pd.testing.assert_frame_equal(a[~at_t], b[~at_t])  # only the close of t peeks
