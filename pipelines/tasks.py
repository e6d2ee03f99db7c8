"""Airflow adapter between the DAG files and :mod:`pipelines.stages`.

DAG task bodies call exactly one function here. Bad data fails the task at once
(:class:`AirflowFailException`, no retry, the message names what is wrong); anything else
propagates and gets the DAG's retries with backoff (a transient error: a locked SQLite file, a
full disk freed later, a registry that was briefly unreachable).
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Any

log = logging.getLogger("afterbell.tasks")

#: Stage functions the DAGs may run (module-level names in pipelines.stages).
STAGE_FUNCTIONS = (
    "ingest", "build_features", "monitor", "refit_garch", "recalibrate_risk", "price_options",
    "build_feature_tables", "materialize", "plan_training", "train_challenger",
    "train_transformer", "validate_and_promote", "pre_market", "size_positions", "serve_session",
)  # fmt: skip


def resolve(ds: str) -> dict[str, Any] | None:
    """The session of a run and its stage windows (UTC ISO strings), or None off-calendar."""
    from pipelines.airflow_env import session_for
    from pipelines.schedule import load_config, window_times

    session = session_for(ds)
    if session is None:
        return None
    windows = window_times(date.fromisoformat(session), load_config().windows)
    return {"session": session, "windows": {k: v.isoformat() for k, v in windows.items()}}


def run_stage(name: str, session: str) -> dict[str, Any]:
    """Run ``pipelines.stages.<name>(session)``; bad data fails fast without retries.

    With a lake store (the production profile) the home is synchronised around the stage
    (:func:`pipelines.lake_sync.synced`): pulled before it, pushed after it, failed or not.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from pipelines import stages
    from pipelines.lake_sync import synced
    from pipelines.quality import DataQualityError
    from pipelines.settings import Settings
    from pipelines.sources import SourceError

    if name not in STAGE_FUNCTIONS:
        raise ValueError(f"unknown stage function {name!r}")
    try:
        with synced(Settings.from_env()):
            result: dict[str, Any] = getattr(stages, name)(session)
    except (DataQualityError, SourceError) as exc:
        raise AirflowFailException(f"bad data, not retrying: {exc}") from exc
    return result


def plan_heavy_training(session: str) -> bool:
    """Short-circuit condition of the heavy stage; logs why it runs or is skipped."""
    plan = run_stage("plan_training", session)
    log.info("heavy_training %s: %s", "runs" if plan["run"] else "skipped", plan["reason"])
    return bool(plan["run"])
