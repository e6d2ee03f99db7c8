"""afterbell's live serving: one DAG run per NYSE session, at the 09:30 New York open.

Wiring only: the task body is one call into :mod:`pipelines.stages`, imported inside the task so
that parsing this file needs nothing but Airflow.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import pendulum
from airflow.sdk import dag, get_current_context, task

from pipelines.timetable import NYSESessionTimetable

log = logging.getLogger(__name__)

NY = "America/New_York"

DOC_MD = """
### afterbell live serving

One run per NYSE session (`NYSESessionTimetable`), due at the open (09:30 New York) and serving
until the close (13:00 on half days); the **logical date is the session**.
`resolve_session` skips the run on weekdays that are not sessions, then `serve` runs
`pipelines.stages.serve_session(session)` against the `champion` model.
"""


@dag(
    dag_id="live_serving",
    schedule=NYSESessionTimetable(due="open"),
    start_date=pendulum.datetime(1990, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["afterbell", "serving"],
    doc_md=DOC_MD,
    default_args={
        "owner": "afterbell",
        "retries": int(os.environ.get("AFTERBELL_TASK_RETRIES") or 2),
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=10),
    },
)
def live_serving():
    @task.short_circuit
    def resolve_session() -> str | bool:
        """The session (``ds``), or False to skip serving on a non-session."""
        from pipelines.airflow_env import session_for

        ctx = get_current_context()
        ds = ctx.get("ds") or pendulum.instance(ctx["dag_run"].run_after).in_tz(NY).to_date_string()
        session = session_for(ds)
        if session is None:
            log.info("%s is not an NYSE session: not serving", ds)
            return False
        log.info("NYSE session %s", session)
        return session

    @task(pool="serving")
    def serve(session: str) -> dict:
        from pipelines.tasks import run_stage

        return run_stage("serve_session", session)

    serve(resolve_session())


live_serving()
