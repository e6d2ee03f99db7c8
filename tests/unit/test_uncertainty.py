"""Split-conformal intervals (finite-sample width, coverage) and Monte Carlo dropout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from models.transformer import PatchTSTNet, TransformerSpec
from models.uncertainty import (
    conformal_interval,
    conformal_report,
    coverage_tolerance,
    cqr_scores,
    empirical_coverage,
    enable_dropout,
    mc_dropout_predict,
    split_conformal,
)

# ------------------------------------------------------------------------------ conformal


def test_split_conformal_is_the_corrected_order_statistic() -> None:
    scores = np.array([5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 4.0, 6.0])  # n = 9
    # k = ceil(10 * 0.8) = 8: the 8th smallest, not the plain 0.8 quantile (7.4)
    assert split_conformal(scores, 0.2) == 8.0
    assert split_conformal(scores, 0.5) == 5.0  # k = ceil(10 * 0.5) = 5
    assert split_conformal(scores, 0.05) == math.inf  # k = 10 > n
    y, pred = np.arange(9.0), np.arange(9.0) - scores
    assert split_conformal((y, pred), 0.2) == 8.0  # the pair form scores |y - pred|
    with pytest.raises(ValueError, match="alpha"):
        split_conformal(scores, 1.0)


def test_interval_and_coverage_helpers() -> None:
    lo, hi = conformal_interval(np.array([0.0, 1.0]), 0.5)
    np.testing.assert_array_equal(lo, [-0.5, 0.5])
    np.testing.assert_array_equal(hi, [0.5, 1.5])
    lo, hi = conformal_interval(np.array([0.0]), -0.1, hi=np.array([1.0]))
    np.testing.assert_allclose([lo[0], hi[0]], [0.1, 0.9])
    assert empirical_coverage(np.array([0.0, 0.5, 2.0, 1.0]), np.zeros(4), np.ones(4)) == 0.75
    np.testing.assert_array_equal(
        cqr_scores(np.array([0.5, -1.0, 3.0]), np.zeros(3), np.ones(3)), [-0.5, 1.0, 2.0]
    )


def _coverage_trials(
    alpha: float, n_cal: int, n_test: int, trials: int, seed: int, cqr: bool
) -> np.ndarray:
    """Coverage of a split-conformal interval on fresh exchangeable data, one per trial.

    Heteroscedastic noise around a slightly wrong model, so that neither the absolute residuals
    nor the (too narrow) quantile band have any convenient distribution.
    """
    rng = np.random.default_rng(seed)
    out = np.empty(trials)
    for t in range(trials):
        x = rng.uniform(-2, 2, n_cal + n_test)
        y = np.sin(x) + (0.2 + 0.3 * np.abs(x)) * rng.standard_t(5, x.size)
        pred = 0.9 * np.sin(x)  # imperfect point forecast
        lo, hi = pred - 0.3, pred + 0.3  # a miscalibrated band
        c, s = slice(0, n_cal), slice(n_cal, None)
        if cqr:
            width = split_conformal(cqr_scores(y[c], lo[c], hi[c]), alpha)
            lo_t, hi_t = conformal_interval(lo[s], width, hi=hi[s])
        else:
            width = split_conformal((y[c], pred[c]), alpha)
            lo_t, hi_t = conformal_interval(pred[s], width)
        out[t] = empirical_coverage(y[s], lo_t, hi_t)
    return out


@pytest.mark.parametrize("cqr", [False, True], ids=["absolute", "cqr"])
@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_split_conformal_coverage_on_exchangeable_data(alpha: float, cqr: bool) -> None:
    n_cal, n_test, trials = 200, 500, 200
    cov = _coverage_trials(alpha, n_cal, n_test, trials, seed=11, cqr=cqr)
    k = math.ceil((n_cal + 1) * (1 - alpha))
    expected = k / (n_cal + 1)  # exact marginal coverage for continuous scores
    assert 1 - alpha <= expected <= 1 - alpha + 1 / (n_cal + 1)
    # Mean of `trials` independent coverages: Beta (calibration) + binomial (test) variance.
    sd = coverage_tolerance(alpha, n_cal, n_test, z=1.0) / math.sqrt(trials)
    assert abs(cov.mean() - expected) < 4 * sd
    # One trial alone lies within the per-trial tolerance nearly always (3 sd).
    tol = coverage_tolerance(alpha, n_cal, n_test)
    assert np.mean(np.abs(cov - expected) <= tol) > 0.97


def test_uncorrected_quantile_would_undercover() -> None:
    """The finite-sample correction matters for small calibration sets: the plain
    ``1 - alpha`` quantile of 10 scores (the 9th) covers 9/11 on average, the corrected one
    (the 10th) 10/11."""
    rng = np.random.default_rng(3)
    alpha, n, trials = 0.1, 10, 4000
    scores = np.abs(rng.standard_normal((trials, n)))
    new = np.abs(rng.standard_normal(trials))
    corrected = np.array([split_conformal(s, alpha) for s in scores])
    plain = np.quantile(scores, 1 - alpha, axis=1, method="inverted_cdf")
    sd = math.sqrt(0.1 * 0.9 / trials)
    assert abs(np.mean(new <= corrected) - 10 / 11) < 4 * sd
    assert abs(np.mean(new <= plain) - 9 / 11) < 4 * sd
    assert np.mean(new <= plain) < 1 - alpha - 4 * sd


def test_conformal_report() -> None:
    rng = np.random.default_rng(5)
    y = rng.standard_normal(3000)
    pred = np.zeros(3000)
    report = conformal_report(y[:1000], pred[:1000], y[1000:], pred[1000:], 0.1)
    assert report.n_cal == 1000 and report.n_test == 2000
    assert report.width == pytest.approx(1.645, abs=0.15)
    assert report.mean_length == pytest.approx(2 * report.width)
    assert report.within_tolerance and report.to_dict()["within_tolerance"] is True
    shifted = conformal_report(y[:1000], pred[:1000], 3 * y[1000:], pred[1000:], 0.1)
    assert not shifted.within_tolerance  # not exchangeable: coverage collapses


# ------------------------------------------------------------------------------ MC dropout


def _mlp(p: float) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(p), nn.Linear(32, 1)
    )


def test_mc_dropout_std_positive_with_dropout_and_zero_without() -> None:
    X = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    net = _mlp(0.3)
    net.train()
    net(torch.from_numpy(X))  # move the batch-norm running stats off their defaults
    net.eval()
    running = net[1].running_mean.clone()
    res = mc_dropout_predict(net, X, n_samples=30, seed=1, keep_samples=True)
    assert res.mean.shape == res.std.shape == (64, 1) and res.samples is not None
    assert (res.std > 0).all()
    assert set(res.quantiles) == {0.1, 0.5, 0.9}
    assert (res.quantiles[0.1] <= res.quantiles[0.9]).all()
    # Batch norm stayed in eval mode: running stats untouched; every mode restored.
    torch.testing.assert_close(net[1].running_mean, running)
    assert not any(m.training for m in net.modules())
    again = mc_dropout_predict(net, X, n_samples=30, seed=1)
    np.testing.assert_array_equal(again.mean, res.mean)  # the seed fixes the masks
    with torch.no_grad():
        plain = net(torch.from_numpy(X)).numpy()
    none = mc_dropout_predict(_mlp(0.0), X, n_samples=10, seed=1)
    assert (none.std == 0).all()
    net0 = _mlp(0.0).eval()
    with torch.no_grad():
        np.testing.assert_allclose(none.mean, net0(torch.from_numpy(X)).numpy(), rtol=1e-6)
    assert not np.allclose(res.mean, plain)  # sanity: res really used dropout


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_mc_dropout_reaches_transformer_layers(dropout: float) -> None:
    """The transformer's eval-mode fast path applies no dropout: MC dropout must avoid it."""
    spec = TransformerSpec(
        lookback=12, patch_len=4, stride=4, d_model=8, n_heads=2, n_layers=1, d_ff=16,
        n_features=2, dropout=dropout,
    )
    torch.manual_seed(0)
    net = PatchTSTNet(spec).eval()
    X = np.random.default_rng(1).standard_normal((16, 12, 2)).astype(np.float32)
    switched = enable_dropout(net)
    assert any(isinstance(m, nn.TransformerEncoderLayer) for m in switched)
    assert not net.training and not net.head.training
    net.eval()
    res = mc_dropout_predict(net, X, n_samples=8, seed=0, select=lambda out: out.ret)
    assert res.mean.shape == (16, len(spec.horizons))
    if dropout:
        assert (res.std > 0).all()
    else:
        assert (res.std == 0).all()
    assert not any(m.training for m in net.modules())
    with pytest.raises(TypeError, match="select"):
        mc_dropout_predict(net, X, n_samples=2)
