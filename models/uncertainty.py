"""Predictive uncertainty: Monte Carlo dropout and split-conformal intervals.

- :func:`mc_dropout_predict`: repeated stochastic forward passes with dropout active and every
  other layer in inference mode (Gal & Ghahramani, 2016); the spread of the passes estimates the
  model (epistemic) uncertainty.
- :func:`split_conformal`: the half-width of a split-conformal interval from the conformity scores
  of a calibration segment disjoint from training (Vovk et al.; Lei et al., 2018), with the
  finite-sample correction: for exchangeable data the interval covers a new observation with
  probability at least ``1 - alpha``. :func:`cqr_scores` gives the scores of conformalised
  quantile regression (Romano et al., 2019), which widens or narrows a quantile band (P10/P90).
- :func:`conformal_interval`, :func:`empirical_coverage` and :func:`conformal_report`: the
  intervals and their coverage on a holdout, with the binomial tolerance to read it against.

Everything here is model-agnostic (any :class:`torch.nn.Module`, any arrays of forecasts).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "ConformalReport",
    "MCDropoutPrediction",
    "conformal_interval",
    "conformal_report",
    "coverage_tolerance",
    "cqr_scores",
    "empirical_coverage",
    "enable_dropout",
    "mc_dropout_predict",
    "split_conformal",
]

#: Modules whose train mode only switches dropout on (besides internal fast paths that skip it):
#: MC dropout puts these in train mode and leaves every other module (batch norm, ...) in eval.
_DROPOUT_CARRIERS: tuple[type[nn.Module], ...] = (
    nn.modules.dropout._DropoutNd,
    nn.MultiheadAttention,  # attention-weight dropout follows the module's training flag
    nn.TransformerEncoderLayer,  # eval mode may take a fused fast path that applies no dropout
    nn.TransformerDecoderLayer,
    nn.RNNBase,  # inter-layer dropout of a stacked LSTM/GRU
)


# ------------------------------------------------------------------------------ MC dropout


@dataclass(frozen=True)
class MCDropoutPrediction:
    """Summary of ``n_samples`` stochastic forward passes.

    Parameters
    ----------
    mean, std : numpy.ndarray
        Per-element mean and (population) standard deviation over the passes, the shape of one
        pass's output.
    quantiles : dict of float to numpy.ndarray
        Per-element empirical quantiles over the passes, by level.
    n_samples : int
        Number of passes.
    samples : numpy.ndarray, optional
        Every pass, ``(n_samples, *output_shape)``, when asked for.
    """

    mean: np.ndarray
    std: np.ndarray
    quantiles: dict[float, np.ndarray]
    n_samples: int
    samples: np.ndarray | None = field(default=None, repr=False)


def enable_dropout(module: nn.Module) -> list[nn.Module]:
    """Put ``module`` in eval mode except its dropout carriers, which go to train mode.

    The carriers are dropout layers, multi-head attention (its attention dropout), transformer
    layers (so that their eval-only fused path, which skips dropout, is not taken) and RNNs
    (inter-layer dropout). Their children that are not carriers themselves (linear, layer norm)
    behave the same in both modes. Returns the modules switched to train mode.
    """
    module.eval()
    switched = []
    for sub in module.modules():
        if isinstance(sub, _DROPOUT_CARRIERS):
            sub.training = True  # the flag only: .train() would recurse into every child
            switched.append(sub)
    return switched


def _as_tensor_output(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    raise TypeError(
        f"the module returned {type(out).__name__}, not a tensor: pass select= to pick one"
    )


def mc_dropout_predict(
    module: nn.Module,
    X: np.ndarray | torch.Tensor,
    n_samples: int = 50,
    seed: int = 0,
    *,
    select: Callable[[Any], torch.Tensor] | None = None,
    quantiles: Sequence[float] = (0.1, 0.5, 0.9),
    batch_size: int = 4096,
    keep_samples: bool = False,
) -> MCDropoutPrediction:
    """Monte Carlo dropout forecasts of ``module`` on inputs ``X``.

    Parameters
    ----------
    module : torch.nn.Module
        The trained network (left on its device). Its train/eval modes are restored on return.
    X : numpy.ndarray or torch.Tensor
        Inputs, the first dimension being the batch; converted to float32 on the module's device.
    n_samples : int
        Stochastic passes.
    seed : int
        Seed of the dropout masks: the same seed gives the same result. The global generator
        state is saved and restored (``torch.random.fork_rng``).
    select : callable, optional
        Maps the module's output to one tensor (e.g. ``lambda out: out.ret``); by default the
        output must be a tensor.
    quantiles : sequence of float
        Levels of the per-element quantiles returned.
    batch_size : int
        Inputs per forward pass.
    keep_samples : bool
        Also return every pass.

    Returns
    -------
    MCDropoutPrediction
        Mean, standard deviation and quantiles over the passes (float64 arrays). A network
        without active dropout returns identical passes: ``std`` is exactly zero.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    pick = select or _as_tensor_output
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x_all = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X)
    x_all = x_all.to(device=device, dtype=torch.float32)
    modes = {sub: sub.training for sub in module.modules()}
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    draws: list[np.ndarray] = []
    try:
        enable_dropout(module)
        with torch.random.fork_rng(devices=rng_devices), torch.no_grad():
            torch.manual_seed(seed)
            for _ in range(n_samples):
                parts = [
                    pick(module(x_all[i : i + batch_size])).detach().float().cpu().numpy()
                    for i in range(0, len(x_all), batch_size)
                ]
                draws.append(np.concatenate(parts, axis=0).astype(np.float64))
    finally:
        for sub, mode in modes.items():
            sub.training = mode
    samples = np.stack(draws)
    levels = [float(q) for q in quantiles]
    qs = np.quantile(samples, levels, axis=0) if levels else np.empty((0,))
    return MCDropoutPrediction(
        mean=samples.mean(axis=0),
        std=samples.std(axis=0),
        quantiles={q: qs[i] for i, q in enumerate(levels)},
        n_samples=n_samples,
        samples=samples if keep_samples else None,
    )


