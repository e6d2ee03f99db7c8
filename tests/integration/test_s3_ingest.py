"""Ingesting from S3 (a local moto server) gives the same lake as ingesting the same local file.

One moto ``ThreadedMotoServer`` on 127.0.0.1 serves the module; boto3 reaches it through
``AFTERBELL_S3_ENDPOINT_URL`` with dummy credentials, exactly as the CLI and the DAG would.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipelines import lake, stages
from pipelines.quality import DataQualityError
from pipelines.settings import Settings, TrainConfig
from pipelines.sources import (
    ReplaySource,
    S3Config,
    S3Source,
    SourceError,
    fetch_raw,
    read_bar_files,
)
from tests.conftest import SESSION, SMALL_UNIVERSE

BUCKET = "afterbell-vendor"
DAY = SESSION.isoformat()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _settings(home: Path) -> Settings:
    """The ``small_settings`` of tests/conftest.py (a module-scoped copy)."""
    return Settings(
        home=home,
        universe=SMALL_UNIVERSE,
        history_years=3,
        holdout_sessions=60,
        garch_refit_every=126,
        default_session=SESSION,
        train=TrainConfig(max_epochs=2, hidden=8, lookback=10, batch_size=128),
    )


def _csv(bars: pd.DataFrame) -> bytes:
    out = bars.assign(session=bars["session"].dt.strftime("%Y-%m-%d"))
    return out.to_csv(index=False).encode()


def _tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@dataclass(frozen=True)
class Stack:
    endpoint: str
    client: Any
    config: S3Config


@pytest.fixture(scope="module")
def s3() -> Iterator[Stack]:
    """A moto S3 server, the environment pointing at it, and a bucket."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AFTERBELL_S3_BUCKET"):
                mp.delenv(name, raising=False)
            mp.setenv("AWS_ACCESS_KEY_ID", "testing")
            mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
            mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
            mp.setenv("AFTERBELL_S3_ENDPOINT_URL", endpoint)
            client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            client.create_bucket(Bucket=BUCKET)
            yield Stack(endpoint, client, S3Config.from_env())
    finally:
        server.stop()


@dataclass(frozen=True)
class Ingested:
    body: bytes  # the vendor file, as uploaded and as dropped locally
    local: Settings
    remote: Settings
    local_summary: dict[str, Any]
    remote_summary: dict[str, Any]


@pytest.fixture(scope="module")
def ingested(s3: Stack, tmp_path_factory: pytest.TempPathFactory) -> Ingested:
    """The same vendor file ingested from a local file (home A) and from S3 (home B)."""
    tmp = tmp_path_factory.mktemp("s3_ingest")
    bars = ReplaySource(SMALL_UNIVERSE).bars([SESSION])
    assert set(bars["symbol"]) == set(SMALL_UNIVERSE)
    body = _csv(bars)
    assert b"2673.61" in body  # SPX: full OHLCV and adjusted close; the stocks: closes only
    local_file = tmp / "drop" / "bars.csv"
    local_file.parent.mkdir()
    local_file.write_bytes(body)
    s3.client.put_object(Bucket=BUCKET, Key=f"daily/session={DAY}/bars.csv", Body=body)

    local, remote = _settings(tmp / "a"), _settings(tmp / "b")
    local_summary = stages.ingest(DAY, str(local_file), local)
    remote_summary = stages.ingest(DAY, f"s3://{BUCKET}/daily/", remote)
    return Ingested(body, local, remote, local_summary, remote_summary)


def test_s3_and_local_file_give_the_same_partition_byte_for_byte(ingested: Ingested) -> None:
    a = lake.partition_path(ingested.local.lake_dir, "bars", SESSION).read_bytes()
    b = lake.partition_path(ingested.remote.lake_dir, "bars", SESSION).read_bytes()
    assert a == b
    day = lake.read_table(ingested.remote.lake_dir, "bars", start=SESSION, end=SESSION)
    assert sorted(day["symbol"]) == sorted(SMALL_UNIVERSE)
    for settings in (ingested.local, ingested.remote):  # raw input kept as received
        kept = lake.raw_files(settings.home, SESSION)
        assert [p.name for p in kept] == ["bars.csv"]
        assert kept[0].read_bytes() == ingested.body
    assert ingested.remote_summary["source"] == f"s3://{BUCKET}/daily/"
    assert ingested.remote_summary["raw_files"] == ["bars.csv"]
    assert ingested.local_summary["rows"] == ingested.remote_summary["rows"] == 3
    # the whole lake (history backfilled from the replay source) is the same
    assert _tree(ingested.local.lake_dir) == _tree(ingested.remote.lake_dir)


