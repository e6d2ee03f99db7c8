"""Feast adapter: the only module of the pipeline that talks to the feature store.

The declarative definitions live in ``feature_repo/`` (entities, sources, views, services); this
module writes the offline tables those sources read, registers the definitions, materialises
explicit intervals into the online store and reads features back for training (point-in-time join)
and serving (online lookup).

Two profiles (``Settings.profile``) choose the Feast configuration file (``Settings.feast_yaml``):

* ``embedded`` (default), ``feature_repo/feature_store.yaml``: file registry and SQLite online store
  under ``$AFTERBELL_HOME/feast``;
* ``production``, ``feature_repo/feature_store.production.yaml``: SQL registry on PostgreSQL
  (``AFTERBELL_FEAST_REGISTRY_URL``) and Redis online store (``AFTERBELL_REDIS_URL``).

Both read the offline parquet files under ``$AFTERBELL_HOME/offline``. The yaml files and
``feature_repo/data_sources.py`` are parameterised by environment variables (Feast expands
``${VARS}`` in the yaml, without default values). Every entry point here therefore exports
:func:`feast_env` first (``AFTERBELL_HOME``, ``AFTERBELL_FEAST_REGISTRY_URL``,
``AFTERBELL_REDIS_URL``), overwriting different values: the :class:`~pipelines.settings.Settings`
passed in is the source of truth. :func:`feast_cli_args` and :func:`feast_env` give the ``feast``
command line the same configuration.

Feast is imported lazily (about 3.5 s) so that importing this module stays cheap.

Notes
-----
* Never use ``materialize_incremental``: on a view that was never materialised it starts at
  ``now - ttl``. :func:`materialize` always takes an explicit ``[start, end]``.
* The SQLite online store (embedded) overwrites unconditionally: materialising an *older* interval
  after a newer one moves the online values back in time. Backfills must materialise oldest first
  (or end with the most recent interval). The Redis online store (production) keeps the row with
  the latest event timestamp: an older (or the same) interval writes nothing there.
* The file (dask) offline store returns nulls, not an error, for entity rows whose latest feature
  row is older than the view's TTL (14 days).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from pipelines.schema import (
    FEATURE_COLUMNS,
    GARCH_COLUMNS,
    OPTION_COLUMNS,
    WINDOW_TABLE_COLUMNS,
)
from pipelines.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)

ViewName = Literal["market_features", "garch_features", "lstm_window", "option_features"]

#: Feature views of the repo and the feature columns of their offline tables.
VIEW_COLUMNS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "market_features": FEATURE_COLUMNS,
        "garch_features": GARCH_COLUMNS,
        "lstm_window": WINDOW_TABLE_COLUMNS,
        "option_features": OPTION_COLUMNS,
    }
)

#: Default feature service of the live model.
DEFAULT_SERVICE = "garch_lstm_v2"

#: Entity join key and timestamp column of every offline table and entity frame.
ENTITY_KEY = "symbol"
TIMESTAMP_COLUMN = "event_timestamp"

_ROW_ID = "afterbell_row_id"


# ------------------------------------------------------------------------------------- offline
def offline_path(settings: Settings, view: ViewName) -> Path:
    """Path of the offline parquet file backing ``view``.

    Parameters
    ----------
    settings : Settings
        Installation settings (``offline_dir``).
    view : {"market_features", "garch_features", "lstm_window", "option_features"}
        Feature view name.

    Returns
    -------
    Path
        ``settings.offline_dir / f"{view}.parquet"`` (the path ``feature_repo/data_sources.py``
        builds).
    """
    _check_view(view)
    return settings.offline_dir / f"{view}.parquet"


def write_offline_table(settings: Settings, view: ViewName, df: pd.DataFrame) -> Path:
    """Atomically replace the offline table of ``view`` with ``df``.

    The frame is validated against the data contract, ``event_timestamp`` is normalised to
    ``datetime64[ns, UTC]``, and the file is written to a temporary name in the same folder
    (:func:`pipelines.lake.temp_path`), fsynced and moved into place with :func:`os.replace`, so
    readers never see a half-written file; temporary files left by a writer that was killed are
    removed afterwards (:func:`pipelines.lake.remove_stale_temps`).

    Parameters
    ----------
    settings : Settings
        Installation settings (``offline_dir``).
    view : {"market_features", "garch_features", "lstm_window", "option_features"}
        Feature view whose source file is written.
    df : pandas.DataFrame
        The full table: ``symbol``, ``session``, ``event_timestamp`` and the view's feature
        columns (extra columns are kept).

    Returns
    -------
    Path
        The parquet file written.

    Raises
    ------
    ValueError
        If ``view`` is unknown, a required column is missing, or ``event_timestamp`` has nulls.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines import lake

    path = offline_path(settings, view)
    required = ("symbol", "session", TIMESTAMP_COLUMN, *VIEW_COLUMNS[view])
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"offline table {view} lacks columns {missing}; required: {required}")
    out = df.copy()
    out["symbol"] = out["symbol"].astype(str)
    out[TIMESTAMP_COLUMN] = _to_utc(out[TIMESTAMP_COLUMN])
    if out[TIMESTAMP_COLUMN].isna().any():
        raise ValueError(f"offline table {view}: event_timestamp has nulls")
    if view == "lstm_window":
        out["asof"] = out["asof"].astype("int64")
    out = out.sort_values([TIMESTAMP_COLUMN, "symbol"], kind="stable").reset_index(drop=True)

    if view != "lstm_window":
        table = pa.Table.from_pandas(out, preserve_index=False)
    else:
        position = list(out.columns).index("seq")
        seq = _list_column(out["seq"])
        table = pa.Table.from_pandas(out.drop(columns="seq"), preserve_index=False)
        table = table.add_column(position, "seq", seq)
    return lake.write_atomic(path, lambda fh: pq.write_table(table, fh))


