"""GARCH-LSTM hybrid volatility forecaster (in the spirit of Kim & Won, 2018).

An LSTM reads a window of the last ``lookback`` sessions of ``WINDOW_COLUMNS`` (returns, realised
vols, the GARCH conditional vol and the GARCH, EGARCH and EWMA forecasts, as in Kim & Won's hybrid)
and predicts the annualised realised volatility of the next ``horizon`` sessions and, with
``extra_horizons``, of other horizons too (one head each; the nightly model has 1 and 22 beside
its primary horizon, Kim & Won's daily and monthly targets). The pieces compose like this:

- :class:`LSTMSpec`: architecture and training budget (from
  :class:`~pipelines.settings.TrainConfig`),
- :class:`GarchLSTMNet`: the plain :class:`torch.nn.Module` (input standardisation, LSTM, head),
- :class:`GarchLSTMModule` / :class:`WindowDataModule`: thin Lightning wrappers for training,
- :func:`fit_lstm`: trains with early stopping and returns a :class:`FittedLSTM`, the deployable
  result (spec, best weights, loss history) that predicts, saves and loads without Lightning.

Training minimises the L1 loss (MAE) of the volatility: it is the headline evaluation metric, and
unlike MSE it is not dominated by the few crisis windows whose realised vol is several times the
median. With several horizons the loss is the mean of the per-horizon L1 losses (every head gets
the same gradient weight whatever the scale of its target).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pipelines.settings import WINDOW_COLUMNS, TrainConfig

__all__ = [
    "EpochProgress",
    "FittedLSTM",
    "GarchLSTMModule",
    "GarchLSTMNet",
    "LSTMSpec",
    "MlflowEpochLogger",
    "WindowDataModule",
    "default_precision",
    "fit_lstm",
    "resolve_accelerator",
    "seq_columns",
]

_STATE_FILE = "state_dict.pt"
_META_FILE = "fitted.json"
_QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning")
_MIN_STD = 1e-8
_EVAL_BATCH = 4096
_MIN_BASE = 1e-4  # floor of the base forecast (annualised vol) before its log
_LOG_VOL_BOUNDS = (-12.0, 4.0)  # exp(4) = 5460% annualised vol: far outside any market


@dataclass(frozen=True)
class LSTMSpec:
    """Architecture and training budget of the GARCH-LSTM.

    Parameters
    ----------
    lookback : int
        Sessions per input window.
    hidden : int
        LSTM hidden units.
    layers : int
        Stacked LSTM layers.
    dropout : float
        Dropout between LSTM layers (only with ``layers > 1``) and before the head.
    lr : float
        Adam learning rate.
    batch_size : int
        Training batch size.
    max_epochs : int
        Epoch budget.
    patience : int
        Epochs without validation improvement before early stopping.
    seed : int
        Seed of every random number generator involved.
    n_features : int
        Features per session (``len(WINDOW_COLUMNS)``).
    horizon : int
        Sessions ahead the primary target realised vol covers (metadata; it shapes the training
        target). :meth:`FittedLSTM.predict` returns this head.
    base_feature : int or None
        Index of the feature whose last value is the hybrid's base forecast (the GARCH forecast):
        the net predicts a multiplicative correction, ``vol = base * exp(head(h))``, so an
        untrained net starts from the GARCH forecast scaled by its median bias on the training
        segment. ``None`` predicts the level directly.
    extra_horizons : tuple of int
        Further horizons, one more output head each, after the primary one (the targets are then
        ``(N, 1 + len(extra_horizons))``, in :attr:`horizons` order). Empty: one head.
    """

    lookback: int = 20
    hidden: int = 32
    layers: int = 1
    dropout: float = 0.1
    lr: float = 3e-3
    batch_size: int = 256
    max_epochs: int = 30
    patience: int = 4
    seed: int = 7
    n_features: int = len(WINDOW_COLUMNS)
    horizon: int = 5
    base_feature: int | None = None
    extra_horizons: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        extra = tuple(int(h) for h in self.extra_horizons)
        object.__setattr__(self, "extra_horizons", extra)
        hs = self.horizons
        if min(hs) < 1 or len(set(hs)) != len(hs):
            raise ValueError(f"horizons must be distinct positive session counts, got {hs}")

    @property
    def horizons(self) -> tuple[int, ...]:
        """Every head's horizon, the primary ``horizon`` first."""
        return (self.horizon, *self.extra_horizons)

    @property
    def n_outputs(self) -> int:
        """Output heads, ``len(horizons)``."""
        return len(self.horizons)

    @classmethod
    def from_train_config(
        cls, cfg: TrainConfig, horizon: int, extra_horizons: Sequence[int] = ()
    ) -> LSTMSpec:
        """The spec of a :class:`~pipelines.settings.TrainConfig` and forecast horizon(s)."""
        shared = {f.name for f in fields(cls)}
        return cls(
            **{k: v for k, v in asdict(cfg).items() if k in shared},
            n_features=len(WINDOW_COLUMNS),
            horizon=horizon,
            base_feature=WINDOW_COLUMNS.index("garch_forecast"),
            extra_horizons=tuple(h for h in extra_horizons if h != horizon),
        )

    @property
    def n_inputs(self) -> int:
        """Length of a flattened window, ``lookback * n_features``."""
        return self.lookback * self.n_features

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LSTMSpec:
        """Inverse of :meth:`to_dict` (also reads specs saved before ``extra_horizons``)."""
        values = dict(data)
        values["extra_horizons"] = tuple(values.get("extra_horizons", ()))
        return cls(**values)


