"""DAG integrity: the DAG files parse fast, import nothing heavy, touch no DB or network, and wire
the stages in the contracted order (CONTRACT.md: DAG ids and task group names).

Everything Airflow-related runs in one subprocess with its own AIRFLOW_HOME, so this test module
neither depends on nor leaks into the Airflow configuration of the pytest process.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from pipelines.airflow_env import session_for
from pipelines.settings import REPO_ROOT

DAGS_DIR = REPO_ROOT / "dags"
DAG_FILES = ("nightly_cycle.py", "live_serving.py")
GROUPS = (
    "close_analysis",
    "light_training",
    "data_processing",
    "heavy_training",
    "validation",
    "pre_market",
)
#: nightly_cycle's tasks in execution order (each depends on the one before it).
NIGHTLY_ORDER = (
    "resolve_session",
    "close_analysis.window",
    "close_analysis.ingest",
    "close_analysis.build_features",
    "close_analysis.monitor",
    "light_training.window",
    "light_training.refit_garch",
    "light_training.recalibrate_risk",
    "light_training.price_options",
    "data_processing.window",
    "data_processing.build_feature_tables",
    "data_processing.materialize",
    "heavy_training.window",
    "heavy_training.plan",
    "heavy_training.train_challenger",
    "heavy_training.train_transformer",
    "validation.window",
    "validation.validate_and_promote",
    "pre_market.window",
    "pre_market.pre_market",
    "pre_market.size_positions",
)
HEAVY = ("torch", "lightning", "mlflow", "feast", "great_expectations", "arch", "talib")
PARSE_BUDGET_S = 2.0

# Runs in a fresh interpreter. Airflow is imported first (its own start-up is not the DAG files'
# cost); then socket connects, sqlite3 and SQLAlchemy connections are made to fail, and each DAG
# file is executed on its own (timed, modules it adds recorded) before the whole folder is loaded
# with DagBag.
_PROBE = r"""
import importlib.util, json, socket, sqlite3, sys, time
from datetime import datetime, timezone

import airflow.sdk  # noqa: F401
import sqlalchemy.engine
from airflow.dag_processing.dagbag import DagBag
from airflow.timetables.base import TimeRestriction

dags_dir, files, heavy = sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(",")
attempts = []

def _refuse(what):
    def guard(*args, **kwargs):
        attempts.append(what)
        raise RuntimeError(f"{what} at DAG parse time")
    return guard

socket.socket.connect = _refuse("socket.connect")
socket.socket.connect_ex = _refuse("socket.connect_ex")
socket.create_connection = _refuse("socket.create_connection")
sqlite3.connect = _refuse("sqlite3.connect")
sqlalchemy.engine.Engine.connect = _refuse("Engine.connect")

out = {"files": {}, "dags": {}}
for i, name in enumerate(files):
    before = set(sys.modules)
    spec = importlib.util.spec_from_file_location(f"_dag_probe_{i}", f"{dags_dir}/{name}")
    module = importlib.util.module_from_spec(spec)
    t0 = time.perf_counter()
    spec.loader.exec_module(module)
    seconds = time.perf_counter() - t0
    added = set(sys.modules) - before
    out["files"][name] = {
        "seconds": seconds,
        "heavy": sorted(m for m in added if m.split(".")[0] in heavy),
        "pipelines": sorted(m for m in added if m.split(".")[0] == "pipelines"),
    }

bag = DagBag(dag_folder=dags_dir)
out["import_errors"] = {str(k): str(v) for k, v in bag.import_errors.items()}
out["load_seconds"] = {str(s.file): s.duration.total_seconds() for s in bag.dagbag_stats}
out["heavy_after_dagbag"] = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
out["attempts"] = attempts

for dag_id, dag in bag.dags.items():
    tt = dag.timetable
    restriction = TimeRestriction(
        earliest=datetime(2018, 1, 1, tzinfo=timezone.utc), latest=None, catchup=True
    )
    runs, last = [], None
    for _ in range(300):  # about 14 months of weekdays: crosses both DST switches
        info = tt.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)
        last = info.data_interval
        runs.append(
            [info.logical_date.date().isoformat(),
             info.logical_date.in_timezone("America/New_York").date().isoformat()]
        )
    dr = dag.default_args
    out["dags"][dag_id] = {
        "fileloc": dag.fileloc,
        "task_ids": [t.task_id for t in dag.topological_sort()],
        "upstream": {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks},
        "operators": {t.task_id: type(t).__name__ for t in dag.tasks},
        "top_level": list(dag.task_group.children),
        "timetable": type(tt).__name__,
        "timetable_args": tt.serialize(),
        "start_date": dag.start_date.isoformat(),
        "catchup": dag.catchup,
        "max_active_runs": dag.max_active_runs,
        "tags": sorted(dag.tags),
        "doc_md": dag.doc_md or "",
        "retries": dr.get("retries"),
        "retry_delay_s": dr["retry_delay"].total_seconds(),
        "backoff": dr.get("retry_exponential_backoff"),
        "runs": runs,
    }
