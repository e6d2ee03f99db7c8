"""Batch sources of the afterbell feature views: one parquet file per view in the offline store.

The files are written (whole-table, atomically) by ``pipelines.feature_store.write_offline_table``
under ``$AFTERBELL_HOME/offline``. The path is resolved when this module is imported, so
``AFTERBELL_HOME`` must be set beforehand (``pipelines.feature_store`` does it; export it for
the ``feast`` CLI); without it the checkout's ``.afterbell`` folder is used, as in
``Settings.from_env``.
"""

import os
from pathlib import Path

from feast import FileSource


def _offline_path(table: str) -> str:
    """Absolute path of the offline parquet file ``table`` under the afterbell home.

    Parameters
    ----------
    table : str
        File stem (the feature view name).

    Returns
    -------
    str
        ``$AFTERBELL_HOME/offline/<table>.parquet``.
    """
    default = Path(__file__).resolve().parent.parent / ".afterbell"
    home = Path(os.environ.get("AFTERBELL_HOME") or default).expanduser().resolve()
    return str(home / "offline" / f"{table}.parquet")


market_features_source = FileSource(
    name="market_features_source",
    path=_offline_path("market_features"),
    timestamp_field="event_timestamp",
    description="Close-analysis features per (symbol, session); event_timestamp = session close.",
)

garch_features_source = FileSource(
    name="garch_features_source",
    path=_offline_path("garch_features"),
    timestamp_field="event_timestamp",
    description="GARCH(1,1) conditional vol, forecast and standardised residual per session.",
)

option_features_source = FileSource(
    name="option_features_source",
    path=_offline_path("option_features"),
    timestamp_field="event_timestamp",
    description="30-day ATM straddle priced from the GARCH forecast and the Treasury rate.",
)

lstm_window_source = FileSource(
    name="lstm_window_source",
    path=_offline_path("lstm_window"),
    timestamp_field="event_timestamp",
    description="Flattened LSTM input windows (lookback x WINDOW_COLUMNS) ending at a session.",
)
