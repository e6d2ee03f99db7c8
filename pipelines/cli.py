"""``afterbell``: the command line of the nightly cycle.

Errors print as one line (``afterbell: error: ...``) and exit 1; ``--verbose`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.lake_sync import synced
from pipelines.options_cli import add_options_parser, cmd_options
from pipelines.settings import ALIAS_CHALLENGER, ALIAS_CHAMPION, Settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="afterbell", description=__doc__.splitlines()[0])
    p.add_argument("--verbose", "-v", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the nightly cycle for one session through Airflow")
    run.add_argument("--session", help="NYSE session YYYY-MM-DD (default: AFTERBELL_SESSION)")
    run.add_argument("--no-summary", action="store_true", help="skip the closing summary")

    st = sub.add_parser("stage", help="run one stage outside Airflow (same code as the task)")
    st.add_argument("name", help="close_analysis, light_training, data_processing, "
                    "heavy_training, validation or pre_market")
    st.add_argument("--session", required=True)

    ing = sub.add_parser("ingest", help="ingest and validate one session's bars")
    ing.add_argument("--session", required=True)
    ing.add_argument(
        "--source",
        help="bars to ingest: a CSV/Parquet file, a drop folder, or an s3://bucket/key (or prefix/)"
        " URI (endpoint from AFTERBELL_S3_ENDPOINT_URL); default: the replay source",
    )

    srv = sub.add_parser("serve", help="serve the champion over HTTP")
    srv.add_argument("--host", default=None)
    srv.add_argument("--port", type=int, default=None)

    sm = sub.add_parser("summary", help="print the summary of a session's cycle")
    sm.add_argument("--session", help="NYSE session YYYY-MM-DD (default: AFTERBELL_SESSION)")
    sm.add_argument("--no-serve", action="store_true", help="do not start the app to query it")

    ev = sub.add_parser("evaluate", help="walk-forward evaluation of the GARCH-LSTM against "
                        "baselines on the replay data; writes a markdown report")
    ev.add_argument("--symbols", nargs="+", metavar="SYMBOL",
                    help="replay symbols, space- or comma-separated (default: all 22; --quick: "
                    "SPX AAPL)")
    ev.add_argument("--start-oos", default="2010-01-04", help="first out-of-sample session")
    ev.add_argument("--horizon", type=int, default=22, help="sessions of the realised-vol target")
    ev.add_argument("--refit-every", type=int, default=None,
                    help="test sessions per fold (default 252; --quick: 126)")
    ev.add_argument("--epochs", type=int, default=None,
                    help="GARCH-LSTM epoch budget per fold (default 10; --quick: 2)")
    ev.add_argument("--quick", action="store_true",
                    help="a small run: 2 symbols, 2 folds, tiny network (for tests)")
    ev.add_argument("--out", default="docs/evaluation.md", help="markdown report to write")
    ev.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")

    rb = sub.add_parser("rollback", help="move the champion alias back to previous")
    rb.add_argument("--reason", default="", help="why (tagged on the rolled-back version)")

    rk = sub.add_parser("risk", help="risk reports")
    rk_sub = rk.add_subparsers(dest="risk_command", required=True, metavar="REPORT")
    vb = rk_sub.add_parser("var-backtest", help="GARCH-t 99%% VaR backtest of the S&P 500 "
                           "(1999-2018) per 250-session window with its Basel zone")
    vb.add_argument("--out", default="docs/var_backtest.md", help="markdown report to write")
    vb.add_argument("--refit-every", type=int, default=21,
                    help="sessions between GARCH re-estimations")

    ks = sub.add_parser("kill-switch", help="halt (on) or resume (off) the pre-market orders")
    ks.add_argument("state", choices=("on", "off", "status"))
    ks.add_argument("--reason", default="", help="why (required to turn it on or off)")

    add_options_parser(sub)

    rt = sub.add_parser("rates", help="risk-free rates for option pricing (ingested Treasury "
                        "curves, packaged Fama-French fallback)")
    rt_sub = rt.add_subparsers(dest="rates_command", required=True, metavar="ACTION")
    rti = rt_sub.add_parser("ingest", help="store a Treasury 'Daily Treasury Par Yield Curve "
                            "Rates' CSV in the lake (replaces the dates it holds)")
    rti.add_argument("--source", required=True, type=Path, metavar="FILE",
                     help="CSV with a Date column and tenor columns (1 Mo, 3 Mo, 1 Yr, ...)")
    rts = rt_sub.add_parser("show", help="the continuously compounded rate a session uses "
                            "(newest curve strictly before it)")
    rts.add_argument("--session", required=True, help="YYYY-MM-DD")
    rts.add_argument("--days", type=int, default=30, help="horizon in calendar days")
    rts.add_argument("--max-age-days", type=int, default=62,
                     help="oldest curve accepted, in calendar days before the session")
    rts.add_argument("--json", action="store_true", help="print one JSON object")

    sub.add_parser("env", help="write $AFTERBELL_HOME/env.sh and print the environment")
    sub.add_parser("init", help="prepare the state directory (Airflow DB, env.sh, Feast)")
    return p


def _init(settings: Settings) -> Path:
    from pipelines.airflow_env import ensure_airflow_db, write_env_sh

    settings.home.mkdir(parents=True, exist_ok=True)
    env_sh = write_env_sh(settings)
    _say(f"state in {settings.home}; preparing the Airflow database")
    ensure_airflow_db(settings)
    return env_sh


def _say(msg: str) -> None:
    print(f"[afterbell] {msg}", flush=True)


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from pipelines import calendar
    from pipelines.airflow_env import dags_test

    session = calendar.require_session(args.session or settings.default_session).isoformat()
    _init(settings)
    _say(f"running nightly_cycle for session {session} (airflow dags test)")
    t0 = time.perf_counter()
    rc = dags_test(settings, "nightly_cycle", session, verbose=args.verbose)
    rc = rc if isinstance(rc, int) else rc.returncode
    if rc != 0:
        raise RuntimeError(f"nightly_cycle for {session} failed (exit {rc}); see the task log "
                           "above")
    _say(f"nightly_cycle {session} finished in {time.perf_counter() - t0:.0f}s")
    if not args.no_summary:
        print(summary_text(settings, session, serve=True))
    return 0


def cmd_stage(settings: Settings, args: argparse.Namespace) -> int:
    from pipelines.stages import STAGES

    if args.name not in STAGES:
        raise ValueError(f"unknown stage {args.name!r}; stages: {', '.join(STAGES)}")
    with synced(settings):  # the lake store (production): pull, run, push
        for fn in STAGES[args.name]:
            _say(f"{args.name}.{fn.__name__} {args.session}")
            result = fn(args.session, settings=settings)
            print(json.dumps(result, indent=2, default=str))
            if result.get("run") is False:
                _say(f"{args.name} skipped: {result.get('reason', '')}")
                break
    return 0


def cmd_ingest(settings: Settings, args: argparse.Namespace) -> int:
    from pipelines.stages import ingest

    with synced(settings):
        summary = ingest(args.session, source=args.source, settings=settings)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from pipelines.serving import serve

    host = args.host or settings.serve_host
    port = args.port or settings.serve_port
    _say(f"serving {settings.model_name}@{ALIAS_CHAMPION} on http://{host}:{port}")
    serve(settings, host, port)
    return 0


def cmd_evaluate(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import date

    from pipelines.evaluation_run import EvaluationConfig, evaluate

    changes: dict[str, Any] = {"start_oos": date.fromisoformat(args.start_oos),
                               "horizon": args.horizon}
    if args.symbols:
        changes["symbols"] = tuple(s for item in args.symbols for s in item.split(",") if s)
    if args.refit_every is not None:
        changes["refit_every"] = args.refit_every
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    cfg = EvaluationConfig.quick(**changes) if args.quick else EvaluationConfig(**changes)
    words = ["afterbell", "evaluate"]
    if args.symbols:
        words += ["--symbols", *cfg.symbols]
    if args.start_oos != "2010-01-04":
        words += ["--start-oos", args.start_oos]
    if args.horizon != 22:
        words += ["--horizon", str(args.horizon)]
    if args.refit_every is not None:
        words += ["--refit-every", str(args.refit_every)]
    if args.epochs is not None:
        words += ["--epochs", str(args.epochs)]
    if args.quick:
        words.append("--quick")
    if args.out != "docs/evaluation.md":
        words += ["--out", args.out]
    if args.no_mlflow:
        words.append("--no-mlflow")
    out = Path(args.out)
    _say(f"evaluating {len(cfg.symbols)} symbols, horizon {cfg.horizon}, out of sample from "
         f"{cfg.start_oos}, folds of {cfg.refit_every} sessions, {cfg.epochs} epochs")
    result = evaluate(cfg, out, command=" ".join(words),
                      settings=None if args.no_mlflow else settings)
    print(result.summary.to_string(index=False))
    _say(f"report written to {out} in {result.timings.get('total_seconds', 0):.0f}s"
         + ("" if args.no_mlflow else "; logged to MLflow experiment 'evaluation'"))
    return 0


def cmd_env(settings: Settings, args: argparse.Namespace) -> int:
    from pipelines.airflow_env import write_env_sh

    path = write_env_sh(settings)
    print(path.read_text(), end="")
    print(f"# written to {path}; load it with: . {path}")
    return 0


def cmd_init(settings: Settings, args: argparse.Namespace) -> int:
    env_sh = _init(settings)
    _say(f"ready; load the environment with: . {env_sh}")
    return 0


def cmd_summary(settings: Settings, args: argparse.Namespace) -> int:
    from pipelines import calendar

    session = calendar.require_session(args.session or settings.default_session).isoformat()
    print(summary_text(settings, session, serve=not args.no_serve))
    return 0


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def summary_text(settings: Settings, session: str, *, serve: bool) -> str:
    """The closing summary of ``make run``: what ran, what was decided, what is served."""
    from pipelines import registry

    runs = settings.runs_dir / f"session={session}"
    ing, val = _read(runs / "ingest.json"), _read(runs / "validation.json")
    heavy, pre = _read(runs / "heavy_training.json"), _read(runs / "pre_market.json")
    plan, feats = _read(runs / "plan_training.json"), _read(runs / "features.json")
    trf = _read(runs / "transformer.json")
    risk, sized = _read(runs / "risk.json"), _read(runs / "size_positions.json")
    opts = _read(runs / "options.json")
    champion = registry.alias_version(settings, ALIAS_CHAMPION)
    lines = [
        "",
        "=" * 72,
        f"afterbell nightly cycle - session {session}",
        "=" * 72,
        f"symbols          {ing.get('symbols', '?')} ingested ({len(settings.universe)} in the "
        f"universe); lake history from {ing.get('history_start', '?')}",
        f"data quality     bars {ing.get('data_quality', 'unknown')} "
        f"({ing.get('expectations', '?')} expectations, {ing.get('n_warnings', 0)} warnings); "
        f"features {feats.get('data_quality', 'unknown')} "
        f"({feats.get('expectations', '?')} expectations, {feats.get('n_warnings', 0)} warnings)",
    ]
    if plan and not plan.get("run", True):
        lines.append(f"heavy training   skipped: {plan['reason']}")
    else:
        lines.append(f"challenger       {settings.model_name} v{heavy.get('version', '?')}"

                     f"{' - ' + plan['reason'] if plan else ''}")
    if trf.get("trained"):
        hold = trf.get("holdout", {})
        lines.append(
            f"transformer      {trf['model']} v{trf['version']} (alias {ALIAS_CHALLENGER}); "
            f"holdout daily direction {hold.get('direction_accuracy_1', float('nan')):.3f} "
            f"(p {hold.get('direction_pvalue_1', float('nan')):.2g}), 1-session return MAE "
            f"{hold.get('ret_mae_1', float('nan')):.5f} vs zero forecast "
            f"{hold.get('zero_ret_mae_1', float('nan')):.5f}")
    if val:
        lines.append(f"validation       {val['decision']}: " + "; ".join(val["reasons"]))
    if val.get("holdout"):
        h = val["holdout"]
        lines.append(f"holdout          {h['start']}..{h['end']}, {h['rows']} forecasts of "
                     f"{h['horizon']}-session realised vol")
        lines.append(f"  {'model':<12}{'MAE':>10}{'RMSE':>10}{'QLIKE':>10}")
        for name, m in val["metrics"].items():
            lines.append(f"  {name:<12}{m['mae']:>10.4f}{m['rmse']:>10.4f}{m['qlike']:>10.4f}")
    lines.append(
        f"champion         {settings.model_name} v{champion.version} (alias {ALIAS_CHAMPION})"
        if champion else "champion         none yet (the challenger did not pass the gate)"
    )
    if risk.get("book_var"):
        g = risk["book_var"]["garch_t_99"]
        worst = min(risk["stress"].items(), key=lambda kv: kv[1]["pnl"])
        lines.append(f"risk             {risk['book']}: GARCH-t 99% VaR {g['var']:.2%}, ES "
                     f"{g['cvar']:.2%}; worst stress {worst[0]} {worst[1]['pnl']:.1%}")
    if opts.get("straddles"):
        straddles = opts["straddles"]
        shown = "SPX" if "SPX" in straddles else sorted(straddles)[0]
        rate = opts["rate"]
        chains = opts.get("chains", {})
        lines.append(
            f"options          {len(straddles)} 30-day ATM straddles from the GARCH forecast at "
            f"{rate['rate']:.2%} ({rate['source']} curve of {rate['curve_date']}), e.g. {shown} "
            f"GARCH-implied vol {straddles[shown]['garch_iv_30d']:.1%}, straddle "
            f"{straddles[shown]['straddle_30d']:.2%} of spot; {chains.get('chains', 0)} option "
            "chain(s) calibrated")
    if pre.get("forecasts"):
        lines.append(f"pre-market       {pre['forecasts']} forecasts for "
                     f"{pre.get('for_session', '?')}")
    elif pre:
        lines.append(f"pre-market       no forecasts: {pre.get('reason', 'none')}")
    if sized:
        halted = " HALTED: " + "; ".join(sized["halt_reasons"]) if sized.get("halted") else ""
        lines.append(f"paper orders     {sized.get('orders', 0)} orders, gross "
                     f"{sized.get('gross', 0.0):.2f} of equity "
                     f"{sized.get('equity', 0.0):,.0f}{halted}"
                     if "gross" in sized else f"paper orders     {sized.get('reason', 'none')}")
    if serve and champion is not None:
        from pipelines.live import free_port, query_all, running_server

        with running_server(settings, "127.0.0.1", free_port()) as base:
            answers = query_all(base, list(settings.universe), settings.serve_token)
        served = {k: v for k, v in answers["predictions"].items() if "forecast" in v}
        lines.append(f"served           {len(served)}/{len(settings.universe)} symbols answered "
                     "GET /predict/{symbol}, e.g.:")
        for sym in list(served)[:3]:
            v = served[sym]
            lines.append(f"  {sym:<6} vol over next {v['horizon']} sessions {v['forecast']:.3f} "
                         f"(v{v['model']['version']}, features as of {v['feature_timestamp']})")
    docs = ing.get("data_docs")
    lines += [
        "",
        "next steps",
        "  . .afterbell/env.sh            plain airflow / mlflow / feast talk to this stack",
        "  make airflow-ui                Airflow UI on http://127.0.0.1:8080",
        "  make mlflow-ui                 MLflow UI on http://127.0.0.1:5000",
        "  .venv/bin/afterbell serve      GET http://127.0.0.1:8000/predict/AAPL",
        f"  data docs                      {docs or settings.reports_dir}",
        "=" * 72,
    ]
    return "\n".join(lines)


def cmd_rollback(settings: Settings, args: argparse.Namespace) -> int:
    from pipelines import registry

    restored, removed = registry.rollback(settings, reason=args.reason)
    _say(f"{settings.model_name}: champion v{removed.version} -> v{restored.version} "
         f"(v{removed.version} tagged rolled_back; '{registry.ALIAS_PREVIOUS}' removed)")
    return 0


def cmd_risk(settings: Settings, args: argparse.Namespace) -> int:
    from pipelines.var_backtest import run_var_backtest

    out = Path(args.out)
    table = run_var_backtest(out, refit_every=args.refit_every)
    _say(f"{len(table)} rows written to {out}")
    return 0


def cmd_kill_switch(settings: Settings, args: argparse.Namespace) -> int:
    from pipelines.orders import kill_switch_path, kill_switch_reason, set_kill_switch

    if args.state != "status":
        if not args.reason.strip():
            raise ValueError("afterbell kill-switch on|off needs --reason")
        set_kill_switch(settings.home, args.state == "on", args.reason)
    reason = kill_switch_reason(settings.home)
    state = f"ON ({reason})" if reason is not None else "off"
    _say(f"kill switch {state}: {kill_switch_path(settings.home)}")
    return 0


def cmd_options_command(settings: Settings, args: argparse.Namespace) -> int:
    if args.options_command == "ingest-chain":  # writes the lake
        with synced(settings):
            return cmd_options(args)
    return cmd_options(args)


def cmd_rates(settings: Settings, args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from pipelines import rates
    from pipelines.calendar import to_date

    if args.rates_command == "ingest":
        with synced(settings):
            done = rates.ingest_rates(settings.lake_dir, args.source)
        _say(f"rates: {done.rows} curve dates {done.first}..{done.last} from {args.source} "
             f"stored in {done.path} ({done.replaced} replaced, {done.stored} in all)")
        return 0
    session = to_date(args.session)
    quote = rates.rate_at(settings.lake_dir, session, args.days, max_age_days=args.max_age_days)
    if args.json:
        print(json.dumps({"session": session.isoformat(), **asdict(quote)}, default=str))
    else:
        print(f"{session}: {quote.days}-day rate {quote.rate:.6f} ({quote.rate:.4%} continuously "
              f"compounded) from the {quote.source} curve of {quote.curve_date} "
              f"({quote.age_days} days old)")
    return 0


COMMANDS = {
    "run": cmd_run,
    "stage": cmd_stage,
    "ingest": cmd_ingest,
    "serve": cmd_serve,
    "evaluate": cmd_evaluate,
    "env": cmd_env,
    "init": cmd_init,
    "summary": cmd_summary,
    "rollback": cmd_rollback,
    "kill-switch": cmd_kill_switch,
    "risk": cmd_risk,
    "options": cmd_options_command,
    "rates": cmd_rates,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("great_expectations", "feast", "mlflow", "alembic", "lightning",
                  "lightning.pytorch", "httpx", "urllib3", "numexpr"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        settings = Settings.from_env()
        return COMMANDS[args.command](settings, args)
    except KeyboardInterrupt:
        print("afterbell: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.verbose:
            raise
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"afterbell: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
