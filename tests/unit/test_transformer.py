"""PatchTST forecaster: heads, patching, causal targets, embargoed splits, learning, determinism."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from models.transformer import (
    LOSS_PARTS,
    FittedTransformer,
    PatchTSTNet,
    TransformerDataModule,
    TransformerModule,
    TransformerSpec,
    build_windows,
    chronological_splits,
    fit_transformer,
    forward_returns,
    holdout_coverage,
    prediction_columns,
)

FEATURES = ("ret_1", "drift", "vol")
TINY = TransformerSpec(
    lookback=16, patch_len=4, stride=2, d_model=16, n_heads=2, n_layers=1, d_ff=32,
    n_features=len(FEATURES), dropout=0.1, batch_size=64, max_epochs=4, patience=2, lr=3e-3,
    seed=3,
)


def _panel(n_symbols: int = 3, n_sessions: int = 420, seed: int = 0) -> pd.DataFrame:
    """Daily log returns whose mean (``drift``, a persistent AR(1)) and scale (``vol``) are
    features known at the session's close: every head and horizon has something to learn."""
    rng = np.random.default_rng(seed)
    sessions = pd.bdate_range("2012-01-02", periods=n_sessions)
    frames = []
    for i in range(n_symbols):
        drift = np.zeros(n_sessions)
        logvol = np.zeros(n_sessions)
        for t in range(1, n_sessions):
            drift[t] = 0.97 * drift[t - 1] + 0.25 * rng.standard_normal()
            logvol[t] = 0.95 * logvol[t - 1] + 0.15 * rng.standard_normal()
        vol = 0.01 * np.exp(logvol)
        ret = np.zeros(n_sessions)
        ret[1:] = 0.004 * drift[:-1] + vol[:-1] * rng.standard_normal(n_sessions - 1)
        frames.append(
            pd.DataFrame(
                {"symbol": f"S{i}", "session": sessions, "ret_1": ret, "drift": drift,
                 "vol": vol}
            )
        )
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def data() -> TransformerDataModule:
    return TransformerDataModule.from_panel(_panel(), FEATURES, TINY)


@pytest.fixture(scope="module")
def fitted(data: TransformerDataModule) -> FittedTransformer:
    return fit_transformer(TINY, data, feature_columns=FEATURES)


# ------------------------------------------------------------------------------ spec, network


def test_spec_validation_and_roundtrip() -> None:
    assert (TINY.n_patches, TINY.pad) == (7, 0)
    assert TransformerSpec(lookback=64, patch_len=8, stride=4).n_patches == 15
    odd = TransformerSpec(lookback=10, patch_len=4, stride=4)
    assert (odd.n_patches, odd.pad) == (3, 2)  # 2 sessions of left padding: 12 = 3 x 4
    assert TransformerSpec.from_dict(TINY.to_dict()) == TINY
    as_json = {**TINY.to_dict(), "horizons": [1, 5, 22], "quantiles": [0.1, 0.5, 0.9]}
    assert TransformerSpec.from_dict(as_json) == TINY
    with pytest.raises(ValueError, match="n_heads"):
        TransformerSpec(d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="quantiles"):
        TransformerSpec(quantiles=(0.9, 0.1))
    with pytest.raises(ValueError, match="stride"):
        TransformerSpec(patch_len=4, stride=5)


def test_heads_shapes_per_horizon_and_ordered_quantiles() -> None:
    torch.manual_seed(0)
    net = PatchTSTNet(TINY).eval()
    with torch.no_grad():  # large random head weights: ordering must hold by construction
        net.head.weight.normal_(0, 3.0)
        net.head.bias.normal_(0, 3.0)
    x = torch.randn(37, TINY.lookback, TINY.n_features) * 5
    out = net(x)
    n_h, n_q = len(TINY.horizons), len(TINY.quantiles)
    assert out.direction_logit.shape == out.ret.shape == out.log_var.shape == (37, n_h)
    assert out.quantiles.shape == (37, n_h, n_q)
    assert (out.quantiles.diff(dim=-1) >= 0).all()
    assert torch.isfinite(torch.stack([out.ret, out.log_var, out.direction_logit])).all()
    with pytest.raises(ValueError, match="expected windows"):
        net(torch.randn(2, TINY.lookback + 1, TINY.n_features))


