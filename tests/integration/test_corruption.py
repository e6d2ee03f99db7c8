"""The corruption corpus: every kind of bad input is rejected with a clear message, kept in the
quarantine with its reason, and leaves the lake, the online store and the champion untouched.

Each case starts from the real bars of the next session (2018-01-02) for the small universe,
written as a vendor CSV (``tests/conftest.py``: AAPL and MSFT close only, SPX with OHLCV), breaks
one thing, and ingests it into a copy of the home of a finished small cycle (champion serving,
online store materialised).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import SESSION, SMALL_UNIVERSE

pytestmark = pytest.mark.slow

NEXT = date(2018, 1, 2)
DAY = NEXT.isoformat()
COLUMNS = ["symbol", "session", "open", "high", "low", "close", "adj_close", "volume"]


@dataclass(frozen=True)
class Case:
    """One kind of corrupted input: how to write it and what the error must say."""

    name: str
    write: Callable[[pd.DataFrame, pd.DataFrame, Path], Path]
    expect: tuple[str, ...]


def _csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False, columns=[c for c in COLUMNS if c in frame.columns],
                 date_format="%Y-%m-%d")
    return path


def _edit(fn: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[..., Path]:
    def write(good: pd.DataFrame, _prev: pd.DataFrame, folder: Path) -> Path:
        return _csv(fn(good.copy()), folder / "bars.csv")

    return write


def _set(symbol: str, **values: float | str) -> Callable[..., Path]:
    def fn(df: pd.DataFrame) -> pd.DataFrame:
        for col, value in values.items():
            if isinstance(value, str):
                df[col] = df[col].astype(object)
            df.loc[df["symbol"] == symbol, col] = value
        return df

    return _edit(fn)


def _text(body: str, name: str = "bars.csv") -> Callable[..., Path]:
    def write(good: pd.DataFrame, _prev: pd.DataFrame, folder: Path) -> Path:
        text = good.to_csv(index=False, columns=COLUMNS, date_format="%Y-%m-%d")
        path = folder / name
        path.write_text(body.format(good=text), encoding="utf-8")
        return path

    return write


def _stale(good: pd.DataFrame, prev: pd.DataFrame, folder: Path) -> Path:
    """SPX repeats the previous session's bar field for field (a feed that stopped updating)."""
    df = good.copy()
    last = prev[prev["symbol"] == "SPX"].iloc[-1]
    for col in COLUMNS[2:]:
        df.loc[df["symbol"] == "SPX", col] = last[col]
    return _csv(df, folder / "bars.csv")


def _unadjusted_split(good: pd.DataFrame, prev: pd.DataFrame, folder: Path) -> Path:
    """AAPL 2:1 split not adjusted: close and adjusted close both halve overnight."""
    df = good.copy()
    last = prev[prev["symbol"] == "AAPL"].iloc[-1]
    for col in ("close", "adj_close"):
        df.loc[df["symbol"] == "AAPL", col] = round(float(last[col]) / 2.0, 3)
    return _csv(df, folder / "bars.csv")


