"""afterbell's Airflow plugin: registers :class:`~pipelines.timetable.NYSESessionTimetable`.

Airflow serialises a DAG with a custom timetable only if a plugin registers the timetable class
(otherwise the DAG fails to import with "Timetable class ... is not registered"), and the
scheduler, api-server and CLI need the same registration to deserialise it. Airflow finds this
plugin through the setuptools entry point ``airflow.plugins``
(``afterbell = pipelines.airflow_plugin:AfterbellPlugin``) or through a module in the plugins
folder (``$AIRFLOW_HOME/plugins`` / ``AIRFLOW__CORE__PLUGINS_FOLDER``) that imports it.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from pipelines.timetable import NYSESessionTimetable

__all__ = ["AfterbellPlugin"]


class AfterbellPlugin(AirflowPlugin):
    """Registers the NYSE session timetable with Airflow."""

    name = "afterbell"
    timetables = [NYSESessionTimetable]  # noqa: RUF012 - AirflowPlugin declares a class list
