"""A proposed SQLite online store: Feast's ``SqliteOnlineStore`` with a batched write.

Feast 0.67's ``SqliteOnlineStore.online_write_batch`` already writes inside one transaction, but
calls ``conn.execute`` once per (entity, feature) value. This subclass builds the same rows (same
columns, same serialised values, same ``value_text``, same timestamps) and hands them to one
``executemany`` of the same UPSERT statement. Everything else (reads, ``update``, ``teardown``,
the table layout) is inherited unchanged, and the configurations it does not handle (vector
columns, the OpenAI-compatible ``value_num`` column) fall back to Feast's own method.

Use it with ``online_store: {type: <module>.FastSqliteOnlineStore, path: ...}`` in
``feature_store.yaml``; Feast then imports ``<module>.FastSqliteOnlineStoreConfig``. The class
name must end in ``SqliteOnlineStore``: ``SqliteOnlineStore._get_db_path`` asserts it.

The benchmark (``bench_features.py``) imports it from ``bench/`` to measure it beside the stock
store and checks that both leave byte-identical online tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from feast.feature_view import FeatureView
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.sqlite import (
    SqliteOnlineStore,
    SqliteOnlineStoreConfig,
    _quote_id,
    _table_id,
)
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import RepoConfig
from feast.utils import to_naive_utc
from pydantic import StrictStr

_NUMERIC = frozenset(("int64_val", "int32_val", "double_val", "float_val"))


class FastSqliteOnlineStoreConfig(SqliteOnlineStoreConfig):
    """Same options as ``type: sqlite``; ``type`` names this module's store class."""

    type: StrictStr = "fast_sqlite.FastSqliteOnlineStore"  # type: ignore[assignment]


def _value_text(val: ValueProto) -> str | None:
    """``feast.infra.online_stores.helpers.extract_text_and_num(val, False)[0]``, inlined."""
    kind = val.WhichOneof("val")
    if kind == "string_val":
        return val.string_val
    if kind in _NUMERIC:
        return str(getattr(val, kind))
    if kind == "bool_val":
        return str(val.bool_val)
    return None


class FastSqliteOnlineStore(SqliteOnlineStore):
    """``SqliteOnlineStore`` whose ``online_write_batch`` is one ``executemany`` per batch."""

    def online_write_batch(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]],
        progress: Callable[[int], Any] | None,
    ) -> None:
        store = config.online_store
        if store.vector_enabled or getattr(store, "enable_openai_compatible_store", False):
            super().online_write_batch(config, table, data, progress)
            return
        conn = self._get_conn(config)
        name = _table_id(
            config.project, table, config.registry.enable_online_feature_view_versioning
        )
        upsert = (
            f"INSERT INTO {_quote_id(name)} "
            "(entity_key, feature_name, value, value_text, event_ts, created_ts) "
            "VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(entity_key, feature_name) DO UPDATE SET value = excluded.value, "
            "value_text = excluded.value_text, event_ts = excluded.event_ts, "
            "created_ts = excluded.created_ts;"
        )
        version = config.entity_key_serialization_version

        def rows() -> Iterator[tuple[Any, ...]]:
            for entity_key, values, timestamp, created_ts in data:
                key = serialize_entity_key(entity_key, entity_key_serialization_version=version)
                ts = to_naive_utc(timestamp)
                created = to_naive_utc(created_ts) if created_ts is not None else None
                for feature_name, val in values.items():
                    yield (
                        key,
                        feature_name,
                        val.SerializeToString(),
                        _value_text(val),
                        ts,
                        created,
                    )

        with conn:
            conn.executemany(upsert, rows())
        if progress:
            progress(len(data))
