"""Scale benchmark (issue 8): the nightly cycle on synthetic universes of growing size.

For each size (default 50, 200 and 500 symbols, plus the synthetic S&P 500 index) a fresh
``AFTERBELL_HOME`` gets a synthetic universe (``AFTERBELL_SYNTHETIC``, :mod:`pipelines.synthetic`:
GARCH-t returns with a market factor, OHLCV on the tick, IPOs and delistings) over ``--years``
years, and the six stages run one after the other as ``afterbell stage NAME --session D``, each in
its own process, as an Airflow task would:

1. the **first night** (``--first``, default 2018-12-28): it backfills the whole history (ingest,
   validation, features, the expanding-window GARCH refits, option features, the offline tables
   and the Feast materialisation) and bootstraps the models;
2. the **next night** (``--nightly``, default 2018-12-31): the steady state, one session more.

Heavy training runs at a fixed small budget (``--epochs``, 2 Optuna trials of 1 epoch, capped
training rows), so that its cost reflects the data handling, not the search. Per stage the wall
time (process start included: imports are part of every task) and the peak resident memory of the
stage's process are printed, then the totals and the growth with the number of symbols (the
exponent of a power-law fit of time against symbols: 1 is linear).

Usage::

    .venv/bin/python bench/bench_scale.py --symbols 50              # about 10 minutes on 2 cores
    .venv/bin/python bench/bench_scale.py                           # 50, 200 and 500: hours
    .venv/bin/python bench/bench_scale.py --symbols 50 200 --json scale.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGES = ("close_analysis", "light_training", "data_processing", "heavy_training", "validation",
          "pre_market")
#: The stages of the issue's 20-minute target (heavy training is at a fixed small budget apart).
TARGET_STAGES = ("close_analysis", "light_training", "data_processing", "validation",
                 "pre_market")
TARGET_SECONDS = 20 * 60
TARGET_MEMORY_MIB = 8 * 1024


@dataclass
class StageRun:
    """One stage of one night: wall seconds, peak RSS of its process (MiB), exit status."""

    stage: str
    session: str
    seconds: float
    peak_mib: float
    rc: int


@dataclass
class SizeRun:
    """Every stage of both nights for one universe size."""

    symbols: int
    rows: int = 0
    first: list[StageRun] = field(default_factory=list)
    nightly: list[StageRun] = field(default_factory=list)

    def total(self, night: str, stages: tuple[str, ...] = TARGET_STAGES) -> float:
        return sum(r.seconds for r in getattr(self, night) if r.stage in stages)

    def peak(self, night: str, stages: tuple[str, ...] = TARGET_STAGES) -> float:
        runs = [r for r in getattr(self, night) if r.stage in stages]
        return max((r.peak_mib for r in runs), default=math.nan)


def bench_config(folder: Path, trials: int, trial_epochs: int) -> Path:
    """A copy of ``afterbell.toml`` with the Optuna budget cut to ``trials`` x ``trial_epochs``."""
    text = (REPO / "afterbell.toml").read_text()
    text = re.sub(r"(?m)^n_trials = \d+", f"n_trials = {trials}", text)
    text = re.sub(r"(?m)^trial_max_epochs = \d+", f"trial_max_epochs = {trial_epochs}", text)
    path = folder / "afterbell.toml"
    path.write_text(text)
    return path


def run_stage(stage: str, session: str, env: dict[str, str], log: Path) -> StageRun:
    """``afterbell stage STAGE --session SESSION`` in its own process; its wall time and peak
    RSS (``wait4``'s ``ru_maxrss``, KiB on Linux)."""
    cmd = [str(Path(sys.executable).with_name("afterbell")), "stage", stage, "--session", session]
    t0 = time.perf_counter()
    with log.open("ab") as out:
        out.write(f"\n===== {stage} {session}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return StageRun(stage, session, time.perf_counter() - t0, usage.ru_maxrss / 1024,
                    proc.returncode)


def run_size(n: int, args: argparse.Namespace, root: Path) -> SizeRun:
    """Both nights of one universe size in a fresh home under ``root``."""
    home = root / f"home-{n}"
    log = root / f"stages-{n}.log"
    env = {
        **os.environ,
        "AFTERBELL_HOME": str(home),
        "AFTERBELL_SYNTHETIC": f"symbols={n},seed={args.seed}",
        "AFTERBELL_HISTORY_YEARS": str(args.years),
        "AFTERBELL_SESSION": args.nightly,
        "AFTERBELL_MAX_EPOCHS": str(args.epochs),
        "AFTERBELL_MAX_TRAIN_ROWS": str(args.train_rows),
        "AFTERBELL_TRANSFORMER_EPOCHS": "1",
        "AFTERBELL_TRANSFORMER_ROWS": str(min(args.train_rows, 5000)),
        "AFTERBELL_CONFIG": str(bench_config(root, trials=2, trial_epochs=1)),
        "PYTHONUNBUFFERED": "1",
    }
    result = SizeRun(symbols=n)
    for night, session in (("first", args.first), ("nightly", args.nightly)):
        for stage in args.stages:
            run = run_stage(stage, session, env, log)
            getattr(result, night).append(run)
            print(f"[bench] {n:4d} symbols  {night:<7} {stage:<16} {run.seconds:7.1f} s "
                  f"{run.peak_mib:7.0f} MiB  rc {run.rc}", flush=True)
            if run.rc != 0:
                tail = log.read_text()[-3000:]
                raise RuntimeError(f"{stage} {session} failed for {n} symbols; log {log}:\n"
                                   f"{tail}")
    bars = home / "lake" / "bars"
    result.rows = sum(1 for _ in bars.glob("session=*")) if bars.exists() else 0
    if not args.keep:
        shutil.rmtree(home, ignore_errors=True)
    return result


def growth(sizes: list[SizeRun], night: str) -> float | None:
    """Exponent ``b`` of ``seconds ~ symbols**b`` (least squares in logs; None with < 2 sizes)."""
    pts = [(math.log(r.symbols), math.log(r.total(night))) for r in sizes if r.total(night) > 0]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else None


def render(sizes: list[SizeRun], args: argparse.Namespace) -> str:
    lines = [
        f"afterbell scale benchmark: synthetic universes over {args.years} years, first night "
        f"{args.first} (history backfill), next night {args.nightly}; {os.cpu_count()} CPUs",
        "seconds (process start included) / peak resident MiB of each stage's process",
        "",
    ]
    head = f"{'stage':<16}" + "".join(f"{f'{r.symbols} symbols':>24}" for r in sizes)
    for night, title in (("first", "first night (backfill)"), ("nightly", "next night")):
        lines += [title, head]
        for stage in args.stages:
            cells = ""
            for r in sizes:
                run = next(x for x in getattr(r, night) if x.stage == stage)
                cells += f"{run.seconds:>14.1f} s {run.peak_mib:>6.0f} M"
            lines.append(f"{stage:<16}{cells}")
        five = "".join(f"{r.total(night):>14.1f} s {r.peak(night):>6.0f} M" for r in sizes)
        lines.append(f"{'5 stages*':<16}{five}")
        every = "".join(f"{r.total(night, tuple(args.stages)):>14.1f} s {'':>8}" for r in sizes)
        lines.append(f"{'all stages':<16}{every}")
        per = "".join(f"{r.total(night) / r.symbols:>14.2f} s {'':>8}" for r in sizes)
        lines.append(f"{'5 stages/symbol':<16}{per}")
        b = growth(sizes, night)
        lines.append(f"growth exponent of the 5 stages: {'n/a' if b is None else f'{b:.2f}'} "
                     "(1 = linear)")
        lines.append("")
    lines.append("* close_analysis, light_training, data_processing, validation, pre_market "
                 "(heavy_training at a fixed small budget apart); M = the largest peak MiB of "
                 "those five (heavy_training's own is in its row)")
    biggest = max(sizes, key=lambda r: r.symbols)
    for night in ("first", "nightly"):
        t, m = biggest.total(night), max(biggest.peak(night), 0.0)
        lines.append(
            f"target, {biggest.symbols} symbols, {night}: 5 stages {t / 60:.1f} min "
            f"({'met' if t < TARGET_SECONDS else 'NOT MET'} < 20 min), peak {m:.0f} MiB "
            f"({'met' if m < TARGET_MEMORY_MIB else 'NOT MET'} < 8 GiB)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, nargs="+", default=[50, 200, 500])
    parser.add_argument("--years", type=int, default=10)
    parser.add_argument("--first", default="2018-12-28", help="first night (backfill)")
    parser.add_argument("--nightly", default="2018-12-31", help="the next night")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--epochs", type=int, default=2, help="GARCH-LSTM epochs (fixed budget)")
    parser.add_argument("--train-rows", type=int, default=20000,
                        help="most recent training windows kept (fixed budget)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the homes and logs")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="afterbell_bench_scale_"))
    print(f"[bench] working in {root}", flush=True)
    sizes = []
    try:
        for n in sorted(args.symbols):
            sizes.append(run_size(n, args, root))
    finally:
        if sizes:
            print()
            print(render(sizes, args))
            if args.json:
                args.json.write_text(json.dumps([asdict(s) for s in sizes], indent=2))
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