def test_channels_are_encoded_independently_and_causally() -> None:
    torch.manual_seed(0)
    net = PatchTSTNet(TINY).eval()
    x = torch.randn(4, TINY.lookback, TINY.n_features)
    width = TINY.n_patches * TINY.d_model
    with torch.no_grad():
        base = net.encode(x)
        x2 = x.clone()
        x2[:, :, 1] += 3.0  # change channel 1 only
        moved = net.encode(x2)
        y = x.clone()
        y[:, -1, :] += 1.0  # the latest session is in the last patch
        latest = net(y).ret
        z = x.clone()
        z[:, 0, :] += 1.0  # and the oldest in the first one
        oldest = net(z).ret
        ref = net(x).ret
    torch.testing.assert_close(moved[:, :width], base[:, :width])  # channel 0 untouched
    torch.testing.assert_close(moved[:, 2 * width :], base[:, 2 * width :])  # channel 2 too
    assert not torch.allclose(moved[:, width : 2 * width], base[:, width : 2 * width])
    assert not torch.allclose(latest, ref) and not torch.allclose(oldest, ref)


# ------------------------------------------------------------------------------ data


def test_forward_returns_use_only_the_next_h_sessions() -> None:
    panel = _panel(n_symbols=2, n_sessions=60, seed=4)
    fwd = forward_returns(panel, (1, 5, 22))
    r = panel[panel.symbol == "S0"]["ret_1"].to_numpy()
    got = fwd[fwd.symbol == "S0"]
    for h in (1, 5, 22):
        col = got[f"fwd_ret_{h}"].to_numpy()
        expected = [r[t + 1 : t + h + 1].sum() for t in range(60 - h)]
        np.testing.assert_allclose(col[: 60 - h], expected)
        assert np.isnan(col[60 - h :]).all()  # the last h sessions have no known target
    # Perturb one return at a time: only rows t with s in t+1..t+h may change.
    t = 30
    for s in range(60):
        bumped = panel.copy()
        bumped.loc[(bumped.symbol == "S0") & (bumped.index == s), "ret_1"] += 1.0
        new = forward_returns(bumped, (1, 5, 22))
        for h in (1, 5, 22):
            changed = new[f"fwd_ret_{h}"].to_numpy()[t] != fwd[f"fwd_ret_{h}"].to_numpy()[t]
            assert changed == (t + 1 <= s <= t + h), (s, h)
        other = new[new.symbol == "S1"]["fwd_ret_5"].to_numpy()
        np.testing.assert_array_equal(other, fwd[fwd.symbol == "S1"]["fwd_ret_5"].to_numpy())


def test_windows_hold_the_past_lookback_sessions() -> None:
    panel = _panel(n_symbols=2, n_sessions=80, seed=5)
    panel.loc[panel.index[10], "drift"] = np.nan  # S0's session 10: windows over it dropped
    w = build_windows(panel, FEATURES, lookback=8, horizons=(1, 5, 22))
    s0 = panel[panel.symbol == "S0"].reset_index(drop=True)
    sel = np.flatnonzero(w.symbols == "S0")
    ends = [int(np.flatnonzero(s0.session.to_numpy() == d)[0]) for d in w.sessions[sel]]
    assert ends == [t for t in range(7, 80 - 22) if not 10 <= t <= 17]
    k = sel[ends.index(40)]
    np.testing.assert_array_equal(w.X[k], s0.loc[33:40, list(FEATURES)].to_numpy(np.float32))
    fwd = forward_returns(panel, (1, 5, 22))
    exp = fwd[fwd.symbol == "S0"].reset_index(drop=True).loc[40, ["fwd_ret_1", "fwd_ret_22"]]
    np.testing.assert_allclose(w.y[k, [0, 2]], exp.to_numpy(np.float32))
    live = build_windows(panel, FEATURES, 8, (1, 5, 22), require_targets=False)
    assert len(live) == len(w) + 2 * 22 and np.isnan(live.y).any()


