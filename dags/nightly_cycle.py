"""afterbell's nightly cycle: one DAG run per NYSE session, due at the session's close.

Wiring only: every task body is one call into :mod:`pipelines.tasks` (which calls
:mod:`pipelines.stages`), imported inside the task so that parsing this file needs nothing but
Airflow and the light timetable/sensor classes (no torch, MLflow, Feast, DB or network).
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import pendulum
from airflow.sdk import dag, get_current_context, task, task_group

from pipelines.sensors import StageWindowSensor
from pipelines.timetable import NYSESessionTimetable

log = logging.getLogger(__name__)

DOC_MD = """
### afterbell nightly cycle

One run per NYSE session (timetable `NYSESessionTimetable`: exchange_calendars XNYS, holidays,
early closes and DST included). The data interval is the session from the open to the close, so the
**logical date is the session**; the run is due at the close (16:00 New York, 13:00 on half days).
`airflow dags test nightly_cycle 2018-12-31` replays session 2018-12-31.

| stage (task group) | window (New York) | tasks |
|---|---|---|
| `close_analysis` | the close | `ingest` → `build_features` → `monitor` |
| `light_training` | 17:00 | `refit_garch` → `recalibrate_risk` → `price_options` |
| `data_processing` | 19:00 | `build_feature_tables` → `materialize` |
| `heavy_training` | 22:00 | `plan` (cadence / retrain) → `train_challenger` → `train_transformer` |
| `validation` | 02:00 next day | `validate_and_promote` |
| `pre_market` | 07:00 next session | `pre_market` → `size_positions` |

Each stage first waits for its window with a deferrable sensor (no worker slot held); in a backfill
the windows are past and the run goes straight through. Windows and cadence live in
`afterbell.toml`. The heavy stage runs on the last session of each week (LSTM) and month (full),
or when monitoring requested a retrain; its `plan` task logs why it runs or is skipped, and
`train_transformer` trains the PatchTST forecaster on full retrains only. Training
tasks use the `training` pool. Bad data fails a task at once; other errors retry with backoff.
"""


def _end_date() -> pendulum.DateTime | None:
    # The replay demo has no data after 2022: AFTERBELL_SCHEDULE_END (YYYY-MM-DD) stops the
    # scheduler from creating runs past it (backfills inside the range are unaffected).
    end = os.environ.get("AFTERBELL_SCHEDULE_END")
    return pendulum.parse(end).end_of("day") if end else None  # type: ignore[union-attr]


def _retries() -> int:
    # `afterbell run` sets 0: in-process `dags test` runs would wait out the retry delays.
    return int(os.environ.get("AFTERBELL_TASK_RETRIES") or 2)


def _window(stage: str, trigger_rule: str = "all_success") -> StageWindowSensor:
    """The sensor that holds a stage until its window opens (windows come from resolve_session)."""
    return StageWindowSensor(
        task_id="window",
        target_time=(
            "{{ ti.xcom_pull(task_ids='resolve_session', key='windows')['" + stage + "'] }}"
        ),
        trigger_rule=trigger_rule,
    )


@dag(
    dag_id="nightly_cycle",
    schedule=NYSESessionTimetable(due="close"),
    start_date=pendulum.datetime(1990, 1, 1, tz="UTC"),
    end_date=_end_date(),
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
        """The session (``ds``) and its stage windows, or False on a non-session."""
        from pipelines.tasks import resolve

        ctx = get_current_context()
        ds = ctx.get("ds") or pendulum.instance(ctx["dag_run"].run_after).to_date_string()
        info = resolve(ds)
        if info is None:
            log.info("%s is not an NYSE session: skipping the nightly cycle", ds)
            return False
        ctx["ti"].xcom_push(key="windows", value=info["windows"])
        log.info("NYSE session %s; stage windows (UTC): %s", info["session"], info["windows"])
        return str(info["session"])

    @task_group
    def close_analysis(session: str) -> None:
        """Ingest and validate the session's bars, build features, monitor the champion."""

        @task
        def ingest(session: str) -> dict:
            from pipelines.tasks import run_stage

            return run_stage("ingest", session)

        @task
        def build_features(session: str) -> dict:
            from pipelines.tasks import run_stage

            return run_stage("build_features", session)

        @task
        def monitor(session: str) -> dict:
            from pipelines.tasks import run_stage

            return run_stage("monitor", session)

        _window("close_analysis") >> ingest(session) >> build_features(session) >> monitor(session)

    @task_group
    def light_training(session: str) -> None:
        """Refit the GARCH models per symbol; VaR/CVaR, covariance and stress scenarios; the
        GARCH-implied 30-day straddle and the Heston calibration of ingested chains."""

        @task(pool="training")
        def refit_garch(session: str) -> dict:
            from pipelines.tasks import run_stage

            return run_stage("refit_garch", session)

        @task
        def recalibrate_risk(session: str) -> dict:
            from pipelines.tasks import run_stage

            return run_stage("recalibrate_risk", session)

        @task
        def price_options(session: str) -> dict:
            from pipelines.tasks import run_stage

            return run_stage("price_options", session)

        (_window("light_training") >> refit_garch(session) >> recalibrate_risk(session)
         >> price_options(session))

    @task_group
    def data_processing(session: str) -> None:
        """Build the offline feature tables and materialise them into the online store."""

        @task
        def build_feature_tables(session: str) -> dict:
            from pipelines.tasks import run_stage

            return run_stage("build_feature_tables", session)

        @task
        def materialize(session: str) -> dict:
            from pipelines.tasks import run_stage

            return run_stage("materialize", session)

        _window("data_processing") >> build_feature_tables(session) >> materialize(session)

    @task_group
    def heavy_training(session: str) -> None:
        """Train the GARCH-LSTM challenger when the cadence or monitoring asks for it; on a full
        retrain also the PatchTST return forecaster (its own registered model)."""

        @task.short_circuit(ignore_downstream_trigger_rules=False)
        def plan(session: str) -> bool:
            from pipelines.tasks import plan_heavy_training

            return plan_heavy_training(session)

        @task(pool="training")
        def train_challenger(session: str) -> dict:
            from pipelines.tasks import run_stage

            return run_stage("train_challenger", session)

        @task(pool="training")
        def train_transformer(session: str) -> dict:
            from pipelines.tasks import run_stage

            return run_stage("train_transformer", session)

        (_window("heavy_training") >> plan(session) >> train_challenger(session)
         >> train_transformer(session))

    @task_group
    def validation(session: str) -> None:
        """Validate the challenger out of sample; promote it when it wins."""

        @task(trigger_rule="none_failed")
        def validate_and_promote(session: str) -> dict:
            from pipelines.tasks import run_stage

            return run_stage("validate_and_promote", session)

        _window("validation", "none_failed") >> validate_and_promote(session)

    @task_group
    def pre_market(session: str) -> None:
        """Latest features online, the champion's forecasts for the next session, then sizing,
        limits, circuit breakers and the paper broker's orders."""

        @task(trigger_rule="none_failed")
        def pre_market(session: str) -> dict:
            from pipelines.tasks import run_stage

            return run_stage("pre_market", session)

        @task
        def size_positions(session: str) -> dict:
            from pipelines.tasks import run_stage

            return run_stage("size_positions", session)

        _window("pre_market", "none_failed") >> pre_market(session) >> size_positions(session)

    session = resolve_session()
    (
        session
        >> close_analysis(session)
        >> light_training(session)
        >> data_processing(session)
        >> heavy_training(session)
        >> validation(session)
        >> pre_market(session)
    )


nightly_cycle()
