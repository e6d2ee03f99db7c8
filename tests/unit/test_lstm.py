"""GARCH-LSTM: learning a synthetic signal, determinism, persistence, data plumbing."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from models.baselines import mae
from models.lstm import (
    FittedLSTM,
    GarchLSTMNet,
    LSTMSpec,
    WindowDataModule,
    fit_lstm,
    seq_columns,
)
from pipelines.settings import WINDOW_COLUMNS, TrainConfig

LOOKBACK = 10
F = len(WINDOW_COLUMNS)


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows whose target is a noisy function of the latest vol-like features."""
    rng = np.random.default_rng(seed)
    level = np.exp(rng.normal(np.log(0.18), 0.5, size=(n, 1)))  # regime vol per window
    X = np.empty((n, LOOKBACK, F), dtype=np.float32)
    X[:, :, 0] = rng.normal(0, 1, (n, LOOKBACK)) * level / np.sqrt(252)  # ret_1
    X[:, :, 1] = level * np.exp(rng.normal(0, 0.2, (n, LOOKBACK)))  # rv_5
    X[:, :, 2] = level * np.exp(rng.normal(0, 0.1, (n, LOOKBACK)))  # rv_22
    X[:, :, 3] = level * np.exp(rng.normal(0, 0.05, (n, LOOKBACK)))  # garch_vol
    X[:, :, 4] = level * np.exp(rng.normal(0, 0.05, (n, LOOKBACK)))  # garch_forecast
    y = (X[:, -1, 4] * np.exp(rng.normal(0, 0.1, n))).astype(np.float64)
    return X, y


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    X, y = _synthetic(4000, seed=3)
    return {"train": (X[:3000], y[:3000]), "valid": (X[3000:], y[3000:])}


@pytest.fixture(scope="module")
def spec() -> LSTMSpec:
    return LSTMSpec(
        lookback=LOOKBACK, hidden=8, batch_size=64, max_epochs=3, patience=2, lr=1e-2, seed=5
    )


@pytest.fixture(scope="module")
def fitted(spec: LSTMSpec, data: dict[str, tuple[np.ndarray, np.ndarray]]) -> FittedLSTM:
    return fit_lstm(spec, *data["train"], *data["valid"])


def test_spec_from_train_config() -> None:
    cfg = TrainConfig(lookback=15, hidden=16, max_epochs=4, seed=9)
    spec = LSTMSpec.from_train_config(cfg, horizon=10)
    assert (spec.lookback, spec.hidden, spec.max_epochs, spec.seed) == (15, 16, 4, 9)
    assert spec.n_features == len(WINDOW_COLUMNS) == 5
    assert spec.horizon == 10
    assert LSTMSpec.from_dict(spec.to_dict()) == spec


def test_seq_columns() -> None:
    cols = seq_columns(20, 5)
    assert cols[:3] == ["x000", "x001", "x002"] and cols[-1] == "x099" and len(cols) == 100
    assert seq_columns(250, 5)[-1] == "x1249"


def test_learns_better_than_the_train_mean(
    fitted: FittedLSTM, data: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    X_va, y_va = data["valid"]
    pred = fitted.predict(X_va)
    assert pred.shape == y_va.shape and (pred > 0).all()
    naive = mae(y_va, np.full_like(y_va, data["train"][1].mean()))
    assert mae(y_va, pred) < 0.6 * naive
    assert len(fitted.train_loss) == len(fitted.valid_loss) <= 3
    assert fitted.best_epoch == int(np.argmin(fitted.valid_loss))
    # The kept weights are the best epoch's: their validation MAE is the best recorded one.
    assert mae(y_va, pred) == pytest.approx(min(fitted.valid_loss), rel=1e-4)


def test_same_seed_same_model(
    spec: LSTMSpec, fitted: FittedLSTM, data: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    again = fit_lstm(spec, *data["train"], *data["valid"])
    X_va = data["valid"][0]
    np.testing.assert_array_equal(again.predict(X_va), fitted.predict(X_va))
    assert again.valid_loss == fitted.valid_loss
    assert not torch.are_deterministic_algorithms_enabled()  # global switch restored


def test_flattened_input_is_row_major(
    fitted: FittedLSTM, data: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    X = data["valid"][0][:50]
    flat = X.reshape(len(X), -1)
    assert flat[0, F + 3] == X[0, 1, 3]
    np.testing.assert_array_equal(fitted.predict(flat), fitted.predict(X))
    with pytest.raises(ValueError, match="shape"):
        fitted.predict(flat[:, :-1])


def test_save_load_roundtrip(
    tmp_path, fitted: FittedLSTM, data: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    fitted.save(tmp_path / "m")
    loaded = FittedLSTM.load(tmp_path / "m")
    assert loaded.spec == fitted.spec
    assert loaded.valid_loss == fitted.valid_loss and loaded.best_epoch == fitted.best_epoch
    assert loaded.state_dict.keys() == fitted.state_dict.keys()
    X_va = data["valid"][0]
    np.testing.assert_array_equal(loaded.predict(X_va), fitted.predict(X_va))


def test_standardisation_buffers_fitted_on_train(
    fitted: FittedLSTM, data: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    flat = data["train"][0].reshape(-1, F).astype(np.float64)
    np.testing.assert_allclose(fitted.state_dict["x_mean"].numpy(), flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(fitted.state_dict["x_std"].numpy(), flat.std(0), rtol=1e-5)


def test_fit_is_quiet(
    spec: LSTMSpec, data: dict[str, tuple[np.ndarray, np.ndarray]], caplog, recwarn
) -> None:
    small = {k: (X[:300], y[:300]) for k, (X, y) in data.items()}
    level = logging.getLogger("lightning.pytorch").level
    with caplog.at_level(logging.INFO):
        fit_lstm(
            LSTMSpec(lookback=LOOKBACK, hidden=4, max_epochs=1), *small["train"], *small["valid"]
        )
    assert not [r for r in caplog.records if r.name.startswith("lightning")]
    assert not [w for w in recwarn if "lightning" in str(w.filename)]
    assert logging.getLogger("lightning.pytorch").level == level  # restored


def test_rejects_bad_inputs(spec: LSTMSpec, data: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    X, y = data["train"]
    bad = X.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        fit_lstm(spec, bad, y, *data["valid"])
    with pytest.raises(ValueError, match="shape"):
        fit_lstm(spec, X[:, :, :4], y, *data["valid"])


def test_datamodule_segments_are_separate_and_train_shuffle_seeded(
    data: dict[str, tuple[np.ndarray, np.ndarray]],
) -> None:
    dm = WindowDataModule(data, batch_size=1000, seed=1)
    assert dm.segments == ("train", "valid")
    (_, y_val_batch), *_ = list(dm.val_dataloader())
    np.testing.assert_allclose(y_val_batch.numpy(), data["valid"][1][:1000], rtol=1e-6)
    first = [yb.numpy() for _, yb in dm.train_dataloader()]
    second = [yb.numpy() for _, yb in WindowDataModule(data, 1000, seed=1).train_dataloader()]
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    train_y = set(data["train"][1].astype(np.float32).tolist())
    assert set(np.concatenate(first).tolist()) == train_y
    with pytest.raises(KeyError, match="test"):
        dm.segment("test")


def test_net_output_positive_and_starts_at_mean() -> None:
    spec = LSTMSpec(lookback=4, hidden=3)
    net = GarchLSTMNet(spec, y_mean=0.25)
    torch.nn.init.zeros_(net.head.weight)
    out = net(torch.randn(6, 4, F))
    assert out.shape == (6,)
    np.testing.assert_allclose(out.detach().numpy(), 0.25, rtol=1e-6)
