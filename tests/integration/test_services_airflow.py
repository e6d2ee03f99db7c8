"""A real Airflow on PostgreSQL with a Celery worker runs one ``nightly_cycle`` (issue 8).

The production profile end to end, on the machine's services: Airflow's metadata (and Celery's
result backend) in a fresh PostgreSQL database, the Celery broker in a Redis database index of its
own, and the stages' own storage as ``AFTERBELL_PROFILE=production`` puts it - MLflow tracking on a
second PostgreSQL database with artifacts in S3 (moto's server), Optuna on a third, Feast's SQL
registry on a fourth with its Redis online store in another index, the lake's object-store copy in
the same bucket. The environment is :func:`pipelines.airflow_env.airflow_env` of those settings
(CeleryExecutor, psycopg for the sync and the async engine), the metadata DB is set up by
:func:`pipelines.airflow_env.ensure_airflow_db`, and api-server, scheduler, dag-processor and
``airflow celery worker`` run as separate processes (tests/integration/airflow_stack.py).

One run for the session 2017-12-29 of the small configuration (tests/conftest.py) is triggered
through the REST API; it must succeed with every task ``success`` (the first session trains: no
model is registered yet), and every task must have gone through Celery: the scheduler job is a
CeleryExecutor's, each task instance carries the Celery task id the executor recorded
(``external_executor_id``), and each of those ids is a ``SUCCESS`` row of Celery's result backend
(``celery_taskmeta``) and a task the worker's log says it received. Then the stages' records are
checked where the production profile keeps them: the registered model in MLflow's PostgreSQL
database with its files in the bucket, the feature views in Feast's registry tables and online
rows in Redis.

Where PostgreSQL or Redis do not answer the test is skipped (a failure with
``AFTERBELL_REQUIRE_SERVICES=1``). Every process it started is stopped, its databases dropped and
its Redis indexes flushed.

Test-only start-up speed-ups (as in test_backfill.py): the Celery worker preloads the tasks' heavy
imports before it forks its pool (each task process is forked from a pool process), held before
touching the database while the metadata DB is migrated, and the scheduler sleeps 0.25 s after an
idle loop. ``airflow.cfg`` is written first, so that no service generates secrets of its own.

Run time on the shared 2-core machine: 2 min 20 s to 3 min 15 s (set-up and migrate 13-25 s, the
run 105-150 s, of which the lake's S3 sync about 40 s, stop 7-19 s), depending on the load.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from pipelines.airflow_env import airflow_env, ensure_airflow_db
from pipelines.settings import Settings
from tests.conftest import SESSION, small_env
from tests.integration.airflow_stack import (
    CELERY_SERVICES,
    LOCAL_SERVICES,
    AirflowStack,
    write_preloader,
)
from tests.services import (  # noqa: F401 (s3_server is a fixture)
    REDIS_HOST,
    REDIS_PORT,
    S3Endpoint,
    free_port,
    s3_server,
    temporary_pg_database,
    unreachable,
)

pytestmark = [pytest.mark.services, pytest.mark.slow]

DAG_ID = "nightly_cycle"
#: Redis database indexes of this test (flushed before and after): the Celery broker and Feast's
#: online store. Not 0 (a local deployment's broker) nor 13 (tests/services.py).
BROKER_DB, FEAST_DB = 12, 11
#: The first session of the small configuration trains (bootstrap: no model registered yet).
TRAIN_TASKS = ("heavy_training.train_challenger", "heavy_training.train_transformer")
RUN_TIMEOUT_S = 600
IDLE_SLEEP_S = "0.25"


@dataclass
class Deployment:
    """The started stack and where the production profile keeps its state."""

    airflow: AirflowStack
    settings: Settings
    s3: S3Endpoint
    feast_redis: Any
    databases: dict[str, str]
    started: float


def _redis(db: int) -> Any:
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, socket_timeout=5)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        unreachable("Redis", exc)
    return client


def _check_celery_provider() -> None:
    """Fail at once, and say why, where the Celery provider cannot import: its executor imports
    ``celery.backends.database.retry`` (apache-airflow-providers-celery 3.26.0), which celery 5.7
    removed; the scheduler and the worker would die at start-up."""
    import celery.backends.database as backend

    utils = Path(str(metadata.distribution("apache-airflow-providers-celery").locate_file(
        "airflow/providers/celery/executors/celery_executor_utils.py")))
    imports_retry = re.search(r"from celery\.backends\.database import [^\n]*\bretry\b",
                              utils.read_text())
    if imports_retry and not hasattr(backend, "retry"):
        pytest.fail(f"apache-airflow-providers-celery "
                    f"{metadata.version('apache-airflow-providers-celery')} imports "
                    f"celery.backends.database.retry, which celery {metadata.version('celery')} "
                    "no longer has: the CeleryExecutor cannot start (pin celery<5.7)")


def _airflow_cfg(home: Path) -> None:
    """Write ``airflow.cfg`` before any Airflow process starts: the first one to find none
    writes it with freshly generated secrets (JWT, API, Fernet), and the held services and the
    migrate CLI start together; one file read by all keeps the JWTs the scheduler issues valid
    for the api-server."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "airflow.cfg").write_text(
        "[core]\n"
        f"fernet_key = {secrets.token_urlsafe(32)}=\n"
        "[api]\n"
        f"secret_key = {secrets.token_hex(16)}\n"
        "[api_auth]\n"
        f"jwt_secret = {secrets.token_hex(32)}\n"
    )


