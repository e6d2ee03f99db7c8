"""Typed settings for one afterbell installation.

Every path the stack writes lives under :attr:`Settings.home` (``$AFTERBELL_HOME``, default
``.afterbell/`` in the checkout). Settings are read from the environment once, by the adapters at
the edge (CLI, DAG tasks, the serving app), and passed down explicitly: no module-level globals.

Environment knobs (all optional)::

    AFTERBELL_HOME            state directory                     (.afterbell in the checkout)
    AFTERBELL_PROFILE         embedded | production               (embedded)
    AFTERBELL_SYMBOLS         comma-separated demo universe       (all 22 replay symbols)
    AFTERBELL_SYNTHETIC       a synthetic universe instead of the replay data, for scale tests:
                              ``symbols=500[,seed=7][,years=Y]`` (or just ``500``); its symbols
                              are SYN0000... plus the SPX index, its years the history's (none)
    AFTERBELL_HISTORY_YEARS   sessions of history the first run backfills, in years   (10)
    AFTERBELL_SESSION         default session for ``afterbell run``                   (2018-12-31)
    AFTERBELL_MAX_EPOCHS      LSTM training epochs budget                             (30)
    AFTERBELL_HIDDEN          LSTM hidden units                                       (32)
    AFTERBELL_HOLDOUT         out-of-sample sessions used by the validation stage     (250)
    AFTERBELL_GARCH_REFIT     sessions between expanding-window GARCH refits in history (63)
    AFTERBELL_SEED            global seed                                             (7)
    AFTERBELL_WORKERS         processes of a stage's per-symbol work (GARCH backfill) (0: all)
    AFTERBELL_MLFLOW_URI      MLflow tracking URI     (embedded: sqlite:///$AFTERBELL_HOME/mlflow/mlflow.db;
                              production: http://127.0.0.1:5000, the tracking server)
    AFTERBELL_MLFLOW_ARTIFACTS  artifact root of new experiments, e.g. ``s3://bucket/mlflow``
                              (embedded: $AFTERBELL_HOME/mlflow/artifacts; production: the
                              tracking server's own, its ``--artifacts-destination``; required
                              when the production tracking URI is a database URL)
    AFTERBELL_SERVE_HOST, AFTERBELL_SERVE_PORT                           (127.0.0.1, 8000)
    AFTERBELL_SERVE_TOKEN     bearer token the serving app requires (never logged)     (none)
    AFTERBELL_SERVE_POLL_SECONDS   period of the serving app's champion alias polling  (10)
    AFTERBELL_SERVE_MAX_BATCH most symbols one ``POST /predict`` may ask for           (100)
    AFTERBELL_SERVE_SECONDS   serve for at most this many seconds (a shortened session) (none)
    AFTERBELL_SERVE_FOLLOW    1: ``afterbell serve`` follows the NYSE clock (the session of the
                              day from its pre-market window on), not AFTERBELL_SESSION    (0)
    AFTERBELL_MAX_TRAIN_ROWS  cap on training windows, most recent kept (0: none)     (0)
    AFTERBELL_OPTUNA_STORAGE  Optuna storage URL (embedded: sqlite:///$AFTERBELL_HOME/optuna/optuna.db;
                              production: postgresql+psycopg://postgres@127.0.0.1:5432/afterbell_optuna)
    AFTERBELL_FEAST_REGISTRY_URL   Feast SQL registry of the production profile (SQLAlchemy URL)
                              (postgresql+psycopg://postgres@127.0.0.1:5432/afterbell_feast)
    AFTERBELL_AIRFLOW_DB_URL  Airflow metadata database, SQLAlchemy URL  (embedded: SQLite, home;
                              production: postgresql+psycopg://postgres@127.0.0.1:5432/afterbell_airflow)
    AFTERBELL_CELERY_BROKER_URL      Celery broker, production    (redis://127.0.0.1:6379/0)
    AFTERBELL_CELERY_RESULT_BACKEND  Celery results, production   (db+ the Airflow metadata URL)
    AFTERBELL_LAKE_URL        object-store copy of the lake, ``s3://bucket/prefix`` (embedded: none;
                              production: s3://afterbell-lake/lake, on AFTERBELL_S3_ENDPOINT_URL)
    AFTERBELL_REDIS_URL       Feast Redis online store of the production profile, in Feast's
                              connection-string format ``host:port[,db=N][,password=...]``
                              (127.0.0.1:6379)

Secrets are never part of these values in the repository: a PostgreSQL password comes from
``PGPASSWORD`` (or ``~/.pgpass``), read by libpq at connection time, S3 keys from
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (boto3; ``MLFLOW_S3_ENDPOINT_URL`` for an
S3-compatible store), the tracking server's login from ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD`` (MLflow). A password written into one of the URLs above still works,
but ``repr(Settings)`` and :meth:`Settings.describe` (what goes to logs, records and MLflow)
mask it (:func:`redact_url`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import date
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, overload

if TYPE_CHECKING:
    from pipelines.synthetic import UniverseSpec

#: Root of the checkout (the folder holding ``dags/``, ``feature_repo/``, ``pipelines/``).
REPO_ROOT = Path(__file__).resolve().parent.parent

#: Symbols of the packaged replay source: skfolio's 20 S&P 500 stocks (adjusted close, 1990-2022)
#: and arch's S&P 500 / NASDAQ composite index OHLCV (1999-2018).
STOCKS: tuple[str, ...] = (
    "AAPL", "AMD", "BAC", "BBY", "CVX", "GE", "HD", "JNJ", "JPM", "KO",
    "LLY", "MRK", "MSFT", "PEP", "PFE", "PG", "RRC", "UNH", "WMT", "XOM",
)  # fmt: skip
INDICES: tuple[str, ...] = ("SPX", "NDX")
DEFAULT_UNIVERSE: tuple[str, ...] = STOCKS + INDICES
#: GICS sector of each replay symbol (the ``max_sector`` limit); the indices are their own.
SECTORS: Mapping[str, str] = MappingProxyType({
    "AAPL": "Information Technology", "AMD": "Information Technology",
    "MSFT": "Information Technology", "BAC": "Financials", "JPM": "Financials",
    "BBY": "Consumer Discretionary", "HD": "Consumer Discretionary", "CVX": "Energy",
    "RRC": "Energy", "XOM": "Energy", "GE": "Industrials", "JNJ": "Health Care",
    "LLY": "Health Care", "MRK": "Health Care", "PFE": "Health Care", "UNH": "Health Care",
    "KO": "Consumer Staples", "PEP": "Consumer Staples", "PG": "Consumer Staples",
    "WMT": "Consumer Staples", "SPX": "Index: S&P 500", "NDX": "Index: NASDAQ",
})

#: Registered model name of the volatility forecaster and its aliases (CONTRACT.md).
MODEL_NAME = "garch_lstm_vol"
ALIAS_CHALLENGER = "challenger"
ALIAS_CHAMPION = "champion"
ALIAS_PREVIOUS = "previous"
#: Registered model name of the PatchTST multi-task return forecaster (full retrain only).
TRANSFORMER_MODEL_NAME = "patchtst_returns"

#: Columns of the LSTM input window, oldest session first (the ``seq`` feature is row-major
#: lookback x len(WINDOW_COLUMNS)): Kim & Won's inputs, returns, realised vols and the GARCH,
#: EGARCH and EWMA forecasts (plus the GARCH conditional vol).
WINDOW_COLUMNS: tuple[str, ...] = (
    "ret_1", "rv_5", "rv_22", "garch_vol", "garch_forecast", "egarch_forecast", "ewma_forecast",
)  # fmt: skip

#: Deployment profiles: ``embedded`` (SQLite everywhere, no service) and ``production``
#: (PostgreSQL / Redis services). The profile picks, among others, the Feast configuration file.
PROFILES: tuple[str, ...] = ("embedded", "production")

#: Feast configuration file of each profile, in ``feature_repo/``.
FEAST_YAML_FILES: Mapping[str, str] = MappingProxyType(
    {"embedded": "feature_store.yaml", "production": "feature_store.production.yaml"}
)

#: Local defaults of the production Feast services (the machine's PostgreSQL and Redis).
DEFAULT_FEAST_REGISTRY_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/afterbell_feast"
DEFAULT_REDIS_URL = "127.0.0.1:6379"
#: Production defaults of MLflow (the tracking server of ``docker/``, which keeps its metadata in
#: PostgreSQL and proxies artifacts to S3) and of the Optuna storage (PostgreSQL; the database
#: must exist, Optuna creates its tables).
DEFAULT_PRODUCTION_MLFLOW_URI = "http://127.0.0.1:5000"
DEFAULT_PRODUCTION_OPTUNA_STORAGE = "postgresql+psycopg://postgres@127.0.0.1:5432/afterbell_optuna"
#: Production defaults of Airflow: metadata on PostgreSQL (the database must exist; ``airflow db
#: migrate`` creates its tables), the Celery executor with a Redis broker (database 0; Feast's
#: online store keeps to its own) and results in the metadata database.
DEFAULT_PRODUCTION_AIRFLOW_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/afterbell_airflow"
DEFAULT_PRODUCTION_CELERY_BROKER = "redis://127.0.0.1:6379/0"
#: Production default of the lake: a bucket of the S3-compatible store
#: (``AFTERBELL_S3_ENDPOINT_URL``).
DEFAULT_PRODUCTION_LAKE_URL = "s3://afterbell-lake/lake"
#: What :func:`redact_url` puts in place of a secret.
MASK = "***"

_USERINFO_PASSWORD = re.compile(r"(?P<head>://[^/?#@:]*:)[^/?#@]*@")
_SECRET_PARAM = re.compile(
    r"(?P<key>(?<![A-Za-z0-9])(?:password|passwd|pwd|secret|token|api_key|access_key|"
    r"secret_key|aws_secret_access_key|sas_token)\s*=\s*)[^&,;\s]+",
    re.IGNORECASE,
)


def redact_url(url: str) -> str:
    """``url`` with every password it carries masked, for logs, records and MLflow.

    Masks the password of the user info (``scheme://user:PASSWORD@host``, SQLAlchemy and HTTP
    URLs) and the value of secret-looking parameters (``password=``, ``token=``, ... in a query
    string or in Feast's Redis connection string ``host:port,password=...``).

    Parameters
    ----------
    url : str
        Any URL or connection string (may be empty).

    Returns
    -------
    str
        The same text with :data:`MASK` in place of each secret.
    """
    masked = _USERINFO_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}@", url)
    return _SECRET_PARAM.sub(lambda m: f"{m.group('key')}{MASK}", masked)


@dataclass(frozen=True)
class TrainConfig:
    """Budget and architecture of the GARCH-LSTM heavy stage."""

    lookback: int = 20
    hidden: int = 32
    layers: int = 1
    dropout: float = 0.1
    lr: float = 3e-3
    batch_size: int = 256
    max_epochs: int = 30
    patience: int = 4
    seed: int = 7
    #: Cap on training windows (most recent kept); 0 means no cap.
    max_train_rows: int = 0


@dataclass(frozen=True)
class TransformerTrainConfig:
    """Budget and architecture of the PatchTST forecaster of the full (monthly) retrain.

    It reads the same Feast windows as the GARCH-LSTM (``lookback`` = ``TrainConfig.lookback``
    sessions of ``WINDOW_COLUMNS``) and forecasts the log return over each of ``horizons``
    sessions (direction, mean and vol, quantiles); registered as ``model_name``.
    """

    model_name: str = TRANSFORMER_MODEL_NAME
    horizons: tuple[int, ...] = (1, 5, 22)
    patch_len: int = 8
    stride: int = 4
    d_model: int = 32
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 64
    dropout: float = 0.1
    lr: float = 1e-3
    batch_size: int = 256
    max_epochs: int = 8
    patience: int = 3
    seed: int = 7
    #: Cap on training windows (most recent kept); 0 means no cap.
    max_train_rows: int = 20000
    #: Miscoverage of the holdout intervals (0.2: 80% intervals).
    alpha: float = 0.2
    #: Scored holdout rows needed before the 60% daily-direction leakage alarm applies: on a
    #: few dozen sessions of a few correlated symbols an honest model passes 60% by chance.
    leakage_min_rows: int = 500


#: Settings fields holding URLs or connection strings: masked in ``repr`` (:func:`redact_url`).
_URL_FIELDS: frozenset[str] = frozenset(
    {"mlflow_uri", "mlflow_artifact_root", "optuna_storage", "feast_registry_url", "redis_url",
     "airflow_db_url", "celery_broker_url", "celery_result_backend", "lake_url"}
)


@dataclass(frozen=True, repr=False)
class Settings:
    """Everything a stage needs to know about where it runs and how big its budgets are.

    ``repr`` masks the passwords of the URL fields and leaves out the serving token.
    """

    home: Path
    profile: str = "embedded"
    universe: tuple[str, ...] = DEFAULT_UNIVERSE
    history_years: int = 10
    default_session: date = date(2018, 12, 31)
    #: Forecast horizon in sessions: the target is realised volatility over the next ``horizon``.
    horizon: int = 5
    #: Further GARCH-LSTM heads beside ``horizon``: realised vol over the next session and the
    #: next 22 (Kim & Won's horizons). The label embargo is the longest horizon.
    extra_horizons: tuple[int, ...] = (1, 22)
    garch_refit_every: int = 63
    garch_min_obs: int = 250
    #: Processes of the per-symbol work of a stage (the GARCH backfill; 0: every core).
    workers: int = 0
    holdout_sessions: int = 250
    train: TrainConfig = field(default_factory=TrainConfig)
    transformer: TransformerTrainConfig = field(default_factory=TransformerTrainConfig)
    model_name: str = MODEL_NAME
    mlflow_uri: str = ""
    serve_host: str = "127.0.0.1"
    serve_port: int = 8000
    #: Bearer token the serving app requires on every route but ``/health`` and ``/metrics``
    #: (None: no auth). Kept out of ``repr`` so that it never reaches a log.
    serve_token: str | None = field(default=None, repr=False)
    #: Seconds between two resolutions of the ``champion`` alias by the serving app: a promotion
    #: is served within this period plus the model's load time (at most 20 s, so within 30 s).
    serve_poll_seconds: float = 10.0
    #: Most symbols one ``POST /predict`` may ask for.
    serve_max_batch: int = 100
    #: Serve for at most this many seconds (None: until the session's close); also runs the
    #: service for this long when the session is already over (``airflow dags test``).
    serve_seconds: float | None = None
    #: ``afterbell serve`` as a long-running service: the served session follows the NYSE
    #: clock (each session from its pre-market window on) instead of ``default_session``.
    serve_follow: bool = False
    #: SQLAlchemy URL of Feast's SQL registry (production profile only).
    feast_registry_url: str = DEFAULT_FEAST_REGISTRY_URL
    #: Feast Redis connection string ``host:port[,db=N][,password=...]`` (production only).
    redis_url: str = DEFAULT_REDIS_URL
    #: Artifact root of the experiments afterbell creates ("" : the profile's default, see
    #: :meth:`artifact_location`).
    mlflow_artifact_root: str = ""
    #: SQLAlchemy URL of the Optuna storage ("" : the profile's default, see
    #: :attr:`optuna_storage_url`).
    optuna_storage: str = ""
    #: A synthetic universe (:mod:`pipelines.synthetic`) replacing the replay data (None: the
    #: replay data); ``universe`` is then its symbols.
    synthetic: UniverseSpec | None = None
    #: SQLAlchemy URL of Airflow's metadata database ("" : the profile's default, see
    #: :attr:`airflow_sql_alchemy_conn`).
    airflow_db_url: str = ""
    #: Celery broker of the production profile ("" : :data:`DEFAULT_PRODUCTION_CELERY_BROKER`).
    celery_broker_url: str = ""
    #: Celery result backend of the production profile ("" : the Airflow metadata database,
    #: ``db+`` + :attr:`airflow_sql_alchemy_conn`).
    celery_result_backend: str = ""
    #: Object-store URL of the lake (``s3://bucket/prefix``) ("" : the profile's default, see
    #: :attr:`lake_store_url`).
    lake_url: str = ""

    def __post_init__(self) -> None:
        _check_serving(self)
        if self.synthetic is not None:
            if self.universe == DEFAULT_UNIVERSE:
                object.__setattr__(self, "universe", self.synthetic.universe)
            extra = sorted(set(self.universe) - set(self.synthetic.universe))
            if extra:
                raise ValueError(f"universe names symbols the synthetic universe does not "
                                 f"have: {extra[:10]}")
        _check_profile(self)

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            if not f.repr:
                continue
            value = getattr(self, f.name)
            if f.name in _URL_FIELDS:
                value = redact_url(str(value))
            shown.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    @property
    def label_horizon(self) -> int:
        """Longest label of the GARCH-LSTM (sessions): the embargo between its segments."""
        return max(self.horizon, *self.extra_horizons)

    # ----------------------------------------------------------------------------- paths
    @property
    def lake_dir(self) -> Path:
        """Parquet lake, one folder per table, partitioned ``session=YYYY-MM-DD``."""
        return self.home / "lake"

    @property
    def offline_dir(self) -> Path:
        """Feast offline store: one parquet file per feature view source."""
        return self.home / "offline"

    @property
    def feast_dir(self) -> Path:
        """Feast registry and SQLite online store."""
        return self.home / "feast"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def sectors(self) -> Mapping[str, str]:
        """Sector of every symbol of the data source (the orders' ``max_sector`` limit)."""
        if self.synthetic is None:
            return SECTORS
        from pipelines.sources import SyntheticSource

        return MappingProxyType(SyntheticSource(self.synthetic).sectors())

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "mlflow" / "artifacts"

    @property
    def reports_dir(self) -> Path:
        """Great Expectations project root; Data Docs are built below it."""
        return self.home / "reports"

    @property
    def quarantine_dir(self) -> Path:
        return self.home / "quarantine"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def runs_dir(self) -> Path:
        """Small per-session JSON summaries written by the stages."""
        return self.home / "runs"

    @property
    def feature_repo(self) -> Path:
        return REPO_ROOT / "feature_repo"

    @property
    def feast_yaml(self) -> Path:
        """Feast configuration file of the profile, in ``feature_repo/``.

        Raises
        ------
        ValueError
            If :attr:`profile` is not one of :data:`PROFILES`.
        """
        try:
            name = FEAST_YAML_FILES[self.profile]
        except KeyError:
            raise ValueError(
                f"unknown profile {self.profile!r}; known: {', '.join(PROFILES)}"
            ) from None
        return self.feature_repo / name

    @property
    def dags_dir(self) -> Path:
        return REPO_ROOT / "dags"

    @property
    def tracking_uri(self) -> str:
        """MLflow tracking (and registry) URI: :attr:`mlflow_uri`, else the profile's default
        (embedded: SQLite under the home; production: the tracking server on loopback)."""
        if self.mlflow_uri:
            return self.mlflow_uri
        if self.profile == "production":
            return DEFAULT_PRODUCTION_MLFLOW_URI
        return f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def tracking_is_server(self) -> bool:
        """Whether :attr:`tracking_uri` names a tracking server (HTTP) rather than a database."""
        return self.tracking_uri.split(":", 1)[0].lower() in ("http", "https")

    def artifact_location(self, experiment: str) -> str | None:
        """Artifact location of a new experiment ``experiment``.

        Parameters
        ----------
        experiment : str
            Name of the experiment.

        Returns
        -------
        str or None
            :attr:`mlflow_artifact_root` + ``/experiment`` when set (e.g.
            ``s3://bucket/mlflow``); otherwise, embedded: the home's ``mlflow/artifacts`` folder
            (as a ``file://`` URI); production: None, the tracking server's default (it proxies
            artifacts to S3).

        Raises
        ------
        ValueError
            In production, when the tracking URI is a database URL and no artifact root is set
            (MLflow would write artifacts to the client's working directory).
        """
        root = self.mlflow_artifact_root.strip()
        if root:
            return f"{root.rstrip('/')}/{experiment}"
        if self.profile != "production":
            return self.artifacts_dir.as_uri()
        if self.tracking_is_server:
            return None
        raise ValueError(
            "the production profile keeps artifacts in S3: set AFTERBELL_MLFLOW_ARTIFACTS "
            "(e.g. s3://bucket/mlflow) when AFTERBELL_MLFLOW_URI is a database URL "
            f"({redact_url(self.tracking_uri)})"
        )

    @property
    def optuna_storage_url(self) -> str:
        """SQLAlchemy URL of the Optuna storage: :attr:`optuna_storage`, else the profile's
        default (embedded: ``sqlite:///$AFTERBELL_HOME/optuna/optuna.db``; production:
        :data:`DEFAULT_PRODUCTION_OPTUNA_STORAGE`). The SQLite folder is not created here."""
        if self.optuna_storage:
            return self.optuna_storage
        if self.profile == "production":
            return DEFAULT_PRODUCTION_OPTUNA_STORAGE
        return f"sqlite:///{self.home / 'optuna' / 'optuna.db'}"

    @property
    def airflow_sql_alchemy_conn(self) -> str:
        """Airflow metadata database: :attr:`airflow_db_url`, else the profile's default
        (embedded: SQLite under the home with a 60 s busy timeout; production:
        :data:`DEFAULT_PRODUCTION_AIRFLOW_DB`)."""
        if self.airflow_db_url:
            return self.airflow_db_url
        if self.profile == "production":
            return DEFAULT_PRODUCTION_AIRFLOW_DB
        return f"sqlite:///{self.airflow_home / 'airflow.db'}?timeout=60"

    @property
    def celery_broker(self) -> str:
        """Celery broker URL (production profile): :attr:`celery_broker_url` or the default."""
        return self.celery_broker_url or DEFAULT_PRODUCTION_CELERY_BROKER

    @property
    def celery_results(self) -> str:
        """Celery result backend (production profile): :attr:`celery_result_backend`, else the
        Airflow metadata database (``db+postgresql+psycopg://...``)."""
        return self.celery_result_backend or f"db+{self.airflow_sql_alchemy_conn}"

    @property
    def lake_store_url(self) -> str:
        """Object-store URL of the lake, or "" when the lake lives only under the home.

        :attr:`lake_url` when set; otherwise embedded: "" (``$AFTERBELL_HOME/lake``), production:
        :data:`DEFAULT_PRODUCTION_LAKE_URL`.
        """
        if self.lake_url:
            return self.lake_url
        return DEFAULT_PRODUCTION_LAKE_URL if self.profile == "production" else ""

    def describe(self) -> dict[str, str]:
        """Where this installation keeps its state, secrets masked: for logs, stage records and
        MLflow tags (never the raw URLs).

        Returns
        -------
        dict of str to str
            ``profile``, ``home``, ``mlflow_tracking_uri``, ``mlflow_artifacts``,
            ``optuna_storage``, ``feast_registry_url`` and ``redis_url``, each URL passed
            through :func:`redact_url`.
        """
        try:
            artifacts = self.artifact_location("<experiment>") or "(tracking server default)"
        except ValueError:
            artifacts = "(unset)"
        return {
            "profile": self.profile,
            "home": str(self.home),
            "mlflow_tracking_uri": redact_url(self.tracking_uri),
            "mlflow_artifacts": redact_url(artifacts),
            "optuna_storage": redact_url(self.optuna_storage_url),
            "feast_registry_url": redact_url(self.feast_registry_url),
            "redis_url": redact_url(self.redis_url),
            "airflow_db": redact_url(self.airflow_sql_alchemy_conn),
            "lake_store": redact_url(self.lake_store_url or str(self.lake_dir)),
        }

    def with_(self, **changes: object) -> Settings:
        """A copy with some fields replaced (tests and the CLI use it)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    # ----------------------------------------------------------------------------- env
    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Read the settings from ``environ`` (default: the process environment)."""
        env = dict(os.environ if environ is None else environ)
        home = Path(env.get("AFTERBELL_HOME") or REPO_ROOT / ".afterbell").expanduser().resolve()
        symbols = tuple(
            s.strip().upper() for s in env.get("AFTERBELL_SYMBOLS", "").split(",") if s.strip()
        )
        unknown = sorted(set(symbols) - set(DEFAULT_UNIVERSE))
        if unknown:
            raise ValueError(
                f"AFTERBELL_SYMBOLS names symbols the replay source does not have: {unknown}; "
                f"known: {', '.join(DEFAULT_UNIVERSE)}"
            )
        train = TrainConfig(
            max_epochs=_int(env, "AFTERBELL_MAX_EPOCHS", TrainConfig.max_epochs),
            hidden=_int(env, "AFTERBELL_HIDDEN", TrainConfig.hidden),
            seed=_int(env, "AFTERBELL_SEED", TrainConfig.seed),
            max_train_rows=_int(env, "AFTERBELL_MAX_TRAIN_ROWS", TrainConfig.max_train_rows),
        )
        transformer = TransformerTrainConfig(
            max_epochs=_int(env, "AFTERBELL_TRANSFORMER_EPOCHS", TransformerTrainConfig.max_epochs),
            max_train_rows=_int(env, "AFTERBELL_TRANSFORMER_ROWS",
                                TransformerTrainConfig.max_train_rows),
        )
        session = env.get("AFTERBELL_SESSION")
        default_session = date.fromisoformat(session) if session else date(2018, 12, 31)
        history_years = _int(env, "AFTERBELL_HISTORY_YEARS", 10)
        synthetic = _synthetic(env.get("AFTERBELL_SYNTHETIC", ""), default_session,
                               history_years)
        if synthetic is not None:
            if symbols:
                raise ValueError("set AFTERBELL_SYMBOLS or AFTERBELL_SYNTHETIC, not both: a "
                                 "synthetic universe names its own symbols")
            symbols = synthetic.universe
        profile = env.get("AFTERBELL_PROFILE") or "embedded"
        if profile not in PROFILES:
            raise ValueError(
                f"AFTERBELL_PROFILE must be one of {', '.join(PROFILES)}, got {profile!r}"
            )
        return cls(
            home=home,
            profile=profile,
            universe=symbols or DEFAULT_UNIVERSE,
            history_years=history_years,
            default_session=default_session,
            holdout_sessions=_int(env, "AFTERBELL_HOLDOUT", 250),
            garch_refit_every=_int(env, "AFTERBELL_GARCH_REFIT", 63),
            workers=_int(env, "AFTERBELL_WORKERS", 0),
            train=train,
            transformer=transformer,
            mlflow_uri=env.get("AFTERBELL_MLFLOW_URI", ""),
            serve_host=env.get("AFTERBELL_SERVE_HOST", "127.0.0.1"),
            serve_port=_int(env, "AFTERBELL_SERVE_PORT", 8000),
            serve_token=(env.get("AFTERBELL_SERVE_TOKEN") or "").strip() or None,
            serve_poll_seconds=_float(env, "AFTERBELL_SERVE_POLL_SECONDS", 10.0),
            serve_max_batch=_int(env, "AFTERBELL_SERVE_MAX_BATCH", 100),
            serve_seconds=_float(env, "AFTERBELL_SERVE_SECONDS", None),
            serve_follow=_bool(env, "AFTERBELL_SERVE_FOLLOW"),
            feast_registry_url=env.get("AFTERBELL_FEAST_REGISTRY_URL")
            or DEFAULT_FEAST_REGISTRY_URL,
            redis_url=env.get("AFTERBELL_REDIS_URL") or DEFAULT_REDIS_URL,
            mlflow_artifact_root=env.get("AFTERBELL_MLFLOW_ARTIFACTS", "").strip(),
            optuna_storage=env.get("AFTERBELL_OPTUNA_STORAGE", "").strip(),
            synthetic=synthetic,
            airflow_db_url=env.get("AFTERBELL_AIRFLOW_DB_URL", "").strip(),
            celery_broker_url=env.get("AFTERBELL_CELERY_BROKER_URL", "").strip(),
            celery_result_backend=env.get("AFTERBELL_CELERY_RESULT_BACKEND", "").strip(),
            lake_url=env.get("AFTERBELL_LAKE_URL", "").strip(),
        )


def _synthetic(value: str, end: date, years: int) -> UniverseSpec | None:
    """The :class:`~pipelines.synthetic.UniverseSpec` of ``AFTERBELL_SYNTHETIC`` (None if empty).

    ``value`` is ``symbols=N[,seed=S][,years=Y]`` or just ``N``; the universe ends on ``end``
    (the default session) and covers ``years`` (the history's) unless given.
    """
    value = value.strip()
    if not value:
        return None
    from pipelines.synthetic import UniverseSpec

    fields_: dict[str, int] = {"years": years}
    for i, item in enumerate(p.strip() for p in value.split(",")):
        key, sep, raw = item.partition("=")
        if not sep and i == 0:
            key, raw = "symbols", key
        key = key.strip()
        if key not in ("symbols", "seed", "years"):
            raise ValueError(f"AFTERBELL_SYNTHETIC: unknown field {key!r} in {value!r} "
                             "(expected symbols=N[,seed=S][,years=Y])")
        try:
            fields_[key] = int(raw)
        except ValueError:
            raise ValueError(f"AFTERBELL_SYNTHETIC: {key} must be an integer, got "
                             f"{raw.strip()!r}") from None
    if "symbols" not in fields_:
        raise ValueError(f"AFTERBELL_SYNTHETIC: {value!r} names no number of symbols "
                         "(expected symbols=N[,seed=S][,years=Y])")
    try:
        return UniverseSpec(end=end, **fields_)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ValueError(f"AFTERBELL_SYNTHETIC: {exc}") from None


def _bool(env: dict[str, str], key: str) -> bool:
    raw = (env.get(key) or "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{key} must be 1/true/yes/on or 0/false/no/off, got {env.get(key)!r}")


def _int(env: dict[str, str], key: str, default: int) -> int:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{key} must be an integer, got {raw!r}") from None


#: Longest champion polling period: a promotion must be served within 30 s, and loading the new
#: version takes some of them.
MAX_SERVE_POLL_SECONDS = 20.0


def _check_serving(s: Settings) -> None:
    """Refuse serving settings the app cannot honour, naming the field and its variable."""
    if s.workers < 0:
        raise ValueError(f"workers (AFTERBELL_WORKERS) must be >= 0 (0: every core), "
                         f"got {s.workers!r}")
    if not 0 < s.serve_poll_seconds <= MAX_SERVE_POLL_SECONDS:
        raise ValueError(
            f"serve_poll_seconds (AFTERBELL_SERVE_POLL_SECONDS) must be > 0 and <= "
            f"{MAX_SERVE_POLL_SECONDS:g} (a promotion is served within 30 s), "
            f"got {s.serve_poll_seconds!r}"
        )
    if not 1 <= s.serve_max_batch <= 10_000:
        raise ValueError(
            "serve_max_batch (AFTERBELL_SERVE_MAX_BATCH) must be between 1 and 10000, "
            f"got {s.serve_max_batch!r}"
        )
    if s.serve_seconds is not None and not s.serve_seconds > 0:
        raise ValueError(
            f"serve_seconds (AFTERBELL_SERVE_SECONDS) must be > 0, got {s.serve_seconds!r}"
        )
    if s.serve_token is not None and (
        not s.serve_token or any(c.isspace() or not c.isprintable() for c in s.serve_token)
    ):
        # the value itself is not repeated: it is a secret
        raise ValueError(
            "serve_token (AFTERBELL_SERVE_TOKEN) must be non-empty printable text without "
            "whitespace"
        )
    if not 0 < s.serve_port < 65536:
        raise ValueError(
            f"serve_port (AFTERBELL_SERVE_PORT) must be between 1 and 65535, got {s.serve_port!r}"
        )


def _check_profile(s: Settings) -> None:
    """Refuse an unknown profile and a production artifact root on the local disk."""
    if s.profile not in PROFILES:
        raise ValueError(f"unknown profile {s.profile!r} (AFTERBELL_PROFILE); "
                         f"known: {', '.join(PROFILES)}")
    root = s.mlflow_artifact_root.strip()
    if s.profile == "production" and root and (root.startswith("/") or root.startswith("file:")):
        raise ValueError(
            "the production profile keeps MLflow artifacts in an object store: "
            f"AFTERBELL_MLFLOW_ARTIFACTS must be e.g. s3://bucket/mlflow, got {redact_url(root)!r}"
        )


@overload
def _float(env: dict[str, str], key: str, default: float) -> float: ...
@overload
def _float(env: dict[str, str], key: str, default: None) -> float | None: ...
def _float(env: dict[str, str], key: str, default: float | None) -> float | None:
    raw = env.get(key)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{key} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {raw!r}")
    return value
