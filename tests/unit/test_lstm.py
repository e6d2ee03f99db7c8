"""GARCH-LSTM: learning a synthetic signal, determinism, persistence, data plumbing."""

from __future__ import annotations

import json
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
    for k in range(3, F):  # garch_vol, garch_forecast, egarch_forecast, ewma_forecast
        X[:, :, k] = level * np.exp(rng.normal(0, 0.05, (n, LOOKBACK)))
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
    assert spec.n_features == len(WINDOW_COLUMNS) == 7
    assert spec.horizon == 10 and spec.horizons == (10,)
    assert LSTMSpec.from_dict(spec.to_dict()) == spec
    multi = LSTMSpec.from_train_config(cfg, horizon=5, extra_horizons=(1, 5, 22))
    assert multi.horizons == (5, 1, 22) and multi.n_outputs == 3
    assert LSTMSpec.from_dict(json.loads(json.dumps(multi.to_dict()))) == multi
    old = {k: v for k, v in spec.to_dict().items() if k != "extra_horizons"}
    assert LSTMSpec.from_dict(old) == spec  # specs saved before extra heads existed
    with pytest.raises(ValueError, match="distinct"):
        LSTMSpec(horizon=5, extra_horizons=(5,))


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


def test_multi_horizon_heads_learn_their_own_targets(
    data: dict[str, tuple[np.ndarray, np.ndarray]], tmp_path
) -> None:
    """Kim & Won's 1- and 22-session heads beside the primary one: (N, 3) targets, the
    primary head first; each head beats the train mean of its own target, and the heads differ
    (a 1-session target twice as noisy, 0.8 times the level)."""
    rng = np.random.default_rng(11)
    (X_tr, y_tr), (X_va, y_va) = data["train"], data["valid"]

    def heads(y: np.ndarray) -> np.ndarray:
        short = 0.8 * y * np.exp(rng.normal(0, 0.2, len(y)))
        return np.column_stack([y, short, 1.2 * y])

    Y_tr, Y_va = heads(y_tr), heads(y_va)
    spec = LSTMSpec(lookback=LOOKBACK, hidden=8, batch_size=64, max_epochs=3, patience=2,
                    lr=1e-2, seed=5, base_feature=4, horizon=5, extra_horizons=(1, 22))
    fitted = fit_lstm(spec, X_tr, Y_tr, X_va, Y_va)
    pred = fitted.predict_horizons(X_va)
    assert pred.shape == (len(X_va), 3)
    np.testing.assert_array_equal(fitted.predict(X_va), pred[:, 0])
    for k in range(3):
        naive = mae(Y_va[:, k], np.full(len(Y_va), Y_tr[:, k].mean()))
        assert mae(Y_va[:, k], pred[:, k]) < 0.8 * naive, k
    assert np.median(pred[:, 2] / pred[:, 1]) == pytest.approx(1.5, rel=0.15)
    # The loss is the mean over heads: the best epoch's value matches the kept weights.
    assert np.abs(pred - Y_va).mean() == pytest.approx(min(fitted.valid_loss), rel=1e-4)
    fitted.save(tmp_path / "m")
    np.testing.assert_array_equal(FittedLSTM.load(tmp_path / "m").predict_horizons(X_va), pred)
    with pytest.raises(ValueError, match="target column"):
        fit_lstm(spec, X_tr, y_tr, X_va, y_va)


def test_mlflow_epoch_logger_logs_every_epoch_into_the_active_run(
    spec: LSTMSpec, data: dict[str, tuple[np.ndarray, np.ndarray]], tmp_path
) -> None:
    import mlflow

    from models.lstm import MlflowEpochLogger

    small = {k: (X[:400], y[:400]) for k, (X, y) in data.items()}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("epochs", artifact_location=(tmp_path / "a").as_uri())
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(experiment_id=exp) as run:
            fitted = fit_lstm(spec, *small["train"], *small["valid"],
                              callbacks=[MlflowEpochLogger()])
        # outside a run the callback stays silent
        fit_lstm(LSTMSpec(lookback=LOOKBACK, hidden=4, max_epochs=1), *small["train"],
                 *small["valid"], callbacks=[MlflowEpochLogger()])
    finally:
        mlflow.set_tracking_uri(previous)
    for name, expected in (("valid_loss", fitted.valid_loss), ("train_loss", fitted.train_loss)):
        hist = sorted(client.get_metric_history(run.info.run_id, name), key=lambda m: m.step)
        assert [m.step for m in hist] == list(range(len(expected)))
        np.testing.assert_allclose([m.value for m in hist], expected, rtol=1e-6)
    assert len(client.search_runs([exp])) == 1
