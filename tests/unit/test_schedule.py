"""Stage windows, training cadence and the settings file (pipelines.schedule), and the Airflow
adapter's fail-fast rule for bad data (pipelines.tasks)."""

from __future__ import annotations

from datetime import date, datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from pipelines.schedule import (
    CadenceConfig,
    CycleConfig,
    StageWindows,
    is_last_session_of_month,
    is_last_session_of_week,
    load_config,
    training_plan,
    window_times,
)

NY = ZoneInfo("America/New_York")


def _ny(ts: datetime) -> tuple[date, time]:
    local = ts.astimezone(NY)
    return local.date(), local.time()


def test_windows_of_a_friday_session_put_pre_market_on_monday() -> None:
    w = window_times(date(2019, 3, 8), StageWindows())  # Friday before the spring DST switch
    assert _ny(w["close_analysis"]) == (date(2019, 3, 8), time(16, 0))
    assert _ny(w["light_training"]) == (date(2019, 3, 8), time(17, 0))
    assert _ny(w["heavy_training"]) == (date(2019, 3, 8), time(22, 0))
    assert _ny(w["validation"]) == (date(2019, 3, 9), time(2, 0))
    assert _ny(w["pre_market"]) == (date(2019, 3, 11), time(7, 0))
    # DST from the calendar: 07:00 New York is 12:00 UTC in winter, 11:00 UTC after the switch
    assert w["close_analysis"].hour == 21 and w["pre_market"].hour == 11


def test_pre_market_after_a_monday_holiday_is_tuesday_and_early_close_opens_earlier() -> None:
    w = window_times(date(2019, 1, 18), StageWindows())  # Friday before Martin Luther King day
    assert _ny(w["pre_market"]) == (date(2019, 1, 22), time(7, 0))
    early = window_times(date(2018, 11, 23), StageWindows())  # day after Thanksgiving
    assert _ny(early["close_analysis"]) == (date(2018, 11, 23), time(13, 0))


def test_cadence_calendar() -> None:
    assert is_last_session_of_week(date(2017, 12, 22))
    assert not is_last_session_of_week(date(2017, 12, 27))
    assert is_last_session_of_week(date(2018, 3, 29))  # Good Friday closes the week on Thursday
    assert is_last_session_of_month(date(2018, 8, 31))
    assert not is_last_session_of_month(date(2018, 8, 30))
    # 2018-12-31 is a Monday: the week goes on in January, the month ends
    assert not is_last_session_of_week(date(2018, 12, 31))
    assert is_last_session_of_month(date(2018, 12, 31))


def test_training_plan_reasons() -> None:
    cad = CadenceConfig()
    assert training_plan(date(2017, 12, 27), cad, has_model=False).kind == "full"
    skip = training_plan(date(2017, 12, 27), cad, has_model=True)
    assert not skip.run and "no retrain" in skip.reason
    weekly = training_plan(date(2017, 12, 22), cad, has_model=True)
    assert weekly.run and weekly.kind == "lstm"
    monthly = training_plan(date(2017, 12, 29), cad, has_model=True)
    assert monthly.run and monthly.kind == "full"
    forced = training_plan(date(2017, 12, 27), cad, has_model=True,
                           retrain_reasons=("live MAE 0.12 is 50% above ...",))
    assert forced.run and "requested by monitoring" in forced.reason


def test_settings_file_round_trip_and_errors(tmp_path: Path) -> None:
    shipped = load_config(Path(__file__).resolve().parents[2] / "afterbell.toml")
    assert shipped.windows == StageWindows() and shipped.cadence == CadenceConfig()
    assert load_config(tmp_path / "missing.toml") == CycleConfig()  # defaults
    bad = tmp_path / "bad.toml"
    bad.write_text('[windows]\nheavy_training = "25:00"\n')
    with pytest.raises(ValueError, match="heavy_training"):
        load_config(bad)
    bad.write_text('[cadence]\nlstm_retrain = "hourly"\n')
    with pytest.raises(ValueError, match="hourly"):
        load_config(bad)
    bad.write_text('[windowz]\n')
    with pytest.raises(ValueError, match="windowz"):
        load_config(bad)


def test_bad_data_fails_the_task_without_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from pipelines import stages, tasks
    from pipelines.quality import DataQualityError

    def bad(session: str) -> dict:
        raise DataQualityError("expect_column_values_to_be_between", "AAPL", session, "close=-1")

    def transient(session: str) -> dict:
        raise OSError("database is locked")

    monkeypatch.setattr(stages, "ingest", bad)
    with pytest.raises(AirflowFailException, match="AAPL"):
        tasks.run_stage("ingest", "2018-12-31")
    monkeypatch.setattr(stages, "ingest", transient)
    with pytest.raises(OSError):  # retried by Airflow with backoff
        tasks.run_stage("ingest", "2018-12-31")


def test_the_integration_tests_config_differs_from_the_shipped_one_in_tuning_and_gate() -> None:
    from dataclasses import replace

    from pipelines.settings import REPO_ROOT

    shipped = load_config(REPO_ROOT / "afterbell.toml")
    small = load_config(REPO_ROOT / "tests" / "small_cycle.toml")
    assert small.tuning.n_trials == 2
    assert small.validation == {**shipped.validation, "require_significance": False}
    assert replace(small, tuning=shipped.tuning, validation=shipped.validation) == shipped
