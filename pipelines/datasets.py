"""Chronological segments and labels for the forecasters (pure functions, no I/O).

A dataset has named segments, as in qlib: ``train`` and ``valid`` feed the heavy stage,
``test`` is the out-of-sample holdout the validation stage scores every model on. Segments are
separated by an embargo of ``horizon`` sessions so that no training label (realised volatility
over the next ``horizon`` sessions) overlaps a later segment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Segments:
    """Inclusive session ranges of each segment."""

    train: tuple[date, date]
    valid: tuple[date, date]
    test: tuple[date, date]

    def of(self, sessions: pd.Series, name: str) -> pd.Series:
        """Boolean mask of ``sessions`` (datetime64) falling in segment ``name``."""
        lo, hi = getattr(self, name)
        return (sessions >= pd.Timestamp(lo)) & (sessions <= pd.Timestamp(hi))

    def as_dict(self) -> dict[str, str]:
        return {
            f"{name}_{edge}": getattr(self, name)[i].isoformat()
            for name in ("train", "valid", "test")
            for i, edge in enumerate(("start", "end"))
        }


def make_segments(
    sessions: Sequence[date],
    *,
    horizon: int,
    holdout: int,
    valid_frac: float = 0.15,
    min_train: int = 60,
    embargo: int | None = None,
) -> Segments:
    """Split the sessions known at the run's session (the last element) chronologically.

    Parameters
    ----------
    sessions
        Sorted sessions with data, ending at the run's session.
    horizon
        Label horizon of the scored (``test``) label in sessions.
    holdout
        Number of sessions in the ``test`` segment. Its last session is the last one whose
        label is fully known at the run's session (``horizon`` sessions before it).
    embargo
        Sessions between segments, at least the longest training label (a model with several
        heads trains on labels up to that horizon); default ``horizon``.
    valid_frac
        Fraction of the pre-holdout sessions used for early stopping.
    min_train
        Minimum sessions left for ``train``; fewer raises ``ValueError``.
    """
    gap = horizon if embargo is None else embargo
    if gap < horizon:
        raise ValueError(f"embargo {gap} is shorter than the label horizon {horizon}")
    n = len(sessions)
    test_end = n - 1 - horizon
    test_start = test_end - holdout + 1
    fit_end = test_start - gap - 1
    n_fit = fit_end + 1
    n_valid = max(1, round(n_fit * valid_frac))
    valid_start = fit_end - n_valid + 1
    train_end = valid_start - gap - 1
    if train_end + 1 < min_train:
        raise ValueError(
            f"not enough history for the segments: {n} sessions, need at least "
            f"{min_train + holdout + n_valid + horizon + 2 * gap + 1} (holdout={holdout}, "
            f"horizon={horizon}, embargo={gap})"
        )
    s = list(sessions)
    return Segments(
        train=(s[0], s[train_end]),
        valid=(s[valid_start], s[fit_end]),
        test=(s[test_start], s[test_end]),
    )


def forward_targets(returns: pd.DataFrame, horizon: int) -> pd.DataFrame:
    """Target per (symbol, session): annualised realised vol over the next ``horizon`` sessions.

    ``returns`` has columns symbol, session, ret_1 (daily log returns). The last ``horizon``
    rows of each symbol have no target (NaN) and are never trained or scored on.
    """
    from models.baselines import forward_realised_vol

    parts = []
    for _, g in returns.sort_values(["symbol", "session"]).groupby("symbol", sort=True):
        tgt = forward_realised_vol(g.set_index("session")["ret_1"], horizon)
        parts.append(
            pd.DataFrame(
                {"symbol": g["symbol"].to_numpy(), "session": g["session"].to_numpy(),
                 "target": tgt.to_numpy()}
            )
        )
    if not parts:
        return pd.DataFrame(columns=["symbol", "session", "target"])
    return pd.concat(parts, ignore_index=True)


def stack_windows(seq: pd.Series, lookback: int, n_features: int) -> np.ndarray:
    """Turn a column of flattened windows into an array of shape (N, lookback, n_features)."""
    if len(seq) == 0:
        return np.zeros((0, lookback, n_features), dtype=np.float32)
    arr = np.stack([np.asarray(v, dtype=np.float32) for v in seq])
    if arr.shape[1] != lookback * n_features:
        raise ValueError(
            f"window length {arr.shape[1]} does not match lookback {lookback} x "
            f"{n_features} features"
        )
    return arr.reshape(len(arr), lookback, n_features)


def window_frame(seqs: Sequence[Sequence[float]] | np.ndarray) -> pd.DataFrame:
    """The pyfunc input for flattened windows: one row per window, wide float columns
    ``x000, x001, ...`` in window order (the names of ``models.lstm.seq_columns``)."""
    arr = np.asarray([np.asarray(v, dtype=np.float64) for v in seqs], dtype=np.float64)
    width = arr.shape[1] if arr.ndim == 2 else 0
    digits = max(3, len(str(width - 1)))  # same names as models.lstm.seq_columns
    return pd.DataFrame(arr, columns=[f"x{i:0{digits}d}" for i in range(width)])
