"""``feast plan`` / ``feast apply`` on ``feature_repo/`` with the real CLI, in both profiles.

The embedded profile needs nothing running. The production profile (tests marked ``services``)
runs against the machine's PostgreSQL (a database created for the test and dropped after it) and
Redis (a dedicated database index; only the keys of the test's own symbols are written and
deleted, nothing is flushed): the fixtures of tests/services.py. Where PostgreSQL or Redis cannot
be reached those tests are skipped, unless ``AFTERBELL_REQUIRE_SERVICES=1`` makes that a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipelines import feature_store as fs
from pipelines.settings import Settings
from tests.feast_tables import offline_tables, restored_environ
from tests.services import RedisSpace, pg_database, redis_space  # noqa: F401 (fixtures)

VIEWS = ("market_features", "garch_features", "lstm_window", "option_features")
LOOKBACK = 4
#: Words that must not appear in the CLI's output.
TROUBLE = re.compile(r"traceback|error|exception", re.IGNORECASE)
ENV_KEYS = ("AFTERBELL_HOME", "AFTERBELL_FEAST_REGISTRY_URL", "AFTERBELL_REDIS_URL")


# ------------------------------------------------------------------------------------ helpers
def _tables(symbols: tuple[str, ...]) -> dict[fs.ViewName, pd.DataFrame]:
    """Small offline tables (about 30 sessions) for ``symbols``."""
    return offline_tables(symbols, "2018-11-15", "2018-12-31", seed=5, lookback=LOOKBACK)


def _write_tables(settings: Settings, tables: dict[fs.ViewName, pd.DataFrame]) -> None:
    for view, table in tables.items():
        fs.write_offline_table(settings, view, table)


def _feast(settings: Settings, *args: str) -> str:
    """Run ``feast <args>`` for the profile of ``settings``; return its output, checked clean."""
    exe = shutil.which("feast", path=str(Path(sys.executable).parent)) or "feast"
    env = {**os.environ, **fs.feast_env(settings)}
    for key in ("FEAST_FS_YAML_FILE_PATH", "FEATURE_REPO_DIR_ENV_VAR"):
        env.pop(key, None)  # the command line names the repo and the yaml
    cmd = [exe, *fs.feast_cli_args(settings), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(cmd)} exited {done.returncode}:\n{output}"
    bad = [line for line in output.splitlines() if TROUBLE.search(line)]
    assert not bad, f"{' '.join(cmd)} reported problems:\n{output}"
    return output


def _assert_plans_the_repo(output: str) -> None:
    for view in VIEWS:
        assert f"feature view {view}" in output, output
    assert "entity symbol" in output and "feature service garch_lstm_v1" in output, output


@pytest.fixture
def env_restored() -> Iterator[None]:
    with restored_environ(ENV_KEYS):
        yield


# ----------------------------------------------------------------------------------- embedded
def test_feast_plan_and_apply_embedded(tmp_path: Path, env_restored: None) -> None:
    settings = Settings(home=tmp_path / "home")
    assert settings.feast_yaml.name == "feature_store.yaml"
    _write_tables(settings, _tables(("AAPL", "MSFT")))

    _assert_plans_the_repo(_feast(settings, "plan"))
    assert fs.get_store(settings).list_feature_views() == []  # plan registers nothing
    _feast(settings, "apply")
    assert (settings.feast_dir / "registry.db").is_file()
    store = fs.get_store(settings)
    assert sorted(v.name for v in store.list_feature_views()) == sorted(VIEWS)
    source = store.get_feature_view("lstm_window").batch_source
    assert Path(source.path) == fs.offline_path(settings, "lstm_window")


# --------------------------------------------------------------------------------- production
def _registry_rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Names (and version history) of what the SQL registry holds."""
    import psycopg

    queries = {
        "entities": "SELECT entity_name FROM entities",
        "data_sources": "SELECT data_source_name FROM data_sources",
        "feature_views": "SELECT feature_view_name FROM feature_views",
        "feature_services": "SELECT feature_service_name FROM feature_services",
        "versions": "SELECT feature_view_name, version_number FROM feature_view_version_history",
    }
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        return {k: sorted(conn.execute(q).fetchall()) for k, q in queries.items()}


@pytest.mark.services
def test_feast_plan_apply_materialize_online_production(
    tmp_path: Path,
    env_restored: None,
    pg_database: str,  # noqa: F811 (fixture)
    redis_space: RedisSpace,  # noqa: F811 (fixture)
) -> None:
    settings = Settings(
        home=tmp_path / "home",
        profile="production",
        feast_registry_url=pg_database,
        redis_url=redis_space.connection_string,
    )
    assert settings.feast_yaml.name == "feature_store.production.yaml"
    with_data = redis_space.symbols[:2]
    tables = _tables(with_data)
    _write_tables(settings, tables)

    _assert_plans_the_repo(_feast(settings, "plan"))
    assert _registry_rows(pg_database)["feature_views"] == []  # plan changes nothing
    _feast(settings, "apply")
    first = _registry_rows(pg_database)
    assert first["feature_views"] == sorted((v,) for v in VIEWS)
    assert first["feature_services"] == [("garch_lstm_v1",), ("garch_lstm_v2",)]
    _feast(settings, "apply")  # idempotent: same objects, no new versions
    assert _registry_rows(pg_database) == first
    assert "No changes to registry" in _feast(settings, "plan")
    assert not (settings.feast_dir / "registry.db").exists()  # nothing embedded on the side

    # The Python path on the same registry, then Redis.
    fs.apply_repo(settings)
    assert _registry_rows(pg_database) == first
    start: datetime = tables["market_features"]["event_timestamp"].min().to_pydatetime()
    end: datetime = tables["market_features"]["event_timestamp"].max().to_pydatetime()
    report = fs.materialize(settings, start, end)
    assert report.profile == "production"
    assert dict(report.rows) == {v: len(with_data) for v in VIEWS}
    assert report.total_rows == len(VIEWS) * len(with_data) and report.rows_per_second > 0
    keys = redis_space.keys()
    assert len(keys) == len(with_data)  # one hash per symbol, every view's fields in it
    for view in VIEWS:  # a timestamp field per view and symbol: what the report counted
        written = sum(redis_space.client.hexists(k, f"_ts:{view}") for k in keys)
        assert written == report.rows[view], view

    rows = fs.online_features(settings, list(redis_space.symbols))
    last = {v: t.sort_values("event_timestamp").groupby("symbol").last() for v, t in tables.items()}
    for sym in with_data:
        np.testing.assert_allclose(rows[sym]["seq"], last["lstm_window"].loc[sym, "seq"])
        assert rows[sym]["asof"] == last["lstm_window"].loc[sym, "asof"]
        expected = last["garch_features"].loc[sym, "garch_forecast"]
        assert rows[sym]["garch_forecast"] == pytest.approx(expected)
        assert rows[sym]["rv_22"] == pytest.approx(last["market_features"].loc[sym, "rv_22"])
    assert fs.missing_symbols(rows) == [redis_space.symbols[2]]

    # An older interval does not move Redis back in time (it keeps the latest event).
    fs.materialize(settings, start, start)
    again = fs.online_features(settings, list(with_data), features=["lstm_window:asof"])
    assert {s: again[s]["asof"] for s in with_data} == {s: rows[s]["asof"] for s in with_data}