def _list_column(values: pd.Series) -> Any:
    """``values`` (one sequence of floats per row) as an Arrow ``list<double>`` array, built
    from one contiguous buffer (no per-value Python objects); rows with a missing sequence
    go through Arrow's own conversion."""
    import numpy as np
    import pyarrow as pa

    items = values.to_list()
    if any(v is None or (isinstance(v, float) and v != v) for v in items):
        return pa.array(items, type=pa.list_(pa.float64()))
    chunks = []
    for lo in range(0, max(len(items), 1), _LIST_CHUNK_ROWS):  # int32 offsets per chunk
        part = items[lo : lo + _LIST_CHUNK_ROWS]
        offsets = np.zeros(len(part) + 1, dtype=np.int32)
        np.cumsum(np.fromiter((len(v) for v in part), dtype=np.int32, count=len(part)),
                  out=offsets[1:])
        flat = (np.concatenate([np.asarray(v, dtype=np.float64) for v in part])
                if part else np.empty(0, dtype=np.float64))
        chunks.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)))
    return pa.chunked_array(chunks, type=pa.list_(pa.float64()))


#: Rows of one chunk of a ``list<double>`` column (:func:`_list_column`): its values stay far
#: below the 2**31 that Arrow's int32 list offsets can address.
_LIST_CHUNK_ROWS = 250_000