def seq_columns(lookback: int, n_features: int) -> list[str]:
    """Wide column names ``x000, x001, ...`` of a flattened (row-major) window.

    Column ``x{i * n_features + j}`` holds feature ``j`` of the ``i``-th session of the window
    (oldest first).
    """
    n = lookback * n_features
    width = max(3, len(str(n - 1)))
    return [f"x{i:0{width}d}" for i in range(n)]


def _as_windows(X: np.ndarray, spec: LSTMSpec) -> np.ndarray:
    """``X`` as float32 ``(N, lookback, n_features)``; accepts the flattened row-major form."""
    arr = np.asarray(X, dtype=np.float32)
    if arr.ndim == 2 and arr.shape[1] == spec.n_inputs:
        arr = arr.reshape(arr.shape[0], spec.lookback, spec.n_features)
    if arr.ndim != 3 or arr.shape[1:] != (spec.lookback, spec.n_features):
        raise ValueError(
            f"expected windows of shape (N, {spec.lookback}, {spec.n_features}) or "
            f"(N, {spec.n_inputs}), got {np.asarray(X).shape}"
        )
    return arr


class GarchLSTMNet(nn.Module):
    """Standardise inputs, run an LSTM, map its last hidden state to a positive volatility.

    The head predicts the log of the volatility; its bias starts at the log of the mean training
    target so that training starts from the unconditional level.

    Parameters
    ----------
    spec : LSTMSpec
        Architecture.
    x_mean, x_std : torch.Tensor, optional
        Per-feature standardisation (``n_features``,), fitted on the training segment. Defaults
        to identity; restored from the state dict when loading.
    y_mean : float or sequence of float
        Training target level used to initialise the head bias: the mean target, or with a
        ``base_feature`` the median ratio of target to base; one per head (a float: the same for
        every head).
    """

    x_mean: torch.Tensor
    x_std: torch.Tensor

    def __init__(
        self,
        spec: LSTMSpec,
        x_mean: torch.Tensor | None = None,
        x_std: torch.Tensor | None = None,
        y_mean: float | Sequence[float] = 0.2,
    ) -> None:
        super().__init__()
        f = spec.n_features
        self.register_buffer("x_mean", torch.zeros(f) if x_mean is None else x_mean.float())
        self.register_buffer("x_std", torch.ones(f) if x_std is None else x_std.float())
        self.lstm = nn.LSTM(
            input_size=f,
            hidden_size=spec.hidden,
            num_layers=spec.layers,
            dropout=spec.dropout if spec.layers > 1 else 0.0,
            batch_first=True,
        )
        self.dropout = nn.Dropout(spec.dropout)
        self.n_outputs = spec.n_outputs
        self.head = nn.Linear(spec.hidden, self.n_outputs)
        self.base_feature = spec.base_feature
        levels = [float(y_mean)] * self.n_outputs if isinstance(y_mean, int | float) else [
            float(v) for v in y_mean
        ]
        if len(levels) != self.n_outputs:
            raise ValueError(f"y_mean has {len(levels)} levels for {self.n_outputs} heads")
        with torch.no_grad():
            self.head.bias.copy_(torch.tensor([math.log(max(v, 1e-6)) for v in levels]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Volatility forecasts of windows ``(N, lookback, n_features)``: ``(N,)`` with one
        head, ``(N, n_outputs)`` (columns in ``spec.horizons`` order) with several."""
        z = (x - self.x_mean) / self.x_std
        out, _ = self.lstm(z)
        log_vol = self.head(self.dropout(out[:, -1, :]))
        if self.base_feature is not None:
            base = x[:, -1, self.base_feature].clamp_min(_MIN_BASE)
            log_vol = log_vol + torch.log(base).unsqueeze(-1)
        vol = torch.exp(log_vol.clamp(*_LOG_VOL_BOUNDS))
        return vol.squeeze(-1) if self.n_outputs == 1 else vol


class GarchLSTMModule(L.LightningModule):
    """Lightning wrapper of :class:`GarchLSTMNet`: L1 loss on the volatility (the mean over the
    heads with several horizons), Adam.

    Epoch losses are the exact sample means of the absolute errors (not means of batch means) and
    are kept in :attr:`train_history` / :attr:`valid_history`; ``val_loss`` is logged for the
    early-stopping and checkpoint callbacks.
    """

    def __init__(self, spec: LSTMSpec, net: GarchLSTMNet) -> None:
        super().__init__()
        self.spec = spec
        self.net = net
        self.train_history: list[float] = []
        self.valid_history: list[float] = []
        self._sums: dict[str, list[float]] = {"train": [0.0, 0.0], "valid": [0.0, 0.0]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: Sequence[torch.Tensor], segment: str) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.l1_loss(self.net(x), y)
        acc = self._sums[segment]
        acc[0] += float(loss.detach()) * len(y)
        acc[1] += len(y)
        return loss

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "valid")

    def on_train_epoch_start(self) -> None:
        self._sums["train"] = [0.0, 0.0]

    def on_validation_epoch_start(self) -> None:
        self._sums["valid"] = [0.0, 0.0]

    def on_validation_epoch_end(self) -> None:
        total, n = self._sums["valid"]
        val = total / max(n, 1.0)
        self.valid_history.append(val)
        self.log("val_loss", val, prog_bar=False)

    def on_train_epoch_end(self) -> None:
        total, n = self._sums["train"]
        self.train_history.append(total / max(n, 1.0))

    def epoch_history(self) -> dict[str, list[float]]:
        """Per-epoch losses so far (``train_loss``, ``valid_loss``), for logging callbacks."""
        return {"train_loss": self.train_history, "valid_loss": self.valid_history}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.spec.lr)


class WindowDataModule(L.LightningDataModule):
    """Chronological named segments of windows (``"train"``, ``"valid"``, optionally more).

    Segments are kept apart: batches never mix segments. Only ``"train"`` is shuffled, within
    itself, by a generator seeded with ``seed``.

    Parameters
    ----------
    segments : mapping of str to (X, y)
        ``X`` of shape ``(N, lookback, n_features)``, ``y`` of shape ``(N,)`` (or ``(N, H)`` for
        ``H`` heads), oldest first.
    batch_size : int
        Batch size of every loader.
    seed : int
        Seed of the training shuffle.
    """

    def __init__(
        self,
        segments: Mapping[str, tuple[np.ndarray, np.ndarray]],
        batch_size: int,
        seed: int,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.seed = seed
        self._data: dict[str, TensorDataset] = {}
        for name, (X, y) in segments.items():
            x_arr, y_arr = self._arrays_of(name, X, y)
            self._data[name] = TensorDataset(torch.from_numpy(x_arr), torch.from_numpy(y_arr))

    #: Batch size floor of the evaluation loaders (bigger batches are much faster on a CPU).
    eval_batch: int = _EVAL_BATCH

    def _arrays_of(self, name: str, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``X`` as float32 ``(N, lookback, F)`` and ``y`` as float32 ``(N,)`` or ``(N, H)``
        (``(N, 1)`` is flattened), checked."""
        x_arr = np.ascontiguousarray(X, dtype=np.float32)
        y_arr = np.ascontiguousarray(y, dtype=np.float32)
        if (y_arr.ndim == 2 and y_arr.shape[1] == 1) or y_arr.ndim == 0:
            y_arr = y_arr.ravel()
        if x_arr.ndim != 3 or y_arr.ndim > 2 or len(x_arr) != len(y_arr):
            raise ValueError(
                f"segment {name!r}: need X (N, lookback, F) and y (N,) or (N, H), got "
                f"{x_arr.shape} and {y_arr.shape}"
            )
        return x_arr, y_arr

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self._data)

    def segment(self, name: str) -> TensorDataset:
        """The dataset of one segment."""
        try:
            return self._data[name]
        except KeyError:
            raise KeyError(f"no segment {name!r}; have {list(self._data)}") from None

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            self.segment(name),
            batch_size=self.batch_size if shuffle else max(self.batch_size, self.eval_batch),
            shuffle=shuffle,
            generator=gen,
            num_workers=0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test" if "test" in self._data else "valid", shuffle=False)



def save_fitted(
    path: str | Path, state_dict: Mapping[str, torch.Tensor], meta: dict[str, Any]
) -> Path:
    """Write a fitted network's folder: ``state_dict.pt`` (CPU tensors) and ``fitted.json``."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, folder / _STATE_FILE)
    (folder / _META_FILE).write_text(json.dumps(meta, indent=2))
    return folder


def load_fitted(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a folder written by :func:`save_fitted` (weights with ``weights_only=True``)."""
    folder = Path(path)
    meta = json.loads((folder / _META_FILE).read_text())
    state = torch.load(folder / _STATE_FILE, map_location="cpu", weights_only=True)
    return dict(state), meta


@dataclass
class FittedLSTM:
    """A trained GARCH-LSTM: spec, best weights and training history.

    Parameters
    ----------
    spec : LSTMSpec
        Architecture and budget it was trained with.
    state_dict : dict of str to torch.Tensor
        Weights of :class:`GarchLSTMNet` (CPU tensors), standardisation buffers included.
    train_loss, valid_loss : list of float
        Per-epoch mean L1 loss on the two segments.
    best_epoch : int
        Zero-based epoch whose weights were kept (lowest validation loss).
    """

    spec: LSTMSpec
    state_dict: dict[str, torch.Tensor]
    train_loss: list[float] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    _net: GarchLSTMNet | None = field(default=None, init=False, repr=False, compare=False)

    def network(self) -> GarchLSTMNet:
        """The network with the fitted weights, in eval mode on the CPU (built once)."""
        if self._net is None:
            net = GarchLSTMNet(self.spec)
            net.load_state_dict(self.state_dict)
            net.eval()
            self._net = net
        return self._net

    def predict_horizons(self, X: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        """Annualised vol forecasts ``(N, len(spec.horizons))`` of windows ``(N, lookback, F)``
        or ``(N, lookback*F)``, one column per head in ``spec.horizons`` order.

        Runs on the CPU in eval mode, in chunks of ``batch_size`` windows.
        """
        windows = _as_windows(X, self.spec)
        net = self.network()
        out = np.empty((len(windows), self.spec.n_outputs), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(windows), batch_size):
                chunk = torch.from_numpy(windows[start : start + batch_size])
                out[start : start + len(chunk)] = net(chunk).reshape(len(chunk), -1).numpy()
        return out

    def predict(self, X: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        """Annualised vol forecasts ``(N,)`` of the primary horizon (``spec.horizon``) of windows
        ``(N, lookback, F)`` or ``(N, lookback*F)``; see :meth:`predict_horizons`."""
        return self.predict_horizons(X, batch_size)[:, 0]

    def save(self, path: str | Path) -> Path:
        """Write ``state_dict.pt`` and ``fitted.json`` into the folder ``path`` (created)."""
        return save_fitted(path, self.state_dict, {
            "spec": self.spec.to_dict(),
            "train_loss": self.train_loss,
            "valid_loss": self.valid_loss,
            "best_epoch": self.best_epoch,
        })

    @classmethod
    def load(cls, path: str | Path) -> FittedLSTM:
        """Read a model written by :meth:`save` (weights loaded with ``weights_only=True``)."""
        state, meta = load_fitted(path)
        return cls(
            spec=LSTMSpec.from_dict(meta["spec"]),
            state_dict=state,
            train_loss=[float(v) for v in meta["train_loss"]],
            valid_loss=[float(v) for v in meta["valid_loss"]],
            best_epoch=int(meta["best_epoch"]),
        )


class EpochProgress(Callback):
    """Log one line per epoch (train and valid MAE) to ``afterbell.lstm``: training's progress
    in the Airflow task log without Lightning's progress bar."""

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        module = pl_module
        if not isinstance(module, GarchLSTMModule) or not module.valid_history:
            return
        total, n = module._sums["train"]  # the epoch's running sum: train_history lags here
        train = total / n if n else float("nan")
        logging.getLogger("afterbell.lstm").info(
            "epoch %d/%d: train MAE %.5f, valid MAE %.5f",
            trainer.current_epoch + 1, trainer.max_epochs, train, module.valid_history[-1],
        )


class MlflowEpochLogger(Callback):
    """Log each finished epoch's losses to the active MLflow run, as training goes.

    Works with any LightningModule that has ``epoch_history() -> {name: [value per epoch]}``
    (both forecasters). An epoch is logged once its training and validation losses are both
    closed, i.e. when the next epoch starts, and the last ones when fitting ends; ``step`` is
    the zero-based epoch. Does nothing without an active run (e.g. in tuning trials).

    Parameters
    ----------
    prefix : str
        Prepended to every metric name.
    """

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.logged = 0

    def _flush(self, pl_module: L.LightningModule) -> None:
        import mlflow

        history = getattr(pl_module, "epoch_history", None)
        if history is None or mlflow.active_run() is None:
            return
        series = history()
        done = min((len(v) for v in series.values()), default=0)
        for epoch in range(self.logged, done):
            metrics = {f"{self.prefix}{k}": float(v[epoch]) for k, v in series.items()
                       if math.isfinite(v[epoch])}
            mlflow.log_metrics(metrics, step=epoch)
        self.logged = max(self.logged, done)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(pl_module)


def _check_segment(name: str, X: np.ndarray, y: np.ndarray, spec: LSTMSpec) -> np.ndarray:
    windows = _as_windows(X, spec)
    target = np.asarray(y, dtype=np.float64)
    target = target.reshape(len(target), -1) if target.ndim else target.reshape(1, 1)
    if len(windows) == 0 or len(windows) != len(target):
        raise ValueError(
            f"{name}: need as many (> 0) windows as targets, got {len(windows)} and {len(target)}"
        )
    if target.shape[1] != spec.n_outputs:
        raise ValueError(
            f"{name}: need {spec.n_outputs} target column(s) (horizons {spec.horizons}), got "
            f"{target.shape[1]}"
        )
    if not (np.isfinite(windows).all() and np.isfinite(target).all()):
        raise ValueError(f"{name}: windows and targets must be finite")
    if (target < 0).any():  # zero is a real 1-session realised vol (an unchanged close)
        raise ValueError(f"{name}: target volatilities must be non-negative")
    return windows


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's INFO logging and warnings; restore global switches afterwards.

    ``Trainer(deterministic=True)`` flips process-wide torch switches
    (``use_deterministic_algorithms``, ``cudnn.benchmark``); they are put back on exit.
    """
    levels = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    try:
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"lightning(\..*)?")
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark



def default_precision(accelerator: str) -> str:
    """Trainer precision: ``32-true`` on the CPU; on a GPU ``bf16-mixed`` where supported,
    else ``16-mixed``."""
    if accelerator in ("gpu", "cuda"):
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return "bf16-mixed" if bf16 else "16-mixed"
    return "32-true"


def resolve_accelerator(accelerator: str) -> str:
    """``"auto"`` as ``"gpu"`` when CUDA is available, else ``"cpu"``; others unchanged."""
    if accelerator == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return accelerator


def train_best(
    module: L.LightningModule,
    data: L.LightningDataModule,
    workdir: str,
    *,
    max_epochs: int,
    patience: int,
    callbacks: Sequence[Callback] = (),
    accelerator: str = "auto",
    precision: str | None = None,
    deterministic: bool | str = True,
) -> None:
    """Fit ``module`` with early stopping on ``val_loss`` and leave it with its best epoch's
    weights (a checkpoint callback in ``workdir``); no logger, no progress bar."""
    checkpoint = ModelCheckpoint(
        dirpath=workdir,
        filename="best",
        monitor="val_loss",
        mode="min",
        save_top_k=1,
        save_weights_only=True,
        enable_version_counter=False,
    )
    stopper = EarlyStopping(monitor="val_loss", mode="min", patience=patience)
    extra: dict[str, Any] = {} if precision is None else {"precision": precision}
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        max_epochs=max_epochs,
        deterministic=deterministic,  # type: ignore[arg-type]
        callbacks=[stopper, checkpoint, *callbacks],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=workdir,
        **extra,
    )
    trainer.fit(module, datamodule=data)
    if checkpoint.best_model_path:
        ckpt = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
        module.load_state_dict(ckpt["state_dict"])


def fit_lstm(
    spec: LSTMSpec,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_valid: np.ndarray,
    y_valid: np.ndarray,
    callbacks: Sequence[Callback] = (),
    *,
    accelerator: str = "auto",
    precision: str | None = None,
) -> FittedLSTM:
    """Train a GARCH-LSTM with early stopping and keep the best validation weights.

    Parameters
    ----------
    spec : LSTMSpec
        Architecture and budget.
    X_train, X_valid : numpy.ndarray
        Windows ``(N, lookback, n_features)`` (or flattened row-major), oldest first.
    y_train, y_valid : numpy.ndarray
        Forward realised vol, annualised decimal: ``(N,)``, or ``(N, len(spec.horizons))`` with
        one column per horizon (primary first).
    callbacks : sequence of lightning.pytorch.callbacks.Callback
        Extra callbacks (e.g. an Optuna pruning callback monitoring ``val_loss``).
    accelerator : str
        Lightning accelerator; ``"auto"`` uses a CUDA GPU when there is one.
    precision : str, optional
        Trainer precision; by default :func:`default_precision` of the accelerator (mixed
        precision on a GPU, ``32-true`` on the CPU).

    Returns
    -------
    FittedLSTM
        Best-epoch weights on the CPU and the per-epoch loss history.

    Notes
    -----
    Seeds every generator with ``spec.seed`` and trains with ``deterministic=True`` on the CPU:
    two calls with the same inputs on the same machine give identical weights (on a GPU
    determinism is requested in ``"warn"`` mode: cuDNN's LSTM backward is not deterministic).
    The input standardisation is fitted on the training segment only.
    """
    x_tr = _check_segment("train", X_train, y_train, spec)
    x_va = _check_segment("valid", X_valid, y_valid, spec)
    flat = x_tr.reshape(-1, spec.n_features).astype(np.float64)
    x_mean = torch.from_numpy(flat.mean(axis=0)).float()
    x_std = torch.from_numpy(np.maximum(flat.std(axis=0), _MIN_STD)).float()
    y_tr = np.asarray(y_train, dtype=np.float64).reshape(len(x_tr), -1)
    if spec.base_feature is None:
        y_mean = [float(v) for v in y_tr.mean(axis=0)]
    else:
        base = np.maximum(x_tr[:, -1, spec.base_feature].astype(np.float64), _MIN_BASE)
        y_mean = [float(v) for v in np.median(y_tr / base[:, None], axis=0)]

    with quiet_lightning(), tempfile.TemporaryDirectory(prefix="garch_lstm_") as tmp:
        L.seed_everything(spec.seed, workers=True, verbose=False)
        net = GarchLSTMNet(spec, x_mean=x_mean, x_std=x_std, y_mean=y_mean)
        module = GarchLSTMModule(spec, net)
        data = WindowDataModule(
            {"train": (x_tr, np.asarray(y_train)), "valid": (x_va, np.asarray(y_valid))},
            batch_size=spec.batch_size,
            seed=spec.seed,
        )
        acc = resolve_accelerator(accelerator)
        train_best(module, data, tmp, max_epochs=spec.max_epochs, patience=spec.patience,
                   callbacks=[EpochProgress(), *callbacks], accelerator=acc,
                   precision=precision or default_precision(acc),
                   deterministic=True if acc == "cpu" else "warn")
    state = {k: v.detach().cpu().clone() for k, v in module.net.state_dict().items()}
    valid = list(module.valid_history)
    return FittedLSTM(
        spec=spec,
        state_dict=state,
        train_loss=list(module.train_history),
        valid_loss=valid,
        best_epoch=int(np.argmin(valid)) if valid else 0,
    )
