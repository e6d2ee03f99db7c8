"""A stage-window sensor that does not hold a worker slot while it waits."""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.sensors.date_time import DateTimeSensorAsync


class StageWindowSensor(DateTimeSensorAsync):
    """Wait until a stage's window opens, deferred to the triggerer (no worker slot).

    A window already past (a backfill, ``airflow dags test`` of an old session, a late run)
    succeeds at once without deferring, so such runs go straight through even where no triggerer
    is running.
    """

    ui_color = "#e8f0fe"

    def execute(self, context: Any) -> None:  # type: ignore[override]
        from datetime import UTC, datetime

        if datetime.now(UTC) >= self._moment:
            self.log.info("window %s already open: not waiting", self._moment.isoformat())
            return None
        self.log.info("waiting for the window at %s (deferred)", self._moment.isoformat())
        super().execute(context)
