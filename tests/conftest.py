"""Shared fixtures: small settings on real replay data, a private state directory per test."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from pipelines.settings import Settings, TrainConfig, TransformerTrainConfig

#: A small slice of the real universe: two stocks (close only) and one index (OHLCV).
SMALL_UNIVERSE = ("AAPL", "MSFT", "SPX")
#: A session whose 60-session holdout (autumn 2017) the tiny-budget GARCH-LSTM wins on MAE against
#: GARCH (measured: 0.056 against 0.077), so the end-to-end test exercises promotion and serving.
SESSION = date(2017, 12, 29)

#: Secret values planted in the environment of the small cycle (tests/integration/conftest.py):
#: the serving token, cloud and database credentials, and passwords inside the URLs afterbell
#: reads. None of them may appear in any file the cycle writes or in its output (issue 8). They
#: are distinctive strings, so that a hit is a leak, not a coincidence.
PLANTED_SECRETS: dict[str, str] = {
    "serve_token": "plantedServeTok9f3k2a",
    "aws_secret": "plantedAwsSecret8d2kQ",
    "aws_key": "AKIAPLANTED7Q2E9X1Z",
    "pg_password": "plantedPgPass5m1xW",
    "mlflow_password": "plantedMlflowPw3z8R",
    "feast_password": "plantedFeastPw4k7T",
    "redis_password": "plantedRedisPw2j6Y",
}


def planted_secret_env() -> dict[str, str]:
    """The environment variables that carry :data:`PLANTED_SECRETS`."""
    p = PLANTED_SECRETS
    return {
        "AFTERBELL_SERVE_TOKEN": p["serve_token"],
        "AWS_ACCESS_KEY_ID": p["aws_key"],
        "AWS_SECRET_ACCESS_KEY": p["aws_secret"],
        "PGPASSWORD": p["pg_password"],
        "MLFLOW_TRACKING_USERNAME": "afterbell-e2e",
        "MLFLOW_TRACKING_PASSWORD": p["mlflow_password"],
        "AFTERBELL_FEAST_REGISTRY_URL":
            f"postgresql+psycopg://postgres:{p['feast_password']}@127.0.0.1:5432/afterbell_feast",
        "AFTERBELL_REDIS_URL": f"127.0.0.1:6379,db=3,password={p['redis_password']}",
    }


@pytest.fixture
def small_settings(tmp_path: Path) -> Settings:
    """Three real symbols, three years of history, tiny training budget."""
    return Settings(
        home=tmp_path / "afterbell",
        universe=SMALL_UNIVERSE,
        history_years=3,
        holdout_sessions=60,
        garch_refit_every=126,
        default_session=SESSION,
        train=TrainConfig(max_epochs=2, hidden=8, lookback=10, batch_size=128),
        transformer=TransformerTrainConfig(max_epochs=1, max_train_rows=2000, d_model=16,
                                           d_ff=32, n_layers=1),
    )


def small_env(home: Path) -> dict[str, str]:
    """Environment variables giving a subprocess the same small configuration."""
    return {
        "AFTERBELL_HOME": str(home),
        "AFTERBELL_SYMBOLS": ",".join(SMALL_UNIVERSE),
        "AFTERBELL_HISTORY_YEARS": "3",
        "AFTERBELL_HOLDOUT": "60",
        "AFTERBELL_GARCH_REFIT": "126",
        "AFTERBELL_MAX_EPOCHS": "3",
        "AFTERBELL_HIDDEN": "16",
        "AFTERBELL_TRANSFORMER_EPOCHS": "1",
        "AFTERBELL_TRANSFORMER_ROWS": "2000",
        "AFTERBELL_SESSION": SESSION.isoformat(),
        "AFTERBELL_CONFIG": str(Path(__file__).with_name("small_cycle.toml")),
    }
