"""afterbell's nightly cycle: one DAG run per NYSE session, after the 16:00 New York close.

Wiring only: every task body is one call into :mod:`pipelines.stages`, imported inside the task so
that parsing this file needs nothing but Airflow (no torch, MLflow, Feast, DB or network).
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import pendulum
from airflow.sdk import CronTriggerTimetable, dag, get_current_context, task, task_group

log = logging.getLogger(__name__)

NY = "America/New_York"

DOC_MD = """
### afterbell nightly cycle

One run per NYSE session, triggered at 16:00 New York on weekdays. The **logical date is the
session** (`ds`); `airflow dags test nightly_cycle 2018-12-31` replays session 2018-12-31.

| stage (task group) | tasks | what it does |
|---|---|---|
| `resolve_session` | short-circuit | skips the whole run on weekdays that are not NYSE sessions |
| `close_analysis` | `ingest` → `build_features` | session closes into the lake; returns, vol |
| `light_training` | `refit_garch` | refits the GARCH volatility model (cheap, every session) |
| `data_processing` | `build_feature_tables` → `materialize` | offline tables; Feast online store |
| `heavy_training` | `train_challenger` | trains the GARCH-LSTM challenger, registers it in MLflow |
| `validation` | `validate_and_promote` | out-of-sample checks; promotes `challenger` → `champion` |
| `pre_market` | `pre_market` | readies serving for the next session's open |

Stage logic lives in `pipelines/stages.py`; every task returns a small JSON summary (XCom).
"""


def _retries() -> int:
    # afterbell's `dags test` runs set 0: in-process test runs wait out retry delays.
    return int(os.environ.get("AFTERBELL_TASK_RETRIES") or 2)


@dag(
    dag_id="nightly_cycle",
    schedule=CronTriggerTimetable("0 16 * * 1-5", timezone=NY),
    start_date=pendulum.datetime(1990, 1, 1, tz=NY),
    catchup=False,
    max_active_runs=1,
    tags=["afterbell", "nightly"],
    doc_md=DOC_MD,
    default_args={
        "owner": "afterbell",
        "retries": _retries(),
        "retry_delay": timedelta(minutes=1),
        # A multiplier in Airflow 3.3, not a bool. Waits: 1-2 min, then 2-4 min (hash jitter).
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=10),
    },
)
def nightly_cycle():
    @task.short_circuit
    def resolve_session() -> str | bool:
        """The session (``ds``), or False to skip everything downstream on a non-session."""
        from pipelines.airflow_env import session_for

        ctx = get_current_context()
        # Runs triggered without a logical date fall back to the New York date they ran after.
        ds = ctx.get("ds") or pendulum.instance(ctx["dag_run"].run_after).in_tz(NY).to_date_string()
        session = session_for(ds)
        if session is None:
            log.info("%s is not an NYSE session: skipping the nightly cycle", ds)
            return False
        log.info("NYSE session %s", session)
        return session

    @task_group
    def close_analysis(session: str) -> None:
        """Ingest the session's closes and compute returns / realised-vol features."""

        @task
        def ingest(session: str) -> dict:
            from pipelines import stages

            return stages.ingest(session)

        @task
        def build_features(session: str) -> dict:
            from pipelines import stages

            return stages.build_features(session)

        ingest(session) >> build_features(session)

    @task_group
    def light_training(session: str) -> None:
        """Refit the GARCH volatility model."""

        @task
        def refit_garch(session: str) -> dict:
            from pipelines import stages

            return stages.refit_garch(session)

        refit_garch(session)

    @task_group
    def data_processing(session: str) -> None:
        """Build the offline feature tables and materialise them into the online store."""

        @task
        def build_feature_tables(session: str) -> dict:
            from pipelines import stages

            return stages.build_feature_tables(session)

        @task
        def materialize(session: str) -> dict:
            from pipelines import stages

            return stages.materialize(session)

        build_feature_tables(session) >> materialize(session)

    @task_group
    def heavy_training(session: str) -> None:
        """Train the GARCH-LSTM challenger and register it."""

        @task
        def train_challenger(session: str) -> dict:
            from pipelines import stages

            return stages.train_challenger(session)

        train_challenger(session)

    @task_group
    def validation(session: str) -> None:
        """Validate the challenger out of sample; promote it when it wins."""

        @task
        def validate_and_promote(session: str) -> dict:
            from pipelines import stages

            return stages.validate_and_promote(session)

        validate_and_promote(session)

    @task_group
    def pre_market(session: str) -> None:
        """Prepare serving for the next session's open."""

        @task
        def pre_market(session: str) -> dict:
            from pipelines import stages

            return stages.pre_market(session)

        pre_market(session)

    session = resolve_session()
    (
        close_analysis(session)
        >> light_training(session)
        >> data_processing(session)
        >> heavy_training(session)
        >> validation(session)
        >> pre_market(session)
    )


nightly_cycle()