@pytest.fixture
def deployment(
    tmp_path: Path,
    s3_server: S3Endpoint,  # noqa: F811 (fixture)
) -> Iterator[Deployment]:
    started = time.monotonic()
    broker, feast_redis = _redis(BROKER_DB), _redis(FEAST_DB)
    with contextlib.ExitStack() as cleanup:
        for client in (broker, feast_redis):
            client.flushdb()
            cleanup.callback(client.close)
            cleanup.callback(client.flushdb)
        databases = {
            name: cleanup.enter_context(temporary_pg_database(f"afterbell_{name}_test"))
            for name in ("airflow", "mlflow", "optuna", "feast")
        }
        _check_celery_provider()  # once the services answer (else a skip, not this failure)
        home = tmp_path / "afterbell"
        bucket = s3_server.bucket
        env = {k: v for k, v in os.environ.items() if not k.startswith("AFTERBELL_")}
        env.update({
            **small_env(home),
            **s3_server.env,
            "AFTERBELL_PROFILE": "production",
            "AFTERBELL_AIRFLOW_DB_URL": databases["airflow"],
            "AFTERBELL_CELERY_BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{BROKER_DB}",
            "AFTERBELL_MLFLOW_URI": databases["mlflow"],
            "AFTERBELL_MLFLOW_ARTIFACTS": f"s3://{bucket}/mlflow",
            "AFTERBELL_OPTUNA_STORAGE": databases["optuna"],
            "AFTERBELL_FEAST_REGISTRY_URL": databases["feast"],
            "AFTERBELL_REDIS_URL": f"{REDIS_HOST}:{REDIS_PORT},db={FEAST_DB}",
            "AFTERBELL_LAKE_URL": f"s3://{bucket}/lake",
            "AFTERBELL_S3_ENDPOINT_URL": s3_server.url,
            "AFTERBELL_SCHEDULE_END": SESSION.isoformat(),
            "AFTERBELL_TASK_RETRIES": "0",
        })
        settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("AFTERBELL_")})
        env.update(airflow_env(settings, base=env))
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == databases["airflow"]
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"].startswith("postgresql+psycopg:")
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == f"db+{databases['airflow']}"
        port = free_port()
        env.update({
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            # test-only: see the module's docstring
            "PYTHONPATH": os.pathsep.join([write_preloader(tmp_path / "preload"),
                                           env["PYTHONPATH"]]),
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": IDLE_SLEEP_S,
        })
        _airflow_cfg(settings.airflow_home)
        airflow = AirflowStack(env, port, tmp_path / "services", preload=("celery-worker",),
                               services=CELERY_SERVICES)
        try:
            # the worker preloads while the DB is migrated; the others start after
            airflow.start(hold=("celery-worker",), names=("celery-worker",))
            t0 = time.monotonic()
            ensure_airflow_db(settings)
            print(f"[celery] metadata DB migrated in {time.monotonic() - t0:.0f} s", flush=True)
            airflow.start(names=LOCAL_SERVICES)
            airflow.release()
            yield Deployment(airflow, settings, s3_server, feast_redis, databases, started)
        finally:
            t_stop = time.monotonic()
            killed = airflow.stop()
            print(f"[celery] stack stopped in {time.monotonic() - t_stop:.1f} s (SIGKILL "
                  f"needed: {killed or 'none'})", flush=True)
            assert not airflow.stragglers(), "processes of the test stack are still running"


def _wait_dag(airflow: AirflowStack, timeout: float = 240) -> None:
    """Wait until the dag-processor has serialized the DAG and the api-server answers."""
    deadline = time.monotonic() + timeout
    while not airflow.query("SELECT 1 FROM serialized_dag WHERE dag_id = ?", (DAG_ID,)):
        airflow.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"{DAG_ID} not parsed after {timeout:.0f} s:\n"
                                 + airflow.service_log("dag-processor"))
        time.sleep(0.5)
    parsed = time.monotonic()
    airflow.wait_api(timeout=max(10.0, deadline - time.monotonic()))
    print(f"[celery] DAG parsed, api-server up {time.monotonic() - parsed:.1f} s later",
          flush=True)


