"""Training losses beside the statistical ones of :mod:`torch.nn`: quantile and Sharpe.

- :func:`pinball_loss`: the quantile (pinball, check) loss of a set of quantile forecasts; its
  minimiser over a constant is the target's quantile, so one head per level learns P10/P50/P90.
- :func:`sharpe_loss`: a differentiable Sharpe-ratio loss of a position head, with a turnover
  penalty: what a trading head should maximise rather than a statistical fit of the returns.

Both are plain functions of tensors (differentiable everywhere that matters, batched over leading
dimensions) and compute in float32 or wider even under mixed precision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["pinball_loss", "sharpe_loss", "turnover"]


def _wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 at least (half/bfloat16 inputs of an autocast region are widened)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def pinball_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    quantiles: Sequence[float] | torch.Tensor,
    reduction: str = "mean",
) -> torch.Tensor:
    """Pinball (quantile) loss of quantile forecasts.

    For a level ``q`` and error ``e = y - f``, the loss is ``max(q * e, (q - 1) * e)``: under-
    forecasts cost ``q`` per unit, over-forecasts ``1 - q``.

    Parameters
    ----------
    pred : torch.Tensor
        Forecasts ``(..., Q)``, the last dimension holding one forecast per level.
    target : torch.Tensor
        Observations ``(...)`` (broadcast against every level) or ``(..., Q)``.
    quantiles : sequence of float or torch.Tensor
        The ``Q`` levels, each in ``(0, 1)``.
    reduction : {"mean", "sum", "none"}
        ``"mean"`` averages over every element (observations and levels), ``"none"`` returns the
        ``(..., Q)`` losses.

    Returns
    -------
    torch.Tensor
        The reduced loss (a scalar), or the element-wise losses.
    """
    q = torch.as_tensor(quantiles, dtype=torch.float32, device=pred.device)
    if q.ndim != 1 or pred.shape[-1] != q.numel():
        raise ValueError(
            f"pred's last dimension ({pred.shape[-1]}) must hold one forecast per quantile "
            f"({q.numel()})"
        )
    if bool(((q <= 0) | (q >= 1)).any()):
        raise ValueError(f"quantile levels must lie in (0, 1), got {q.tolist()}")
    f = _wide(pred)
    y = _wide(target)
    if y.shape != f.shape:
        y = y.unsqueeze(-1)
    err = y - f
    loss = torch.maximum(q * err, (q - 1.0) * err)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def turnover(positions: torch.Tensor) -> torch.Tensor:
    """Mean absolute position change ``mean_t |p_t - p_{t-1}|`` along the last (time) dimension.

    Returns a tensor of the leading dimensions (a scalar for a 1-D series); zero for a series of
    fewer than two positions. The first position's entry from flat is not charged.
    """
    p = _wide(positions)
    if p.shape[-1] < 2:
        return p.new_zeros(p.shape[:-1])
    return (p[..., 1:] - p[..., :-1]).abs().mean(dim=-1)


def sharpe_loss(
    positions: torch.Tensor,
    returns: torch.Tensor,
    turnover_penalty: float = 0.0,
    eps: float = 1e-8,
    periods_per_year: float | None = None,
) -> torch.Tensor:
    """Negative Sharpe ratio of the strategy ``p_t * r_t``, plus a turnover penalty.

    ``loss = -mean(p * r) / sqrt(var(p * r) + eps) * a + turnover_penalty * mean(|p_t - p_{t-1}|)``

    with ``a = 1`` by default, or ``a = sqrt(periods_per_year)`` when given.

    Parameters
    ----------
    positions : torch.Tensor
        Positions ``(..., T)`` held over each period, oldest first (``p_t`` earns ``r_t``: the
        caller aligns them so that ``p_t`` is decided before ``r_t`` is known).
    returns : torch.Tensor
        Period returns ``(..., T)``, the same shape.
    turnover_penalty : float
        Cost per unit of mean absolute position change (in Sharpe units per period).
    eps : float
        Added to the variance of the strategy returns, keeping the ratio finite and its gradient
        bounded for a flat (zero-variance) strategy.
    periods_per_year : float, optional
        Annualise the ratio by ``sqrt(periods_per_year)`` (252 for daily sessions).

    Returns
    -------
    torch.Tensor
        A scalar: the loss averaged over the leading (batch) dimensions.

    Notes
    -----
    The ratio is **per period by default** (not annualised): annualising multiplies it by the
    constant ``sqrt(periods_per_year)``, which changes neither the argmin nor, up to that scale,
    the gradient, but it does change the balance against ``turnover_penalty``, whose unit is then
    "annualised Sharpe per unit of daily turnover". The variance is the population (biased) one,
    over the last dimension; it is not risk-free-rate adjusted (daily returns, excess or not, are
    the caller's choice).
    """
    if positions.shape != returns.shape:
        raise ValueError(
            f"positions and returns need the same shape, got {tuple(positions.shape)} and "
            f"{tuple(returns.shape)}"
        )
    if positions.ndim == 0 or positions.shape[-1] < 2:
        raise ValueError("need at least two periods along the last dimension")
    if turnover_penalty < 0:
        raise ValueError(f"turnover_penalty must be >= 0, got {turnover_penalty}")
    p = _wide(positions)
    pnl = p * _wide(returns)
    mean = pnl.mean(dim=-1)
    var = (pnl - mean.unsqueeze(-1)).square().mean(dim=-1)
    sharpe = mean / torch.sqrt(var + eps)
    if periods_per_year is not None:
        sharpe = sharpe * math.sqrt(periods_per_year)
    loss = -sharpe
    if turnover_penalty:
        loss = loss + turnover_penalty * turnover(p)
    return loss.mean()