# ------------------------------------------------------------------------------------- store
def get_store(settings: Settings) -> FeatureStore:
    """Open the feature store of ``settings`` in its profile.

    Exports :func:`feast_env` (the yaml and ``data_sources.py`` read it), creates
    ``settings.feast_dir`` in the embedded profile, and loads ``settings.feast_yaml``.

    Parameters
    ----------
    settings : Settings
        Installation settings (``home``, ``profile``; ``feast_registry_url`` and ``redis_url`` in
        the production profile).

    Returns
    -------
    feast.FeatureStore
        Store configured from ``feature_repo/feature_store.yaml`` (embedded) or
        ``feature_repo/feature_store.production.yaml`` (production).

    Raises
    ------
    ValueError
        If the profile is unknown or ``settings.redis_url`` is a ``redis://`` URL instead of
        Feast's ``host:port[,db=N]`` connection string.
    """
    from feast import FeatureStore

    yaml_file = settings.feast_yaml
    _export_env(settings)
    if settings.profile == "embedded":
        settings.feast_dir.mkdir(parents=True, exist_ok=True)
    return FeatureStore(repo_path=str(settings.feature_repo), fs_yaml_file=yaml_file)


def feast_env(settings: Settings) -> dict[str, str]:
    """Environment variables the Feast configuration of ``settings`` reads.

    Parameters
    ----------
    settings : Settings
        Installation settings.

    Returns
    -------
    dict of str to str
        ``AFTERBELL_HOME`` (both profiles: registry and online store paths of the embedded yaml,
        offline paths in ``data_sources.py``), ``AFTERBELL_FEAST_REGISTRY_URL`` and
        ``AFTERBELL_REDIS_URL`` (production yaml). Merge it over ``os.environ`` to run the
        ``feast`` CLI.

    Raises
    ------
    ValueError
        If ``settings.redis_url`` is a URL (``redis://...``) rather than Feast's connection string.
    """
    redis = settings.redis_url.strip()
    if "://" in redis:
        raise ValueError(
            f"AFTERBELL_REDIS_URL {redis!r} must be Feast's Redis connection string "
            "host:port[,db=N][,password=...], not a URL (e.g. 127.0.0.1:6379,db=0)"
        )
    return {
        "AFTERBELL_HOME": str(settings.home),
        "AFTERBELL_FEAST_REGISTRY_URL": settings.feast_registry_url,
        "AFTERBELL_REDIS_URL": redis,
    }


def feast_cli_args(settings: Settings) -> tuple[str, ...]:
    """Global options of the ``feast`` CLI for the repo and profile of ``settings``.

    Parameters
    ----------
    settings : Settings
        Installation settings.

    Returns
    -------
    tuple of str
        ``("--chdir", <feature_repo>, "--feature-store-yaml", <settings.feast_yaml>)``: run
        ``feast *feast_cli_args(s) plan`` with :func:`feast_env` merged over the environment.
    """
    return (
        "--chdir",
        str(settings.feature_repo),
        "--feature-store-yaml",
        str(settings.feast_yaml),
    )


def load_definitions(settings: Settings) -> list[Any]:
    """Import the definition modules of the feature repo and collect their Feast objects.

    Modules are executed afresh on every call (by file path, honouring ``.feastignore``), so the
    data-source paths follow the current ``AFTERBELL_HOME``. Sibling imports such as
    ``from entities import symbol`` resolve inside the repo folder, as under the ``feast`` CLI;
    the temporary ``sys.path`` / ``sys.modules`` entries are removed afterwards.

    Parameters
    ----------
    settings : Settings
        Installation settings (``feature_repo``; ``home`` is exported first).

    Returns
    -------
    list
        Unique (by identity) data sources, entities, feature views and feature services.
    """
    from feast import Entity, FeatureService, FeatureView
    from feast.data_source import DataSource
    from feast.repo_operations import get_repo_files

    _export_env(settings)
    kinds = (DataSource, Entity, FeatureView, FeatureService)
    objects: list[Any] = []
    repo = settings.feature_repo.resolve()
    files = get_repo_files(repo)
    with _repo_import_context(repo, [f.stem for f in files]):
        for file in files:
            module = _load_module(file)
            for name in sorted(vars(module)):
                obj = getattr(module, name)
                if isinstance(obj, kinds) and not any(obj is o for o in objects):
                    objects.append(obj)
    return objects


