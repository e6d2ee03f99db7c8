"""The Airflow adapter: environment (embedded and production), env.sh, metadata DB set-up (SQLite
and PostgreSQL), dags test outcome."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from pipelines import airflow_env as ae
from pipelines.settings import REPO_ROOT, Settings
from tests.services import pg_database  # noqa: F401 (fixture)

VENV_BIN = Path(sys.executable).absolute().parent


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # A space and a quote in the path exercise env.sh's shell quoting.
    return Settings(home=tmp_path / "after bell's home")


def test_airflow_env_values(settings: Settings) -> None:
    env = ae.airflow_env(settings, base={"PATH": "/usr/bin:/bin", "PYTHONPATH": "/elsewhere"})
    home = settings.home
    assert env["AFTERBELL_HOME"] == str(home)
    assert env["AIRFLOW_HOME"] == str(home / "airflow")
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(REPO_ROOT / "dags")
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__CORE__PARALLELISM"] == "4"
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "True"
    assert (env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
            == f"sqlite:///{home}/airflow/airflow.db?timeout=60")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite:////")
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["MLFLOW_TRACKING_URI"] == settings.tracking_uri
    assert env["FEATURE_REPO_DIR_ENV_VAR"] == str(REPO_ROOT / "feature_repo")
    assert env["PATH"].split(":") == [str(VENV_BIN), "/usr/bin", "/bin"]
    assert env["PYTHONPATH"].split(":") == [str(REPO_ROOT), "/elsewhere"]
    assert all(isinstance(v, str) for v in env.values())


def test_airflow_env_does_not_duplicate_path_entries(settings: Settings) -> None:
    env = ae.airflow_env(settings, base={"PATH": f"{VENV_BIN}:/bin", "PYTHONPATH": str(REPO_ROOT)})
    assert env["PATH"] == f"{VENV_BIN}:/bin"
    assert env["PYTHONPATH"] == str(REPO_ROOT)


def _source(env_sh: Path, cwd: Path, script: str, path: str = "/usr/bin:/bin",
            extra: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        ["bash", "-c", f". {ae.shlex.quote(str(env_sh))} && {script}"],
        env={"PATH": path, "HOME": str(cwd), **(extra or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout


def test_env_sh_sourced_in_bash(settings: Settings, tmp_path: Path) -> None:
    env_sh = ae.write_env_sh(settings)
    assert env_sh == settings.home / "env.sh"
    expected = ae.airflow_env(settings, base={"PATH": "/usr/bin:/bin"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    keys = sorted(expected)
    out = _source(env_sh, elsewhere, " && ".join(f'printf "%s\\0" "${k}"' for k in keys))
    got = dict(zip(keys, out.split("\0")[:-1], strict=True))
    assert got == expected
    # plain CLIs resolve to the virtualenv from any working directory
    which = _source(env_sh, elsewhere, "command -v airflow mlflow feast python").split()
    assert which == [str(VENV_BIN / n) for n in ("airflow", "mlflow", "feast", "python")]


def test_env_sh_never_writes_a_password(settings: Settings) -> None:
    secret = "pw-" + "x7Q2e9"
    with_secrets = settings.with_(
        feast_registry_url=f"postgresql+psycopg://postgres:{secret}@db:5432/afterbell_feast",
        redis_url=f"redis:6379,db=1,password={secret}")
    env_sh = ae.write_env_sh(with_secrets)
    text = env_sh.read_text()
    assert secret not in text
    assert "# AFTERBELL_REDIS_URL carries a secret" in text
    # the sourcing shell's own value is kept
    out = _source(env_sh, with_secrets.home,
                  'echo "$AFTERBELL_REDIS_URL"', extra={"AFTERBELL_REDIS_URL": "mine"})
    assert out.strip() == "mine"


def test_env_sh_is_idempotent_and_keeps_callers_pythonpath(settings: Settings) -> None:
    env_sh = ae.write_env_sh(settings)
    out = _source(
        env_sh,
        settings.home,
        f'export PYTHONPATH=/x; . {ae.shlex.quote(str(env_sh))}; echo "$PATH"; echo "$PYTHONPATH"',
    )
    path, pythonpath = out.splitlines()
    assert path.split(":").count(str(VENV_BIN)) == 1
    assert pythonpath.split(":")[-1] == "/x"


def test_pipelines_importable_from_any_cwd_with_env(settings: Settings, tmp_path: Path) -> None:
    env = ae.airflow_env(settings, base={"PATH": "/usr/bin:/bin"})
    proc = subprocess.run(
        [sys.executable, "-c", "import pipelines.settings as s; print(s.REPO_ROOT)"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(REPO_ROOT)


def test_ensure_airflow_db_creates_then_is_a_fast_noop(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = settings.airflow_home / "airflow.db"
    assert not db.exists()
    ae.ensure_airflow_db(settings)
    con = sqlite3.connect(db)
    try:
        assert con.execute("SELECT version_num FROM alembic_version").fetchone()
        assert con.execute("SELECT count(*) FROM dag_run").fetchone() == (0,)
    finally:
        con.close()
    assert ae.run_states(settings, "nightly_cycle", "2018-12-31") == {}

    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError("second ensure_airflow_db must not run `airflow db migrate`")

    monkeypatch.setattr(ae.subprocess, "run", no_subprocess)
    t0 = time.perf_counter()
    ae.ensure_airflow_db(settings)
    assert time.perf_counter() - t0 < 0.5


def test_db_check_rejects_missing_or_empty_db(tmp_path: Path) -> None:
    assert not ae._db_is_migrated(tmp_path / "missing.db")
    sqlite3.connect(tmp_path / "empty.db").close()
    assert not ae._db_is_migrated(tmp_path / "empty.db")


# ------------------------------------------------------------------------------- dags_test
def _fake_db(settings: Settings, states: Mapping[str, str | None], session: str) -> None:
    settings.airflow_home.mkdir(parents=True)
    con = sqlite3.connect(settings.airflow_home / "airflow.db")
    con.executescript(
        "CREATE TABLE dag_run "
        "(id INTEGER PRIMARY KEY, dag_id TEXT, run_id TEXT, logical_date TEXT);"
        "CREATE TABLE task_instance (dag_id TEXT, task_id TEXT, run_id TEXT, state TEXT);"
    )
    con.execute(
        "INSERT INTO dag_run (dag_id, run_id, logical_date) VALUES ('d', 'old', ?)",
        (f"{session} 00:00:00.000000",),
    )
    con.execute("INSERT INTO task_instance VALUES ('d', 'a', 'old', 'failed')")
    con.execute(
        "INSERT INTO dag_run (dag_id, run_id, logical_date) VALUES ('d', 'new', ?)",
        (f"{session} 00:00:00.000000",),
    )
    con.executemany("INSERT INTO task_instance VALUES ('d', ?, 'new', ?)", list(states.items()))
    con.commit()
    con.close()


@pytest.mark.parametrize(
    ("cli_code", "states", "expected"),
    [
        (0, {"a": "success", "b": "success"}, 0),
        (0, {"a": "success", "b": "skipped"}, 0),  # a non-session short-circuits: success
        (0, {"a": "success", "b": "failed"}, 1),  # CLI said 0 but a task failed
        (0, {"a": "failed", "b": "upstream_failed"}, 1),
        (1, {"a": "failed", "b": "upstream_failed"}, 1),
        (0, {}, 1),  # no run recorded at all
        (2, {"a": "success"}, 2),
    ],
)
def test_dags_test_exit_code(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    cli_code: int,
    states: dict[str, str],
    expected: int,
) -> None:
    _fake_db(settings, states, "2018-12-31")
    calls: list[tuple[list[str], dict[str, str]]] = []

    def fake_run(cmd: list[str], env: dict[str, str], check: bool) -> subprocess.CompletedProcess:
        calls.append((cmd, env))
        return subprocess.CompletedProcess(cmd, cli_code)

    monkeypatch.setattr(ae, "ensure_airflow_db", lambda s: None)
    monkeypatch.setattr(ae.subprocess, "run", fake_run)
    assert ae.dags_test(settings, "d", "2018-12-31") == expected
    ((cmd, env),) = calls
    assert cmd == ["airflow", "dags", "test", "d", "2018-12-31"]
    assert env["AIRFLOW_HOME"] == str(settings.airflow_home)
    assert env[ae.RETRIES_ENV] == "0"
    assert "task=WARNING" in env["AIRFLOW__LOGGING__NAMESPACE_LEVELS"].split()


# ------------------------------------------------------------------------------- production
PG_URL = "postgresql+psycopg://postgres@db.example:5432/afterbell_airflow"


def test_airflow_env_production_is_celery_on_postgres(settings: Settings) -> None:
    prod = settings.with_(profile="production", airflow_db_url=PG_URL,
                          celery_broker_url="redis://127.0.0.1:6379/5")
    env = ae.airflow_env(prod, base={})
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == PG_URL
    # Airflow 3 would map postgresql to asyncpg (not installed) for its async engine
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] == PG_URL
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://127.0.0.1:6379/5"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == f"db+{PG_URL}"
    assert env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == env["AIRFLOW__CORE__PARALLELISM"]
    assert env["AFTERBELL_PROFILE"] == "production"
    # the defaults: the machine's PostgreSQL and Redis
    default = ae.airflow_env(settings.with_(profile="production"), base={})
    assert default["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == (
        "postgresql+psycopg://postgres@127.0.0.1:5432/afterbell_airflow")
    assert default["AIRFLOW__CELERY__BROKER_URL"] == "redis://127.0.0.1:6379/0"


def test_airflow_env_embedded_has_no_celery_nor_async_conn(settings: Settings) -> None:
    env = ae.airflow_env(settings, base={})
    assert not any(k.startswith("AIRFLOW__CELERY__") for k in env)
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC" not in env  # Airflow's aiosqlite
    # an embedded installation may still keep its metadata in PostgreSQL (LocalExecutor)
    on_pg = ae.airflow_env(settings.with_(airflow_db_url=PG_URL), base={})
    assert on_pg["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert on_pg["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] == PG_URL


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (PG_URL, PG_URL),
        ("postgresql://u@h/db?sslmode=disable", "postgresql+psycopg://u@h/db?sslmode=disable"),
        ("postgresql+psycopg2://u@h:5433/db", "postgresql+psycopg://u@h:5433/db"),
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:////tmp/airflow.db?timeout=60", None),
    ],
)
def test_async_conn(url: str, expected: str | None) -> None:
    assert ae.async_conn(url) == expected


def test_env_sh_never_writes_airflow_or_celery_passwords(settings: Settings) -> None:
    secret = "pw-" + "c3l3ry"
    prod = settings.with_(
        profile="production",
        airflow_db_url=f"postgresql+psycopg://postgres:{secret}@db:5432/airflow",
        celery_broker_url=f"redis://:{secret}@redis:6379/0",
    )
    text = ae.write_env_sh(prod).read_text()
    assert secret not in text
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC",
                "AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CELERY__RESULT_BACKEND"):
        assert f"# {key} carries a secret" in text, key
    assert "export AIRFLOW__CORE__EXECUTOR=CeleryExecutor" in text


@pytest.mark.services
def test_db_check_and_run_states_on_postgres(
    settings: Settings,
    pg_database: str,  # noqa: F811 (fixture)
) -> None:
    """The metadata-DB check and run_states read PostgreSQL (a stand-in schema of the columns
    they read; the real migrate is exercised by tests/integration/test_services_airflow.py)."""
    import psycopg

    pools = {"training": {"slots": 1}, "serving": {"slots": 2}}
    prod = settings.with_(profile="production", airflow_db_url=pg_database)
    assert not ae._db_is_migrated(pg_database)
    assert ae.run_states(prod, "d", "2018-12-31") == {}  # no tables yet
    libpq = "postgresql:" + pg_database.split(":", 1)[1]
    with psycopg.connect(libpq, autocommit=True) as con:
        con.execute(
            "CREATE TABLE alembic_version (version_num text);"
            "CREATE TABLE dag_bundle (name text);"
            "CREATE TABLE dag_run (id serial PRIMARY KEY, dag_id text, run_id text, "
            "  logical_date timestamptz);"
            "CREATE TABLE task_instance (dag_id text, task_id text, run_id text, state text);"
            "CREATE TABLE slot_pool (pool text, slots int);"
        )
        assert not ae._db_is_migrated(pg_database)  # no revision yet
        con.execute("INSERT INTO alembic_version VALUES ('abc123')")
        assert ae._db_is_migrated(pg_database)
        assert not ae._db_is_migrated(pg_database, pools)  # pools missing
        con.execute("INSERT INTO slot_pool VALUES ('training', 1), ('serving', 2)")
        assert ae._db_is_migrated(pg_database, pools)
        assert ae.run_states(prod, "d", "2018-12-31") == {}
        # the session is the UTC date of the logical date (the 14:30 UTC open of the session)
        con.execute("INSERT INTO dag_run (dag_id, run_id, logical_date) VALUES "
                    "('d', 'old', '2018-12-31 14:30:00+00'), "
                    "('d', 'new', '2018-12-31 14:30:00+00'), "
                    "('d', 'other', '2019-01-02 14:30:00+00')")
        con.execute("INSERT INTO task_instance VALUES ('d', 'a', 'old', 'failed'), "
                    "('d', 'a', 'new', 'success'), ('d', 'b', 'new', NULL), "
                    "('d', 'a', 'other', 'failed')")
    assert ae.run_states(prod, "d", "2018-12-31") == {"a": "success", "b": "none"}
    assert ae.run_states(prod, "d", "2019-01-02") == {"a": "failed"}
    assert ae.run_states(prod, "d", "2019-01-01") == {}


def test_db_check_on_an_unreachable_postgres_is_false() -> None:
    assert not ae._db_is_migrated("postgresql+psycopg://postgres@127.0.0.1:1/none")
