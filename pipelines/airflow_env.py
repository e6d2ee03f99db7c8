"""Adapter for Airflow: its environment, its metadata DB, and ``airflow dags test``.

Everything here is cheap to import (standard library and :mod:`pipelines.settings` only): the
CLI imports it before deciding whether Airflow is needed at all, and the DAG tasks import
:func:`session_for` from it.

* :func:`airflow_env` is the environment the stack runs under (Airflow, MLflow, Feast). The
  profile picks Airflow's deployment: ``embedded``, LocalExecutor on SQLite under the home;
  ``production``, CeleryExecutor on PostgreSQL (:attr:`~pipelines.settings.Settings.
  airflow_sql_alchemy_conn`) with a Redis broker and the result backend in the metadata DB.
* :func:`write_env_sh` writes ``$AFTERBELL_HOME/env.sh`` so that ``. .afterbell/env.sh`` makes
  plain ``airflow``, ``mlflow`` and ``feast`` talk to that stack from any working directory.
* :func:`ensure_airflow_db` runs ``airflow db migrate`` once (a fast no-op afterwards).
* :func:`dags_test` runs one DAG run in-process with ``airflow dags test`` and reports failures.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import sqlite3
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import date
from importlib import metadata
from pathlib import Path
from typing import Any

from pipelines.settings import REPO_ROOT, Settings, redact_url

__all__ = [
    "airflow_env",
    "airflow_version",
    "async_conn",
    "dags_test",
    "ensure_airflow_db",
    "run_states",
    "session_for",
    "write_env_sh",
]

#: Environment variable read by the DAG files (at parse time, a plain ``os.environ`` lookup) to
#: override the default task retries (2). :func:`dags_test` sets it: ``airflow dags test`` waits
#: out retry delays in-process, so a deterministic failure would otherwise block for minutes.
RETRIES_ENV = "AFTERBELL_TASK_RETRIES"

#: Stamp written into ``AIRFLOW_HOME`` after a successful ``airflow db migrate``.
_STAMP = ".afterbell-db-migrated.json"

#: Tables whose presence (with an alembic revision) means the metadata DB is migrated.
_CORE_TABLES = ("dag_run", "task_instance", "dag_bundle")

#: Celery worker processes of the production profile (``[celery] worker_concurrency``; Celery's
#: default is 16 forks): as many as the scheduler may run at once (``[core] parallelism``).
CELERY_CONCURRENCY = "4"

#: Chatty library loggers turned down to WARNING everywhere (scheduler, workers, CLI).
_QUIET_LIBS = ("great_expectations", "alembic", "httpx", "urllib3", "numexpr", "feast")

#: Further namespaces turned down for ``dags_test``'s terminal output only (task logs of the
#: scheduled stack keep them): per-task bookkeeping of the in-process execution API, DAG-bundle
#: syncing, XCom pushes, Python warnings. Errors, task tracebacks and stage log lines still show.
_QUIET_DAGS_TEST = (
    "airflow.api_fastapi=WARNING",
    "airflow.dag_processing=WARNING",
    "airflow.serialization=WARNING",
    "airflow.models.dag=WARNING",
    "task=WARNING",
    "py.warnings=ERROR",
)


# --------------------------------------------------------------------------------- session
def session_for(ds: str | date | None) -> str | None:
    """The NYSE session a DAG run with logical date ``ds`` works on, or None on a non-session.

    The session is the calendar date of the logical date (``ds``, ``YYYY-MM-DD``): the nightly
    16:00 New York run and ``airflow dags test nightly_cycle 2018-12-31`` both carry the session's
    date. Weekends and exchange holidays give None (the DAG then short-circuits).
    """
    if ds is None or ds == "":
        return None
    from pipelines.calendar import is_session, to_date

    day = to_date(ds)
    return day.isoformat() if is_session(day) else None


# --------------------------------------------------------------------------------- environment
def airflow_version() -> str:
    """Installed Airflow core version, read from package metadata (no airflow import)."""
    try:
        return metadata.version("apache-airflow-core")
    except metadata.PackageNotFoundError:  # pragma: no cover - older layouts
        return metadata.version("apache-airflow")


def _is_sqlite(url: str) -> bool:
    return url.split(":", 1)[0].split("+", 1)[0].lower() == "sqlite"


def _is_postgres(url: str) -> bool:
    return url.split(":", 1)[0].split("+", 1)[0].lower() in ("postgresql", "postgres")


def _sqlite_file(url: str) -> Path:
    """The file of a ``sqlite:///path[?query]`` URL."""
    return Path(url.split(":///", 1)[1].split("?", 1)[0])


