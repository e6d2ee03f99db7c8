"""Training throughput and peak memory of the forecasters (issue 5).

Run from the checkout::

    .venv/bin/python bench/bench_training.py                      # CPU, and CUDA when available
    .venv/bin/python bench/bench_training.py --device cpu --json out.json
    .venv/bin/python bench/bench_training.py --device cuda --windows 98304
    .venv/bin/python bench/bench_training.py --help

Both networks train through their own Lightning modules and data modules (``models.lstm``:
``GarchLSTMModule`` + ``WindowDataModule``; ``models.transformer``: ``TransformerModule`` +
``TransformerDataModule``) on synthetic windows of the real shapes: the GARCH-LSTM's from the
default ``TrainConfig`` (20 sessions x 5 window columns, batch 256), the Transformer's from the
default ``TransformerSpec`` (64 sessions x 5 channels, 3 horizons, batch 256). Each measurement
(network x device x precision) runs in a fresh process so that its peak memory is its own:

- **samples/s**: training samples per second of wall time over ``--epochs`` epochs after
  ``--warmup`` epochs (forward, backward and optimiser step, data loading and Lightning's loop
  included; no validation), with the device synchronised at each epoch's edges;
- **peak memory**: on the CPU the process's peak resident set size (``getrusage``; it includes
  the interpreter, torch and the synthetic data: the RSS before training is printed beside it);
  on a GPU ``torch.cuda.max_memory_allocated`` during training.

On CUDA every network runs in ``32-true`` and in mixed precision (``bf16-mixed`` where the GPU
supports bfloat16, else ``16-mixed``) through the Trainer's ``precision`` option. Training here is
not deterministic (``deterministic=False``): the speed of the production path with its
determinism switches is not the point. Nothing asserts on speed; the figures are printed and, with
``--json PATH``, written as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import resource
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

from models.lstm import GarchLSTMModule, GarchLSTMNet, LSTMSpec, WindowDataModule  # noqa: E402
from models.transformer import (  # noqa: E402
    PatchTSTNet,
    TransformerDataModule,
    TransformerModule,
    TransformerSpec,
    default_precision,
)
from pipelines.settings import TrainConfig  # noqa: E402

MODELS = ("lstm", "transformer")
DEFAULT_WINDOWS = {"cpu": 2048, "cuda": 49152}  # cuda: about 22 symbols x 9 years of sessions
log = logging.getLogger("bench")


# ------------------------------------------------------------------------------ measurement


class EpochTimer(Callback):
    """Wall time and samples of every training epoch, the device synchronised at its edges."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.samples: list[int] = []
        self._t0 = 0.0
        self._n = 0

    @staticmethod
    def _sync(module: L.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sync(pl_module)
        self._n = 0
        self._t0 = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:
        self._n += int(batch[0].shape[0])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sync(pl_module)
        self.seconds.append(time.perf_counter() - self._t0)
        self.samples.append(self._n)


def _rss_mib() -> float:
    """Current resident set size (Linux ``/proc``; NaN elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB else


def _build(model: str, n: int, seed: int, n_features: int | None) -> tuple[Any, Any, int]:
    """Lightning module, data module and parameter count of one network on synthetic windows."""
    rng = np.random.default_rng(seed)
    if model == "lstm":
        spec = LSTMSpec.from_train_config(TrainConfig(), horizon=5)
        X = rng.standard_normal((n, spec.lookback, spec.n_features)).astype(np.float32)
        X[:, :, 1:] = np.abs(X[:, :, 1:]) * 0.2 + 0.05  # vol-like columns are positive
        y = np.abs(rng.standard_normal(n)).astype(np.float32) * 0.2 + 0.05
        net: torch.nn.Module = GarchLSTMNet(spec, y_mean=0.2)
        module: L.LightningModule = GarchLSTMModule(spec, net)  # type: ignore[arg-type]
        data: L.LightningDataModule = WindowDataModule(
            {"train": (X, y)}, batch_size=spec.batch_size, seed=seed
        )
    elif model == "transformer":
        tspec = TransformerSpec()
        if n_features is not None:
            tspec = TransformerSpec(n_features=n_features)
        X = rng.standard_normal((n, tspec.lookback, tspec.n_features)).astype(np.float32)
        Y = (0.01 * rng.standard_normal((n, len(tspec.horizons)))).astype(np.float32)
        Y *= np.sqrt(np.asarray(tspec.horizons, dtype=np.float32))
        scale = torch.from_numpy(Y.std(axis=0))
        net = PatchTSTNet(tspec, y_scale=scale)
        module = TransformerModule(tspec, net)  # type: ignore[arg-type]
        data = TransformerDataModule({"train": (X, Y)}, batch_size=tspec.batch_size, seed=seed)
    else:
        raise ValueError(f"unknown model {model!r}; choose from {MODELS}")
    return module, data, sum(p.numel() for p in net.parameters())


def measure(config: dict[str, Any]) -> dict[str, Any]:
    """Train one network on one device for ``warmup + epochs`` epochs; return the figures."""
    model, device, precision = config["model"], config["device"], config["precision"]
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    L.seed_everything(config["seed"], workers=True, verbose=False)
    module, data, n_params = _build(model, config["windows"], config["seed"], config["features"])
    rss_before = _rss_mib()
    timer = EpochTimer()
    trainer = L.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        precision=precision,
        max_epochs=config["warmup"] + config["epochs"],
        limit_val_batches=0,
        num_sanity_val_steps=0,
        deterministic=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, datamodule=data)
    timed = slice(config["warmup"], None)
    seconds, samples = sum(timer.seconds[timed]), sum(timer.samples[timed])
    result = {
        **config,
        "parameters": n_params,
        "epoch_seconds": timer.seconds,
        "samples_per_s": samples / seconds if seconds > 0 else float("nan"),
        "torch_threads": torch.get_num_threads(),
        "rss_before_train_mib": rss_before,
        "peak_rss_mib": _peak_rss_mib(),
    }
    if device == "cuda":
        result["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["cuda_device"] = torch.cuda.get_device_name()
    return result


# ------------------------------------------------------------------------------ driver


def _configs(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.device == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        raise SystemExit("bench_training: --device cuda but torch.cuda.is_available() is False")
    out = []
    for device in devices:
        if device == "cuda":
            precisions = (
                ["32-true", default_precision("cuda")] if args.precision == "auto"
                else [args.precision]
            )
        else:
            precisions = ["32-true" if args.precision == "auto" else args.precision]
        for model in args.models:
            for precision in precisions:
                out.append(
                    {
                        "model": model,
                        "device": device,
                        "precision": precision,
                        "windows": args.windows or DEFAULT_WINDOWS[device],
                        "epochs": args.epochs,
                        "warmup": args.warmup,
                        "seed": args.seed,
                        "threads": args.threads,
                        "features": args.transformer_features,
                    }
                )
    return out


def _run(config: dict[str, Any], isolate: bool) -> dict[str, Any]:
    """One measurement; a failure (e.g. a precision the GPU lacks) is reported, not raised."""
    try:
        if not isolate:
            return measure(config)
        # A fresh process per measurement: its peak RSS and CUDA allocator are its own.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            return pool.submit(measure, config).result()
    except Exception as exc:  # keep measuring the others
        log.warning("%s on %s (%s) failed: %s", config["model"], config["device"],
                    config["precision"], exc)
        return {**config, "error": f"{type(exc).__name__}: {exc}"}


def _print_table(results: list[dict[str, Any]]) -> None:
    head = (
        f"{'model':<12}{'device':<7}{'precision':<12}{'windows':>8}{'params':>10}"
        f"{'samples/s':>12}{'epoch s':>9}{'RSS MiB':>9}{'peak RSS':>10}{'CUDA MiB':>10}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        if "error" in r:
            print(f"{r['model']:<12}{r['device']:<7}{r['precision']:<12}failed: {r['error']}")
            continue
        timed = r["epoch_seconds"][r["warmup"]:]
        epoch_s = sum(timed) / len(timed) if timed else float("nan")
        cuda = r.get("cuda_max_allocated_mib")
        print(
            f"{r['model']:<12}{r['device']:<7}{r['precision']:<12}{r['windows']:>8}"
            f"{r['parameters']:>10,}{r['samples_per_s']:>12,.0f}{epoch_s:>9.2f}"
            f"{r['rss_before_train_mib']:>9.0f}{r['peak_rss_mib']:>10.0f}"
            f"{'-' if cuda is None else f'{cuda:.0f}':>10}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--device", choices=("cpu", "cuda", "auto"), default="auto",
        help="auto: the CPU, and CUDA too when torch.cuda.is_available() (default)",
    )
    parser.add_argument(
        "--models", nargs="+", choices=MODELS, default=list(MODELS), help="networks to measure"
    )
    parser.add_argument(
        "--precision", default="auto",
        help="Trainer precision; auto: 32-true on the CPU, 32-true and mixed on CUDA",
    )
    parser.add_argument(
        "--windows", type=int, default=None,
        help=f"training windows per epoch (default {DEFAULT_WINDOWS})",
    )
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs first (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--transformer-features", type=int, default=None,
        help="Transformer input channels (default: TransformerSpec's)",
    )
    parser.add_argument("--no-isolate", action="store_true", help="measure in this process")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.warmup < 0:
        parser.error("need --epochs >= 1 and --warmup >= 0")

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    configs = _configs(args)
    results = []
    for config in configs:
        log.info(
            "measuring %s on %s (%s), %d windows, %d+%d epochs ...", config["model"],
            config["device"], config["precision"], config["windows"], config["warmup"],
            config["epochs"],
        )
        results.append(_run(config, isolate=not args.no_isolate))
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    print()
    print(f"torch {env['torch']}, lightning {env['lightning']}, {env['cpu_count']} CPUs"
          + (f", {env['cuda_device']}" if env["cuda_device"] else ""))
    _print_table(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": env, "results": results}, indent=2))
        print(f"\nwritten to {args.json}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
