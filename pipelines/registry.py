"""MLflow adapter: experiments, registered versions and the challenger/champion/previous aliases.

Aliases (CONTRACT.md): ``challenger`` is the candidate under test, ``champion`` the served model,
``previous`` the rollback target. Stages are deprecated in MLflow 3 and never used.

Both profiles take the same path: :func:`client` binds MLflow to
:attr:`~pipelines.settings.Settings.tracking_uri` (embedded: SQLite in the home; production: the
tracking server, whose metadata is in PostgreSQL and which proxies artifacts to S3, or a
``postgresql+psycopg://`` URL directly) and :func:`ensure_experiment` gives new experiments the
profile's artifact location (:meth:`~pipelines.settings.Settings.artifact_location`: the home's
folder, an ``s3://`` root, or the tracking server's own). Credentials are never passed here:
MLflow, boto3 and libpq read them from the environment.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.settings import (
    ALIAS_CHALLENGER,
    ALIAS_CHAMPION,
    ALIAS_PREVIOUS,
    REPO_ROOT,
    Settings,
    redact_url,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger("afterbell.registry")


@dataclass(frozen=True)
class ModelRef:
    """One registered model version, as the stages and the summary talk about it."""

    name: str
    version: str
    run_id: str | None
    tags: dict[str, str]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def client(settings: Settings) -> MlflowClient:
    """An MlflowClient bound to the settings' tracking and registry URI (also set globally for
    the fluent API used inside the stage's run)."""
    import mlflow
    from mlflow import MlflowClient

    if settings.tracking_uri.startswith("sqlite:"):
        settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def ensure_experiment(settings: Settings, name: str) -> str:
    """Create (once) and select the experiment ``name``.

    A new experiment's artifacts go to the profile's location
    (:meth:`~pipelines.settings.Settings.artifact_location`): the state dir's folder (embedded),
    ``$AFTERBELL_MLFLOW_ARTIFACTS/<name>`` or the tracking server's default (production).
    """
    import mlflow

    c = client(settings)
    exp = c.get_experiment_by_name(name)
    if exp is None:
        location = settings.artifact_location(name)
        if location is not None and location.startswith("file:"):
            settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
        exp_id = c.create_experiment(name, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return str(exp_id)


def _ref(mv: ModelVersion) -> ModelRef:
    return ModelRef(name=mv.name, version=str(mv.version), run_id=mv.run_id, tags=dict(mv.tags))


def alias_version(settings: Settings, alias: str) -> ModelRef | None:
    """The version an alias points to, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return _ref(client(settings).get_model_version_by_alias(settings.model_name, alias))
    except MlflowException:
        return None


def version_for_session(settings: Settings, session: str) -> ModelRef | None:
    """The version trained by the heavy stage of ``session`` (tag ``session``), if any."""
    from mlflow.exceptions import MlflowException

    try:
        found = client(settings).search_model_versions(
            f"name = '{settings.model_name}' and tags.session = '{session}'"
        )
    except MlflowException:
        return None
    ready = [mv for mv in found if mv.status == "READY"]
    if not ready:
        return None
    return _ref(max(ready, key=lambda mv: int(mv.version)))


def get_version(settings: Settings, version: str) -> ModelRef | None:
    """One version of the model by number, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return _ref(client(settings).get_model_version(settings.model_name, str(version)))
    except MlflowException:
        return None


def latest_version_up_to(settings: Settings, session: str) -> ModelRef | None:
    """The version registered by the newest heavy stage at or before ``session``."""
    from mlflow.exceptions import MlflowException

    try:
        found = client(settings).search_model_versions(f"name = '{settings.model_name}'")
    except MlflowException:
        return None
    ready = [
        mv for mv in found if mv.status == "READY" and mv.tags.get("session", "9999") <= session
    ]
    if not ready:
        return None
    return _ref(max(ready, key=lambda mv: (mv.tags["session"], int(mv.version))))


def registered_before(settings: Settings, session: str) -> bool:
    """Whether any version was registered by a heavy stage of a session before ``session``."""
    from mlflow.exceptions import MlflowException

    try:
        found = client(settings).search_model_versions(f"name = '{settings.model_name}'")
    except MlflowException:
        return False
    return any(mv.tags.get("session", "9999") < session for mv in found)


def set_alias(settings: Settings, alias: str, version: str) -> None:
    client(settings).set_registered_model_alias(settings.model_name, alias, version)
    log.info("alias %s -> %s v%s", alias, settings.model_name, version)


def tag_version(settings: Settings, version: str, tags: dict[str, Any]) -> None:
    c = client(settings)
    for key, value in tags.items():
        c.set_model_version_tag(settings.model_name, version, key, str(value))


def promote(settings: Settings, version: str) -> ModelRef | None:
    """Move ``champion`` to ``version``; the replaced champion becomes ``previous``.

    Returns the replaced champion (None on the first promotion or when ``version`` already is
    the champion, in which case nothing moves).
    """
    old = alias_version(settings, ALIAS_CHAMPION)
    if old is not None and old.version == str(version):
        return None
    if old is not None:
        set_alias(settings, ALIAS_PREVIOUS, old.version)
    set_alias(settings, ALIAS_CHAMPION, str(version))
    return old


def rollback(settings: Settings, reason: str = "") -> tuple[ModelRef, ModelRef]:
    """Move ``champion`` back to ``previous``; returns (restored, rolled back).

    The rolled-back version is tagged ``rolled_back`` (with ``reason``) and ``previous`` is
    removed, so a second rollback fails instead of flipping back to the version just removed.

    Raises
    ------
    ValueError
        When there is no ``previous`` or no ``champion`` alias, or both name the same version.
    """
    current = alias_version(settings, ALIAS_CHAMPION)
    target = alias_version(settings, ALIAS_PREVIOUS)
    if target is None:
        raise ValueError(f"{settings.model_name} has no '{ALIAS_PREVIOUS}' alias: nothing to roll "
                         f"back to (the champion is left where it is)")
    if current is None:
        raise ValueError(f"{settings.model_name} has no '{ALIAS_CHAMPION}' alias to roll back")
    if current.version == target.version:
        raise ValueError(f"'{ALIAS_CHAMPION}' and '{ALIAS_PREVIOUS}' both name v{current.version}")
    set_alias(settings, ALIAS_CHAMPION, target.version)
    c = client(settings)
    c.delete_registered_model_alias(settings.model_name, ALIAS_PREVIOUS)
    tag_version(settings, current.version, {"rolled_back": reason or "afterbell rollback",
                                            "rolled_back_to": target.version})
    tag_version(settings, target.version, {"restored_from": current.version})
    log.info("rollback: %s champion v%s -> v%s", settings.model_name, current.version,
             target.version)
    return target, current


def load_pyfunc(settings: Settings, ref: ModelRef) -> Any:
    """Load a registered version as an MLflow pyfunc (the only way models are deserialised)."""
    import mlflow

    client(settings)
    return mlflow.pyfunc.load_model(ref.uri)


#: Settings of the MLflow tracking server (``KEY=VALUE`` lines, no secrets).
SERVER_ENV_FILE = REPO_ROOT / "mlflow" / "server.env"


def server_settings(path: Path = SERVER_ENV_FILE) -> dict[str, str]:
    """The ``KEY=VALUE`` lines of ``mlflow/server.env`` (comments and blank lines skipped)."""
    values = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip().strip("'\"")
    return values


def tracking_server_command(
    *,
    backend_store_uri: str | None = None,
    artifacts_destination: str | None = None,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
    executable: str = "mlflow",
) -> list[str]:
    """The ``mlflow server`` command line of the production profile.

    Metadata in ``backend_store_uri`` (PostgreSQL) and artifacts proxied by the server to
    ``artifacts_destination`` (S3): clients log and load artifacts through the server
    (``mlflow-artifacts:/``) and need no S3 keys. Defaults come from ``mlflow/server.env``
    (``MLFLOW_PRODUCTION_BACKEND_STORE_URI``, ``MLFLOW_PRODUCTION_ARTIFACTS_DESTINATION``,
    ``MLFLOW_HOST`` (127.0.0.1), ``MLFLOW_PORT``, ``MLFLOW_WORKERS``).

    Raises
    ------
    ValueError
        When the backend store URI carries a password: a command line is visible to every
        user of the machine (``ps``); the server reads it from ``PGPASSWORD`` instead.
    """
    conf = server_settings()
    backend = backend_store_uri or conf["MLFLOW_PRODUCTION_BACKEND_STORE_URI"]
    if redact_url(backend) != backend:
        raise ValueError(
            f"the backend store URI {redact_url(backend)} carries a password: leave it out and "
            "give the server PGPASSWORD in its environment"
        )
    return [
        executable, "server",
        "--backend-store-uri", backend,
        "--artifacts-destination",
        artifacts_destination or conf["MLFLOW_PRODUCTION_ARTIFACTS_DESTINATION"],
        "--serve-artifacts",
        "--host", host or conf.get("MLFLOW_HOST", "127.0.0.1"),
        "--port", str(port or conf.get("MLFLOW_PORT", "5000")),
        "--workers", str(workers or conf.get("MLFLOW_WORKERS", "1")),
    ]  # fmt: skip


#: Experiment holding one run per session with the data-quality outcome and its Data Docs pages.
DATA_QUALITY_EXPERIMENT = "data_quality"


def session_run(settings: Settings, experiment: str, session: str) -> str:
    """Id of the run of ``experiment`` for ``session``, created on first use and reused after.

    Re-running a session logs into the same run (tags and artifacts are overwritten), so the
    experiment keeps exactly one run per session.
    """
    c = client(settings)
    exp_id = ensure_experiment(settings, experiment)
    found = c.search_runs(
        [exp_id],
        filter_string=f"tags.session = '{session}'",
        max_results=1,
        order_by=["attributes.start_time ASC"],
    )
    if found:
        return str(found[0].info.run_id)
    run = c.create_run(
        exp_id, run_name=f"{experiment} {session}", tags={"session": session, "stage": experiment}
    )
    c.set_terminated(run.info.run_id)
    return str(run.info.run_id)


def log_data_quality(
    settings: Settings,
    session: str,
    suite: str,
    outcome: dict[str, Any],
    pages: Sequence[Path],
) -> str:
    """Log a validation outcome and its Data Docs pages to the session's data-quality run.

    Parameters
    ----------
    settings : Settings
        Installation settings.
    session : str
        ``YYYY-MM-DD``.
    suite : str
        Great Expectations suite name (``bars``, ``features``): the artifact folder.
    outcome : dict
        JSON-able summary (success, expectations, warnings, ...); logged as
        ``<suite>/outcome.json`` and as ``<suite>.*`` tags of scalar values.
    pages : sequence of Path
        HTML files (the run's validation page, the Data Docs index) logged under
        ``<suite>/data_docs/``.

    Returns
    -------
    str
        The run id.
    """
    c = client(settings)
    run_id = session_run(settings, DATA_QUALITY_EXPERIMENT, session)
    c.log_dict(run_id, outcome, f"{suite}/outcome.json")
    for key, value in outcome.items():
        if isinstance(value, bool | int | float | str):
            c.set_tag(run_id, f"{suite}.{key}", str(value))
    for page in pages:
        if Path(page).is_file():
            c.log_artifact(run_id, str(page), f"{suite}/data_docs")
    return run_id


__all__ = [
    "ALIAS_CHALLENGER",
    "ALIAS_CHAMPION",
    "ALIAS_PREVIOUS",
    "ModelRef",
    "alias_version",
    "client",
    "ensure_experiment",
    "get_version",
    "latest_version_up_to",
    "load_pyfunc",
    "log_data_quality",
    "promote",
    "registered_before",
    "rollback",
    "server_settings",
    "session_run",
    "set_alias",
    "tag_version",
    "tracking_server_command",
    "version_for_session",
]
