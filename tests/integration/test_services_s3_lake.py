"""Two homes sharing one lake on S3 (moto's server) give the lake of a single home.

Home A runs ``ingest`` and ``build_features`` of the small configuration; home B, empty, runs
``refit_garch``: it gets A's partitions through the pull, and its outputs land in S3. Home C runs
the same three stages alone, without a lake store. The stages run through
:func:`pipelines.tasks.run_stage`, the adapter every DAG task calls, with the environment a
Celery worker would have (``AFTERBELL_LAKE_URL``, ``AFTERBELL_S3_ENDPOINT_URL``, AWS keys).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipelines.lake_sync import LakeStore, SyncResult
from tests.conftest import SESSION, small_env
from tests.services import S3Endpoint, s3_server  # noqa: F401 (fixture)

pytestmark = [pytest.mark.services, pytest.mark.slow]

DAY = SESSION.isoformat()
PREFIX = "afterbell/lake"


def _tree(root: Path, digest: Any = hashlib.sha256) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): digest(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@dataclass
class Syncs:
    """Every pull and push, in order: (home name, 'pull' | 'push', result)."""

    calls: list[tuple[str, str, SyncResult]] = field(default_factory=list)

    def of(self, home: str, kind: str) -> list[SyncResult]:
        return [r for h, k, r in self.calls if h == home and k == kind]


@dataclass(frozen=True)
class Homes:
    a: Path
    b: Path
    c: Path
    syncs: Syncs
    results: dict[str, dict[str, Any]]
    seconds: dict[str, float]


@pytest.fixture(scope="module")
def homes(s3_server: S3Endpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Homes]:  # noqa: F811
    from pipelines import tasks

    root = tmp_path_factory.mktemp("s3_lake")
    a, b, c = root / "a", root / "b", root / "c"
    syncs = Syncs()
    pull, push = LakeStore.pull, LakeStore.push

    def spy_pull(self: LakeStore) -> SyncResult:
        result = pull(self)
        syncs.calls.append((self.home.name, "pull", result))
        return result

    def spy_push(self: LakeStore) -> SyncResult:
        result = push(self)
        syncs.calls.append((self.home.name, "push", result))
        return result

    store = {
        "AFTERBELL_LAKE_URL": f"s3://{s3_server.bucket}/{PREFIX}",
        "AFTERBELL_S3_ENDPOINT_URL": s3_server.url,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    results: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(LakeStore, "pull", spy_pull)
        mp.setattr(LakeStore, "push", spy_push)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                     "AWS_ENDPOINT_URL_S3", "AFTERBELL_PROFILE", "AFTERBELL_LAKE_URL",
                     "MLFLOW_TRACKING_URI", "AFTERBELL_MLFLOW_URI"):
            mp.delenv(name, raising=False)

        def run(home: Path, stage: str, env: dict[str, str]) -> None:
            # the small configuration with two years of history instead of three: a third
            # fewer partitions to compute and transfer (GARCH still gets its 250 returns)
            for key, value in {**small_env(home), "AFTERBELL_HISTORY_YEARS": "2",
                               **env}.items():
                mp.setenv(key, value)
            t0 = time.perf_counter()
            results[f"{home.name}.{stage}"] = tasks.run_stage(stage, DAY)
            seconds[f"{home.name}.{stage}"] = time.perf_counter() - t0

        run(a, "ingest", store)
        run(a, "build_features", store)
        run(b, "refit_garch", store)
        mp.delenv("AFTERBELL_LAKE_URL")  # home C: the embedded lake, no store
        for stage in ("ingest", "build_features", "refit_garch"):
            run(c, stage, {})
        yield Homes(a, b, c, syncs, results, seconds)


def test_the_second_home_gets_the_first_homes_partitions(homes: Homes) -> None:
    print("stage seconds:", {k: round(v, 1) for k, v in homes.seconds.items()},
          "sync seconds:", [(h, k, len(r.files), round(r.seconds, 1))
                            for h, k, r in homes.syncs.calls])
    assert homes.results["b.refit_garch"] == homes.results["c.refit_garch"]
    pulled = homes.syncs.of("b", "pull")
    assert len(pulled) == 1
    files = set(pulled[0].files)
    assert {f.split("/")[1] for f in files if f.startswith("lake/")} == {"bars", "features"}
    assert f"raw/session={DAY}/replay.parquet" in files
    assert {f"runs/session={DAY}/ingest.json", f"runs/session={DAY}/features.json"} <= files
    # B's lake is the single home's, byte for byte (A's tables and B's own)
    lake_b, lake_c = _tree(homes.b / "lake"), _tree(homes.c / "lake")
    assert {k.split("/")[0] for k in lake_c} >= {"bars", "features", "garch", "garch_params"}
    assert lake_b == lake_c
    assert _tree(homes.b / "raw") == _tree(homes.c / "raw")


def test_each_home_pushes_only_what_it_wrote(homes: Homes, s3_server: S3Endpoint) -> None:  # noqa: F811
    # home C has no store: run_stage never synced it
    assert not homes.syncs.of("c", "pull") and not homes.syncs.of("c", "push")
    assert not (homes.c / ".lake-sync").exists()
    ingest, features = homes.syncs.of("a", "push")
    assert f"lake/bars/session={DAY}/part-0.parquet" in ingest.files
    assert not any(f.startswith("lake/features/") for f in ingest.files)
    # the second stage on A pulls nothing (A pushed it) and pushes only its own outputs
    assert [r.files for r in homes.syncs.of("a", "pull")] == [(), ()]
    # (the Great Expectations project files under reports/ are rewritten by every suite run)
    assert not {f for f in set(features.files) & set(ingest.files) if not f.startswith("reports/")}
    assert f"lake/features/session={DAY}/part-0.parquet" in features.files
    (garch,) = homes.syncs.of("b", "push")
    assert not {f for f in set(garch.files) & (set(ingest.files) | set(features.files))
                if not f.startswith("reports/")}
    assert {f.split("/")[1] for f in garch.files if f.startswith("lake/")} == {
        "garch", "garch_params"}
    assert f"runs/session={DAY}/garch.json" in garch.files

    # the store holds the single home's lake, byte for byte (single-part ETag = MD5)
    pages = s3_server.client().get_paginator("list_objects_v2").paginate(
        Bucket=s3_server.bucket, Prefix=f"{PREFIX}/lake/")
    stored = {obj["Key"][len(PREFIX) + len("/lake/"):]: obj["ETag"].strip('"')
              for page in pages for obj in page.get("Contents", [])}
    assert stored == _tree(homes.c / "lake", hashlib.md5)
    keys = s3_server.keys(PREFIX + "/")
    assert not [k for k in keys if "/." in k or k.endswith((".tmp", ".lock"))]
    assert f"{PREFIX}/runs/session={DAY}/garch.json" in keys