def test_nightly_cycle_runs_on_postgres_with_a_celery_worker(deployment: Deployment) -> None:
    airflow = deployment.airflow
    _wait_dag(airflow)
    t_ready = time.monotonic()
    print(f"[celery] stack up in {t_ready - deployment.started:.0f} s", flush=True)
    run = airflow.api("POST", f"/api/v2/dags/{DAG_ID}/dagRuns",
                      {"logical_date": f"{SESSION.isoformat()}T00:00:00Z"})
    run_id = run["dag_run_id"]
    airflow.set_paused(DAG_ID, False)  # paused at creation: the run waits until this
    state = airflow.wait_run(DAG_ID, run_id, RUN_TIMEOUT_S)
    t_run = time.monotonic()
    print(f"[celery] {DAG_ID} {SESSION} {state} in {t_run - t_ready:.0f} s "
          f"({t_run - deployment.started:.0f} s in all)", flush=True)

    # one run, of the session; every task succeeded (the first session trains)
    runs = airflow.query("SELECT run_id, state FROM dag_run WHERE dag_id = ?", (DAG_ID,))
    assert runs == [(run_id, "success")], runs
    tis = airflow.query(
        "SELECT task_id, state, external_executor_id, queue, hostname FROM task_instance "
        "WHERE dag_id = ? AND run_id = ? ORDER BY task_id", (DAG_ID, run_id))
    states = {row[0]: row[1] for row in tis}
    assert len(states) >= 20 and set(states.values()) == {"success"}, states
    assert all(states[t] == "success" for t in TRAIN_TASKS), states

    # executed by the Celery worker: the scheduler's executor, the Celery task id of each task
    # instance, a SUCCESS row of the result backend and a task the worker received for each
    assert "Loaded executor: :CeleryExecutor:" in airflow.service_log("scheduler", lines=10**6)
    celery_ids = {row[0]: row[2] for row in tis}
    assert all(celery_ids.values()), celery_ids
    results = _celery_results(airflow, list(celery_ids.values()))
    assert results == {cid: "SUCCESS" for cid in celery_ids.values()}, results
    worker_log = airflow.service_log("celery-worker", lines=10**6)
    received = set(re.findall(r"Task execute_workload\[([0-9a-f-]{36})\] received", worker_log))
    assert set(celery_ids.values()) <= received, sorted(set(celery_ids.values()) - received)
    assert {row[3] for row in tis} == {"default"}, tis
    print(f"[celery] {len(tis)} task instances, all through Celery (hosts "
          f"{sorted({row[4] for row in tis})})", flush=True)

    _check_production_storage(deployment)


def _celery_results(airflow: AirflowStack, ids: list[str], timeout: float = 60) -> dict[str, str]:
    """Celery task id -> status in the result backend, once every id is there as SUCCESS (the
    run's state is written by the last task itself, before its Celery task returns)."""
    deadline = time.monotonic() + timeout
    while True:
        results = dict(airflow.query(
            "SELECT task_id, status FROM celery_taskmeta WHERE task_id = ANY(?)", (ids,)))
        if set(results.values()) == {"SUCCESS"} and len(results) == len(ids):
            return results
        if time.monotonic() > deadline:
            return results
        time.sleep(0.5)


def _check_production_storage(deployment: Deployment) -> None:
    """The stages kept their state where the production profile says: MLflow in PostgreSQL and
    S3, Feast's registry in PostgreSQL and its online rows in Redis."""
    import psycopg

    def rows(name: str, sql: str) -> list[tuple[Any, ...]]:
        url = "postgresql:" + deployment.databases[name].split(":", 1)[1]
        with psycopg.connect(url, autocommit=True) as con:
            return con.execute(sql).fetchall()  # type: ignore[arg-type]

    settings = deployment.settings
    versions = rows("mlflow", "SELECT name, version, source FROM model_versions")
    assert {v[0] for v in versions} >= {settings.model_name}, versions
    mlflow_keys = deployment.s3.keys("mlflow/")
    assert mlflow_keys, "no MLflow artifact in the bucket"
    views = rows("feast", "SELECT feature_view_name FROM feature_views")
    assert views, "no feature view in Feast's registry"
    online = list(deployment.feast_redis.scan_iter(count=1000))
    assert online, "no online feature row in Redis"
    lake = deployment.s3.keys("lake/")
    assert any(f"session={SESSION.isoformat()}" in key for key in lake), lake[:20]
    print(f"[celery] MLflow: {len(versions)} model versions, {len(mlflow_keys)} objects; Feast: "
          f"{len(views)} views, {len(online)} online keys; lake objects in S3: {len(lake)}",
          flush=True)
    print(json.dumps(settings.describe()), flush=True)
