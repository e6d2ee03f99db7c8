"""Model versions record the window columns they were trained on; a version whose columns no
longer match the feature tables is refused, never fed windows it would silently misread."""

from __future__ import annotations

from types import SimpleNamespace

from pipelines.settings import WINDOW_COLUMNS
from pipelines.stages import window_mismatch


def test_current_windows_match() -> None:
    version = SimpleNamespace(version="7", tags={"window_columns": ",".join(WINDOW_COLUMNS)})
    assert window_mismatch(version) is None


def test_versions_from_before_the_tag_read_the_five_column_windows() -> None:
    legacy = SimpleNamespace(version="3", tags={})
    reason = window_mismatch(legacy)
    assert reason is not None
    assert reason.startswith("v3 was trained on windows of (ret_1,rv_5,rv_22,garch_vol,")
    assert "egarch_forecast" in reason.split("now hold")[1]


def test_another_column_order_is_a_mismatch() -> None:
    swapped = ",".join(reversed(WINDOW_COLUMNS))
    assert window_mismatch(SimpleNamespace(version="9", tags={"window_columns": swapped}))
