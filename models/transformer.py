"""PatchTST-style Transformer forecaster with multi-task heads over several horizons.

The network reads a window of the last ``lookback`` sessions of ``n_features`` feature columns and
forecasts, for each horizon ``h`` in ``horizons`` (1, 5 and 22 sessions by default), the log return
over the next ``h`` sessions ``r_{t+1} + ... + r_{t+h}`` four ways:

- the probability that it is positive (direction head, binary cross-entropy),
- its expected value and its standard deviation (a Gaussian head trained with
  :class:`torch.nn.GaussianNLLLoss`),
- its P10/P50/P90 quantiles (pinball loss), kept ordered by construction.

The architecture follows PatchTST (Nie et al., 2023): every feature channel is cut into
overlapping patches of ``patch_len`` sessions every ``stride`` sessions, each patch is embedded by
one linear map shared by all channels, a learned positional encoding is added, and one Transformer
encoder, shared too, runs on every channel *independently* (channel independence: a channel's
tokens attend only to the same channel's tokens). The heads read the flattened encoder outputs of
every channel and patch. The pieces compose as in :mod:`models.lstm`:

- :class:`TransformerSpec`: architecture, loss weights and training budget,
- :class:`PatchTSTNet`: the plain :class:`torch.nn.Module`,
- :class:`TransformerModule` / :class:`TransformerDataModule`: thin Lightning wrappers; the data
  module builds chronological, embargoed ``train`` / ``valid`` / ``test`` windows from a panel
  (:func:`build_windows`, :func:`forward_returns`, :func:`chronological_splits`),
- :func:`fit_transformer`: trains with early stopping and checkpointing (callbacks) and returns a
  :class:`FittedTransformer`, which predicts a frame of ``prob_up_h, ret_h, vol_h, q10_h, q50_h,
  q90_h`` per horizon, saves and loads without Lightning,
- :func:`holdout_coverage`: split-conformal intervals calibrated on ``valid`` and their empirical
  coverage on the ``test`` holdout (:mod:`models.uncertainty`).

Returns are in log-return units, not annualised: ``vol_h`` is the standard deviation of the
``h``-session log return (multiply by ``sqrt(252 / h)`` to annualise).
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from models.losses import pinball_loss
from models.lstm import (
    WindowDataModule,
    default_precision,
    load_fitted,
    quiet_lightning,
    resolve_accelerator,
    save_fitted,
    train_best,
)
from models.uncertainty import conformal_report, coverage_tolerance, empirical_coverage
from pipelines.settings import WINDOW_COLUMNS

__all__ = [
    "LOSS_PARTS",
    "FittedTransformer",
    "PanelWindows",
    "PatchTSTNet",
    "TransformerDataModule",
    "TransformerEpochProgress",
    "TransformerModule",
    "TransformerOutput",
    "TransformerSpec",
    "build_windows",
    "chronological_splits",
    "default_precision",
    "fit_transformer",
    "forward_returns",
    "holdout_coverage",
    "prediction_columns",
]

#: Parts of the multi-task loss, in the order they are logged (``total`` is their weighted sum).
LOSS_PARTS: tuple[str, ...] = ("direction", "nll", "quantile", "total")

_MIN_STD = 1e-8
_EVAL_BATCH = 1024
_LOG_VAR_BOUNDS = (-12.0, 8.0)  # standardised units: variance between 6e-6 and 3000 scale^2
_NLL_EPS = 1e-6


# ------------------------------------------------------------------------------ spec


@dataclass(frozen=True)
class TransformerSpec:
    """Architecture, loss weights and training budget of the PatchTST forecaster.

    Parameters
    ----------
    lookback : int
        Sessions per input window.
    patch_len : int
        Sessions per patch (``<= lookback``).
    stride : int
        Sessions between the starts of consecutive patches (``<= patch_len``: patches overlap
        or touch). The window is left-padded by repeating its oldest session so that the last
        patch ends on the latest session.
    d_model : int
        Width of the patch embeddings and of the encoder.
    n_heads : int
        Attention heads (dividing ``d_model``).
    n_layers : int
        Encoder layers.
    d_ff : int
        Hidden width of each encoder layer's feed-forward block.
    dropout : float
        Dropout of the embeddings, the encoder and before the heads.
    n_features : int
        Feature channels per session.
    horizons : tuple of int
        Forecast horizons in sessions, ascending.
    quantiles : tuple of float
        Quantile levels of the quantile head, ascending in ``(0, 1)``.
    direction_weight, nll_weight, quantile_weight : float
        Weights of the direction (BCE), Gaussian NLL and pinball parts of the loss.
    lr : float
        AdamW learning rate.
    weight_decay : float
        AdamW weight decay.
    batch_size : int
        Training batch size.
    max_epochs : int
        Epoch budget.
    patience : int
        Epochs without validation improvement before early stopping.
    seed : int
        Seed of every random number generator involved.
    """

    lookback: int = 64
    patch_len: int = 8
    stride: int = 4
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 128
    dropout: float = 0.1
    n_features: int = len(WINDOW_COLUMNS)
    horizons: tuple[int, ...] = (1, 5, 22)
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    direction_weight: float = 1.0
    nll_weight: float = 1.0
    quantile_weight: float = 1.0
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    max_epochs: int = 30
    patience: int = 4
    seed: int = 7

    def __post_init__(self) -> None:
        # JSON round trips give lists: keep the frozen spec hashable and comparable.
        object.__setattr__(self, "horizons", tuple(int(h) for h in self.horizons))
        object.__setattr__(self, "quantiles", tuple(float(q) for q in self.quantiles))
        problems = []
        if not 1 <= self.patch_len <= self.lookback:
            problems.append(f"patch_len {self.patch_len} not in [1, lookback={self.lookback}]")
        if not 1 <= self.stride <= self.patch_len:
            problems.append(f"stride {self.stride} not in [1, patch_len={self.patch_len}]")
        if self.d_model % self.n_heads:
            problems.append(f"n_heads {self.n_heads} does not divide d_model {self.d_model}")
        if not self.horizons or list(self.horizons) != sorted(set(self.horizons)):
            problems.append(f"horizons must be distinct and ascending, got {self.horizons}")
        elif self.horizons[0] < 1:
            problems.append(f"horizons must be >= 1, got {self.horizons}")
        qs = self.quantiles
        if not qs or list(qs) != sorted(set(qs)) or qs[0] <= 0 or qs[-1] >= 1:
            problems.append(f"quantiles must be distinct, ascending, in (0, 1), got {qs}")
        if min(self.direction_weight, self.nll_weight, self.quantile_weight) < 0:
            problems.append("loss weights must be >= 0")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must lie in [0, 1), got {self.dropout}")
        if problems:
            raise ValueError("invalid TransformerSpec: " + "; ".join(problems))

    @property
    def n_patches(self) -> int:
        """Patches per channel: ``ceil((lookback - patch_len) / stride) + 1``."""
        return -(-(self.lookback - self.patch_len) // self.stride) + 1

    @property
    def pad(self) -> int:
        """Sessions of left padding so that the patches tile the window up to its last session."""
        return (self.n_patches - 1) * self.stride + self.patch_len - self.lookback

    @property
    def max_horizon(self) -> int:
        return max(self.horizons)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TransformerSpec:
        return cls(**dict(data))


def _quantile_name(q: float) -> str:
    pct = q * 100
    return f"q{round(pct):02d}" if abs(pct - round(pct)) < 1e-9 else f"q{pct:g}".replace(".", "_")


def prediction_columns(spec: TransformerSpec) -> list[str]:
    """Columns of :meth:`FittedTransformer.predict`: per horizon ``h`` (ascending),
    ``prob_up_h, ret_h, vol_h`` and one ``qNN_h`` per quantile level (``q10_h, q50_h, q90_h``)."""
    cols = []
    for h in spec.horizons:
        cols += [f"prob_up_{h}", f"ret_{h}", f"vol_{h}"]
        cols += [f"{_quantile_name(q)}_{h}" for q in spec.quantiles]
    return cols


# ------------------------------------------------------------------------------ data


def forward_returns(
    panel: pd.DataFrame,
    horizons: Sequence[int],
    return_column: str = "ret_1",
) -> pd.DataFrame:
    """Forward log returns ``fwd_ret_h`` of every (symbol, session) row of ``panel``.

    Parameters
    ----------
    panel : pandas.DataFrame
        Columns ``symbol``, ``session`` and ``return_column`` (the daily log return of the
        session, known at its close); one row per symbol and session, each symbol's sessions
        consecutive.
    horizons : sequence of int
        Horizons ``h`` in sessions.
    return_column : str
        Column of daily log returns.

    Returns
    -------
    pandas.DataFrame
        ``symbol, session, fwd_ret_h...`` sorted by symbol and session, with ``fwd_ret_h`` at
        row ``t`` equal to ``r_{t+1} + ... + r_{t+h}`` (the symbol's next ``h`` rows only: never
        the row's own return nor an earlier one); NaN for each symbol's last ``h`` rows.
    """
    from models.baselines import forward_log_return

    missing = [c for c in ("symbol", "session", return_column) if c not in panel.columns]
    if missing:
        raise ValueError(f"panel lacks columns: {missing}")
    ordered = panel.sort_values(["symbol", "session"], kind="stable").reset_index(drop=True)
    out = ordered[["symbol", "session"]].copy()
    for h in horizons:
        out[f"fwd_ret_{h}"] = np.nan
    for _, g in ordered.groupby("symbol", sort=True):
        r = g[return_column].astype(float).reset_index(drop=True)
        for h in horizons:
            out.loc[g.index, f"fwd_ret_{h}"] = forward_log_return(r, h).to_numpy()
    return out


@dataclass(frozen=True)
class PanelWindows:
    """Input windows of a panel with their forward-return targets.

    Parameters
    ----------
    X : numpy.ndarray
        Windows ``(N, lookback, n_features)`` float32, oldest session first.
    y : numpy.ndarray
        Targets ``(N, len(horizons))`` float32: ``fwd_ret_h`` at each window's last session (NaN
        where unknown, only when built with ``require_targets=False``).
    symbols : numpy.ndarray
        Symbol of each window ``(N,)``.
    sessions : numpy.ndarray
        Last session of each window ``(N,)`` (datetime64): the forecast is made at its close.
    """

    X: np.ndarray
    y: np.ndarray
    symbols: np.ndarray
    sessions: np.ndarray

    def __len__(self) -> int:
        return len(self.X)

    def subset(self, mask: np.ndarray) -> PanelWindows:
        return PanelWindows(self.X[mask], self.y[mask], self.symbols[mask], self.sessions[mask])

    def index(self) -> pd.DataFrame:
        """``symbol, session`` of each window."""
        return pd.DataFrame({"symbol": self.symbols, "session": self.sessions})


def build_windows(
    panel: pd.DataFrame,
    feature_columns: Sequence[str],
    lookback: int,
    horizons: Sequence[int],
    return_column: str = "ret_1",
    require_targets: bool = True,
) -> PanelWindows:
    """Every window of ``lookback`` consecutive rows of each symbol, with its forward returns.

    Each symbol's rows are taken as consecutive sessions (sorted by session). The window
    ending at session ``t`` holds the features of sessions ``t - lookback + 1 .. t``
    (known at the close of ``t``) and its targets are :func:`forward_returns` at ``t``. Windows
    with a non-finite feature are dropped, and so are windows with an unknown target unless
    ``require_targets`` is false (windows for live forecasts).
    """
    cols = list(feature_columns)
    missing = [c for c in ("symbol", "session", *cols) if c not in panel.columns]
    if missing:
        raise ValueError(f"panel lacks columns: {missing}")
    if lookback < 1:
        raise ValueError(f"lookback must be >= 1, got {lookback}")
    ordered = panel.sort_values(["symbol", "session"], kind="stable").reset_index(drop=True)
    if ordered.duplicated(["symbol", "session"]).any():
        raise ValueError("panel has duplicate (symbol, session) rows")
    targets = forward_returns(ordered, horizons, return_column)
    y_all = targets[[f"fwd_ret_{h}" for h in horizons]].to_numpy(np.float32)
    xs, ys, syms, sess = [], [], [], []
    for symbol, g in ordered.groupby("symbol", sort=True):
        n = len(g)
        if n < lookback:
            continue
        feats = g[cols].to_numpy(np.float32)
        # (n - lookback + 1, n_features, lookback) -> (.., lookback, n_features): views, no copy
        win = np.lib.stride_tricks.sliding_window_view(feats, lookback, axis=0)
        win = win.transpose(0, 2, 1)
        bad = np.concatenate([[0], np.cumsum(~np.isfinite(feats).all(axis=1))])
        ok = (bad[lookback:] - bad[: n - lookback + 1]) == 0
        y = y_all[g.index.to_numpy()[lookback - 1 :]]
        if require_targets:
            ok &= np.isfinite(y).all(axis=1)
        xs.append(np.ascontiguousarray(win[ok]))
        ys.append(y[ok])
        syms.append(np.full(int(ok.sum()), symbol, dtype=object))
        sess.append(g["session"].to_numpy()[lookback - 1 :][ok])
    if not xs:
        return PanelWindows(
            np.zeros((0, lookback, len(cols)), np.float32),
            np.zeros((0, len(horizons)), np.float32),
            np.zeros(0, dtype=object),
            np.zeros(0, dtype="datetime64[ns]"),
        )
    return PanelWindows(
        np.concatenate(xs),
        np.concatenate(ys),
        np.concatenate(syms),
        np.asarray(pd.to_datetime(np.concatenate(sess))),
    )


def chronological_splits(
    sessions: Sequence[Any] | np.ndarray,
    *,
    valid_frac: float = 0.15,
    test_frac: float = 0.15,
    embargo: int = 22,
) -> dict[str, tuple[pd.Timestamp, pd.Timestamp]]:
    """Split sorted sessions into ``train`` / ``valid`` / ``test`` ranges, oldest first.

    Between consecutive segments ``embargo`` sessions are left out, so that a label over the next
    ``h <= embargo`` sessions of a segment's last session ends before the next segment starts:
    no training label overlaps a validation or test label.

    Parameters
    ----------
    sessions : sequence of dates
        Sessions of the windows (duplicates allowed: the distinct ones are split).
    valid_frac, test_frac : float
        Fractions of the distinct sessions (before the embargoes are cut) in ``valid`` and
        ``test``; ``test_frac = 0`` gives no ``test`` segment.
    embargo : int
        Sessions between segments; at least the longest label horizon.

    Returns
    -------
    dict of str to (pandas.Timestamp, pandas.Timestamp)
        Inclusive first and last session of each segment.
    """
    days = np.unique(pd.to_datetime(np.asarray(sessions)).to_numpy())
    n = len(days)
    if embargo < 0:
        raise ValueError(f"embargo must be >= 0, got {embargo}")
    n_test = round(n * test_frac)
    n_valid = max(1, round(n * valid_frac))
    n_train = n - n_valid - n_test - embargo * (2 if n_test else 1)
    if n_train < 1 or (test_frac > 0 and n_test < 1):
        raise ValueError(
            f"{n} sessions are too few for valid_frac={valid_frac}, test_frac={test_frac} and "
            f"embargo={embargo}"
        )
    bounds = {"train": (0, n_train - 1)}
    start = n_train + embargo
    bounds["valid"] = (start, start + n_valid - 1)
    if n_test:
        start = start + n_valid + embargo
        bounds["test"] = (start, n - 1)
    return {k: (pd.Timestamp(days[a]), pd.Timestamp(days[b])) for k, (a, b) in bounds.items()}


class TransformerDataModule(WindowDataModule):
    """Chronological named segments of windows and multi-horizon targets.

    Batches never mix segments; only ``"train"`` is shuffled, within itself, by a generator
    seeded with ``seed``. Build it from arrays, or from a panel with :meth:`from_panel`.

    Parameters
    ----------
    segments : mapping of str to (X, y)
        ``X`` ``(N, lookback, n_features)``, ``y`` ``(N, len(horizons))`` forward log returns.
    batch_size : int
        Training batch size (evaluation batches are larger).
    seed : int
        Seed of the training shuffle.
    windows : mapping of str to PanelWindows, optional
        The windows each segment came from (symbols and sessions), when built from a panel.
    splits : mapping of str to (Timestamp, Timestamp), optional
        Session range of each segment, when built from a panel.
    """

    def __init__(
        self,
        segments: Mapping[str, tuple[np.ndarray, np.ndarray]],
        batch_size: int,
        seed: int,
        windows: Mapping[str, PanelWindows] | None = None,
        splits: Mapping[str, tuple[pd.Timestamp, pd.Timestamp]] | None = None,
    ) -> None:
        super().__init__(segments, batch_size, seed)
        self.windows: dict[str, PanelWindows] = dict(windows or {})
        self.splits: dict[str, tuple[pd.Timestamp, pd.Timestamp]] = dict(splits or {})

    eval_batch: int = _EVAL_BATCH

    def _arrays_of(self, name: str, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``X`` as float32 ``(N, lookback, F)`` and ``y`` as float32 ``(N, H)``, checked."""
        x_arr = np.ascontiguousarray(X, dtype=np.float32)
        y_arr = np.ascontiguousarray(y, dtype=np.float32)
        if y_arr.ndim == 1:
            y_arr = y_arr[:, None]
        if x_arr.ndim != 3 or y_arr.ndim != 2 or len(x_arr) != len(y_arr):
            raise ValueError(
                f"segment {name!r}: need X (N, lookback, F) and y (N, H), got "
                f"{x_arr.shape} and {y_arr.shape}"
            )
        return x_arr, y_arr

    @classmethod
    def from_panel(
        cls,
        panel: pd.DataFrame,
        feature_columns: Sequence[str],
        spec: TransformerSpec,
        *,
        return_column: str = "ret_1",
        valid_frac: float = 0.15,
        test_frac: float = 0.15,
        embargo: int | None = None,
    ) -> TransformerDataModule:
        """Windows of ``panel`` (:func:`build_windows`) split by :func:`chronological_splits`.

        ``embargo`` defaults to the longest horizon and may not be shorter.
        """
        if len(feature_columns) != spec.n_features:
            raise ValueError(
                f"{len(feature_columns)} feature columns for a spec of {spec.n_features}"
            )
        gap = spec.max_horizon if embargo is None else embargo
        if gap < spec.max_horizon:
            raise ValueError(
                f"embargo {gap} is shorter than the longest horizon {spec.max_horizon}"
            )
        allw = build_windows(panel, feature_columns, spec.lookback, spec.horizons, return_column)
        if len(allw) == 0:
            raise ValueError("the panel yields no complete window with known targets")
        splits = chronological_splits(
            allw.sessions, valid_frac=valid_frac, test_frac=test_frac, embargo=gap
        )
        windows = {}
        for name, (lo, hi) in splits.items():
            mask = (allw.sessions >= lo.to_datetime64()) & (allw.sessions <= hi.to_datetime64())
            windows[name] = allw.subset(mask)
        return cls(
            {k: (w.X, w.y) for k, w in windows.items()},
            batch_size=spec.batch_size,
            seed=spec.seed,
            windows=windows,
            splits=splits,
        )

    def arrays(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(X, y)`` of one segment as numpy arrays (views of the tensors)."""
        x, y = self.segment(name).tensors
        return x.numpy(), y.numpy()


# ------------------------------------------------------------------------------ network


class TransformerOutput(NamedTuple):
    """Heads of :class:`PatchTSTNet`, in target units (log returns), per horizon.

    Attributes
    ----------
    direction_logit : torch.Tensor
        ``(N, H)`` logit of ``P(fwd_ret_h > 0)``.
    ret : torch.Tensor
        ``(N, H)`` expected forward log return (the Gaussian mean).
    log_var : torch.Tensor
        ``(N, H)`` log variance of the forward log return (the Gaussian variance).
    quantiles : torch.Tensor
        ``(N, H, Q)`` quantiles, non-decreasing along the last dimension.
    """

    direction_logit: torch.Tensor
    ret: torch.Tensor
    log_var: torch.Tensor
    quantiles: torch.Tensor


class PatchTSTNet(nn.Module):
    """Channel-independent patch Transformer with direction, Gaussian and quantile heads.

    Inputs are standardised per feature with training statistics, every channel is patched,
    embedded and encoded independently with shared weights, and the heads read the flattened
    ``(n_features * n_patches * d_model)`` representation. The heads work in standardised target
    units (each horizon's returns divided by their training standard deviation ``y_scale``) and
    the outputs are scaled back to log returns. Quantiles are a base plus cumulative softplus
    increments, hence ordered.

    Parameters
    ----------
    spec : TransformerSpec
        Architecture.
    x_mean, x_std : torch.Tensor, optional
        Per-feature standardisation ``(n_features,)``; identity by default, restored from the
        state dict when loading.
    y_scale : torch.Tensor, optional
        Per-horizon target scale ``(len(horizons),)``; ones by default.
    """

    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_scale: torch.Tensor

    def __init__(
        self,
        spec: TransformerSpec,
        x_mean: torch.Tensor | None = None,
        x_std: torch.Tensor | None = None,
        y_scale: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        f, n_h, n_q = spec.n_features, len(spec.horizons), len(spec.quantiles)
        self.register_buffer("x_mean", torch.zeros(f) if x_mean is None else x_mean.float())
        self.register_buffer("x_std", torch.ones(f) if x_std is None else x_std.float())
        self.register_buffer(
            "y_scale", torch.ones(n_h) if y_scale is None else y_scale.float().reshape(n_h)
        )
        self.patch_embed = nn.Linear(spec.patch_len, spec.d_model)
        self.pos_embed = nn.Parameter(torch.zeros(1, spec.n_patches, spec.d_model))
        nn.init.normal_(self.pos_embed, std=0.02)
        self.embed_dropout = nn.Dropout(spec.dropout)
        layer = nn.TransformerEncoderLayer(
            d_model=spec.d_model,
            nhead=spec.n_heads,
            dim_feedforward=spec.d_ff,
            dropout=spec.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer,
            num_layers=spec.n_layers,
            norm=nn.LayerNorm(spec.d_model),
            enable_nested_tensor=False,
        )
        self.head_dropout = nn.Dropout(spec.dropout)
        self.head = nn.Linear(f * spec.n_patches * spec.d_model, n_h * (3 + n_q))
        with torch.no_grad():  # start from var = scale^2 and a zero-width quantile spread
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened representation ``(N, n_features * n_patches * d_model)`` of windows."""
        spec = self.spec
        n, lookback, f = x.shape
        if (lookback, f) != (spec.lookback, spec.n_features):
            raise ValueError(
                f"expected windows (N, {spec.lookback}, {spec.n_features}), got {tuple(x.shape)}"
            )
        z = (x - self.x_mean) / self.x_std
        z = z.transpose(1, 2).reshape(n * f, lookback)  # one series per (window, channel)
        if spec.pad:
            z = torch.cat([z[:, :1].expand(-1, spec.pad), z], dim=1)
        patches = z.unfold(1, spec.patch_len, spec.stride)  # (N*F, P, patch_len)
        tokens = self.embed_dropout(self.patch_embed(patches) + self.pos_embed)
        encoded = self.encoder(tokens)  # channels never attend to each other
        return encoded.reshape(n, f * spec.n_patches * spec.d_model)

    def forward(self, x: torch.Tensor) -> TransformerOutput:
        """Heads of windows ``(N, lookback, n_features)``, in log-return units."""
        n_h, n_q = len(self.spec.horizons), len(self.spec.quantiles)
        raw = self.head(self.head_dropout(self.encode(x))).reshape(-1, n_h, 3 + n_q)
        scale = self.y_scale
        log_var_z = raw[..., 2].clamp(*_LOG_VAR_BOUNDS)
        steps = torch.cat(
            [raw[..., 3:4], nn.functional.softplus(raw[..., 4:])], dim=-1
        )
        return TransformerOutput(
            direction_logit=raw[..., 0],
            ret=raw[..., 1] * scale,
            log_var=log_var_z + 2.0 * torch.log(scale),
            quantiles=torch.cumsum(steps, dim=-1) * scale.unsqueeze(-1),
        )


# ------------------------------------------------------------------------------ Lightning


class TransformerModule(L.LightningModule):
    """Lightning wrapper of :class:`PatchTSTNet`: weighted multi-task loss, AdamW.

    ``loss = direction_weight * BCE(direction) + nll_weight * GaussianNLL(ret, var)
    + quantile_weight * pinball(quantiles)``, each part computed in standardised target units
    (returns over ``y_scale``) and in float32 even under mixed precision. Every part's exact
    epoch mean (a sample mean, not a mean of batch means) is logged as ``train_<part>`` /
    ``val_<part>`` and kept in :attr:`history`; ``val_loss`` (the total) drives the callbacks.
    """

    def __init__(self, spec: TransformerSpec, net: PatchTSTNet) -> None:
        super().__init__()
        self.spec = spec
        self.net = net
        self.gaussian_nll = nn.GaussianNLLLoss(eps=_NLL_EPS)
        self.history: dict[str, list[float]] = {
            f"{seg}_{part}": [] for seg in ("train", "valid") for part in LOSS_PARTS
        }
        self._sums: dict[str, dict[str, torch.Tensor]] = {}
        self._counts: dict[str, int] = {}

    def forward(self, x: torch.Tensor) -> TransformerOutput:
        return self.net(x)

    def losses(self, out: TransformerOutput, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss parts (``LOSS_PARTS``) of outputs ``out`` against forward returns ``y``."""
        spec = self.spec
        scale = self.net.y_scale
        y = y.float()
        yz = y / scale
        direction = nn.functional.binary_cross_entropy_with_logits(
            out.direction_logit.float(), (y > 0).float()
        )
        var_z = torch.exp(out.log_var.float() - 2.0 * torch.log(scale))
        nll = self.gaussian_nll(out.ret.float() / scale, yz, var_z)
        quantile = pinball_loss(out.quantiles.float() / scale.unsqueeze(-1), yz, spec.quantiles)
        total = (
            spec.direction_weight * direction
            + spec.nll_weight * nll
            + spec.quantile_weight * quantile
        )
        return {"direction": direction, "nll": nll, "quantile": quantile, "total": total}

    def _step(self, batch: Sequence[torch.Tensor], segment: str) -> torch.Tensor:
        x, y = batch
        parts = self.losses(self.net(x), y)
        n = len(y)
        sums = self._sums.setdefault(segment, {})
        for name, value in parts.items():
            acc = value.detach() * n  # stays on the device: no synchronisation per step
            sums[name] = sums[name] + acc if name in sums else acc
        self._counts[segment] = self._counts.get(segment, 0) + n
        return parts["total"]

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "valid")

    def on_train_epoch_start(self) -> None:
        self._sums.pop("train", None)
        self._counts["train"] = 0

    def on_validation_epoch_start(self) -> None:
        self._sums.pop("valid", None)
        self._counts["valid"] = 0

    def epoch_means(self, segment: str) -> dict[str, float]:
        """Running sample means of the current epoch's loss parts on ``segment``."""
        n = max(self._counts.get(segment, 0), 1)
        return {k: float(v) / n for k, v in self._sums.get(segment, {}).items()}

    def _close_epoch(self, segment: str, prefix: str) -> dict[str, float]:
        means = self.epoch_means(segment)
        for part in LOSS_PARTS:
            self.history[f"{segment}_{part}"].append(means.get(part, math.nan))
        if means:
            self.log_dict({f"{prefix}_{k}": v for k, v in means.items()}, prog_bar=False)
        return means

    def on_validation_epoch_end(self) -> None:
        means = self._close_epoch("valid", "val")
        if means:
            self.log("val_loss", means["total"], prog_bar=False)

    def on_train_epoch_end(self) -> None:
        self._close_epoch("train", "train")

    def epoch_history(self) -> dict[str, list[float]]:
        """Per-epoch loss parts so far (``train_total``, ``valid_nll``, ...), for logging
        callbacks (:class:`~models.lstm.MlflowEpochLogger`)."""
        return self.history

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.parameters(), lr=self.spec.lr, weight_decay=self.spec.weight_decay
        )


class TransformerEpochProgress(Callback):
    """Log one line per epoch (train and valid loss parts) to ``afterbell.transformer``."""

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, TransformerModule) or trainer.sanity_checking:
            return
        train = pl_module.epoch_means("train")  # the epoch's running means: history lags here
        valid = pl_module.epoch_means("valid")
        logging.getLogger("afterbell.transformer").info(
            "epoch %d/%d: train loss %.5f, valid loss %.5f (direction %.4f, nll %.4f, "
            "quantile %.4f)",
            trainer.current_epoch + 1, trainer.max_epochs,
            train.get("total", math.nan), valid.get("total", math.nan),
            valid.get("direction", math.nan), valid.get("nll", math.nan),
            valid.get("quantile", math.nan),
        )


# ------------------------------------------------------------------------------ fitted


@dataclass
class FittedTransformer:
    """A trained PatchTST forecaster: spec, best weights and training history.

    Parameters
    ----------
    spec : TransformerSpec
        Architecture and budget it was trained with.
    state_dict : dict of str to torch.Tensor
        Weights of :class:`PatchTSTNet` (CPU tensors), standardisation buffers included.
    history : dict of str to list of float
        Per-epoch mean of each loss part on each segment (``train_total``, ``valid_nll``, ...).
    best_epoch : int
        Zero-based epoch whose weights were kept (lowest validation loss).
    feature_columns : tuple of str, optional
        Names of the input channels, in order (metadata).
    """

    spec: TransformerSpec
    state_dict: dict[str, torch.Tensor]
    history: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int = 0
    feature_columns: tuple[str, ...] | None = None
    _net: PatchTSTNet | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def valid_loss(self) -> list[float]:
        return list(self.history.get("valid_total", []))

    @property
    def train_loss(self) -> list[float]:
        return list(self.history.get("train_total", []))

    def network(self) -> PatchTSTNet:
        """The network with the fitted weights, in eval mode on the CPU (built once)."""
        if self._net is None:
            net = PatchTSTNet(self.spec)
            net.load_state_dict(self.state_dict)
            net.eval()
            self._net = net
        return self._net

    def _windows(self, X: np.ndarray) -> np.ndarray:
        spec = self.spec
        arr = np.asarray(X, dtype=np.float32)
        if arr.ndim == 2 and arr.shape[1] == spec.lookback * spec.n_features:
            arr = arr.reshape(len(arr), spec.lookback, spec.n_features)
        if arr.ndim != 3 or arr.shape[1:] != (spec.lookback, spec.n_features):
            raise ValueError(
                f"expected windows of shape (N, {spec.lookback}, {spec.n_features}), got "
                f"{np.asarray(X).shape}"
            )
        return np.ascontiguousarray(arr)

    def predict_outputs(self, X: np.ndarray, batch_size: int = _EVAL_BATCH) -> TransformerOutput:
        """Raw heads (:class:`TransformerOutput` of CPU tensors) of windows ``X``, eval mode."""
        windows = self._windows(X)
        net = self.network()
        chunks: list[TransformerOutput] = []
        with torch.inference_mode():
            for start in range(0, len(windows), batch_size):
                chunks.append(net(torch.from_numpy(windows[start : start + batch_size])))
        if not chunks:
            n_h, n_q = len(self.spec.horizons), len(self.spec.quantiles)
            empty = torch.zeros(0, n_h)
            return TransformerOutput(empty, empty, empty, torch.zeros(0, n_h, n_q))
        return TransformerOutput(*(torch.cat(parts) for parts in zip(*chunks, strict=True)))

    def predict(
        self,
        X: np.ndarray,
        index: pd.Index | None = None,
        batch_size: int = _EVAL_BATCH,
    ) -> pd.DataFrame:
        """Forecasts of windows ``X`` ``(N, lookback, n_features)`` (or flattened row-major).

        Returns a frame with :func:`prediction_columns`: per horizon ``h``, ``prob_up_h`` (the
        probability that the ``h``-session log return is positive), ``ret_h`` (its expected
        value), ``vol_h`` (its standard deviation, not annualised) and ``q10_h, q50_h, q90_h``
        (its quantiles). Runs on the CPU in eval mode.
        """
        out = self.predict_outputs(X, batch_size=batch_size)
        spec = self.spec
        data: dict[str, np.ndarray] = {}
        prob = torch.sigmoid(out.direction_logit).double().numpy()
        ret = out.ret.double().numpy()
        vol = torch.exp(0.5 * out.log_var.double()).numpy()
        qs = out.quantiles.double().numpy()
        for j, h in enumerate(spec.horizons):
            data[f"prob_up_{h}"] = prob[:, j]
            data[f"ret_{h}"] = ret[:, j]
            data[f"vol_{h}"] = vol[:, j]
            for k, q in enumerate(spec.quantiles):
                data[f"{_quantile_name(q)}_{h}"] = qs[:, j, k]
        frame = pd.DataFrame(data, columns=prediction_columns(spec))
        if index is not None:
            frame.index = index
        return frame

    def save(self, path: str | Path) -> Path:
        """Write ``state_dict.pt`` and ``fitted.json`` into the folder ``path`` (created)."""
        return save_fitted(path, self.state_dict, {
            "spec": self.spec.to_dict(),
            "history": self.history,
            "best_epoch": self.best_epoch,
            "feature_columns": list(self.feature_columns) if self.feature_columns else None,
        })

    @classmethod
    def load(cls, path: str | Path) -> FittedTransformer:
        """Read a model written by :meth:`save` (weights loaded with ``weights_only=True``)."""
        state, meta = load_fitted(path)
        cols = meta.get("feature_columns")
        return cls(
            spec=TransformerSpec.from_dict(meta["spec"]),
            state_dict=state,
            history={k: [float(v) for v in vs] for k, vs in meta["history"].items()},
            best_epoch=int(meta["best_epoch"]),
            feature_columns=tuple(cols) if cols else None,
        )


# ------------------------------------------------------------------------------ training


def _check_segment(data: TransformerDataModule, name: str, spec: TransformerSpec) -> None:
    if name not in data.segments:
        raise ValueError(f"the data module needs a {name!r} segment; has {list(data.segments)}")
    x, y = data.segment(name).tensors
    if len(x) == 0:
        raise ValueError(f"segment {name!r} is empty")
    if tuple(x.shape[1:]) != (spec.lookback, spec.n_features) or y.shape[1] != len(spec.horizons):
        raise ValueError(
            f"segment {name!r}: windows {tuple(x.shape)} and targets {tuple(y.shape)} do not "
            f"match the spec (lookback {spec.lookback}, {spec.n_features} features, "
            f"{len(spec.horizons)} horizons)"
        )
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError(f"segment {name!r}: windows and targets must be finite")


def fit_transformer(
    spec: TransformerSpec,
    data: TransformerDataModule,
    *,
    callbacks: Sequence[Callback] = (),
    accelerator: str = "auto",
    precision: str | None = None,
    feature_columns: Sequence[str] | None = None,
) -> FittedTransformer:
    """Train a PatchTST forecaster with early stopping and keep the best validation weights.

    Parameters
    ----------
    spec : TransformerSpec
        Architecture, loss weights and budget.
    data : TransformerDataModule
        With ``train`` and ``valid`` segments (``valid`` drives early stopping).
    callbacks : sequence of lightning.pytorch.callbacks.Callback
        Extra callbacks (e.g. an Optuna pruning callback monitoring ``val_loss``).
    accelerator : str
        Lightning accelerator; ``"auto"`` uses a CUDA GPU when there is one.
    precision : str, optional
        Trainer precision; by default :func:`default_precision` of the accelerator (mixed
        precision on a GPU, ``32-true`` on the CPU).
    feature_columns : sequence of str, optional
        Channel names kept as metadata (defaults to nothing).

    Returns
    -------
    FittedTransformer
        Best-epoch weights on the CPU and the per-epoch history of every loss part.

    Notes
    -----
    Seeds every generator with ``spec.seed``; on the CPU trains with ``deterministic=True``
    (``torch.use_deterministic_algorithms``), so two calls with the same inputs on the same
    machine give identical weights. On a GPU determinism is requested in ``"warn"`` mode (some
    fused attention kernels have no deterministic backward). The global switches are restored
    afterwards. Input standardisation and target scales are fitted on ``train`` only.
    """
    _check_segment(data, "train", spec)
    _check_segment(data, "valid", spec)
    x_tr, y_tr = data.arrays("train")
    flat = x_tr.reshape(-1, spec.n_features).astype(np.float64)
    x_mean = torch.from_numpy(flat.mean(axis=0)).float()
    x_std = torch.from_numpy(np.maximum(flat.std(axis=0), _MIN_STD)).float()
    y_scale = torch.from_numpy(np.maximum(y_tr.astype(np.float64).std(axis=0), _MIN_STD)).float()
    acc = resolve_accelerator(accelerator)
    prec = precision or default_precision(acc)

    with quiet_lightning(), tempfile.TemporaryDirectory(prefix="patchtst_") as tmp:
        L.seed_everything(spec.seed, workers=True, verbose=False)
        net = PatchTSTNet(spec, x_mean=x_mean, x_std=x_std, y_scale=y_scale)
        module = TransformerModule(spec, net)
        train_best(module, data, tmp, max_epochs=spec.max_epochs, patience=spec.patience,
                   callbacks=[TransformerEpochProgress(), *callbacks], accelerator=acc,
                   precision=prec, deterministic=True if acc == "cpu" else "warn")
    state = {k: v.detach().cpu().clone() for k, v in module.net.state_dict().items()}
    history = {k: list(v) for k, v in module.history.items()}
    valid = history["valid_total"]
    return FittedTransformer(
        spec=spec,
        state_dict=state,
        history=history,
        best_epoch=int(np.nanargmin(valid)) if valid else 0,
        feature_columns=tuple(feature_columns) if feature_columns is not None else None,
    )


# ------------------------------------------------------------------------------ coverage


def holdout_coverage(
    fitted: FittedTransformer,
    data: TransformerDataModule,
    alpha: float = 0.2,
    *,
    calibration: str = "valid",
    holdout: str = "test",
) -> pd.DataFrame:
    """Empirical coverage on the holdout of three intervals per horizon, at level ``1 - alpha``.

    - ``quantile_band``: the raw band between the outer quantile heads (P10-P90: nominal 0.8
      whatever ``alpha``), uncalibrated;
    - ``conformal_ret``: ``ret_h -/+ w``, ``w`` the split-conformal width of the absolute
      residuals on the calibration segment;
    - ``conformal_band``: the outer-quantile band conformalised on the calibration segment
      (CQR).

    Returns one row per horizon and method with ``nominal``, ``coverage``, ``tolerance`` (3
    standard deviations, :func:`~models.uncertainty.coverage_tolerance`), ``width``,
    ``mean_length``, ``n_cal`` and ``n_test``.

    Notes
    -----
    The conformal guarantee assumes calibration and holdout windows exchangeable. Market data
    are not (volatility regimes drift, and windows of one symbol overlap and share labels), so
    read the coverage as a diagnostic: a shortfall beyond ``tolerance`` says the calibration
    segment's errors no longer describe the holdout's.
    """
    spec = fitted.spec
    x_cal, y_cal = data.arrays(calibration)
    x_te, y_te = data.arrays(holdout)
    p_cal, p_te = fitted.predict(x_cal), fitted.predict(x_te)
    lo_name, hi_name = _quantile_name(spec.quantiles[0]), _quantile_name(spec.quantiles[-1])
    band_nominal = spec.quantiles[-1] - spec.quantiles[0]
    rows = []
    for j, h in enumerate(spec.horizons):
        yc, yt = y_cal[:, j].astype(np.float64), y_te[:, j].astype(np.float64)
        lo_c, hi_c = p_cal[f"{lo_name}_{h}"].to_numpy(), p_cal[f"{hi_name}_{h}"].to_numpy()
        lo_t, hi_t = p_te[f"{lo_name}_{h}"].to_numpy(), p_te[f"{hi_name}_{h}"].to_numpy()
        rows.append(
            {"horizon": h, "method": "quantile_band", "nominal": band_nominal,
             "coverage": empirical_coverage(yt, lo_t, hi_t),
             "tolerance": coverage_tolerance(1.0 - band_nominal, len(yc), len(yt)),
             "width": 0.0, "mean_length": float(np.mean(hi_t - lo_t)),
             "n_cal": len(yc), "n_test": len(yt)}
        )
        for method, report in (
            ("conformal_ret", conformal_report(
                yc, p_cal[f"ret_{h}"].to_numpy(), yt, p_te[f"ret_{h}"].to_numpy(), alpha)),
            ("conformal_band", conformal_report(
                yc, lo_c, yt, lo_t, alpha, hi_cal=hi_c, hi_test=hi_t)),
        ):
            rows.append(
                {"horizon": h, "method": method, "nominal": 1.0 - alpha,
                 "coverage": report.coverage, "tolerance": report.tolerance,
                 "width": report.width, "mean_length": report.mean_length,
                 "n_cal": report.n_cal, "n_test": report.n_test}
            )
    return pd.DataFrame(rows)