def test_local_drop_folder_with_session_folder_rewrites_identically(
    ingested: Ingested, tmp_path: Path
) -> None:
    drop = tmp_path / "drop"
    (drop / f"session={DAY}").mkdir(parents=True)
    (drop / f"session={DAY}" / "bars.csv").write_bytes(ingested.body)
    (drop / "other.csv").write_text("symbol,session,close\nAAPL,2017-12-28,1.0\n")  # not taken
    before = _tree(ingested.local.lake_dir)
    summary = stages.ingest(DAY, drop, ingested.local)
    assert summary["source"] == str(drop) and summary["raw_files"] == ["bars.csv"]
    assert _tree(ingested.local.lake_dir) == before  # a re-run leaves the lake byte-identical
    assert lake.raw_files(ingested.local.home, SESSION)[0].read_bytes() == ingested.body


def test_bad_file_from_s3_is_quarantined_and_the_lake_unchanged(
    s3: Stack, ingested: Ingested
) -> None:
    home = ingested.remote
    bad = ingested.body.replace(b"2692.120117,2673.610107", b"2600.0,2673.610107")  # high < low
    assert bad != ingested.body
    s3.client.put_object(Bucket=BUCKET, Key="bad/bars.csv", Body=bad)
    lake_before, raw_before = _tree(home.lake_dir), _tree(home.home / "raw")

    with pytest.raises(DataQualityError) as err:
        stages.ingest(DAY, f"s3://{BUCKET}/bad/", home)
    msg = str(err.value)
    assert "SPX" in msg and DAY in msg and "expect_" in msg and "quarantine" in msg, msg
    assert _tree(home.lake_dir) == lake_before
    assert _tree(home.home / "raw") == raw_before  # good raw input never replaced by bad
    kept = home.quarantine_dir / f"session={DAY}" / "bars.csv"
    assert str(kept) in msg and kept.read_bytes() == bad
    note = Path(f"{kept}.reason.txt").read_text()
    assert f"source: s3://{BUCKET}/bad/" in note and "expect_" in note

    # a row of another session: a source error naming the file and row, quarantined too
    wrong = ingested.body.replace(DAY.encode(), b"2017-12-28", 1)
    s3.client.put_object(Bucket=BUCKET, Key="wrong/session=2017-12-29/w.csv", Body=wrong)
    with pytest.raises(SourceError) as err:
        stages.ingest(DAY, f"s3://{BUCKET}/wrong/", home)
    msg = str(err.value)
    assert "w.csv: row 1 (line 2)" in msg and "2017-12-28" in msg and "quarantine" in msg, msg
    assert (home.quarantine_dir / f"session={DAY}" / "w.csv").read_bytes() == wrong
    assert _tree(home.lake_dir) == lake_before
    assert not list((home.home / "raw").glob(".*"))  # staging folders removed


def test_missing_key_and_bucket_name_what_is_missing(
    s3: Stack, ingested: Ingested, tmp_path: Path
) -> None:
    with pytest.raises(SourceError) as err:
        fetch_raw(f"s3://{BUCKET}/daily/nope.csv", SESSION, tmp_path / "a")
    assert f"s3://{BUCKET}/daily/nope.csv" in str(err.value) and "no such key" in str(err.value)
    with pytest.raises(SourceError, match="no such bucket") as err:
        fetch_raw("s3://no-such-bucket/daily/", SESSION, tmp_path / "b")
    assert "no-such-bucket" in str(err.value)
    with pytest.raises(SourceError, match="no bar file") as err:
        fetch_raw(f"s3://{BUCKET}/empty/", SESSION, tmp_path / "c")

    home = ingested.remote
    lake_before = _tree(home.lake_dir)
    quarantined = sorted(home.quarantine_dir.rglob("*")) if home.quarantine_dir.exists() else []
    with pytest.raises(SourceError, match=r"nope\.csv"):
        stages.ingest(DAY, f"s3://{BUCKET}/daily/nope.csv", home)
    assert _tree(home.lake_dir) == lake_before
    after = sorted(home.quarantine_dir.rglob("*")) if home.quarantine_dir.exists() else []
    assert after == quarantined  # nothing was received, nothing to quarantine


def test_unreachable_endpoint(s3: Stack, tmp_path: Path) -> None:
    down = S3Config(endpoint_url=f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(SourceError, match="cannot reach the S3 endpoint") as err:
        fetch_raw(f"s3://{BUCKET}/daily/", SESSION, tmp_path, down)
    assert f"s3://{BUCKET}/daily/" in str(err.value)
    assert "Traceback" not in str(err.value)


def test_default_bucket_prefix_and_s3_source(s3: Stack, ingested: Ingested, tmp_path: Path) -> None:
    s3.client.put_object(Bucket=BUCKET, Key="flat/bars.csv", Body=ingested.body)
    config = S3Config(endpoint_url=s3.endpoint, bucket=BUCKET, prefix="flat")
    got = fetch_raw("s3://", SESSION, tmp_path, config)  # empty bucket part: the config's
    assert [p.read_bytes() for p in got] == [ingested.body]
    expected = read_bar_files(got)
    pd.testing.assert_frame_equal(S3Source(config).bars([SESSION, date(2017, 12, 28)]), expected)
    pd.testing.assert_frame_equal(
        S3Source(s3.config, uri=f"s3://{BUCKET}/daily/").bars([SESSION]), expected
    )