def apply_repo(settings: Settings) -> None:
    """Register every definition of ``feature_repo/`` (idempotent).

    Equivalent to ``cd feature_repo && feast apply``: objects of the project that are no longer
    defined in the repo are removed. Running it again with unchanged definitions registers the
    same objects (no duplicates, no version bump; only the registry timestamps move).

    Parameters
    ----------
    settings : Settings
        Installation settings.
    """
    objects = load_definitions(settings)
    store = get_store(settings)
    names = {(type(o).__name__, o.name) for o in objects}
    stale: list[Any] = [
        *(v for v in store.list_feature_views() if ("FeatureView", v.name) not in names),
        *(s for s in store.list_feature_services() if ("FeatureService", s.name) not in names),
        *(
            e
            for e in store.list_entities()
            if ("Entity", e.name) not in names and e.name != "__dummy"
        ),
    ]
    with _quiet():
        store.apply(objects, objects_to_delete=stale, partial=not stale)
    log.info(
        "feast apply: %d objects registered, %d removed (%s profile, %s)",
        len(objects),
        len(stale),
        settings.profile,
        settings.feast_yaml.name,
    )


@dataclass(frozen=True)
class MaterializeReport:
    """What one :func:`materialize` call loaded into the online store.

    Parameters
    ----------
    start, end : datetime
        The interval (UTC, both inclusive).
    rows : Mapping[str, int]
        Per feature view, the rows handed to the online store: Feast materialises the latest row
        per symbol inside the interval, so this is the number of symbols with at least one
        offline row in ``[start, end]`` (the SQLite store writes all of them; Redis skips a row
        that is not newer than the one it holds).
    seconds : float
        Wall-clock time of Feast's materialisation (excluding opening the store and counting).
    profile : str
        Settings profile (``embedded``: SQLite, ``production``: Redis).
    """

    start: datetime
    end: datetime
    rows: Mapping[str, int]
    seconds: float
    profile: str

    @property
    def views(self) -> tuple[str, ...]:
        """Feature views materialised, in order."""
        return tuple(self.rows)

    @property
    def total_rows(self) -> int:
        """Rows handed to the online store over every view."""
        return sum(self.rows.values())

    @property
    def rows_per_second(self) -> float:
        """``total_rows / seconds`` (``inf`` if the call took no measurable time)."""
        return self.total_rows / self.seconds if self.seconds > 0 else float("inf")


def materialize(
    settings: Settings,
    start: datetime,
    end: datetime,
    views: Sequence[str] | None = None,
) -> MaterializeReport:
    """Load the rows with ``start <= event_timestamp <= end`` into the online store.

    This is the interval-keyed task of a run: callers pass the run's data interval, never
    "everything since the last run" (``materialize_incremental`` is never used). The latest row
    per symbol in the interval becomes the online value (see the module notes about
    materialising older intervals).

    Parameters
    ----------
    settings : Settings
        Installation settings.
    start, end : datetime
        Interval bounds; naive datetimes are taken as UTC.
    views : sequence of str, optional
        Feature views to materialise (default: all of :data:`VIEW_COLUMNS`).

    Returns
    -------
    MaterializeReport
        Interval, rows handed to the online store per view, and the time it took.

    Raises
    ------
    ValueError
        If ``start > end`` or a view name is unknown.
    """
    start_utc, end_utc = _as_utc(start), _as_utc(end)
    if start_utc > end_utc:
        raise ValueError(f"materialize: start {start_utc} is after end {end_utc}")
    selected = list(views) if views is not None else list(VIEW_COLUMNS)
    for view in selected:
        _check_view(view)
    store = get_store(settings)
    rows = {v: _latest_rows_in(store, v, start_utc, end_utc) for v in selected}
    t0 = time.perf_counter()
    with _quiet():
        store.materialize(start_date=start_utc, end_date=end_utc, feature_views=selected)
    seconds = time.perf_counter() - t0
    log.info(
        "materialised %s over [%s, %s]: %d rows in %.2fs (%s)",
        ", ".join(selected),
        start_utc,
        end_utc,
        sum(rows.values()),
        seconds,
        settings.profile,
    )
    return MaterializeReport(
        start=start_utc,
        end=end_utc,
        rows=MappingProxyType(rows),
        seconds=seconds,
        profile=settings.profile,
    )


