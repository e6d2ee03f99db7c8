"""A real backfill on the embedded default (issue 3, acceptance 3).

Two consecutive NYSE sessions (2017-12-29, 2018-01-02; New Year's Day is a holiday) of
``nightly_cycle`` are backfilled by a real scheduled Airflow 3 stack (api-server, scheduler and
dag-processor as separate processes, LocalExecutor on the SQLite metadata DB, task processes
talking to the execution API), on real replay data with the small test configuration. Then the
same backfill is run again with ``--reprocess-behavior completed`` and every file of the
reproducible state must be byte-identical.

What is compared: ``lake/``, ``offline/`` and ``runs/`` under ``AFTERBELL_HOME`` - the data, the
offline feature tables and the stages' records, which must be functions of the sessions and the
configuration only. What is not: the Airflow metadata DB and task logs, the MLflow tracking DB and
artifacts, the Feast registry and online store, and the Great Expectations reports. Those record
*when* something ran, by design (run ids, start/end times and try numbers, MLflow run ids and
timestamps, Feast's registry ``last_updated`` and materialisation intervals, GX validation result
ids and run times), so a re-run necessarily changes their bytes.

Run time on the 2-core machine: about 5 minutes with other jobs sharing the two cores (two
backfills of two runs, 35-90 s a run, and the scheduler's stop and start around each `backfill
create`); it was about 7.5 minutes before the test-only timings below.
Test-only settings make that possible, documented where they are set: the scheduler preloads the
tasks' heavy imports before forking its LocalExecutor workers (without it a run takes 70-160 s);
it sleeps 0.25 s instead of 1 s after a loop that found nothing to do (each of the 21 task
hand-overs of a run waited for it) and checks for completed backfills every 2 s instead of
Airflow's hard-coded 30 s (each backfill waited for it); and the scheduler and the dag-processor
pay their start-up imports while the CLI creates a backfill, held before touching the database
(airflow_stack.AirflowStack.writers_stopped), instead of after it.
The embedded configuration's 60 s SQLite busy timeout (the reprocess backfill failed with
"database is locked" under the 5 s default) is checked here too.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import os
import shutil
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from pipelines.airflow_env import airflow_env, ensure_airflow_db
from pipelines.settings import Settings
from tests.conftest import small_env
from tests.integration.airflow_stack import (
    BACKFILL_CHECK_ENV,
    AirflowStack,
    free_port,
    write_preloader,
)

pytestmark = pytest.mark.slow

DAG_ID = "nightly_cycle"
FROM, TO = "2017-12-29", "2018-01-02"
SESSIONS = ("2017-12-29", "2018-01-02")
HOLIDAY = "2018-01-01"
#: The first session trains because no model is registered yet (a bootstrap, hence full, retrain);
#: 2018-01-02 (a Tuesday) does not train. The cadence rules themselves are unit-tested.
TRAINS = {"2017-12-29"}
TRAIN_TASK = "heavy_training.train_challenger"
#: Runs (a record saying why it does not train unless the plan is a full retrain) or is skipped
#: exactly when ``TRAIN_TASK`` is.
TRANSFORMER_TASK = "heavy_training.train_transformer"
STABLE = ("lake", "offline", "runs")
BACKFILL_TIMEOUT_S = 480
#: Test-only scheduler timings (Airflow's defaults in brackets): the sleep of a loop that found
#: nothing to do [1 s], which every task hand-over waits (21 tasks a run), and the period of the
#: check that marks a finished backfill complete [30 s, hard-coded], which each backfill waits.
IDLE_SLEEP_S = "0.25"
BACKFILL_CHECK_S = "2"


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def _state_digest(home: Path) -> dict[str, str]:
    return {f"{name}/{rel}": h for name in STABLE for rel, h in _tree_digest(home / name).items()}


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _report(label: str, runs: list[dict]) -> None:
    for run in runs:
        start, end = _ts(run["start_date"]), _ts(run["end_date"])
        took = f"{(end - start).total_seconds():6.1f} s" if start and end else "   ?"
        print(f"[backfill] {label} {run['logical_date'][:10]} {run['state']} {took}", flush=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AirflowStack, Path, Path]]:
    root = tmp_path_factory.mktemp("backfill")
    home = root / "afterbell"
    port = free_port()
    env = {
        **os.environ,
        **small_env(home),
        "AFTERBELL_SCHEDULE_END": TO,
        "AFTERBELL_TASK_RETRIES": "0",
    }
    settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("AFTERBELL_")})
    env.update(airflow_env(settings, base=env))
    env.update({
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
    })
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "True"
    # SQLite's default busy timeout (5 s) made `backfill create --reprocess-behavior completed`
    # fail with "database is locked" while the scheduler and the tasks wrote too: the embedded
    # configuration waits up to 60 s.
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("?timeout=60")
    # Test-only speed-ups: the scheduler preloads the tasks' heavy imports before it forks its
    # LocalExecutor workers (see airflow_stack.write_preloader), and loops and checks for
    # completed backfills more often (IDLE_SLEEP_S, BACKFILL_CHECK_S).
    env["PYTHONPATH"] = os.pathsep.join([write_preloader(root / "preload"), env["PYTHONPATH"]])
    env["AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME"] = IDLE_SLEEP_S
    env[BACKFILL_CHECK_ENV] = BACKFILL_CHECK_S
    # ensure_airflow_db runs the airflow CLI in airflow_env(settings) over os.environ, which is
    # the same DB and home; the ports do not matter for `db migrate` / `pools import`.
    ensure_airflow_db(settings)
    airflow = AirflowStack(env, port, root / "services")
    try:
        # The scheduler and the dag-processor start held (they import, but touch no database)
        # until the test's first `backfill create` is done: see AirflowStack.writers_stopped.
        airflow.start(hold=("scheduler", "dag-processor"))
        airflow.airflow("dags", "reserialize")
        airflow.wait_api()
        yield airflow, home, root
    finally:
        killed = airflow.stop()
        print(f"[backfill] stack stopped (SIGKILL needed: {killed or 'none'})", flush=True)
        assert not airflow.stragglers(), "processes of the test stack are still running"


def test_backfill_two_sessions_then_reprocess_is_byte_identical(
    stack: tuple[AirflowStack, Path, Path],
) -> None:
    airflow, home, root = stack
    t0 = time.monotonic()

    # Runs of a paused DAG are never started, backfill or not: create the backfill first and
    # check that its runs stay queued, while the scheduler loops, until the DAG is unpaused
    # (through the REST API, as the UI's toggle does).
    assert airflow.query("SELECT is_paused FROM dag WHERE dag_id = ?", (DAG_ID,)) == [(1,)]
    jobs_before = airflow.latest_job_id()
    with airflow.writers_stopped():  # held since the fixture: released after the create
        airflow.airflow("backfill", "create", "--dag-id", DAG_ID, "--from-date", FROM,
                        "--to-date", TO, "--max-active-runs", "1")
    first = airflow.latest_backfill_id(DAG_ID)
    assert first is not None
    runs = airflow.backfill_runs(first)
    assert [r["logical_date"][:10] for r in runs] == list(SESSIONS)
    airflow.wait_scheduler_job(after=jobs_before)
    time.sleep(3)  # a dozen scheduler loops of the running scheduler (IDLE_SLEEP_S)
    assert {r["state"] for r in airflow.backfill_runs(first)} == {"queued"}
    airflow.set_paused(DAG_ID, False)
    assert airflow.query("SELECT is_paused FROM dag WHERE dag_id = ?", (DAG_ID,)) == [(0,)]

    runs = airflow.wait_backfill(DAG_ID, first, len(SESSIONS), BACKFILL_TIMEOUT_S)
    t1 = time.monotonic()
    _report("first ", runs)
    print(f"[backfill] first backfill: {t1 - t0:.0f} s", flush=True)
    # --max-active-runs 1: one run at a time, in session order
    for prev, nxt in itertools.pairwise(runs):
        assert _ts(prev["end_date"]) <= _ts(nxt["start_date"]), (prev, nxt)
    _check_tasks(airflow, home, runs)
    before = _state_digest(home)
    assert any(k.startswith("lake/") for k in before) and any(k.startswith("runs/") for k in before)
    for session in SESSIONS:
        assert any(f"session={session}" in k for k in before if k.startswith("runs/")), session
    # the stages' JSON records as they were, to show what a reprocess changed
    shutil.copytree(home / "runs", root / "runs-before-reprocess")

    airflow.wait_backfill_completed(first)
    t_create = time.monotonic()
    with airflow.writers_stopped():
        airflow.airflow("backfill", "create", "--dag-id", DAG_ID, "--from-date", FROM, "--to-date",
                        TO, "--max-active-runs", "1", "--reprocess-behavior", "completed")
    print(f"[backfill] reprocess backfill created in {time.monotonic() - t_create:.0f} s",
          flush=True)
    second = airflow.latest_backfill_id(DAG_ID)
    assert second is not None and second != first
    rerun = airflow.wait_backfill(DAG_ID, second, len(SESSIONS), BACKFILL_TIMEOUT_S)
    t2 = time.monotonic()
    _report("second", rerun)
    print(f"[backfill] reprocess backfill: {t2 - t1:.0f} s", flush=True)
    # the completed runs were cleared and run again (same runs, one more clear each)
    assert [r["id"] for r in rerun] == [r["id"] for r in runs]
    assert all(r["clear_number"] == p["clear_number"] + 1 for r, p in zip(rerun, runs, strict=True))

    # One run per session and nothing else: none on New Year's Day, no scheduled run although the
    # DAG is unpaused (AFTERBELL_SCHEDULE_END is its end date).
    all_runs = airflow.query("SELECT substr(logical_date, 1, 10), run_type FROM dag_run "
                             "WHERE dag_id = ? ORDER BY logical_date", (DAG_ID,))
    assert all_runs == [(s, "backfill") for s in SESSIONS], all_runs
    assert not airflow.query("SELECT 1 FROM dag_run WHERE substr(logical_date, 1, 10) = ?",
                             (HOLIDAY,))
    _check_tasks(airflow, home, rerun)

    after = _state_digest(home)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, (
        f"{len(changed)} file(s) differ after the reprocess: {changed}\n"
        + _json_diffs(root / "runs-before-reprocess", home / "runs", changed)
    )


def _json_diffs(old_root: Path, new_root: Path, changed: list[str], limit: int = 8) -> str:
    """Unified diffs of the changed ``runs/*.json`` records (the first ``limit``)."""
    out = []
    for key in [k for k in changed if k.startswith("runs/") and k.endswith(".json")][:limit]:
        rel = key.removeprefix("runs/")
        old, new = old_root / rel, new_root / rel
        out.extend(difflib.unified_diff(
            old.read_text().splitlines() if old.exists() else [],
            new.read_text().splitlines() if new.exists() else [],
            f"before/{rel}", f"after/{rel}", lineterm="", n=1,
        ))
    return "\n".join(out)


def _check_tasks(airflow: AirflowStack, home: Path, runs: list[dict]) -> None:
    """Every task succeeded, except ``train_challenger`` (and ``train_transformer`` with it),
    which ran on 2017-12-29 (bootstrap) and was skipped on 2018-01-02 unless the session's plan
    says monitoring requested a retrain (a breach on the champion's live record)."""
    for run in runs:
        session = run["logical_date"][:10]
        states = airflow.task_states(DAG_ID, run["run_id"])
        plan = json.loads((home / "runs" / f"session={session}" / "plan_training.json").read_text())
        print(f"[backfill] {session} {TRAIN_TASK} {states.get(TRAIN_TASK)}: {plan['reason']}")
        others = {t: s for t, s in states.items() if t not in (TRAIN_TASK, TRANSFORMER_TASK)}
        assert len(others) == 19 and set(others.values()) == {"success"}, (session, others)
        assert states.get(TRANSFORMER_TASK) == states.get(TRAIN_TASK), (session, states)
        if session in TRAINS:
            assert states.get(TRAIN_TASK) == "success", (session, states)
            assert plan["run"], plan
        elif plan["reason"].startswith("retrain requested by monitoring"):
            assert plan["run"] and states.get(TRAIN_TASK) == "success", (session, plan, states)
        else:
            assert not plan["run"] and states.get(TRAIN_TASK) == "skipped", (session, plan, states)
