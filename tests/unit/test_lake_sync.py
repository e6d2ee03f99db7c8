"""The lake store (pipelines/lake_sync.py) against moto's S3 server on loopback."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from pipelines import lake, sources
from pipelines.lake_sync import (
    ENV_S3_ENDPOINT_URL,
    ENV_S3_REGION,
    MANIFEST_NAME,
    STATE_FOLDER,
    LakeStore,
    LakeStoreConfig,
    LakeSyncError,
    is_synced,
    parse_store_url,
    pull,
    push,
    synced,
)
from pipelines.settings import DEFAULT_PRODUCTION_LAKE_URL, REPO_ROOT, Settings
from tests.services import S3Endpoint, free_port, s3_server  # noqa: F401 (fixture)

#: Files a stage leaves in a home: synced ones, and ones the store never holds.
SYNCED = {
    "lake/bars/session=2017-12-29/part-0.parquet": b"PAR1 bars 29",
    "lake/bars/session=2017-12-28/part-0.parquet": b"PAR1 bars 28",
    "raw/session=2017-12-29/bars.csv": b"symbol,session,close\nSPX,2017-12-29,2673.61\n",
    "quarantine/session=2017-12-29/bad.csv": b"not,a,bar\n",
    "quarantine/session=2017-12-29/bad.csv.reason.txt": b"reason: bad\n",
    "offline/market_features.parquet": b"PAR1 offline",
    "runs/session=2017-12-29/ingest.json": b'{"rows": 3}\n',
    "reports/gx/index.html": b"<html></html>\n",
}
NOT_SYNCED = {
    "lake/bars/session=2017-12-27/.part-0.parquet.123.0a1b.tmp": b"half a file",
    "raw/.incoming.session=2017-12-29.99.ff.tmp/bars.csv": b"staging",
    "runs/.hidden.json": b"{}",
    "reports/gx/write.lock": b"",
    "offline/table.parquet.tmp": b"partial",
    "state/retrain_request.json": b"{}",
    "broker/audit.jsonl": b"{}\n",
    "KILL_SWITCH": b"halt",
    "lake.json": b"{}",
}


@pytest.fixture
def s3_env(s3_server: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> S3Endpoint:  # noqa: F811
    """The environment a stage process gets: the endpoint through AFTERBELL_S3_ENDPOINT_URL
    (not boto3's own AWS_ENDPOINT_URL_S3), credentials through boto3's chain."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                 "AFTERBELL_LAKE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AFTERBELL_S3_ENDPOINT_URL", s3_server.url)
    return s3_server


@pytest.fixture
def url(s3_env: S3Endpoint) -> str:
    """A fresh store URL (own prefix) in the module's bucket."""
    return f"s3://{s3_env.bucket}/t{uuid.uuid4().hex[:8]}/lake"


def _settings(home: Path, url: str) -> Settings:
    return Settings(home=home, lake_url=url)


def _write(home: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = home / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _tree(home: Path, *, synced_only: bool = True) -> dict[str, str]:
    out = {}
    for path in sorted(home.rglob("*")):
        rel = path.relative_to(home).as_posix()
        if rel.startswith(STATE_FOLDER + "/"):
            continue
        if path.is_file() and (not synced_only or is_synced(rel)):
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _keys(s3: S3Endpoint, url: str) -> set[str]:
    _, prefix = parse_store_url(url)
    return {k[len(prefix) + 1:] for k in s3.keys(prefix + "/")}


# --------------------------------------------------------------------------------- config
def test_store_url_and_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert parse_store_url("s3://afterbell-lake/lake") == ("afterbell-lake", "lake")
    assert parse_store_url("s3://b") == ("b", "")
    assert parse_store_url(" s3://b/a/b/ ") == ("b", "a/b")
    for bad in ("", "/var/lake", "https://host/b", "s3:///prefix"):
        with pytest.raises(ValueError, match="AFTERBELL_LAKE_URL"):
            parse_store_url(bad)
    env = {"AFTERBELL_HOME": str(tmp_path), "AFTERBELL_PROFILE": "production",
           "AFTERBELL_S3_ENDPOINT_URL": "http://user:s3cr3tpw@s3:9000"}
    cfg = LakeStoreConfig.from_settings(Settings.from_env(env), env)
    assert DEFAULT_PRODUCTION_LAKE_URL == "s3://afterbell-lake/lake"
    assert (cfg.bucket, cfg.prefix, cfg.endpoint_url) == ("afterbell-lake", "lake",
                                                          "http://user:s3cr3tpw@s3:9000")
    assert cfg.url == DEFAULT_PRODUCTION_LAKE_URL
    assert "s3cr3tpw" not in cfg.where and "s3://afterbell-lake/lake" in cfg.where
    assert cfg.key("lake/bars/x") == "lake/lake/bars/x"
    assert cfg.rel("lake/lake/bars/x") == "lake/bars/x"
    assert cfg.rel("lake/state/x") is None and cfg.rel("other/lake/bars/x") is None
    # the same variables as raw S3 inputs
    assert (ENV_S3_ENDPOINT_URL, ENV_S3_REGION) == (sources.ENV_S3_ENDPOINT_URL,
                                                    sources.ENV_S3_REGION)
    env["AFTERBELL_LAKE_URL"] = "s3://mine/p"
    assert LakeStoreConfig.from_settings(Settings.from_env(env), env).url == "s3://mine/p"
    with pytest.raises(ValueError, match="no lake store"):
        LakeStoreConfig.from_settings(Settings(home=tmp_path))


def test_what_is_synced() -> None:
    for rel in SYNCED:
        assert is_synced(rel), rel
    for rel in NOT_SYNCED:
        assert not is_synced(rel), rel
    for rel in ("lake", "lake/../state/x", "lake//x", "lake/./x", "/lake/x"):
        assert not is_synced(rel), rel


# --------------------------------------------------------------------------------- round trip
def test_push_then_pull_gives_identical_files(s3_env: S3Endpoint, url: str,
                                              tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a, {**SYNCED, **NOT_SYNCED})
    sent = push(_settings(a, url))
    assert sent is not None and set(sent.files) == set(SYNCED)
    assert sent.bytes == sum(len(v) for v in SYNCED.values())
    assert _keys(s3_env, url) == set(SYNCED)  # no temp, hidden, lock or other-folder file

    got = pull(_settings(b, url))
    assert got is not None and set(got.files) == set(SYNCED)
    assert _tree(b, synced_only=False) == _tree(a)  # byte-identical, nothing else
    assert not [p for p in b.rglob("*.tmp")]
    assert (b / STATE_FOLDER / MANIFEST_NAME).is_file()


def test_second_push_uploads_only_what_changed(s3_env: S3Endpoint, url: str,
                                              tmp_path: Path) -> None:
    home = tmp_path / "a"
    s = _settings(home, url)
    _write(home, SYNCED)
    assert len(push(s).files) == len(SYNCED)  # type: ignore[union-attr]
    assert push(s).files == ()  # type: ignore[union-attr]

    # a re-run rewrites its partitions atomically with the same bytes: nothing to upload
    part = home / "lake/bars/session=2017-12-29/part-0.parquet"
    lake.write_atomic(part, lambda fh: fh.write(SYNCED[part.relative_to(home).as_posix()]))
    assert push(s).files == ()  # type: ignore[union-attr]

    lake.write_atomic(part, lambda fh: fh.write(b"PAR1 bars 29, corrected"))
    (home / "runs/session=2017-12-29/build_features.json").write_text("{}\n")
    again = push(s)
    assert again is not None and again.files == (
        "lake/bars/session=2017-12-29/part-0.parquet",
        "runs/session=2017-12-29/build_features.json",
    )
    body = s3_env.client().get_object(Bucket=s3_env.bucket,
                                      Key=parse_store_url(url)[1] + "/" + again.files[0])["Body"]
    assert body.read() == b"PAR1 bars 29, corrected"
    assert push(s).files == ()  # type: ignore[union-attr]


def test_pull_downloads_only_what_changed_and_deletes_nothing(s3_env: S3Endpoint, url: str,
                                                             tmp_path: Path) -> None:
    a, b = _settings(tmp_path / "a", url), _settings(tmp_path / "b", url)
    _write(a.home, SYNCED)
    push(a)
    assert len(pull(b).files) == len(SYNCED)  # type: ignore[union-attr]
    assert pull(b).files == ()  # type: ignore[union-attr]

    _write(a.home, {"lake/bars/session=2017-12-28/part-0.parquet": b"PAR1 bars 28 v2",
                    "lake/features/session=2017-12-29/part-0.parquet": b"PAR1 feats"})
    push(a)
    _write(b.home, {"lake/garch/session=2017-12-29/part-0.parquet": b"only in b"})
    (b.home / "reports/gx/index.html").unlink()  # a lost local copy comes back
    got = pull(b)
    assert got is not None and got.files == (
        "lake/bars/session=2017-12-28/part-0.parquet",
        "lake/features/session=2017-12-29/part-0.parquet",
        "reports/gx/index.html",
    )
    assert (b.home / "lake/garch/session=2017-12-29/part-0.parquet").read_bytes() == b"only in b"
    assert {k: v for k, v in _tree(b.home).items() if "garch" not in k} == _tree(a.home)


def test_pull_keeps_identical_local_files(s3_env: S3Endpoint, url: str, tmp_path: Path) -> None:
    """A home that already holds the store's bytes (no manifest yet) downloads nothing."""
    a, b = _settings(tmp_path / "a", url), _settings(tmp_path / "b", url)
    _write(a.home, SYNCED)
    push(a)
    _write(b.home, SYNCED)
    before = {p: p.stat().st_ino for p in b.home.rglob("*") if p.is_file()}
    assert pull(b).files == ()  # type: ignore[union-attr]
    assert push(b).files == ()  # type: ignore[union-attr]
    assert {p: p.stat().st_ino for p in before} == before


def test_two_homes_pushing_different_partitions(s3_env: S3Endpoint, url: str,
                                                tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    homes = [_settings(tmp_path / n, url) for n in ("a", "b")]
    for i, s in enumerate(homes):
        _write(s.home, {f"lake/garch/session=2017-12-2{i}/part-0.parquet": f"g{i}".encode(),
                        f"runs/session=2017-12-2{i}/refit_garch.json": b"{}"})
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(push, homes))
    c = _settings(tmp_path / "c", url)
    pull(c)
    assert _tree(c.home) == {**_tree(homes[0].home), **_tree(homes[1].home)}


# --------------------------------------------------------------------------------- synced
def test_synced_pulls_then_pushes_even_when_the_stage_fails(s3_env: S3Endpoint, url: str,
                                                            tmp_path: Path) -> None:
    a, b = _settings(tmp_path / "a", url), _settings(tmp_path / "b", url)
    _write(a.home, {"lake/bars/session=2017-12-28/part-0.parquet": b"bars"})
    push(a)
    with pytest.raises(ValueError, match="bad input"), synced(b) as store:
        assert isinstance(store, LakeStore)
        assert (b.home / "lake/bars/session=2017-12-28/part-0.parquet").read_bytes() == b"bars"
        _write(b.home, {"quarantine/session=2017-12-29/bad.csv": b"bad"})
        raise ValueError("bad input")
    assert "quarantine/session=2017-12-29/bad.csv" in _keys(s3_env, url)


def test_a_failed_push_after_a_failed_stage_keeps_the_stage_error(
    s3_env: S3Endpoint, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(self: LakeStore) -> None:
        raise LakeSyncError("store down")

    monkeypatch.setattr(LakeStore, "push", broken)
    with pytest.raises(KeyError, match="stage error"), synced(_settings(tmp_path / "a", url)):
        raise KeyError("stage error")
    assert "store down" in caplog.text
    with pytest.raises(LakeSyncError, match="store down"), synced(_settings(tmp_path / "a", url)):
        pass


def test_cli_stage_and_ingest_sync_around_the_stage(
    s3_env: S3Endpoint, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``afterbell stage`` (one pull and one push around all its functions) and ``afterbell
    ingest`` work on the store's lake."""
    from pipelines import cli, stages

    other = _settings(tmp_path / "other", url)
    _write(other.home, {"lake/bars/session=2017-12-28/part-0.parquet": b"bars 28"})
    push(other)
    home = tmp_path / "worker"
    monkeypatch.setenv("AFTERBELL_HOME", str(home))
    monkeypatch.setenv("AFTERBELL_LAKE_URL", url)
    seen: list[str] = []

    def first(session: str, settings: Settings) -> dict[str, object]:
        seen.append((settings.lake_dir / "bars/session=2017-12-28/part-0.parquet").read_text())
        _write(settings.home, {f"lake/garch/session={session}/part-0.parquet": b"garch"})
        return {"run": True}

    def second(session: str, settings: Settings) -> dict[str, object]:
        _write(settings.home, {f"runs/session={session}/second.json": b"{}"})
        return {"run": True}

    def ingest(session: str, source: str | None, settings: Settings) -> dict[str, object]:
        _write(settings.home, {f"raw/session={session}/{source}": b"bars"})
        return {"session": session}

    monkeypatch.setitem(stages.STAGES, "fake", (first, second))
    monkeypatch.setattr(stages, "ingest", ingest)
    pushes: list[tuple[str, ...]] = []
    real_push = LakeStore.push
    monkeypatch.setattr(LakeStore, "push", lambda self: pushes.append(real_push(self).files))
    assert cli.main(["stage", "fake", "--session", "2017-12-29"]) == 0
    assert seen == ["bars 28"]
    assert pushes == [("lake/garch/session=2017-12-29/part-0.parquet",
                       "runs/session=2017-12-29/second.json")]
    assert cli.main(["ingest", "--session", "2017-12-29", "--source", "bars.csv"]) == 0
    assert pushes[1] == ("raw/session=2017-12-29/bars.csv",)
    assert {"lake/garch/session=2017-12-29/part-0.parquet", "raw/session=2017-12-29/bars.csv",
            "runs/session=2017-12-29/second.json"} <= _keys(s3_env, url)


# --------------------------------------------------------------------------------- errors
def test_missing_bucket_is_a_clear_error(s3_env: S3Endpoint, tmp_path: Path) -> None:
    url = f"s3://afterbell-no-such-bucket-{uuid.uuid4().hex[:6]}/lake"
    s = _settings(tmp_path / "a", url)
    bucket = parse_store_url(url)[0]
    with pytest.raises(LakeSyncError) as err:
        pull(s)
    msg = str(err.value)
    assert f"no such bucket {bucket!r}" in msg and url in msg and s3_env.url in msg
    _write(s.home, {"runs/session=2017-12-29/ingest.json": b"{}"})
    with pytest.raises(LakeSyncError) as err:
        push(s)
    msg = str(err.value)
    assert f"s3://{bucket}/lake/runs/session=2017-12-29/ingest.json" in msg
    assert "no such bucket" in msg and s3_env.secret_key not in msg
    # nothing recorded as synced: a retry uploads it
    assert not (s.home / STATE_FOLDER / MANIFEST_NAME).exists()


def test_unreachable_endpoint_is_a_clear_error(s3_env: S3Endpoint, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://afterbell:endpointPw9@127.0.0.1:{free_port()}"
    monkeypatch.setenv("AFTERBELL_S3_ENDPOINT_URL", endpoint)
    with pytest.raises(LakeSyncError) as err:
        pull(_settings(tmp_path / "a", "s3://afterbell-lake/lake"))
    msg = str(err.value)
    assert "s3://afterbell-lake/lake" in msg and "unreachable" in msg
    assert "127.0.0.1" in msg and "endpointPw9" not in msg and s3_env.secret_key not in msg


# --------------------------------------------------------------------------------- embedded
def test_embedded_profile_does_nothing_and_imports_no_boto3(tmp_path: Path) -> None:
    home = tmp_path / "home"
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from pipelines.settings import Settings
        from pipelines.lake_sync import pull, push, synced
        import pipelines.cli, pipelines.tasks
        s = Settings.from_env({{"AFTERBELL_HOME": {str(home)!r}}})
        assert s.profile == "embedded" and s.lake_store_url == ""
        (s.lake_dir / "bars").mkdir(parents=True)
        (s.lake_dir / "bars" / "x.parquet").write_bytes(b"x")
        with synced(s) as store:
            assert store is None
        assert pull(s) is None and push(s) is None
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("boto3", "botocore"))
        assert not loaded, loaded
        assert not (s.home / ".lake-sync").exists()
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFTERBELL_")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
