"""Feature services: one per feature-set version of the registered forecaster.

A service is named after the model and its feature-set version (``garch_lstm_v1``) and that name
is tagged on every MLflow model version trained from it, so a model version always reads exactly
the features it was trained on. A service is never edited once models use it: a model that needs
other features (e.g. the range, volume or market columns of ``market_features``) gets a new
service next to the old one. The ``lstm_window`` view's ``seq`` follows the current
``WINDOW_COLUMNS``; each model version also records the window columns it was trained on (tag
``window_columns``), so a version whose windows no longer match is refused, not misread.
"""

from feast import FeatureService
from feature_views import garch_features, lstm_window, market_features

#: Inputs of the GARCH-LSTM volatility forecaster, version 1: the LSTM window plus the GARCH
#: forecast and the 22-session realised vol it is benchmarked against.
garch_lstm_v1 = FeatureService(
    name="garch_lstm_v1",
    features=[
        lstm_window,
        garch_features[["garch_forecast"]],
        market_features[["rv_22"]],
    ],
    description="Online/offline inputs of the garch_lstm_vol model (v1 feature set).",
    tags={"model": "garch_lstm_vol"},
)

#: Version 2 (Kim & Won inputs): the LSTM window (returns, realised vols, GARCH, EGARCH and
#: EWMA forecasts) plus the econometric forecasts it is benchmarked against.
garch_lstm_v2 = FeatureService(
    name="garch_lstm_v2",
    features=[
        lstm_window,
        garch_features[["garch_forecast", "egarch_forecast", "ewma_forecast"]],
        market_features[["rv_22"]],
    ],
    description="Online/offline inputs of the garch_lstm_vol model (v2: Kim & Won inputs).",
    tags={"model": "garch_lstm_vol"},
)