# ------------------------------------------------------------------------------ conformal


def _scores(cal: np.ndarray | tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    if isinstance(cal, tuple):
        if len(cal) != 2:
            raise ValueError("cal must be scores or a pair (y_cal, pred_cal)")
        y, pred = (np.asarray(a, dtype=np.float64) for a in cal)
        if y.shape != pred.shape:
            raise ValueError(f"y_cal and pred_cal shapes differ: {y.shape} and {pred.shape}")
        scores = np.abs(y - pred)
    else:
        scores = np.asarray(cal, dtype=np.float64)
    scores = scores.ravel()
    if scores.size == 0:
        raise ValueError("need at least one calibration score")
    if not np.isfinite(scores).all():
        raise ValueError("calibration scores must be finite")
    return scores


def split_conformal(cal: np.ndarray | tuple[np.ndarray, np.ndarray], alpha: float) -> float:
    """Split-conformal half-width (or band correction) at miscoverage ``alpha``.

    Parameters
    ----------
    cal : numpy.ndarray or (numpy.ndarray, numpy.ndarray)
        Conformity scores of the calibration segment (absolute residuals, or :func:`cqr_scores`),
        or the pair ``(y_cal, pred_cal)``, whose absolute residuals are the scores.
    alpha : float
        Target miscoverage in ``(0, 1)``.

    Returns
    -------
    float
        The ``k``-th smallest of the ``n`` scores with ``k = ceil((n + 1) * (1 - alpha))``, i.e.
        their empirical quantile at level ``k / n`` (the finite-sample correction of the plain
        ``1 - alpha`` quantile); ``inf`` when ``k > n`` (too few scores for that ``alpha``).

    Notes
    -----
    For calibration and test points exchangeable, the interval ``pred -/+ width`` covers a new
    observation with probability at least ``1 - alpha`` and, for continuous scores, at most
    ``1 - alpha + 1 / (n + 1)`` (the exact value is ``k / (n + 1)``).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    scores = _scores(cal)
    n = scores.size
    k = math.ceil((n + 1) * (1.0 - alpha))
    if k > n:
        return math.inf
    return float(np.partition(scores, k - 1)[k - 1])


def cqr_scores(y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Conformity scores of a quantile band ``[lo, hi]`` (conformalised quantile regression).

    ``max(lo - y, y - hi)``: negative inside the band (how far inside), positive outside. Their
    :func:`split_conformal` width ``w`` gives the calibrated band ``[lo - w, hi + w]`` (``w`` may
    be negative: a band that covers too much is narrowed).
    """
    y_, lo_, hi_ = (np.asarray(a, dtype=np.float64) for a in (y, lo, hi))
    return np.maximum(lo_ - y_, y_ - hi_)


def conformal_interval(
    pred: np.ndarray,
    width: float,
    hi: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The interval ``(pred - width, pred + width)``, or ``(pred - width, hi + width)`` for a band.

    With ``hi`` given, ``pred`` is the band's lower edge (the CQR interval of :func:`cqr_scores`).
    """
    lo = np.asarray(pred, dtype=np.float64)
    up = lo if hi is None else np.asarray(hi, dtype=np.float64)
    return lo - width, up + width


def empirical_coverage(y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """Fraction of ``y`` inside the closed intervals ``[lo, hi]`` (NaN for no observation)."""
    y_, lo_, hi_ = (np.asarray(a, dtype=np.float64) for a in (y, lo, hi))
    if y_.size == 0:
        return math.nan
    return float(np.mean((y_ >= lo_) & (y_ <= hi_)))


def coverage_tolerance(alpha: float, n_cal: int, n_test: int, z: float = 3.0) -> float:
    """``z`` standard deviations of the holdout coverage of a split-conformal interval.

    Given the calibration set, coverage on ``n_test`` points is binomial; over calibration sets
    the conditional coverage is Beta-distributed with variance about ``alpha (1 - alpha) /
    (n_cal + 2)``. The two add up: a coverage further than this from ``1 - alpha`` (beyond the
    ``1 / (n_cal + 1)`` upward slack) is evidence against exchangeability.
    """
    var = alpha * (1.0 - alpha) * (1.0 / (n_cal + 2) + 1.0 / max(n_test, 1))
    return z * math.sqrt(var)


@dataclass(frozen=True)
class ConformalReport:
    """A split-conformal interval calibrated on one segment and scored on a holdout.

    Parameters
    ----------
    alpha : float
        Target miscoverage; nominal coverage ``1 - alpha``.
    width : float
        Half-width (or band correction) from :func:`split_conformal`.
    coverage : float
        Empirical coverage on the holdout.
    n_cal, n_test : int
        Calibration and holdout sizes.
    tolerance : float
        :func:`coverage_tolerance` of those sizes (3 standard deviations).
    mean_length : float
        Mean interval length on the holdout.
    """

    alpha: float
    width: float
    coverage: float
    n_cal: int
    n_test: int
    tolerance: float
    mean_length: float

    @property
    def within_tolerance(self) -> bool:
        """Whether the coverage lies in ``[1 - alpha - tol, 1 - alpha + 1/(n_cal+1) + tol]``."""
        lo = 1.0 - self.alpha - self.tolerance
        hi = 1.0 - self.alpha + 1.0 / (self.n_cal + 1) + self.tolerance
        return lo <= self.coverage <= hi

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "within_tolerance": self.within_tolerance}


def conformal_report(
    y_cal: np.ndarray,
    pred_cal: np.ndarray,
    y_test: np.ndarray,
    pred_test: np.ndarray,
    alpha: float,
    *,
    hi_cal: np.ndarray | None = None,
    hi_test: np.ndarray | None = None,
) -> ConformalReport:
    """Calibrate an interval on ``(y_cal, pred_cal)`` and report its coverage on the holdout.

    With ``hi_cal`` and ``hi_test``, ``pred_*`` and ``hi_*`` are the lower and upper edges of a
    quantile band, conformalised with :func:`cqr_scores`; otherwise the interval is symmetric
    around the point forecast (absolute residual scores).
    """
    if (hi_cal is None) != (hi_test is None):
        raise ValueError("give both hi_cal and hi_test, or neither")
    if hi_cal is None:
        width = split_conformal((np.asarray(y_cal), np.asarray(pred_cal)), alpha)
        lo, hi = conformal_interval(pred_test, width)
    else:
        width = split_conformal(cqr_scores(y_cal, pred_cal, hi_cal), alpha)
        lo, hi = conformal_interval(pred_test, width, hi=hi_test)
    n_cal, n_test = int(np.asarray(y_cal).size), int(np.asarray(y_test).size)
    return ConformalReport(
        alpha=alpha,
        width=width,
        coverage=empirical_coverage(y_test, lo, hi),
        n_cal=n_cal,
        n_test=n_test,
        tolerance=coverage_tolerance(alpha, n_cal, n_test),
        mean_length=float(np.mean(hi - lo)) if n_test else math.nan,
    )