def test_chronological_splits_are_disjoint_with_an_embargo(data: TransformerDataModule) -> None:
    horizon = TINY.max_horizon
    days = pd.DatetimeIndex(np.unique(np.concatenate([w.sessions for w in data.windows.values()])))
    calendar = pd.bdate_range(days.min(), days.max())
    pos = {d: i for i, d in enumerate(calendar)}
    order = ["train", "valid", "test"]
    assert list(data.splits) == order
    for a, b in itertools.pairwise(order):
        last_a = data.windows[a].sessions.max()
        first_b = data.windows[b].sessions.min()
        gap = pos[pd.Timestamp(first_b)] - pos[pd.Timestamp(last_a)] - 1
        assert gap >= horizon  # sessions left out between the segments
        # The latest label of a segment ends before the next segment's first session.
        assert pos[pd.Timestamp(last_a)] + horizon < pos[pd.Timestamp(first_b)]
        lo, hi = data.splits[b]
        assert data.splits[a][1] < lo <= hi
    for name in order:
        lo, hi = data.splits[name]
        s = data.windows[name].sessions
        assert len(s) > 0 and s.min() >= lo and s.max() <= hi
        assert len(data.segment(name)) == len(s)
    with pytest.raises(ValueError, match="embargo"):
        TransformerDataModule.from_panel(_panel(n_sessions=200), FEATURES, TINY, embargo=5)


def test_chronological_splits_counts() -> None:
    days = pd.bdate_range("2020-01-01", periods=100)
    sp = chronological_splits(days, valid_frac=0.2, test_frac=0.1, embargo=5)
    idx = {k: (days.get_loc(a), days.get_loc(b)) for k, (a, b) in sp.items()}
    assert idx == {"train": (0, 59), "valid": (65, 84), "test": (90, 99)}
    no_test = chronological_splits(days, valid_frac=0.2, test_frac=0.0, embargo=5)
    assert set(no_test) == {"train", "valid"}
    with pytest.raises(ValueError, match="too few"):
        chronological_splits(days[:20], valid_frac=0.2, test_frac=0.2, embargo=10)


# ------------------------------------------------------------------------------ training


def _untrained_valid_loss(data: TransformerDataModule, fitted: FittedTransformer) -> float:
    """Validation loss of the initial network (same seed, same training statistics)."""
    torch.manual_seed(TINY.seed)
    net = PatchTSTNet(TINY)
    for name in ("x_mean", "x_std", "y_scale"):
        getattr(net, name).copy_(fitted.state_dict[name])
    module = TransformerModule(TINY, net.eval())
    x, y = data.segment("valid").tensors
    with torch.no_grad():
        return float(module.losses(net(x), y)["total"])


def test_loss_decreases_on_a_learnable_problem(
    data: TransformerDataModule, fitted: FittedTransformer
) -> None:
    hist = fitted.history
    assert set(hist) == {f"{s}_{p}" for s in ("train", "valid") for p in LOSS_PARTS}
    n_epochs = len(hist["valid_total"])
    assert 1 <= n_epochs <= TINY.max_epochs and len(hist["train_total"]) == n_epochs
    assert hist["train_total"][-1] < hist["train_total"][0]
    assert min(fitted.valid_loss) < _untrained_valid_loss(data, fitted) - 0.1
    for e in range(n_epochs):  # the total is the weighted sum of the logged parts
        parts = sum(hist[f"valid_{p}"][e] for p in ("direction", "nll", "quantile"))
        assert hist["valid_total"][e] == pytest.approx(parts, rel=1e-5)
    # The kept weights are the best epoch's.
    assert fitted.best_epoch == int(np.argmin(fitted.valid_loss))
    x, y = data.segment("valid").tensors
    module = TransformerModule(TINY, fitted.network())
    with torch.no_grad():
        kept = float(module.losses(module.net(x), y)["total"])
    assert kept == pytest.approx(min(fitted.valid_loss), rel=1e-4)
    # The 22-session direction and mean are learnable here (persistent drift): out of sample,
    # the direction ranks better than chance (AUC 0.5; the untrained network scores 0.50) and
    # the expected return correlates with the outcome.
    X_te, y_te = data.arrays("test")
    pred = fitted.predict(X_te)
    assert _auc(pred["prob_up_22"].to_numpy(), y_te[:, 2] > 0) > 0.68
    assert np.corrcoef(pred["ret_22"].to_numpy(), y_te[:, 2])[0, 1] > 0.25


