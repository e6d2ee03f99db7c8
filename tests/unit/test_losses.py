"""Pinball and Sharpe losses: values, minimisers, gradients, turnover."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.losses import pinball_loss, sharpe_loss, turnover


def test_pinball_hand_values() -> None:
    pred = torch.tensor([[0.0, 0.0, 0.0]])
    target = torch.tensor([1.0])  # under-forecast by 1: costs q per unit
    losses = pinball_loss(pred, target, (0.1, 0.5, 0.9), reduction="none")
    torch.testing.assert_close(losses, torch.tensor([[0.1, 0.5, 0.9]]))
    over = pinball_loss(pred, torch.tensor([-2.0]), (0.1, 0.5, 0.9), reduction="none")
    torch.testing.assert_close(over, torch.tensor([[1.8, 1.0, 0.2]]))  # (1 - q) * 2
    assert float(pinball_loss(pred, target, (0.1, 0.5, 0.9))) == pytest.approx(0.5)
    assert float(pinball_loss(pred, target, (0.1, 0.5, 0.9), reduction="sum")) == pytest.approx(1.5)


def test_pinball_minimiser_is_the_quantile() -> None:
    y = torch.from_numpy(np.random.default_rng(0).standard_normal(4001))
    grid = torch.linspace(-3, 3, 601, dtype=torch.float64)
    for q in (0.1, 0.5, 0.9):
        losses = [float(pinball_loss(c.reshape(1, 1).expand(len(y), 1), y, (q,))) for c in grid]
        best = float(grid[int(np.argmin(losses))])
        assert best == pytest.approx(float(torch.quantile(y, q)), abs=0.011)


def test_pinball_rejects_bad_levels() -> None:
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        pinball_loss(torch.zeros(2, 2), torch.zeros(2), (0.0, 0.5))
    with pytest.raises(ValueError, match="one forecast per quantile"):
        pinball_loss(torch.zeros(2, 3), torch.zeros(2), (0.1, 0.9))


def _returns(n: int = 250, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.01 * torch.randn(n, generator=g, dtype=torch.float64)


def test_sharpe_gradients_flow() -> None:
    r = _returns()
    logits = torch.randn(len(r), dtype=torch.float64, requires_grad=True)
    loss = sharpe_loss(torch.tanh(logits), r, turnover_penalty=0.1)
    loss.backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # A flat strategy (zero variance) still has a finite gradient thanks to eps.
    flat = torch.zeros(len(r), dtype=torch.float64, requires_grad=True)
    sharpe_loss(flat, r).backward()
    assert flat.grad is not None and torch.isfinite(flat.grad).all()


def test_aligned_position_beats_misaligned() -> None:
    r = _returns()
    aligned = torch.sign(r) * 0.5 + 0.1 * torch.sign(r).roll(1)
    assert float(sharpe_loss(aligned, r)) < 0 < float(sharpe_loss(-aligned, r))
    assert float(sharpe_loss(aligned, r)) < float(sharpe_loss(torch.ones_like(r), r))


def test_turnover_penalty_increases_with_churn() -> None:
    r = _returns()
    n = len(r)
    steady = torch.ones(n, dtype=torch.float64)
    churn = torch.tensor([1.0, 0.2] * (n // 2), dtype=torch.float64)
    wild = torch.tensor([1.0, -1.0] * (n // 2), dtype=torch.float64)
    assert float(turnover(steady)) == 0.0
    assert float(turnover(steady)) < float(turnover(churn)) < float(turnover(wild))
    for pos in (steady, churn, wild):
        base = float(sharpe_loss(pos, r))
        penalised = float(sharpe_loss(pos, r, turnover_penalty=0.5))
        assert penalised - base == pytest.approx(0.5 * float(turnover(pos)))
    lo = float(sharpe_loss(churn, r, turnover_penalty=0.1))
    hi = float(sharpe_loss(churn, r, turnover_penalty=1.0))
    assert hi > lo


def test_sharpe_value_batching_and_annualisation() -> None:
    r = _returns(100)
    p = torch.linspace(-1, 1, 100, dtype=torch.float64)
    pnl = (p * r).numpy()
    expected = -pnl.mean() / math.sqrt(pnl.var() + 1e-8)  # population variance
    assert float(sharpe_loss(p, r)) == pytest.approx(expected, rel=1e-12)
    assert float(sharpe_loss(p, r, periods_per_year=252)) == pytest.approx(
        math.sqrt(252) * expected, rel=1e-12
    )
    batch_p = torch.stack([p, -p, torch.ones_like(p)])
    batch_r = torch.stack([r, r, r])
    each = [float(sharpe_loss(batch_p[i], batch_r[i])) for i in range(3)]
    assert float(sharpe_loss(batch_p, batch_r)) == pytest.approx(np.mean(each), rel=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        sharpe_loss(p, r[:-1])
