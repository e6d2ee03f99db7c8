"""Feast entities of the afterbell feature store."""

from feast import Entity, ValueType

#: A tradable instrument (stock or index), keyed by its ticker as in ``Settings.universe``.
symbol = Entity(
    name="symbol",
    join_keys=["symbol"],
    value_type=ValueType.STRING,
    description="Ticker of an instrument of the universe (upper case, e.g. AAPL, SPX).",
)
