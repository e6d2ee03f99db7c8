"""Honest out-of-sample evaluation: walk-forward splits, forecast metrics and tests.

- :func:`walk_forward_splits` cuts a session index into expanding-window train / test splits with
  a purge and an embargo of at least one label horizon between them.
- :func:`volatility_metrics` scores volatility forecasts (MAE, RMSE, QLIKE) on the same rows.
- :func:`diebold_mariano` and :func:`dm_table` test equal predictive accuracy (Diebold & Mariano,
  1995) with a Newey-West variance and the Harvey, Leybourne & Newbold (1997) correction.
- :func:`direction_accuracy` scores the sign of return forecasts with a binomial test, and
  :func:`check_leakage` fails loudly (:class:`LeakageError`) when a daily direction accuracy is
  too good to be true.

Rows are forecast origins as in :mod:`models.baselines`: row ``t`` holds a forecast made at the
close of ``t`` and a label over sessions ``t+1 .. t+horizon``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats

from models.baselines import mae, qlike, rmse

__all__ = [
    "DMResult",
    "DirectionResult",
    "LeakageError",
    "Split",
    "check_leakage",
    "diebold_mariano",
    "direction_accuracy",
    "dm_table",
    "pointwise_loss",
    "volatility_metrics",
    "walk_forward_splits",
]

Alternative = Literal["two-sided", "less", "greater"]
Loss = Literal["mae", "mse", "qlike"]

_VAR_FLOOR = 1e-12  # as in models.baselines.qlike


class LeakageError(RuntimeError):
    """A result is too good to be true: the evaluation very likely sees the future."""


@dataclass(frozen=True)
class Split:
    """One walk-forward split; bounds are inclusive session labels.

    Parameters
    ----------
    train : tuple
        ``(first, last)`` forecast origin used for training. The label of the last one,
        ``last+1 .. last+horizon``, ends before the embargo ends, hence before the test.
    test : tuple
        ``(first, last)`` forecast origin scored out of sample.
    train_rows : range
        Positions of the training rows in the session index.
    test_rows : range
        Positions of the test rows.
    label_end : Hashable
        Last session whose return enters a training label (``horizon`` sessions after
        ``train[1]``). Pass it as ``train_end`` to the ``fit_*`` functions of
        :mod:`models.baselines`, which then train on exactly ``train_rows``.
    """

    train: tuple[Hashable, Hashable]
    test: tuple[Hashable, Hashable]
    train_rows: range
    test_rows: range
    label_end: Hashable


def walk_forward_splits(
    sessions: Sequence[Hashable] | pd.Index,
    *,
    initial: int,
    step: int,
    horizon: int,
    embargo: int,
) -> list[Split]:
    """Expanding-window walk-forward splits with a purge and an embargo.

    Split ``k`` tests the rows ``s_k .. s_k + step - 1`` with ``s_k = initial + embargo + k * step``
    and trains on every row ``0 .. s_k - embargo - 1``. Since ``embargo >= horizon``, the label of
    the last training row ends at ``s_k - embargo - 1 + horizon < s_k``: no training label overlaps
    the test period (purge), and ``embargo`` sessions separate the two (embargo). Only rows whose
    label lies inside ``sessions`` (all but the last ``horizon``) are trained or tested on; the last
    test block is cut short there.

    Parameters
    ----------
    sessions : sequence or pandas.Index
        Session labels of the rows, in increasing order (e.g. the index of a return series).
    initial : int
        Training rows of the first split.
    step : int
        Test rows per split (and rows added to the training window from one split to the next).
    horizon : int
        Label horizon ``H`` in sessions.
    embargo : int
        Sessions dropped between the last training row and the first test row; ``>= horizon``.

    Returns
    -------
    list of Split
        In time order; the test blocks are contiguous and do not overlap.

    Raises
    ------
    ValueError
        If ``embargo < horizon``, an argument is not positive, the sessions are not increasing, or
        the sessions are too few for one split.
    """
    index = pd.Index(sessions)
    if horizon < 1 or initial < 1 or step < 1:
        raise ValueError(
            f"horizon, initial and step must be >= 1, got {horizon}, {initial}, {step}"
        )
    if embargo < horizon:
        raise ValueError(
            f"embargo ({embargo}) must be at least the label horizon ({horizon}): a shorter gap "
            "lets training labels overlap the test period"
        )
    if not (index.is_monotonic_increasing and index.is_unique):
        raise ValueError("sessions must be unique and in increasing order")
    last_labelled = len(index) - 1 - horizon
    splits: list[Split] = []
    test_start = initial + embargo
    while test_start <= last_labelled:
        test_end = min(test_start + step - 1, last_labelled)
        train_end = test_start - embargo - 1
        splits.append(
            Split(
                train=(index[0], index[train_end]),
                test=(index[test_start], index[test_end]),
                train_rows=range(0, train_end + 1),
                test_rows=range(test_start, test_end + 1),
                label_end=index[train_end + horizon],
            )
        )
        test_start += step
    if not splits:
        raise ValueError(
            f"{len(index)} sessions are too few for one split: need more than "
            f"initial + embargo + horizon = {initial + embargo + horizon}"
        )
    return splits


@dataclass(frozen=True)
class DMResult:
    """Result of a Diebold-Mariano test.

    Parameters
    ----------
    statistic : float
        HLN-corrected DM statistic; negative when ``loss_a`` is smaller on average.
    pvalue : float
        Student-t (``n - 1`` degrees of freedom) p-value for ``alternative``.
    mean_diff : float
        Mean loss differential ``mean(loss_a - loss_b)``.
    n : int
        Observations.
    horizon : int
        Forecast horizon; the Newey-West variance uses ``horizon - 1`` lags.
    alternative : {"two-sided", "less", "greater"}
        ``"less"``: forecast ``a`` has the smaller expected loss; ``"greater"``: the larger.
    """

    statistic: float
    pvalue: float
    mean_diff: float
    n: int
    horizon: int
    alternative: Alternative


def diebold_mariano(
    loss_a: np.ndarray,
    loss_b: np.ndarray,
    horizon: int,
    *,
    alternative: Alternative = "two-sided",
) -> DMResult:
    """Diebold-Mariano test of equal expected loss, with the HLN small-sample correction.

    With ``d_t = loss_a_t - loss_b_t`` the statistic is ``mean(d) / sqrt(V / n)`` times
    ``sqrt((n + 1 - 2h + h(h-1)/n) / n)`` (Harvey, Leybourne & Newbold, 1997), where ``V`` is the
    Newey-West (Bartlett kernel, ``h - 1`` lags) long-run variance of ``d`` from statsmodels, and
    is compared with Student's t with ``n - 1`` degrees of freedom. For ``h = 1`` it equals the
    one-sample t-test of ``d``.

    Parameters
    ----------
    loss_a, loss_b : numpy.ndarray
        Per-period losses of two forecasts of the same target, in time order, all finite.
    horizon : int
        Forecast horizon ``h``; overlapping ``h``-step errors are autocorrelated up to lag
        ``h - 1``.
    alternative : {"two-sided", "less", "greater"}
        ``"less"`` tests whether ``a`` is more accurate (smaller loss) than ``b``.

    Returns
    -------
    DMResult
        Statistic 0 and p-value 1 when the losses are identical.

    Raises
    ------
    ValueError
        On different lengths, non-finite losses, fewer than ``2 * horizon + 1`` observations, an
        unknown ``alternative``, or a constant non-zero differential (no variance to test with;
        constant up to a relative ``1e-12``).
    """
    a = np.asarray(loss_a, dtype=float).ravel()
    b = np.asarray(loss_b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"loss_a and loss_b differ in length: {a.shape[0]} != {b.shape[0]}")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if alternative not in ("two-sided", "less", "greater"):
        raise ValueError(f"alternative must be two-sided, less or greater, got {alternative!r}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("losses must be finite (drop the rows where a forecast is missing)")
    n = a.shape[0]
    if n < 2 * horizon + 1:
        raise ValueError(f"need at least {2 * horizon + 1} observations, got {n}")
    d = a - b
    mean_diff = float(d.mean())
    if not d.any():
        return DMResult(0.0, 1.0, 0.0, n, horizon, alternative)
    if np.ptp(d) <= 1e-12 * np.abs(d).max():  # constant up to rounding
        raise ValueError(
            f"the loss differential is constant ({mean_diff:.6g}): no variance to test with"
        )
    ols = sm.OLS(d, np.ones(n)).fit(
        cov_type="HAC", cov_kwds={"maxlags": horizon - 1, "use_correction": False}
    )
    var_mean = float(ols.bse[0]) ** 2  # V / n
    if not var_mean > 0.0:
        raise ValueError(f"the loss differential has no variance (mean {mean_diff:.6g})")
    hln = np.sqrt((n + 1 - 2 * horizon + horizon * (horizon - 1) / n) / n)
    statistic = float(mean_diff / np.sqrt(var_mean) * hln)
    dist = stats.t(df=n - 1)
    if alternative == "less":
        pvalue = float(dist.cdf(statistic))
    elif alternative == "greater":
        pvalue = float(dist.sf(statistic))
    else:
        pvalue = float(min(1.0, 2.0 * dist.sf(abs(statistic))))
    return DMResult(statistic, pvalue, mean_diff, n, horizon, alternative)


@dataclass(frozen=True)
class DirectionResult:
    """Direction (sign) accuracy of forecasts.

    Parameters
    ----------
    accuracy : float
        Share of rows where the forecast has the sign of the outcome.
    n : int
        Rows scored (both values finite and non-zero).
    hits : int
        Rows with the right sign.
    pvalue : float
        Exact binomial test of ``accuracy > 0.5`` (one-sided).
    """

    accuracy: float
    n: int
    hits: int
    pvalue: float


def direction_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> DirectionResult:
    """Share of forecasts with the right sign, with a binomial p-value against a coin.

    Parameters
    ----------
    y_true, y_pred : numpy.ndarray
        Outcomes and forecasts (e.g. returns). Rows where either is non-finite or exactly zero
        (no direction) are left out.

    Returns
    -------
    DirectionResult
        Accuracy, rows scored, hits, and ``scipy.stats.binomtest(hits, n, 0.5,
        alternative="greater")``'s p-value.

    Raises
    ------
    ValueError
        On different lengths or no row to score.
    """
    t = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(y_pred, dtype=float).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape[0]} != {p.shape[0]}")
    ok = np.isfinite(t) & np.isfinite(p) & (t != 0.0) & (p != 0.0)
    n = int(ok.sum())
    if n == 0:
        raise ValueError("no pair of finite, non-zero values to score")
    hits = int((np.sign(t[ok]) == np.sign(p[ok])).sum())
    pvalue = float(stats.binomtest(hits, n, 0.5, alternative="greater").pvalue)
    return DirectionResult(accuracy=hits / n, n=n, hits=hits, pvalue=pvalue)


def check_leakage(result: DirectionResult, threshold: float = 0.60) -> DirectionResult:
    """Fail loudly when a daily direction accuracy is above ``threshold``.

    No honest daily return forecast is right 60% of the time out of sample; such a figure almost
    always means the features or the training rows see the label.

    Parameters
    ----------
    result : DirectionResult
        Direction accuracy of daily forecasts.
    threshold : float
        Highest accuracy accepted.

    Returns
    -------
    DirectionResult
        ``result``, unchanged, when it passes.

    Raises
    ------
    LeakageError
        If ``result.accuracy > threshold``.
    """
    if result.accuracy > threshold:
        raise LeakageError(
            f"leakage alarm: daily direction accuracy {result.accuracy:.1%} "
            f"({result.hits}/{result.n}, binomial p={result.pvalue:.2g}) exceeds the "
            f"{threshold:.0%} threshold; check features and training rows for look-ahead"
        )
    return result


def _common_rows(
    y_true: np.ndarray, forecasts: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Rows where the target and every forecast are finite."""
    if not forecasts:
        raise ValueError("no forecast to evaluate")
    y = np.asarray(y_true, dtype=float).ravel()
    preds = {name: np.asarray(f, dtype=float).ravel() for name, f in forecasts.items()}
    for name, f in preds.items():
        if f.shape != y.shape:
            raise ValueError(f"forecast {name!r} has {f.shape[0]} rows, y_true has {y.shape[0]}")
    ok = np.isfinite(y)
    for f in preds.values():
        ok &= np.isfinite(f)
    if not ok.any():
        raise ValueError("no row where the target and every forecast are finite")
    return y[ok], {name: f[ok] for name, f in preds.items()}