print("@@PROBE@@" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict:
    home = tmp_path_factory.mktemp("airflow_home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AFTERBELL"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS_DIR),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING",
        # A DB that cannot exist: any parse-time DB access would fail.
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/no/such/dir/airflow.db",
    )
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(DAGS_DIR), ",".join(DAG_FILES), ",".join(HEAVY)],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    marker = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@PROBE@@")]
    assert proc.returncode == 0 and marker, (
        f"probe failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return json.loads(marker[-1][len("@@PROBE@@") :])


def test_no_import_errors_and_both_dags(probe: dict) -> None:
    assert probe["import_errors"] == {}
    assert {"nightly_cycle", "live_serving"} <= set(probe["dags"])
    for dag_id in ("nightly_cycle", "live_serving"):
        assert Path(probe["dags"][dag_id]["fileloc"]).name == f"{dag_id}.py"


@pytest.mark.parametrize("name", DAG_FILES)
def test_parse_is_fast_light_and_offline(probe: dict, name: str) -> None:
    stats = probe["files"][name]
    assert stats["seconds"] < PARSE_BUDGET_S, stats
    assert stats["heavy"] == [], f"{name} imports heavy modules at parse time: {stats['heavy']}"
    # only the light scheduling classes (timetable, window sensor) are imported at parse time
    allowed = {"pipelines", "pipelines.timetable", "pipelines.sensors"}
    assert set(stats["pipelines"]) <= allowed, f"{name} imports {stats['pipelines']} at parse time"
    assert probe["attempts"] == [], f"DB/network access while parsing: {probe['attempts']}"
    assert probe["heavy_after_dagbag"] == []
    loads = {Path(f).name: s for f, s in probe["load_seconds"].items()}
    assert loads[name] < PARSE_BUDGET_S


def test_nightly_cycle_wiring(probe: dict) -> None:
    dag = probe["dags"]["nightly_cycle"]
    assert sorted(dag["task_ids"]) == sorted(NIGHTLY_ORDER)
    assert dag["task_ids"] == list(NIGHTLY_ORDER)  # the only topological order
    assert dag["top_level"] == ["resolve_session", *GROUPS]
    for prev, task_id in itertools.pairwise(NIGHTLY_ORDER):
        assert prev in dag["upstream"][task_id], (prev, task_id)
        # every stage task gets the session from resolve_session's XCom; every window sensor
        # its target time
        if not task_id.endswith(".window") or task_id.startswith("close_analysis"):
            assert "resolve_session" in dag["upstream"][task_id]
    for task_id in NIGHTLY_ORDER:
        if task_id.endswith(".window"):
            assert dag["operators"][task_id] == "StageWindowSensor"
    assert "ShortCircuit" in dag["operators"]["heavy_training.plan"]
    assert dag["upstream"]["resolve_session"] == []
    assert "ShortCircuit" in dag["operators"]["resolve_session"]


def test_live_serving_wiring(probe: dict) -> None:
    dag = probe["dags"]["live_serving"]
    assert dag["task_ids"] == ["resolve_session", "serve"]
    assert dag["upstream"]["serve"] == ["resolve_session"]
    assert "ShortCircuit" in dag["operators"]["resolve_session"]


@pytest.mark.parametrize(("dag_id", "due"), [("nightly_cycle", "close"), ("live_serving", "open")])
def test_schedule_and_defaults(probe: dict, dag_id: str, due: str) -> None:
    dag = probe["dags"][dag_id]
    assert dag["timetable"] == "NYSESessionTimetable"
    assert dag["timetable_args"] == {"due": due}
    assert dag["start_date"].startswith("1990-01-01T")
    assert dag["catchup"] is False
    assert dag["max_active_runs"] == 1
    assert "afterbell" in dag["tags"]
    assert dag["doc_md"].strip()
    assert dag["retries"] == 2
    assert dag["retry_delay_s"] == 60
    assert dag["backoff"] == 2.0


@pytest.mark.parametrize("dag_id", ["nightly_cycle", "live_serving"])
def test_scheduled_logical_date_is_the_new_york_date(probe: dict, dag_id: str) -> None:
    """``ds`` (the UTC date of the logical date) is the New York trading date, DST or not."""
    runs = probe["dags"][dag_id]["runs"]
    assert len(runs) == 300
    assert all(utc_day == ny_day for utc_day, ny_day in runs)
    assert all(date.fromisoformat(day).weekday() < 5 for day, _ in runs)
    assert "2018-11-22" not in {day for day, _ in runs}  # Thanksgiving


# ------------------------------------------------------------------------- resolve_session logic
@pytest.mark.parametrize(
    ("ds", "expected"),
    [
        ("2018-12-31", "2018-12-31"),  # Monday session (airflow dags test's default date)
        ("2018-12-28", "2018-12-28"),
        ("2018-12-25", None),  # Christmas
        ("2018-12-29", None),  # Saturday
        ("2018-12-05", None),  # national day of mourning (G. H. W. Bush): an unscheduled closure
        ("2019-07-03", "2019-07-03"),  # early close is still a session
        ("2018-12-31T21:00:00+00:00", "2018-12-31"),
        (date(2018, 12, 31), "2018-12-31"),
        (None, None),
        ("", None),
    ],
)
def test_session_for(ds: str | date | None, expected: str | None) -> None:
    assert session_for(ds) == expected


def test_session_for_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        session_for("not-a-date")