def historical_features(
    settings: Settings,
    entity_df: pd.DataFrame,
    features: Sequence[str] | str,
    *,
    engine: Literal["feast", "asof"] = "feast",
) -> pd.DataFrame:
    """Point-in-time join of features onto ``entity_df``.

    For each entity row the latest feature row with ``event_timestamp <= entity event_timestamp``
    (and not older than the view's TTL) is joined; later rows are never used.

    ``engine="feast"`` runs ``FeatureStore.get_historical_features`` (the file offline store, on
    dask). It costs tens of seconds whenever a view with the ``seq`` list column is joined, however
    few entity rows are asked for (about 40 s for 1,000 rows against 22 x 2,600 windows).
    ``engine="asof"`` gives the same answer from the same registered definitions (source path,
    timestamp field, TTL, features of each view) with one ``pandas.merge_asof`` per view, in about
    a second: use it for training sets.

    Parameters
    ----------
    settings : Settings
        Installation settings.
    entity_df : pandas.DataFrame
        ``symbol`` and ``event_timestamp`` (naive values are taken as UTC); other columns
        (labels, ``session``) are passed through.
    features : sequence of str or str
        Either ``"view:feature"`` references or the name of a feature service.
    engine : {"feast", "asof"}, default "feast"
        Join implementation (see above); both return the same frame.

    Returns
    -------
    pandas.DataFrame
        ``entity_df``'s columns plus one column per feature (named after the feature): one row
        per entity row, in its order, index reset. Entity rows without a feature row inside the
        TTL get nulls (integer features become nullable ``Int64`` then).

    Raises
    ------
    ValueError
        If ``entity_df`` lacks ``symbol`` or ``event_timestamp``, or ``engine`` is unknown.
    """
    missing = [c for c in (ENTITY_KEY, TIMESTAMP_COLUMN) if c not in entity_df.columns]
    if missing:
        raise ValueError(f"entity_df lacks columns {missing}")
    if engine not in ("feast", "asof"):
        raise ValueError(f"unknown join engine {engine!r}; use 'feast' or 'asof'")
    store = get_store(settings)
    if engine == "asof":
        return _asof_join(store, entity_df, features)
    refs: Any = store.get_feature_service(features) if isinstance(features, str) else list(features)
    integers = _integer_features(store, _requested(store, features))
    frame = entity_df.reset_index(drop=True).copy()
    frame[TIMESTAMP_COLUMN] = _to_utc(frame[TIMESTAMP_COLUMN])
    frame[_ROW_ID] = range(len(frame))
    with _quiet():
        joined = store.get_historical_features(entity_df=frame, features=refs).to_df()
    # The file offline store drops entity rows it has no (in-TTL) feature row for and returns the
    # rest in its own order: put every entity row back, in order, with nulls where unmatched.
    feature_cols = [c for c in joined.columns if c not in frame.columns]
    out = frame.merge(joined[[_ROW_ID, *feature_cols]], on=_ROW_ID, how="left", validate="1:1")
    # Integer features come back as float64 when Feast itself returns nulls and as int64 when it
    # drops the unmatched rows instead: settle on int64, or Int64 where there are nulls (the
    # dtypes of the asof engine).
    for col in feature_cols:
        if col in integers:
            nullable = bool(out[col].isna().any())
            out[col] = out[col].astype(pd.Int64Dtype() if nullable else "int64")
    return out.drop(columns=_ROW_ID).reset_index(drop=True)