def pointwise_loss(y_true: np.ndarray, y_pred: np.ndarray, loss: Loss = "mae") -> np.ndarray:
    """Per-row loss of volatility forecasts.

    Parameters
    ----------
    y_true, y_pred : numpy.ndarray
        Realised and forecast volatilities.
    loss : {"mae", "mse", "qlike"}
        Absolute error, squared error, or QLIKE on variances floored at ``1e-12`` (the per-row
        terms whose means are :func:`models.baselines.mae`, ``rmse ** 2`` and ``qlike``).

    Returns
    -------
    numpy.ndarray
        One loss per row (NaN where either value is).
    """
    t = np.asarray(y_true, dtype=float)
    p = np.asarray(y_pred, dtype=float)
    if loss == "mae":
        return np.abs(t - p)
    if loss == "mse":
        return (t - p) ** 2
    if loss == "qlike":
        ratio = np.maximum(t**2, _VAR_FLOOR) / np.maximum(p**2, _VAR_FLOOR)
        return ratio - np.log(ratio) - 1.0
    raise ValueError(f"loss must be mae, mse or qlike, got {loss!r}")


def volatility_metrics(y_true: np.ndarray, forecasts: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """MAE, RMSE and QLIKE of several volatility forecasts on the same rows.

    Parameters
    ----------
    y_true : numpy.ndarray
        Realised volatility (e.g. :func:`models.baselines.forward_realised_vol`).
    forecasts : Mapping[str, numpy.ndarray]
        Forecasts aligned with ``y_true``, by model name.

    Returns
    -------
    pandas.DataFrame
        Index ``model`` (in the order given), columns ``mae``, ``rmse``, ``qlike`` and ``n``; every
        model is scored on the rows where the target and all forecasts are finite.
    """
    y, preds = _common_rows(y_true, forecasts)
    rows = {
        name: {"mae": mae(y, f), "rmse": rmse(y, f), "qlike": qlike(y, f), "n": y.shape[0]}
        for name, f in preds.items()
    }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "model"
    return table.astype({"n": int})


def dm_table(
    y_true: np.ndarray,
    forecasts: Mapping[str, np.ndarray],
    reference: str,
    horizon: int,
    loss: Loss = "mae",
    *,
    alternative: Alternative = "two-sided",
) -> pd.DataFrame:
    """Diebold-Mariano tests of a reference forecast against each other forecast.

    Parameters
    ----------
    y_true : numpy.ndarray
        Realised volatility, in time order.
    forecasts : Mapping[str, numpy.ndarray]
        Forecasts by model name, aligned with ``y_true``; must include ``reference``.
    reference : str
        The model tested (e.g. the challenger).
    horizon : int
        Forecast horizon of the target.
    loss : {"mae", "mse", "qlike"}
        Per-row loss (:func:`pointwise_loss`).
    alternative : {"two-sided", "less", "greater"}
        As in :func:`diebold_mariano`; ``"less"`` tests whether the reference is more accurate.

    Returns
    -------
    pandas.DataFrame
        Index ``model`` (every model but the reference), columns ``statistic``, ``pvalue``,
        ``mean_diff`` (mean of reference loss minus the model's: negative when the reference is
        better) and ``n``, on the rows where the target and all forecasts are finite.
    """
    if reference not in forecasts:
        raise ValueError(f"reference {reference!r} is not among the forecasts {list(forecasts)}")
    if len(forecasts) < 2:
        raise ValueError("need at least one forecast besides the reference")
    y, preds = _common_rows(y_true, forecasts)
    ref_loss = pointwise_loss(y, preds[reference], loss)
    rows = {}
    for name, f in preds.items():
        if name == reference:
            continue
        res = diebold_mariano(
            ref_loss, pointwise_loss(y, f, loss), horizon, alternative=alternative
        )
        rows[name] = {
            "statistic": res.statistic,
            "pvalue": res.pvalue,
            "mean_diff": res.mean_diff,
            "n": res.n,
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "model"
    return table.astype({"n": int})
