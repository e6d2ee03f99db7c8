"""Bar sources: the packaged replay data, bar files, drop folders and S3 (in-process moto)."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipelines import calendar
from pipelines.schema import BAR_COLUMNS
from pipelines.sources import (
    BarSource,
    DropFolderSource,
    FileSource,
    ReplaySource,
    S3Config,
    S3Source,
    SourceError,
    fetch_raw,
    load_replay_panel,
    read_bar_files,
    replay_listings,
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


def test_replay_listings_are_the_first_and_last_sessions_with_data() -> None:
    got = replay_listings(["spx", "AAPL", "NDX", "spx"])
    assert list(got) == ["SPX", "AAPL", "NDX"]
    # arch's indices: 1999-2018; skfolio's stocks: 1990 to 2022-12-28
    assert got["SPX"] == (date(1999, 1, 4), date(2018, 12, 31))
    assert got["NDX"] == (date(1999, 1, 4), date(2018, 12, 31))
    assert got["AAPL"] == (date(1990, 1, 2), date(2022, 12, 28))
    src = ReplaySource(["SPX", "AAPL"])
    # the sessions just outside each range have no bar of the symbol
    outside = {"SPX": [date(1998, 12, 31), date(2019, 1, 2)], "AAPL": [date(2022, 12, 29)]}
    for symbol, days in outside.items():
        first, last = got[symbol]
        assert (src.bars([first, last])["symbol"] == symbol).sum() == 2
        assert not (src.bars(days)["symbol"] == symbol).any()
    with pytest.raises(ValueError, match="FOO"):
        replay_listings(["AAPL", "FOO"])


# --------------------------------------------------------------------------------- raw input
D = date(2018, 12, 31)
D_PREV = date(2018, 12, 28)


def _csv(bars: pd.DataFrame) -> bytes:
    out = bars.assign(session=bars["session"].dt.strftime("%Y-%m-%d"))
    return out.to_csv(index=False).encode()


@pytest.fixture(scope="module")
def two_days() -> pd.DataFrame:
    return ReplaySource(["AAPL", "MSFT", "SPX"]).bars([D_PREV, D])


def _day(bars: pd.DataFrame, d: date) -> pd.DataFrame:
    return bars[bars["session"] == pd.Timestamp(d)].reset_index(drop=True)


def test_s3_config_from_env() -> None:
    assert S3Config.from_env({}) == S3Config(None, None, "", "us-east-1")
    cfg = S3Config.from_env(
        {
            "AFTERBELL_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
            "AFTERBELL_S3_BUCKET": "bars",
            "AFTERBELL_S3_PREFIX": "/vendor/daily/",
            "AWS_DEFAULT_REGION": "eu-west-1",
        }
    )
    assert cfg == S3Config("http://127.0.0.1:9000", "bars", "vendor/daily", "eu-west-1")


def test_fetch_raw_local_file_is_byte_identical(tmp_path: Path, two_days: pd.DataFrame) -> None:
    src = tmp_path / "in" / "bars.csv.gz"
    src.parent.mkdir()
    src.write_bytes(gzip.compress(_csv(_day(two_days, D)), mtime=0))
    got = fetch_raw(src, D, tmp_path / "out")
    assert got == [tmp_path / "out" / "bars.csv.gz"]
    assert got[0].read_bytes() == src.read_bytes()
    pd.testing.assert_frame_equal(read_bar_files(got, session=D), _day(two_days, D))


def test_fetch_raw_drop_folder_prefers_the_session_folder(
    tmp_path: Path, two_days: pd.DataFrame
) -> None:
    drop = tmp_path / "drop"
    sub = drop / "session=2018-12-31"
    sub.mkdir(parents=True)
    today = _day(two_days, D)
    (sub / "b.csv").write_bytes(_csv(today[today["symbol"] != "SPX"]))
    today[today["symbol"] == "SPX"].to_parquet(sub / "a.parquet")
    (sub / "notes.txt").write_text("not bars")
    (sub / ".c.csv").write_text("an upload in progress")
    (drop / "flat.csv").write_bytes(_csv(_day(two_days, D_PREV)))

    got = fetch_raw(str(drop), D, tmp_path / "out")
    assert [p.name for p in got] == ["a.parquet", "b.csv"]
    assert all(p.read_bytes() == (sub / p.name).read_bytes() for p in got)
    pd.testing.assert_frame_equal(read_bar_files(got, session=D), today)
    # no session folder for D_PREV: the files directly in the drop folder
    prev = fetch_raw(drop, D_PREV, tmp_path / "prev")
    assert [p.name for p in prev] == ["flat.csv"]

    source = DropFolderSource(drop)
    assert isinstance(source, BarSource)
    both = source.bars([D, D_PREV, date(2018, 12, 27)])
    _check_canonical(both)
    pd.testing.assert_frame_equal(both, two_days)


def test_fetch_raw_errors_name_the_spec(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found") as err:
        fetch_raw(tmp_path / "absent.csv", D, tmp_path / "out")
    assert "absent.csv" in str(err.value)
    empty = tmp_path / "empty"
    (empty / "session=2018-12-31").mkdir(parents=True)
    (empty / "readme.txt").write_text("x")
    with pytest.raises(SourceError, match="no bar file") as err:
        fetch_raw(empty, D, tmp_path / "out")
    assert str(empty) in str(err.value) and "2018-12-31" in str(err.value)
    with pytest.raises(SourceError, match="AFTERBELL_S3_BUCKET"):
        fetch_raw("s3:///daily/", D, tmp_path / "out", S3Config())
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_read_bar_files_order_and_empty(tmp_path: Path, two_days: pd.DataFrame) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.parquet"
    a.write_bytes(_csv(two_days[two_days["symbol"] == "MSFT"]))
    two_days[two_days["symbol"] != "MSFT"].to_parquet(b)
    pd.testing.assert_frame_equal(read_bar_files([a, b]), two_days)
    pd.testing.assert_frame_equal(read_bar_files([b, a]), two_days)
    empty = read_bar_files([])
    _check_canonical(empty)
    assert empty.empty


def test_read_bar_files_rejects_rows_of_another_session(
    tmp_path: Path, two_days: pd.DataFrame
) -> None:
    path = tmp_path / "mixed.csv"
    path.write_bytes(_csv(two_days.sort_values(["session", "symbol"], ascending=[False, True])))
    assert len(read_bar_files([path], session=None)) == 6
    with pytest.raises(SourceError) as err:
        read_bar_files([path], session=D)
    msg = str(err.value)
    # rows 1-3 are 2018-12-31, row 4 (line 5) the first of 2018-12-28
    assert str(path) in msg and "row 4 (line 5)" in msg and "2018-12-28" in msg, msg


@pytest.fixture
def mock_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An in-process moto S3 with dummy credentials (no endpoint, no network)."""
    from moto import mock_aws

    for name in ("AWS_PROFILE", "AFTERBELL_S3_ENDPOINT_URL", "AFTERBELL_S3_BUCKET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        import boto3

        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="vendor")
        yield client