def online_features(
    settings: Settings,
    symbols: Sequence[str],
    service: str = DEFAULT_SERVICE,
    *,
    features: Sequence[str] | None = None,
    store: FeatureStore | None = None,
) -> dict[str, dict[str, Any]]:
    """Latest online feature values per symbol.

    Parameters
    ----------
    settings : Settings
        Installation settings.
    symbols : sequence of str
        Symbols to look up (looked up as given; callers upper-case them).
    service : str, default "garch_lstm_v2"
        Feature service whose features are read.
    features : sequence of str, optional
        ``"view:feature"`` references to read instead of the service (e.g. only
        ``["lstm_window:asof"]`` for a freshness check).
    store : feast.FeatureStore, optional
        An already open store (the serving app keeps one); opened from ``settings`` otherwise.

    Returns
    -------
    dict of str to dict
        ``{symbol: {feature: value}}``. A symbol without an online row has every value ``None``
        (see :func:`missing_symbols`).
    """
    if not symbols:
        return {}
    fs = store if store is not None else get_store(settings)
    refs: Any = (list(features) if features is not None
                 else fs.get_feature_service(service, allow_cache=True))
    response = fs.get_online_features(
        features=refs,
        entity_rows=[{ENTITY_KEY: s} for s in symbols],
    ).to_dict()
    names = [k for k in response if k != ENTITY_KEY]
    return {sym: {name: response[name][i] for name in names} for i, sym in enumerate(symbols)}


def missing_symbols(rows: dict[str, dict[str, Any]]) -> list[str]:
    """Symbols of an :func:`online_features` answer that have no online row at all.

    Parameters
    ----------
    rows : dict of str to dict
        Output of :func:`online_features`.

    Returns
    -------
    list of str
        Symbols whose feature values are all ``None``.
    """
    return [s for s, values in rows.items() if all(v is None for v in values.values())]


# ------------------------------------------------------------------------------------- helpers
def _asof_join(
    store: FeatureStore, entity_df: pd.DataFrame, features: Sequence[str] | str
) -> pd.DataFrame:
    """Point-in-time join with ``pandas.merge_asof``, driven by the registered definitions."""
    import pyarrow.parquet as pq

    wanted = _requested(store, features)
    frame = entity_df.reset_index(drop=True).copy()
    frame[TIMESTAMP_COLUMN] = _to_utc(frame[TIMESTAMP_COLUMN])
    frame[_ROW_ID] = range(len(frame))
    left = frame[[_ROW_ID, ENTITY_KEY, TIMESTAMP_COLUMN]].sort_values(TIMESTAMP_COLUMN)
    left[ENTITY_KEY] = left[ENTITY_KEY].astype(str)
    feature_ts = "afterbell_feature_ts"
    for view_name, cols in wanted.items():
        fv: Any = store.get_feature_view(view_name)
        known = {f.name for f in fv.features}
        unknown = [c for c in cols if c not in known]
        if unknown:
            raise ValueError(f"feature view {view_name} has no features {unknown}")
        ts_field = fv.batch_source.timestamp_field
        table = pq.read_table(fv.batch_source.path, columns=[ENTITY_KEY, ts_field, *cols])
        right = table.to_pandas().rename(columns={ts_field: feature_ts})
        right[ENTITY_KEY] = right[ENTITY_KEY].astype(str)
        right[feature_ts] = _to_utc(right[feature_ts])
        right = right.sort_values(feature_ts, kind="stable")
        ttl = fv.ttl if fv.ttl and fv.ttl.total_seconds() > 0 else None
        left = pd.merge_asof(
            left,
            right,
            left_on=TIMESTAMP_COLUMN,
            right_on=feature_ts,
            by=ENTITY_KEY,
            direction="backward",
            allow_exact_matches=True,
            tolerance=pd.Timedelta(ttl) if ttl is not None else None,
        ).drop(columns=feature_ts)
        for col in cols:
            dtype = table.schema.field(col).type
            if str(dtype).startswith("int") and left[col].isna().any():
                left[col] = left[col].astype(pd.Int64Dtype())
    joined = left.drop(columns=[ENTITY_KEY, TIMESTAMP_COLUMN])
    out = frame.merge(joined, on=_ROW_ID, how="left", validate="1:1")
    return out.drop(columns=_ROW_ID).reset_index(drop=True)


