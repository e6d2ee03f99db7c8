"""Feast adapter on a tiny generated offline store (3 symbols, one of them without features)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines import feature_store as fs
from pipelines.settings import (
    DEFAULT_FEAST_REGISTRY_URL,
    DEFAULT_REDIS_URL,
    WINDOW_COLUMNS,
    Settings,
)
from tests.feast_tables import offline_tables, restored_environ

SYMBOLS = ("AAPL", "MSFT", "SPX")
WITH_DATA = ("AAPL", "MSFT")
LOOKBACK = 4
ENV_KEYS = ("AFTERBELL_HOME", "AFTERBELL_FEAST_REGISTRY_URL", "AFTERBELL_REDIS_URL")


def _tables() -> dict[fs.ViewName, pd.DataFrame]:
    return offline_tables(WITH_DATA, "2018-11-19", "2018-12-31", seed=11, lookback=LOOKBACK)


@dataclass
class Ctx:
    settings: Settings
    tables: dict[fs.ViewName, pd.DataFrame]
    cli: subprocess.Popen[str]
    report: fs.MaterializeReport


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctx]:
    with restored_environ(ENV_KEYS):
        settings = Settings(home=tmp_path_factory.mktemp("home"), universe=SYMBOLS)
        tables = _tables()
        for view, df in tables.items():
            fs.write_offline_table(settings, view, df)
        fs.apply_repo(settings)
        # The feast CLI spends seconds importing feast: start it now, on a copy of the registry
        # (the file registry is rewritten in place by apply/materialize), and collect it in its
        # test.
        cli_home = tmp_path_factory.mktemp("cli_home")
        (cli_home / "feast").mkdir()
        shutil.copy(settings.feast_dir / "registry.db", cli_home / "feast" / "registry.db")
        feast = shutil.which("feast", path=str(Path(sys.executable).parent)) or "feast"
        cli = subprocess.Popen(
            [feast, "-c", str(settings.feature_repo), "feature-views", "list"],
            env={**os.environ, "AFTERBELL_HOME": str(cli_home)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        fs.apply_repo(settings)  # idempotent
        start = tables["market_features"]["event_timestamp"].min().to_pydatetime()
        end = tables["market_features"]["event_timestamp"].max().to_pydatetime()
        report = fs.materialize(settings, start, end)
        yield Ctx(settings, tables, cli, report)
        if cli.poll() is None:
            cli.kill()
            cli.communicate()


def test_write_offline_table_is_atomic_and_typed(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, universe=SYMBOLS)
    window = _tables()["lstm_window"]
    window["event_timestamp"] = window["event_timestamp"].dt.tz_localize(None)  # naive -> UTC
    path = fs.write_offline_table(settings, "lstm_window", window)
    assert path == settings.offline_dir / "lstm_window.parquet"
    assert [p.name for p in settings.offline_dir.iterdir()] == ["lstm_window.parquet"]
    back = pd.read_parquet(path)
    assert str(back["event_timestamp"].dtype) == "datetime64[ns, UTC]"
    assert back["asof"].dtype == np.int64
    assert len(back["seq"].iloc[0]) == LOOKBACK * len(WINDOW_COLUMNS)
    with pytest.raises(ValueError, match="lacks columns"):
        fs.write_offline_table(settings, "garch_features", window)
    with pytest.raises(ValueError, match="unknown feature view"):
        fs.write_offline_table(settings, "nope", window)  # type: ignore[arg-type]


def test_apply_is_idempotent(ctx: Ctx) -> None:
    settings = ctx.settings
    fs.apply_repo(settings)
    feast_store = fs.get_store(settings)
    assert sorted(v.name for v in feast_store.list_feature_views()) == [
        "garch_features",
        "lstm_window",
        "market_features",
        "option_features",
    ]
    assert sorted(s.name for s in feast_store.list_feature_services()) == [
        "garch_lstm_v1", "garch_lstm_v2"
    ]
    assert "symbol" in [e.name for e in feast_store.list_entities()]
    source = feast_store.get_feature_view("lstm_window").batch_source
    assert Path(source.path) == settings.offline_dir / "lstm_window.parquet"


def test_online_features_are_the_last_row_per_symbol(
    ctx: Ctx,
) -> None:
    settings, tables = ctx.settings, ctx.tables
    rows = fs.online_features(settings, list(SYMBOLS))
    assert set(rows) == set(SYMBOLS)
    last_w = tables["lstm_window"].sort_values("event_timestamp").groupby("symbol").last()
    last_g = tables["garch_features"].sort_values("event_timestamp").groupby("symbol").last()
    last_m = tables["market_features"].sort_values("event_timestamp").groupby("symbol").last()
    for sym in WITH_DATA:
        np.testing.assert_allclose(rows[sym]["seq"], last_w.loc[sym, "seq"])
        assert rows[sym]["asof"] == last_w.loc[sym, "asof"]
        assert rows[sym]["garch_forecast"] == pytest.approx(last_g.loc[sym, "garch_forecast"])
        assert rows[sym]["rv_22"] == pytest.approx(last_m.loc[sym, "rv_22"])
    assert all(v is None for v in rows["SPX"].values())
    assert fs.missing_symbols(rows) == ["SPX"]


@pytest.mark.parametrize("engine", ["feast", "asof"])
def test_historical_join_is_point_in_time(ctx: Ctx, engine: str) -> None:
    settings, tables = ctx.settings, ctx.tables
    market = tables["market_features"].sort_values(["symbol", "event_timestamp"])
    aapl = market[market["symbol"] == "AAPL"].reset_index(drop=True)
    t5, t6 = aapl.loc[5, "event_timestamp"], aapl.loc[6, "event_timestamp"]
    entity = pd.DataFrame(
        {
            "symbol": ["AAPL", "AAPL", "MSFT", "AAPL", "SPX"],
            "event_timestamp": [
                t6 - pd.Timedelta(seconds=1),  # just before the next close: still session 5
                t5,  # exactly at a close: that session
                market["event_timestamp"].max(),
                aapl.loc[0, "event_timestamp"] - pd.Timedelta(days=1),  # before any data
                t5,  # symbol without data
            ],
            "label": [1.0, 2.0, 3.0, 4.0, 5.0],
        }
    )
    refs = ["market_features:rv_22", "lstm_window:asof"]
    out = fs.historical_features(settings, entity, refs, engine=engine)  # type: ignore[arg-type]
    assert list(out["label"]) == [1.0, 2.0, 3.0, 4.0, 5.0]  # every row, in order
    assert out.loc[0, "rv_22"] == pytest.approx(aapl.loc[5, "rv_22"])
    assert out.loc[1, "rv_22"] == pytest.approx(aapl.loc[5, "rv_22"])
    assert out.loc[0, "asof"] == t5.value // 10**9
    msft_last = market[market["symbol"] == "MSFT"].iloc[-1]
    assert out.loc[2, "rv_22"] == pytest.approx(msft_last["rv_22"])
    assert pd.isna(out.loc[3, "rv_22"]) and pd.isna(out.loc[4, "rv_22"])
    assert str(out["asof"].dtype) == "Int64"  # integer feature with nulls, in both engines
    matched_only = fs.historical_features(settings, entity.iloc[:3], refs, engine=engine)  # type: ignore[arg-type]
    assert matched_only["asof"].dtype == np.int64
    # no feature timestamp is ever later than its entity timestamp
    matched = out.dropna(subset=["asof"])
    assert (matched["asof"] <= matched["event_timestamp"].astype("int64") // 10**9).all()


def test_historical_join_by_feature_service(
    ctx: Ctx,
) -> None:
    settings, tables = ctx.settings, ctx.tables
    window = tables["lstm_window"]
    entity = window[["symbol", "event_timestamp"]].sample(frac=1.0, random_state=3)
    out = fs.historical_features(settings, entity, "garch_lstm_v2")
    fast = fs.historical_features(settings, entity, "garch_lstm_v2", engine="asof")
    assert {"seq", "asof", "garch_forecast", "egarch_forecast", "ewma_forecast",
            "rv_22"} <= set(out.columns)
    assert list(fast.columns) == list(out.columns)
    pd.testing.assert_frame_equal(fast.drop(columns="seq"), out.drop(columns="seq"))
    for a, b in zip(fast["seq"], out["seq"], strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(out) == len(entity)
    expected = window.set_index(["symbol", "event_timestamp"]).loc[
        list(zip(entity["symbol"], entity["event_timestamp"], strict=True)), "asof"
    ]
    np.testing.assert_array_equal(out["asof"].to_numpy(), expected.to_numpy())


def test_feast_cli_lists_the_views(ctx: Ctx) -> None:
    out, err = ctx.cli.communicate(timeout=120)
    assert ctx.cli.returncode == 0, err
    for view in fs.VIEW_COLUMNS:
        assert view in out


def test_materialize_reports_rows_per_view(ctx: Ctx) -> None:
    report = ctx.report
    assert report.profile == "embedded"
    assert report.views == (
        "market_features", "garch_features", "lstm_window", "option_features"
    )
    # the latest row of each symbol with data in the interval; SPX has none
    assert dict(report.rows) == dict.fromkeys(report.views, len(WITH_DATA))
    assert report.total_rows == 4 * len(WITH_DATA)
    assert report.seconds > 0 and report.rows_per_second == report.total_rows / report.seconds
    first = ctx.tables["market_features"]["event_timestamp"].min().to_pydatetime()
    empty = fs.materialize(ctx.settings, first - timedelta(days=30), first - timedelta(days=1))
    assert dict(empty.rows) == dict.fromkeys(report.views, 0)
    one = fs.materialize(ctx.settings, first, first, views=["garch_features"])
    assert dict(one.rows) == {"garch_features": len(WITH_DATA)}
    with pytest.raises(ValueError, match="after end"):
        fs.materialize(ctx.settings, first, first - timedelta(seconds=1))


def test_profiles_choose_the_feast_configuration(tmp_path: Path) -> None:
    embedded = Settings(home=tmp_path)
    assert embedded.feast_yaml == embedded.feature_repo / "feature_store.yaml"
    production = embedded.with_(
        profile="production",
        feast_registry_url="postgresql+psycopg://u@db.example:5432/reg",
        redis_url="redis.example:6380,db=2",
    )
    assert production.feast_yaml == embedded.feature_repo / "feature_store.production.yaml"
    assert production.feast_yaml.is_file()
    assert fs.feast_env(production) == {
        "AFTERBELL_HOME": str(tmp_path),
        "AFTERBELL_FEAST_REGISTRY_URL": "postgresql+psycopg://u@db.example:5432/reg",
        "AFTERBELL_REDIS_URL": "redis.example:6380,db=2",
    }
    assert fs.feast_cli_args(production) == (
        "--chdir",
        str(production.feature_repo),
        "--feature-store-yaml",
        str(production.feast_yaml),
    )
    with pytest.raises(ValueError, match="unknown profile 'cloud'"):
        _ = embedded.with_(profile="cloud").feast_yaml
    with pytest.raises(ValueError, match="not a URL"):
        fs.feast_env(embedded.with_(redis_url="redis://127.0.0.1:6379/0"))


def test_production_store_is_configured_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    settings = Settings(
        home=tmp_path,
        profile="production",
        feast_registry_url="postgresql+psycopg://u@db.example:5432/reg",
        redis_url="redis.example:6380,db=2",
    )
    store = fs.get_store(settings)  # reads the yaml only: nothing is contacted yet
    assert store.config.registry.registry_type == "sql"
    assert store.config.registry.path == "postgresql+psycopg://u@db.example:5432/reg"
    assert store.config.online_store.type == "redis"
    assert store.config.online_store.connection_string == "redis.example:6380,db=2"
    assert store.config.offline_store.type == "file"
    assert os.environ["AFTERBELL_HOME"] == str(tmp_path)
    assert not settings.feast_dir.exists()  # no embedded registry on the side
    embedded = fs.get_store(settings.with_(profile="embedded"))
    assert embedded.config.online_store.type == "sqlite"
    assert Path(embedded.config.online_store.path) == settings.feast_dir / "online.db"


def test_settings_read_the_profile_and_services_from_the_environment() -> None:
    defaults = Settings.from_env({"AFTERBELL_HOME": "/tmp/x"})
    assert defaults.profile == "embedded"
    assert defaults.feast_registry_url == DEFAULT_FEAST_REGISTRY_URL
    assert defaults.redis_url == DEFAULT_REDIS_URL
    prod = Settings.from_env(
        {
            "AFTERBELL_HOME": "/tmp/x",
            "AFTERBELL_PROFILE": "production",
            "AFTERBELL_FEAST_REGISTRY_URL": "postgresql+psycopg://a@b:1/c",
            "AFTERBELL_REDIS_URL": "b:2,db=3",
        }
    )
    assert (prod.profile, prod.feast_registry_url, prod.redis_url) == (
        "production",
        "postgresql+psycopg://a@b:1/c",
        "b:2,db=3",
    )
    with pytest.raises(ValueError, match="AFTERBELL_PROFILE must be one of embedded, production"):
        Settings.from_env({"AFTERBELL_PROFILE": "prod"})
