from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from pipelines.datasets import forward_targets, make_segments, stack_windows, window_frame


def _days(n: int) -> list[date]:
    return [date(2020, 1, 1) + timedelta(days=i) for i in range(n)]


def test_segments_are_chronological_with_embargo() -> None:
    days = _days(500)
    seg = make_segments(days, horizon=5, holdout=100)
    pos = {d: i for i, d in enumerate(days)}
    # the last test label (t+1..t+5) ends exactly at the run's session
    assert pos[seg.test[1]] == len(days) - 1 - 5
    assert pos[seg.test[1]] - pos[seg.test[0]] + 1 == 100
    # embargo of `horizon` sessions between segments: a label never reaches the next segment
    assert pos[seg.test[0]] - pos[seg.valid[1]] == 5 + 1
    assert pos[seg.valid[0]] - pos[seg.train[1]] == 5 + 1
    assert seg.train[0] == days[0]


def test_segments_embargo_the_longest_label() -> None:
    """Heads with labels up to 22 sessions: 22-session gaps between segments, while the test
    segment still ends where the scored 5-session label is known."""
    days = _days(600)
    seg = make_segments(days, horizon=5, holdout=100, embargo=22)
    pos = {d: i for i, d in enumerate(days)}
    assert pos[seg.test[1]] == len(days) - 1 - 5
    assert pos[seg.test[0]] - pos[seg.valid[1]] == 22 + 1
    assert pos[seg.valid[0]] - pos[seg.train[1]] == 22 + 1
    with pytest.raises(ValueError, match="shorter than the label horizon"):
        make_segments(days, horizon=5, holdout=100, embargo=2)


def test_segments_reject_short_history() -> None:
    with pytest.raises(ValueError, match="not enough history"):
        make_segments(_days(150), horizon=5, holdout=100)


def test_forward_targets_use_only_the_next_horizon() -> None:
    r = np.array([0.01, -0.02, 0.03, 0.0, 0.01, -0.01])
    sessions = pd.to_datetime([f"2020-01-0{i + 1}" for i in range(6)])
    df = pd.DataFrame({"symbol": "X", "session": sessions, "ret_1": r})
    out = forward_targets(df, horizon=2)
    expected0 = np.sqrt(252 * np.mean(r[1:3] ** 2))
    assert out["target"].iloc[0] == pytest.approx(expected0)
    assert out["target"].iloc[-2:].isna().all()


def test_window_helpers_shape_and_order() -> None:
    seqs = [list(range(10)), list(range(10, 20))]
    arr = stack_windows(pd.Series(seqs), lookback=2, n_features=5)
    assert arr.shape == (2, 2, 5)
    assert arr[1, 1, 0] == 15  # row-major: second session, first feature
    frame = window_frame(seqs)
    assert list(frame.columns[:2]) == ["x000", "x001"] and frame.shape == (2, 10)
    with pytest.raises(ValueError, match="does not match"):
        stack_windows(pd.Series(seqs), lookback=3, n_features=5)