def test_s3_source_reads_session_prefixes(mock_s3: Any, two_days: pd.DataFrame) -> None:
    put = mock_s3.put_object
    put(Bucket="vendor", Key="daily/session=2018-12-31/bars.csv", Body=_csv(_day(two_days, D)))
    put(Bucket="vendor", Key="daily/session=2018-12-31/skip.json", Body=b"{}")
    put(Bucket="vendor", Key="daily/session=2018-12-28/bars.csv", Body=_csv(two_days[:3]))
    source = S3Source(S3Config(bucket="vendor", prefix="daily"))
    assert isinstance(source, BarSource) and source.spec == "s3://vendor/daily/"
    pd.testing.assert_frame_equal(source.bars([D, D_PREV, date(2018, 12, 27)]), two_days)
    with pytest.raises(SourceError, match="no such bucket") as err:
        S3Source(S3Config(), uri="s3://absent-bucket/daily/").bars([D])
    assert "s3://absent-bucket/daily/" in str(err.value)
    with pytest.raises(ValueError, match="bucket"):
        S3Source(S3Config())


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("AccessDenied", 403, "access denied to s3://vendor/daily/"),
        ("InvalidAccessKeyId", 403, "check the AWS credentials"),
        ("NoSuchBucket", 404, "no such bucket"),
        ("SlowDown", 503, "S3 error SlowDown"),
    ],
)
def test_s3_failures_become_source_errors(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    code: str,
    status: int,
    expected: str,
) -> None:
    from botocore.exceptions import ClientError

    from pipelines import sources

    def refuse(self: Any, spec: str) -> Any:
        class Client:
            def get_paginator(self, name: str) -> Any:
                raise ClientError(
                    {"Error": {"Code": code, "Message": "nope"},
                     "ResponseMetadata": {"HTTPStatusCode": status}},
                    "ListObjectsV2",
                )  # fmt: skip

        return Client()

    monkeypatch.setattr(sources._Fetcher, "client", refuse)
    with pytest.raises(SourceError) as err:
        fetch_raw("s3://vendor/daily/", D, tmp_path, S3Config())
    assert str(err.value).startswith("s3://vendor/daily/: ") and expected in str(err.value)
