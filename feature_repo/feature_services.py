"""Feature services: one per model version scheme of the registered forecaster."""

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