def _truncated_parquet(good: pd.DataFrame, _prev: pd.DataFrame, folder: Path) -> Path:
    path = folder / "bars.parquet"
    good.to_parquet(path, index=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


CASES: tuple[Case, ...] = (
    Case("missing close column", _edit(lambda d: d.drop(columns=["close"])),
         ("close", "missing")),
    Case("unparsable price", _set("MSFT", close="12,5x"), ("close", "12,5x")),
    Case("unparsable date", _set("AAPL", session="2018-13-45"), ("session", "2018-13-45")),
    Case("negative price", _set("MSFT", close=-84.0, adj_close=-84.0),
         ("close > 0", "MSFT", DAY)),
    Case("zero price", _set("SPX", low=0.0), ("low > 0", "SPX", DAY)),
    Case("infinite price", _set("AAPL", close="inf", adj_close="inf"), ("AAPL", DAY, "inf")),
    Case("null close", _set("MSFT", close=np.nan), ("close", "MSFT", DAY)),
    Case("high below low", _set("SPX", high=2600.0, low=2700.0), ("high >= low", "SPX", DAY)),
    Case("close above high", _set("SPX", close=2800.0, adj_close=2800.0),
         ("high >= close", "SPX", DAY)),
    Case("negative volume", _set("SPX", volume=-5.0), ("volume >= 0", "SPX", DAY)),
    Case("duplicate bar", _edit(lambda d: pd.concat([d, d[d["symbol"] == "AAPL"]])),
         ("AAPL", DAY, "duplicate")),
    Case("missing symbol", _edit(lambda d: d[d["symbol"] != "MSFT"]), ("MSFT", DAY)),
    Case("unknown symbol", _edit(lambda d: pd.concat(
        [d, d[d["symbol"] == "AAPL"].assign(symbol="ZZZZ")])), ("ZZZZ", DAY)),
    Case("bar on a holiday", _edit(lambda d: pd.concat(
        [d, d[d["symbol"] == "AAPL"].assign(session="2018-01-01")])), ("2018-01-01",)),
    Case("stale repeated bar", _stale, ("SPX", DAY)),
    Case("unadjusted split", _unadjusted_split, ("AAPL", DAY, "split")),
    Case("header only", _text("symbol,session,open,high,low,close,adj_close,volume\n"),
         ("no bars", DAY)),
    Case("truncated parquet", _truncated_parquet, ("bars.parquet",)),
    Case("not a bars file", _text('{{"symbol": "AAPL"}}\n', name="bars.json"), ("bars.json",)),
)


# ----------------------------------------------------------------------------------- fixtures
def _digest(root: Path) -> dict[str, str]:
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def home(cycle: tuple[dict[str, str], Path, str],
         tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A private copy of the finished cycle's home (ingests below must all be rejected)."""
    env, original, _ = cycle
    copy = tmp_path_factory.mktemp("corpus") / "afterbell"
    shutil.copytree(original, copy)
    afterbell_env = {k: v for k, v in env.items() if k.startswith("AFTERBELL_")}
    return copy, {**afterbell_env, "AFTERBELL_HOME": str(copy)}


@pytest.fixture(scope="module")
def bars() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The real bars of NEXT (good input) and of SESSION (the session before)."""
    from pipelines.sources import ReplaySource

    source = ReplaySource(SMALL_UNIVERSE)
    return source.bars([NEXT]), source.bars([SESSION])


def _state(home: Path, env: dict[str, str]) -> dict[str, object]:
    from pipelines import registry
    from pipelines.settings import Settings

    settings = Settings.from_env(env)
    champion = registry.alias_version(settings, "champion")
    return {
        "lake": _digest(home / "lake"),
        "online": _digest(home / "feast"),
        "offline": _digest(home / "offline"),
        "champion": champion.version if champion else None,
    }


# -------------------------------------------------------------------------------------- tests
def test_the_uncorrupted_input_is_accepted(
    home: tuple[Path, dict[str, str]], bars: tuple[pd.DataFrame, pd.DataFrame], tmp_path: Path,
) -> None:
    """Control: the base file of the corpus passes, so each rejection below is its corruption."""
    from pipelines import stages
    from pipelines.settings import Settings

    src, env = home
    copy = tmp_path / "afterbell"
    shutil.copytree(src, copy)
    good = _csv(bars[0], tmp_path / "bars.csv")
    out = stages.ingest(DAY, source=str(good),
                        settings=Settings.from_env({**env, "AFTERBELL_HOME": str(copy)}))
    assert out["rows"] == len(SMALL_UNIVERSE)
    assert (copy / "lake" / "bars" / f"session={DAY}").is_dir()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corrupted_input_is_rejected_and_quarantined(
    case: Case, home: tuple[Path, dict[str, str]], bars: tuple[pd.DataFrame, pd.DataFrame],
    tmp_path: Path,
) -> None:
    from pipelines import stages
    from pipelines.settings import Settings

    root, env = home
    settings = Settings.from_env(env)
    bad = case.write(bars[0], bars[1], tmp_path)
    before = _state(root, env)

    with pytest.raises(Exception) as info:  # the type depends on the layer that rejects it
        stages.ingest(DAY, source=str(bad), settings=settings)
    message = str(info.value)
    for fragment in case.expect:
        assert fragment in message, f"{case.name}: {fragment!r} not in {message!r}"
    assert "quarantine" in message, message

    assert _state(root, env) == before, f"{case.name}: stored state changed"
    kept = [p for p in (root / "quarantine").rglob(f"{bad.stem}*{bad.suffix}")
            if p.read_bytes() == bad.read_bytes()]
    assert kept, f"{case.name}: input not in quarantine"
    reason = Path(f"{kept[-1]}.reason.txt").read_text()
    assert case.expect[0] in reason