def _auc(score: np.ndarray, label: np.ndarray) -> float:
    """Probability that a positive outranks a negative (ties count half)."""
    pos, neg = score[label][:, None], score[~label][None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def test_predict_frame(data: TransformerDataModule, fitted: FittedTransformer) -> None:
    X, _ = data.arrays("test")
    idx = pd.MultiIndex.from_frame(data.windows["test"].index())
    pred = fitted.predict(X, index=idx)
    assert list(pred.columns) == prediction_columns(TINY)
    first = ["prob_up_1", "ret_1", "vol_1", "q10_1", "q50_1", "q90_1"]
    assert prediction_columns(TINY)[:6] == first
    assert pred.shape == (len(X), 18) and pred.index.equals(idx)
    assert np.isfinite(pred.to_numpy()).all()
    for h in TINY.horizons:
        assert pred[f"prob_up_{h}"].between(0, 1).all() and (pred[f"vol_{h}"] > 0).all()
        assert (pred[f"q10_{h}"] <= pred[f"q50_{h}"]).all()
        assert (pred[f"q50_{h}"] <= pred[f"q90_{h}"]).all()
    np.testing.assert_array_equal(fitted.predict(X.reshape(len(X), -1)).to_numpy(), pred.to_numpy())
    # Longer horizons carry more risk: the predicted spread grows with h on average.
    assert pred["vol_1"].mean() < pred["vol_5"].mean() < pred["vol_22"].mean()


def test_same_seed_same_model(data: TransformerDataModule, fitted: FittedTransformer) -> None:
    again = fit_transformer(TINY, data, feature_columns=FEATURES)
    X, _ = data.arrays("test")
    pd.testing.assert_frame_equal(again.predict(X), fitted.predict(X), check_exact=True)
    assert again.history == fitted.history
    assert not torch.are_deterministic_algorithms_enabled()  # global switch restored


def test_save_load_roundtrip(
    tmp_path, data: TransformerDataModule, fitted: FittedTransformer
) -> None:
    fitted.save(tmp_path / "m")
    loaded = FittedTransformer.load(tmp_path / "m")
    assert loaded.spec == fitted.spec and loaded.feature_columns == FEATURES
    assert loaded.history == fitted.history and loaded.best_epoch == fitted.best_epoch
    X, _ = data.arrays("test")
    pd.testing.assert_frame_equal(loaded.predict(X), fitted.predict(X), check_exact=True)


def test_holdout_coverage_report(data: TransformerDataModule, fitted: FittedTransformer) -> None:
    report = holdout_coverage(fitted, data, alpha=0.2)
    assert len(report) == 3 * len(TINY.horizons)
    assert set(report.method) == {"quantile_band", "conformal_ret", "conformal_band"}
    n_test = len(data.segment("test"))
    assert (report.n_test == n_test).all() and report.coverage.between(0, 1).all()
    one = report[(report.horizon == 1) & (report.method == "conformal_ret")].iloc[0]
    X_va, y_va = data.arrays("valid")
    X_te, y_te = data.arrays("test")
    res_va = np.abs(y_va[:, 0] - fitted.predict(X_va)["ret_1"].to_numpy())
    k = int(np.ceil((len(res_va) + 1) * 0.8))
    assert one.width == pytest.approx(np.sort(res_va)[k - 1])
    ret_te = fitted.predict(X_te)["ret_1"].to_numpy()
    assert one.coverage == pytest.approx(np.mean(np.abs(y_te[:, 0] - ret_te) <= one.width))
