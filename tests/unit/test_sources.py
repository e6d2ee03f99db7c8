"""Bar sources: the packaged replay data and bar files."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines import calendar
from pipelines.schema import BAR_COLUMNS
from pipelines.sources import (
    BarSource,
    FileSource,
    ReplaySource,
    SourceError,
    load_replay_panel,
)

SESSIONS = calendar.sessions_between("2017-10-02", "2018-12-31")  # ~315 sessions


def _check_canonical(df: pd.DataFrame) -> None:
    assert tuple(df.columns) == BAR_COLUMNS
    assert df["symbol"].dtype == object
    assert df["session"].dtype == "datetime64[ns]"
    assert (df["session"] == df["session"].dt.normalize()).all()
    for col in BAR_COLUMNS[2:]:
        assert df[col].dtype == "float64", col
    assert isinstance(df.index, pd.RangeIndex) and df.index.start == 0
    key = list(zip(df["session"], df["symbol"], strict=True))
    assert key == sorted(key)


def test_replay_shapes_dtypes_and_ranges() -> None:
    src = ReplaySource(["AAPL", "SPX", "NDX"])
    assert isinstance(src, BarSource)
    bars = src.bars(SESSIONS)
    _check_canonical(bars)
    assert set(bars["symbol"]) == {"AAPL", "SPX", "NDX"}
    assert bars.groupby("symbol").size().eq(len(SESSIONS)).all()
    assert not bars.duplicated(["symbol", "session"]).any()

    aapl = bars[bars["symbol"] == "AAPL"]
    assert aapl[["open", "high", "low", "volume"]].isna().all().all()
    assert (aapl["close"] == aapl["adj_close"]).all()
    assert aapl["close"].between(20, 60).all()  # split-adjusted AAPL in 2017-2018

    spx = bars[bars["symbol"] == "SPX"]
    assert spx[list(BAR_COLUMNS[2:])].notna().all().all()
    assert spx["close"].between(2_300, 3_000).all()
    assert (spx["high"] >= spx["low"]).all() and (spx["volume"] > 0).all()
    last = spx[spx["session"] == pd.Timestamp("2018-12-31")]
    assert last["close"].iloc[0] == pytest.approx(2506.85, abs=0.01)


def test_replay_skips_non_sessions_and_out_of_range_symbols() -> None:
    src = ReplaySource(["AAPL", "NDX"])
    days = [date(2018, 12, 25), date(2018, 12, 29), date(2018, 12, 31), date(2020, 3, 2)]
    bars = src.bars(days)
    got = set(zip(bars["symbol"], bars["session"].dt.date, strict=True))
    # Christmas and a Saturday are no sessions; NDX data ends in 2018, AAPL's in 2022
    assert got == {("AAPL", date(2018, 12, 31)), ("NDX", date(2018, 12, 31)),
                   ("AAPL", date(2020, 3, 2))}  # fmt: skip
    assert src.bars([]).empty and tuple(src.bars([]).columns) == BAR_COLUMNS


def test_replay_unknown_symbol() -> None:
    with pytest.raises(ValueError, match="FOO"):
        ReplaySource(["AAPL", "FOO"])


def test_replay_panel_matches_package_loaders() -> None:
    import arch.data.nasdaq
    import arch.data.sp500
    from skfolio.datasets import load_sp500_dataset

    panel = load_replay_panel()
    for symbol, loader in (("SPX", arch.data.sp500.load), ("NDX", arch.data.nasdaq.load)):
        ref = loader()
        got = panel[panel["symbol"] == symbol].set_index("session")
        assert len(got) == len(ref)
        np.testing.assert_allclose(got["close"], ref["Close"])
        np.testing.assert_allclose(got["adj_close"], ref["Adj Close"])
        np.testing.assert_allclose(got["volume"], ref["Volume"].astype(float))
    stocks = load_sp500_dataset()
    got = panel[panel["symbol"] == "MSFT"].set_index("session")["close"]
    pd.testing.assert_series_equal(
        got, stocks["MSFT"].rename("close").rename_axis("session"), check_freq=False
    )


def test_replay_all_symbols_fast() -> None:
    import time

    sessions = calendar.sessions_between("2008-08-01", "2018-12-31")
    load_replay_panel()
    t0 = time.perf_counter()
    bars = ReplaySource().bars(sessions)
    assert time.perf_counter() - t0 < 2.0
    assert bars["symbol"].nunique() == 22
    assert len(bars) == 22 * len(sessions)


# --------------------------------------------------------------------------------- files
def test_file_source_csv_aliases_and_missing_optionals(tmp_path: Path) -> None:
    path = tmp_path / "vendor.csv"
    path.write_text(
        "Ticker,Date,Close,Adj Close,HIGH\n"
        "SPX,2018-12-31,2506.85,2506.85,2509.24\n"
        "AAPL,2018-12-31,39.44,37.95,\n"
        "AAPL,2018-12-28,39.06,37.59,39.63\n"
    )
    bars = FileSource(path).bars([date(2018, 12, 31)])
    _check_canonical(bars)
    assert list(bars["symbol"]) == ["AAPL", "SPX"]
    assert bars["open"].isna().all() and bars["volume"].isna().all()
    assert bars["adj_close"].tolist() == [37.95, 2506.85]
    assert np.isnan(bars["high"].iloc[0]) and bars["high"].iloc[1] == 2509.24
    assert len(FileSource(path).bars(SESSIONS)) == 3


def test_file_source_parquet_roundtrip(tmp_path: Path) -> None:
    bars = ReplaySource(["SPX", "MSFT"]).bars(SESSIONS[-5:])
    path = tmp_path / "bars.parquet"
    bars.rename(columns={"session": "Session", "adj_close": "Adj_Close"}).to_parquet(path)
    pd.testing.assert_frame_equal(FileSource(path).bars(SESSIONS[-5:]), bars)
    assert len(FileSource(path).bars(SESSIONS[-2:])) == 4


def test_file_source_missing_required_columns(tmp_path: Path) -> None:
    path = tmp_path / "no_close.csv"
    path.write_text("symbol,date,open\nSPX,2018-12-31,1.0\n")
    with pytest.raises(SourceError) as err:
        FileSource(path).bars([date(2018, 12, 31)])
    assert str(path) in str(err.value) and "close" in str(err.value)


@pytest.mark.parametrize(
    ("body", "column", "row"),
    [
        ("SPX,2018-12-31,abc\nSPX,2018-12-28,1.0\n", "close", 1),
        ("SPX,2018-12-31,1.0\nSPX,31/31/2018,1.0\n", "session", 2),
    ],
)
def test_file_source_unparsable_values(tmp_path: Path, body: str, column: str, row: int) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("symbol,session,close\n" + body)
    with pytest.raises(SourceError) as err:
        FileSource(path).read()
    msg = str(err.value)
    assert str(path) in msg and f"row {row}" in msg and repr(column) in msg


def test_file_source_missing_file_and_bad_type(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        FileSource(tmp_path / "absent.csv").bars([date(2018, 12, 31)])
    other = tmp_path / "bars.xlsx"
    other.write_text("x")
    with pytest.raises(SourceError, match="unsupported"):
        FileSource(other).bars([date(2018, 12, 31)])