def async_conn(url: str) -> str | None:
    """``[database] sql_alchemy_conn_async`` for the metadata URL ``url``, or None (Airflow's
    own choice: aiosqlite for SQLite).

    Airflow 3 also builds an async engine and, left to itself, maps ``postgresql`` to asyncpg,
    which is not installed: a PostgreSQL URL keeps its host, database and options on the
    psycopg (v3) driver, which SQLAlchemy runs both sync and async.
    """
    if not _is_postgres(url):
        return None
    return "postgresql+psycopg:" + url.split(":", 1)[1]


def _libpq_url(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL (``postgresql+psycopg://...``) as libpq reads it."""
    return "postgresql:" + url.split(":", 1)[1]


def _venv_bin() -> Path:
    # Not resolved: a venv's python is usually a symlink to the base interpreter.
    return Path(sys.executable).absolute().parent


def _prefixed(first: str, rest: str | None) -> str:
    parts = [first] + [p for p in (rest or "").split(os.pathsep) if p and p != first]
    return os.pathsep.join(parts)


def airflow_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment variables the stack needs (merge them over ``os.environ``).

    ``PATH`` and ``PYTHONPATH`` are prefixed onto their values in ``base`` (default:
    ``os.environ``); every other value is absolute and independent of the working directory.
    ``PYTHONPATH`` carries the checkout root because ``pipelines`` must be importable by task
    processes started from any working directory (the editable install does not guarantee it).

    The profile picks the executor: ``embedded`` the LocalExecutor, ``production`` the
    CeleryExecutor (broker :attr:`~pipelines.settings.Settings.celery_broker`, results
    :attr:`~pipelines.settings.Settings.celery_results`). The metadata DB is
    :attr:`~pipelines.settings.Settings.airflow_sql_alchemy_conn` (embedded default: SQLite
    under the home with a 60 s busy timeout); a PostgreSQL one gets its async engine on psycopg
    too (:func:`async_conn`).
    """
    base = os.environ if base is None else base
    home = settings.home
    production = settings.profile == "production"
    conn = settings.airflow_sql_alchemy_conn
    database = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": conn}
    conn_async = async_conn(conn)
    if conn_async is not None:
        database["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] = conn_async
    celery = {
        "AIRFLOW__CELERY__BROKER_URL": settings.celery_broker,
        "AIRFLOW__CELERY__RESULT_BACKEND": settings.celery_results,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": CELERY_CONCURRENCY,
    } if production else {}
    return {
        "AFTERBELL_HOME": str(home),
        "AIRFLOW_HOME": str(settings.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(settings.dags_dir),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor" if production else "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        # embedded: a 60 s busy timeout, as a scheduler, an api-server and a CLI backfill share
        # the SQLite file (Settings.airflow_sql_alchemy_conn)
        **database,
        **celery,
        # api-server bind address ([api] host; 0.0.0.0 by default) and the URL task processes
        # use to reach its execution API (default http://localhost:8080/execution/).
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": "8080",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "http://127.0.0.1:8080/execution/",
        # INFO keeps task progress and the stages' own log lines; chatty libraries are quieter.
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "AIRFLOW__LOGGING__NAMESPACE_LEVELS": " ".join(f"{ns}=WARNING" for ns in _QUIET_LIBS),
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        # Read by the feast CLI only (click envvar of ``feast --chdir``): plain ``feast`` works
        # from any cwd without changing what ``FeatureStore(repo_path=...)`` reads in Python.
        "FEATURE_REPO_DIR_ENV_VAR": str(settings.feature_repo),
        # the profile's Feast config (``feast -f``) and what the production one expands
        "FEAST_FS_YAML_FILE_PATH": str(settings.feast_yaml),
        "AFTERBELL_PROFILE": settings.profile,
        "AFTERBELL_FEAST_REGISTRY_URL": settings.feast_registry_url,
        "AFTERBELL_REDIS_URL": settings.redis_url,
        "PYTHONPATH": _prefixed(str(REPO_ROOT), base.get("PYTHONPATH")),
        "PATH": _prefixed(str(_venv_bin()), base.get("PATH", os.defpath)),
    }


def _full_env(settings: Settings, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(airflow_env(settings))
    env.update(extra or {})
    return env


def write_env_sh(settings: Settings) -> Path:
    """Write ``settings.home/env.sh``; ``. .afterbell/env.sh`` then points the CLIs at the stack.

    Values are absolute and shell-quoted; ``PATH`` and ``PYTHONPATH`` are prefixed onto the
    values of the sourcing shell rather than frozen at write time. A value carrying a password
    (a URL with one, :func:`~pipelines.settings.redact_url`) is not written: a comment names the
    variable, masked, and the sourcing shell's own value stays in force.
    """
    env = airflow_env(settings, base={})
    lines = [
        "# afterbell: environment of the embedded stack. Generated by pipelines.airflow_env;",
        "# regenerate with `afterbell env`. Usage: . " + shlex.quote(str(settings.home / "env.sh")),
    ]
    for key, value in env.items():
        if key in ("PATH", "PYTHONPATH"):
            continue
        if redact_url(value) != value:  # a password in a URL: never written to a file
            lines.append(f"# {key} carries a secret: not written here; export it yourself "
                         f"(it is {shlex.quote(redact_url(value))})")
            continue
        lines.append(f"export {key}={shlex.quote(value)}")
    venv_bin, repo = shlex.quote(str(_venv_bin())), shlex.quote(str(REPO_ROOT))
    lines.append(f'export PYTHONPATH={repo}"${{PYTHONPATH:+:$PYTHONPATH}}"')
    lines.append(f'case ":$PATH:" in *:{venv_bin}:*) ;; *) export PATH={venv_bin}":$PATH" ;; esac')
    settings.home.mkdir(parents=True, exist_ok=True)
    path = settings.home / "env.sh"
    tmp = path.with_suffix(".sh.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------------- metadata DB
def _sqlite_is_migrated(db: Path) -> bool:
    if not db.is_file():
        return False
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            rev = con.execute("SELECT version_num FROM alembic_version").fetchone()
            tables = {
                r[0]
                for r in con.execute(
                    "SELECT name FROM sqlite_master WHERE type='table' "
                    "AND name IN ('dag_run', 'task_instance', 'dag_bundle')"
                )
            }
        finally:
            con.close()
    except sqlite3.Error:
        return False
    return rev is not None and len(tables) == len(_CORE_TABLES)


def _pg_connect(url: str) -> Any:
    """A psycopg connection to the SQLAlchemy PostgreSQL URL ``url`` (password: libpq's)."""
    import psycopg

    return psycopg.connect(_libpq_url(url), connect_timeout=10, autocommit=True)


def _pg_is_migrated(url: str, pools: Mapping[str, Mapping[str, Any]] | None = None) -> bool:
    import psycopg

    try:
        with _pg_connect(url) as con:
            tables = {
                r[0]
                for r in con.execute(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema() AND table_name = ANY(%s)",
                    (["alembic_version", *_CORE_TABLES],),
                )
            }
            if len(tables) != len(_CORE_TABLES) + 1:
                return False
            if con.execute("SELECT version_num FROM alembic_version").fetchone() is None:
                return False
            if pools:
                have = dict(con.execute(
                    "SELECT pool, slots FROM slot_pool WHERE pool = ANY(%s)", (list(pools),)
                ).fetchall())
                if have != {name: p["slots"] for name, p in pools.items()}:
                    return False
    except psycopg.Error:
        return False
    return True


def _db_is_migrated(db: Path | str, pools: Mapping[str, Mapping[str, Any]] | None = None) -> bool:
    """Cheap check that a metadata DB has an alembic revision and the core tables.

    ``db`` is a SQLite file (a :class:`~pathlib.Path`) or a SQLAlchemy URL. On PostgreSQL, a DB
    shared with other hosts, ``pools`` (name -> ``slots``) must also be there as given (another
    host's migrate does not create them; on SQLite, private to the home, the stamp covers them);
    a server that does not answer counts as not migrated.
    """
    if isinstance(db, Path):
        return _sqlite_is_migrated(db)
    if _is_sqlite(db):
        return _sqlite_is_migrated(_sqlite_file(db))
    if _is_postgres(db):
        return _pg_is_migrated(db, pools)
    raise ValueError(f"unsupported Airflow metadata DB {redact_url(db)!r} "
                     "(AFTERBELL_AIRFLOW_DB_URL: SQLite or PostgreSQL)")


def _tail(proc: subprocess.CompletedProcess[str], lines: int = 30) -> str:
    """The last lines of a CLI's output, any password of a URL in it masked."""
    return redact_url("\n".join((proc.stdout + proc.stderr).strip().splitlines()[-lines:]))


def ensure_airflow_db(settings: Settings) -> None:
    """Run ``airflow db migrate`` unless this Airflow version already migrated this DB.

    Also creates the ``training`` and ``serving`` pools with the slots of ``afterbell.toml``.
    A no-op is cheap: a stamp file (Airflow version, DB, pools) in ``AIRFLOW_HOME`` and a
    read-only look at the DB's ``alembic_version`` table (a few milliseconds on SQLite; one
    connection on PostgreSQL, which must exist: ``airflow db migrate`` creates the tables, not
    the database). Concurrent callers of one home serialise on a lock (on PostgreSQL, Airflow's
    migrate also takes a lock of its own). The stamp never holds a password.
    """
    from pipelines.schedule import load_config

    home = settings.airflow_home
    home.mkdir(parents=True, exist_ok=True)
    conn = settings.airflow_sql_alchemy_conn
    stamp_path = home / _STAMP
    cfg = load_config().pools
    pools = {
        "training": {"slots": cfg.training_slots, "include_deferred": False,
                     "description": "afterbell training tasks (light and heavy)"},
        "serving": {"slots": cfg.serving_slots, "include_deferred": False,
                    "description": "afterbell live serving: never waits for training"},
    }
    db = str(_sqlite_file(conn)) if _is_sqlite(conn) else redact_url(conn)
    stamp = {"airflow": airflow_version(), "db": db, "pools": pools}

    def up_to_date() -> bool:
        try:
            return json.loads(stamp_path.read_text()) == stamp and _db_is_migrated(conn, pools)
        except (OSError, ValueError):
            return False

    if up_to_date():
        return
    with open(home / ".db-migrate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if up_to_date():  # another process migrated while we waited
            return
        proc = subprocess.run(
            ["airflow", "db", "migrate"],
            env=_full_env(settings),
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or not _db_is_migrated(conn):
            raise RuntimeError(f"`airflow db migrate` failed (exit {proc.returncode}) on "
                               f"{db}:\n{_tail(proc)}")
        pools_file = home / "pools.json"
        pools_file.write_text(json.dumps(pools, indent=2))
        proc = subprocess.run(
            ["airflow", "pools", "import", str(pools_file)],
            env=_full_env(settings), capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"`airflow pools import` failed (exit {proc.returncode}):\n"
                               f"{_tail(proc)}")
        stamp_path.write_text(json.dumps(stamp))


# --------------------------------------------------------------------------------- dags test
_RUN_SQL = {
    # SQLite keeps UTC timestamps as text; PostgreSQL as timestamptz
    "sqlite": ("SELECT run_id FROM dag_run WHERE dag_id = ? AND substr(logical_date, 1, 10) = ? "
               "ORDER BY id DESC LIMIT 1",
               "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ? "
               "ORDER BY task_id"),
    "postgresql": ("SELECT run_id FROM dag_run WHERE dag_id = %s "
                   "AND (logical_date AT TIME ZONE 'UTC')::date = %s::date "
                   "ORDER BY id DESC LIMIT 1",
                   "SELECT task_id, state FROM task_instance WHERE dag_id = %s AND run_id = %s "
                   "ORDER BY task_id"),
}


def _states(rows: Sequence[tuple[Any, ...]]) -> dict[str, str]:
    return {task_id: state or "none" for task_id, state in rows}


def run_states(settings: Settings, dag_id: str, session: str) -> dict[str, str]:
    """Task id -> state of the latest run of ``dag_id`` whose logical date falls on ``session``.

    Reads the metadata DB directly (SQLite read-only, or PostgreSQL with psycopg; no airflow
    import); empty if there is no such run (or no DB yet).
    """
    conn = settings.airflow_sql_alchemy_conn
    if _is_postgres(conn):
        import psycopg

        find_run, find_tasks = _RUN_SQL["postgresql"]
        try:
            with _pg_connect(conn) as pg:
                row = pg.execute(find_run, (dag_id, session)).fetchone()
                if row is None:
                    return {}
                return _states(pg.execute(find_tasks, (dag_id, row[0])).fetchall())
        except psycopg.errors.UndefinedTable:  # not migrated yet
            return {}
    if not _is_sqlite(conn):
        raise ValueError(f"unsupported Airflow metadata DB {redact_url(conn)!r} "
                         "(AFTERBELL_AIRFLOW_DB_URL: SQLite or PostgreSQL)")
    db = _sqlite_file(conn)
    if not db.is_file():
        return {}
    find_run, find_tasks = _RUN_SQL["sqlite"]
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = con.execute(find_run, (dag_id, session)).fetchone()
        if row is None:
            return {}
        rows = con.execute(find_tasks, (dag_id, row[0])).fetchall()
    finally:
        con.close()
    return _states(rows)


def dags_test(
    settings: Settings,
    dag_id: str,
    session: str,
    *,
    verbose: bool = False,
    retries: int | None = 0,
) -> int:
    """Run ``airflow dags test <dag_id> <session>`` in the embedded environment; exit code.

    Output streams to the terminal as it comes: about 4 lines per task, plus the stages' own
    log lines and any traceback (``verbose``: Airflow's full INFO output, about 15 per task).
    ``retries`` overrides the DAG's task retries (``None`` keeps its default of 2): ``dags test``
    waits out retry delays in-process, which for a deterministic failure only adds minutes.

    Airflow 3.3 exits 1 ("DagRun failed") when the run fails; the task states are also read back
    from the DB, so a failed task yields a non-zero code even if the CLI exits 0. A run whose
    session is not an NYSE session short-circuits: every task after ``resolve_session`` is
    skipped and the code is 0.
    """
    ensure_airflow_db(settings)
    extra: dict[str, str] = {}
    if not verbose:
        levels = airflow_env(settings)["AIRFLOW__LOGGING__NAMESPACE_LEVELS"].split()
        extra["AIRFLOW__LOGGING__NAMESPACE_LEVELS"] = " ".join(levels + list(_QUIET_DAGS_TEST))
    if retries is not None:
        extra[RETRIES_ENV] = str(retries)
    cmd = ["airflow", "dags", "test", dag_id, session]
    print(f"$ {shlex.join(cmd)}", file=sys.stderr, flush=True)
    code = subprocess.run(cmd, env=_full_env(settings, extra), check=False).returncode
    states = run_states(settings, dag_id, session)
    failed = sorted(t for t, s in states.items() if s == "failed")
    blocked = sorted(t for t, s in states.items() if s == "upstream_failed")
    if states:
        counts: dict[str, int] = {}
        for s in states.values():
            counts[s] = counts.get(s, 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        print(f"{dag_id} {session}: {summary}", file=sys.stderr, flush=True)
    if failed or blocked:
        print(
            f"{dag_id} {session}: FAILED: {', '.join(failed) or '-'}"
            + (f" (not run: {', '.join(blocked)})" if blocked else ""),
            file=sys.stderr,
        )
        return code or 1
    if code == 0 and not states:
        print(f"{dag_id} {session}: no DAG run recorded", file=sys.stderr)
        return 1
    return code