def _latest_rows_in(store: FeatureStore, view: str, start: datetime, end: datetime) -> int:
    """Symbols with an offline row of ``view`` in ``[start, end]`` (what materialising writes)."""
    import pyarrow.dataset as ds

    fv: Any = store.get_feature_view(view)
    ts_field = fv.batch_source.timestamp_field
    path = Path(fv.batch_source.path)
    if not path.exists():
        return 0
    table = ds.dataset(path, format="parquet").to_table(columns=[ENTITY_KEY, ts_field])
    ts = _to_utc(table.column(ts_field).to_pandas())
    inside = (ts >= pd.Timestamp(start)) & (ts <= pd.Timestamp(end))
    symbols = table.column(ENTITY_KEY).to_pandas()[inside.to_numpy()]
    return int(symbols.nunique())


def _requested(store: FeatureStore, features: Sequence[str] | str) -> dict[str, list[str]]:
    """Features asked for, per view: ``"view:feature"`` references or a feature service name."""
    wanted: dict[str, list[str]] = {}
    if isinstance(features, str):
        for proj in store.get_feature_service(features).feature_view_projections:
            wanted.setdefault(proj.name, []).extend(f.name for f in proj.features)
    else:
        for ref in features:
            view, sep, feature = ref.partition(":")
            if not sep or not feature:
                raise ValueError(f"feature reference {ref!r} is not 'view:feature'")
            wanted.setdefault(view, []).append(feature)
    names = [f for fs_ in wanted.values() for f in fs_]
    dupes = sorted({f for f in names if names.count(f) > 1})
    if dupes:
        raise ValueError(f"features {dupes} are requested from more than one view")
    return wanted


def _integer_features(store: FeatureStore, wanted: Mapping[str, Sequence[str]]) -> set[str]:
    """Requested features whose registered type is an integer (``Int32``/``Int64``)."""
    from feast.types import Int32, Int64

    out: set[str] = set()
    for view, cols in wanted.items():
        for field in store.get_feature_view(view).features:
            if field.name in cols and field.dtype in (Int32, Int64):
                out.add(field.name)
    return out


def _check_view(view: str) -> None:
    if view not in VIEW_COLUMNS:
        raise ValueError(f"unknown feature view {view!r}; known: {', '.join(VIEW_COLUMNS)}")


def _export_env(settings: Settings) -> None:
    for key, value in feast_env(settings).items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _to_utc(values: pd.Series) -> pd.Series:
    ts = pd.to_datetime(values)
    ts = ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts.dt.tz_convert("UTC")
    return ts.astype("datetime64[ns, UTC]")


@contextlib.contextmanager
def _repo_import_context(repo: Path, stems: Sequence[str]) -> Iterator[None]:
    """Let repo modules import their siblings; restore ``sys.path``/``sys.modules`` after."""
    saved = {s: sys.modules.pop(s) for s in stems if s in sys.modules}
    sys.path.insert(0, str(repo))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(repo))
        for stem in stems:
            sys.modules.pop(stem, None)
        sys.modules.update(saved)


def _load_module(file: Path) -> ModuleType:
    """Execute ``file`` as module ``file.stem`` (reusing it if a sibling imported it already)."""
    existing = sys.modules.get(file.stem)
    if existing is not None and Path(getattr(existing, "__file__", "")).resolve() == file:
        return existing
    spec = importlib.util.spec_from_file_location(file.stem, file)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import feature repo file {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[file.stem] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Send Feast's progress prints and tqdm bars to the debug log instead of the console."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        yield
    text = (out.getvalue() + err.getvalue()).strip()
    if text:
        log.debug("feast: %s", text)
