"""Position limits, circuit breakers, orders and the paper broker's audit log."""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.orders import (
    BreakerState,
    Limits,
    PaperBroker,
    apply_limits,
    audit_records,
    check_breakers,
    decide_targets,
    decision_record,
    kill_switch_on,
    kill_switch_path,
    kill_switch_reason,
    orders_to_reach,
    positions,
    set_kill_switch,
    weights_after,
)

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-9  # float rounding only


# --------------------------------------------------------------------------------- helpers
def measures(w: pd.Series, sectors: dict[str, str]) -> dict[str, Any]:
    sector_gross: dict[str, float] = {}
    for sym, x in w.items():
        if x != 0.0:
            key = sectors[str(sym)]
            sector_gross[key] = sector_gross.get(key, 0.0) + abs(x)
    return {
        "position": w.abs(),
        "sector": sector_gross,
        "gross": float(w.abs().sum()),
        "net": abs(float(w.sum())),
    }


def assert_within(
    w: pd.Series,
    current: pd.Series,
    sectors: dict[str, str],
    daily_vol: pd.Series,
    limits: Limits,
    *,
    relative_to_current: bool = False,
) -> None:
    """Every limit holds for ``w``; with ``relative_to_current`` the static bounds are
    ``max(limit, value at current)`` (a breach of current may not grow)."""
    index = w.index.union(current.index)
    w = w.reindex(index, fill_value=0.0)
    c = current.reindex(index, fill_value=0.0)
    mw, mc = measures(w, sectors), measures(c, sectors)
    pos = limits.max_position
    pos_bound = np.maximum(pos, mc["position"]) if relative_to_current else pos
    assert (mw["position"] <= pos_bound + TOL).all(), "max_position"
    for key, gross in mw["sector"].items():
        bound = limits.max_sector
        if relative_to_current:
            bound = max(bound, mc["sector"].get(key, 0.0))
        assert gross <= bound + TOL, f"max_sector {key}"
    gross_bound = max(limits.max_gross, mc["gross"]) if relative_to_current else limits.max_gross
    net_bound = max(limits.max_net, mc["net"]) if relative_to_current else limits.max_net
    assert mw["gross"] <= gross_bound + TOL, "max_gross"
    assert mw["net"] <= net_bound + TOL, "max_net"
    trade = (w - c).abs()
    vol = daily_vol.reindex(index).fillna(0.0)
    risk = trade * vol * limits.trade_risk_z
    assert (risk[trade > 0] <= limits.max_trade_risk + TOL).all(), "max_trade_risk"


def executed(current: pd.Series, orders: pd.DataFrame, prices: pd.Series,
             equity: float) -> pd.Series:
    """The book after the orders fill: current + signed quantity * price / equity."""
    w = current.copy()
    for sym, side, qty in zip(orders["symbol"], orders["side"], orders["quantity"], strict=True):
        sign = 1.0 if side == "buy" else -1.0
        trade = sign * float(qty) * float(prices[sym]) / equity
        w.loc[str(sym)] = float(w.get(sym, 0.0)) + trade
    return w


def make_feasible(raw: pd.Series, sectors: dict[str, str], limits: Limits) -> pd.Series:
    """An independent construction of weights within the static limits."""
    w = raw.clip(-limits.max_position, limits.max_position)
    sec = pd.Series(sectors).reindex(w.index)
    for _, members in w.groupby(sec):
        g = members.abs().sum()
        if g > limits.max_sector:
            w[members.index] *= limits.max_sector / g
    g = w.abs().sum()
    if g > limits.max_gross:
        w *= limits.max_gross / g
    net = w.sum()
    if abs(net) > limits.max_net:
        w *= limits.max_net / abs(net)
    return w * (1.0 - 1e-12)


@dataclass(frozen=True)
class Case:
    sectors: dict[str, str]
    current: pd.Series
    targets: pd.Series
    daily_vol: pd.Series
    prices: pd.Series
    equity: float
    limits: Limits


@st.composite
def cases(draw: st.DrawFn, feasible_current: bool = True) -> Case:
    n = draw(st.integers(2, 30))
    symbols = [f"S{i:02d}" for i in range(n)]
    n_sectors = draw(st.integers(1, 6))
    sector_of = draw(st.lists(st.integers(0, n_sectors - 1), min_size=n, max_size=n))
    sectors = {s: f"X{k}" for s, k in zip(symbols, sector_of, strict=True)}
    limits = Limits(
        max_position=draw(st.floats(0.01, 0.5)),
        max_sector=draw(st.floats(0.02, 1.0)),
        max_gross=draw(st.floats(0.1, 3.0)),
        max_net=draw(st.one_of(st.just(0.0), st.floats(0.0, 1.5))),
        max_trade_risk=draw(st.floats(0.001, 0.05)),
    )

    def weights(bound: float) -> list[float]:
        value = st.one_of(st.just(0.0), st.floats(-bound, bound))
        return draw(st.lists(value, min_size=n, max_size=n))

    held = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    held = held if held.any() else ~held  # some symbols held, some not
    current = pd.Series(weights(1.0), index=symbols)[held]
    if feasible_current:
        current = make_feasible(current, sectors, limits) * draw(st.floats(0.0, 1.0))
    wanted = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    targets = pd.Series(weights(5.0), index=symbols)[wanted]
    daily_vol = pd.Series(draw(st.lists(st.floats(0.0, 0.2), min_size=n, max_size=n)),
                          index=symbols)
    prices = pd.Series(draw(st.lists(st.floats(0.5, 2e5), min_size=n, max_size=n)),
                       index=symbols)
    equity = draw(st.floats(1e3, 1e8))  # one share may exceed a limit
    return Case(sectors, current, targets, daily_vol, prices, equity, limits)


# --------------------------------------------------------------------------------- property
@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(case=cases())
def test_limits_hold_for_targets_and_executed_orders(case: Case) -> None:
    result = apply_limits(case.targets, case.current, case.sectors, case.daily_vol, case.limits)
    assert_within(result.weights, case.current, case.sectors, case.daily_vol, case.limits)
    orders = orders_to_reach(case.current, result.weights, case.prices, case.equity,
                             sectors=case.sectors, limits=case.limits)
    after = executed(case.current, orders, case.prices, case.equity)
    assert_within(after, case.current, case.sectors, case.daily_vol, case.limits)
    assert (orders["quantity"] > 0).all()
    pd.testing.assert_series_equal(
        weights_after(case.current, orders), after.sort_index().rename("weight"),
        check_exact=False, rtol=0, atol=1e-12,
    )


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(case=cases(feasible_current=False))
def test_a_current_book_beyond_the_limits_gets_no_worse(case: Case) -> None:
    result = apply_limits(case.targets, case.current, case.sectors, case.daily_vol, case.limits)
    assert_within(result.weights, case.current, case.sectors, case.daily_vol, case.limits,
                  relative_to_current=True)
    orders = orders_to_reach(case.current, result.weights, case.prices, case.equity,
                             sectors=case.sectors, limits=case.limits)
    after = executed(case.current, orders, case.prices, case.equity)
    assert_within(after, case.current, case.sectors, case.daily_vol, case.limits,
                  relative_to_current=True)


# --------------------------------------------------------------------------------- limits
SECTORS = {"AAPL": "Tech", "MSFT": "Tech", "NVDA": "Tech", "XOM": "Energy", "JPM": "Fin"}
VOL = pd.Series({"AAPL": 0.01, "MSFT": 0.01, "NVDA": 0.01, "XOM": 0.01, "JPM": 0.01})


def test_each_adjustment_is_reported() -> None:
    targets = pd.Series({"AAPL": 0.22, "MSFT": 0.15, "NVDA": 0.10, "XOM": -0.05})
    result = apply_limits(targets, pd.Series(dtype=float), SECTORS, VOL, Limits())
    w = result.weights
    assert "AAPL target 0.2200 clipped to 0.1500 (max_position 0.15)" in result.breaches
    assert any(line.startswith("sector Tech gross 0.4000 scaled to 0.3000 (max_sector)")
               for line in result.breaches)
    assert w[["AAPL", "MSFT", "NVDA"]].abs().sum() == pytest.approx(0.30)
    assert w["XOM"] == pytest.approx(-0.05)
    assert list(w.index) == ["AAPL", "MSFT", "NVDA", "XOM"]


def test_trade_risk_shrinks_towards_current() -> None:
    vol = VOL.copy()
    vol["XOM"] = 0.10  # 99% loss of a 0.15 trade: 0.15 * 0.10 * 2.33 = 3.5% > 2%
    result = apply_limits(pd.Series({"XOM": -0.15}), pd.Series({"XOM": 0.0}), SECTORS, vol,
                          Limits())
    assert result.weights["XOM"] == pytest.approx(-0.02 / 2.33 / 0.10)
    assert any("XOM trade -0.1500 shrunk to -0.0858" in line for line in result.breaches)


def test_partial_switch_inside_a_sector_is_backed_off() -> None:
    # switch AAPL (slow: high vol) for NVDA (fast) inside a full Tech sector: the trade-risk
    # shrink alone would leave Tech at 0.364 > 0.30, so every trade is scaled back
    current = pd.Series({"AAPL": 0.15, "MSFT": 0.15})
    targets = pd.Series({"AAPL": 0.0, "MSFT": 0.15, "NVDA": 0.15})
    vol = VOL.copy()
    vol["AAPL"] = 0.10
    result = apply_limits(targets, current, SECTORS, vol, Limits())
    w = result.weights
    assert w[["AAPL", "MSFT", "NVDA"]].abs().sum() <= 0.30 + 1e-12
    assert 0.0 < w["NVDA"] < 0.15 and 0.15 - 0.0858 < w["AAPL"] < 0.15
    assert any("all trades scaled by" in line and "max_sector" in line
               for line in result.breaches)
    assert_within(w, current, SECTORS, vol, Limits())


def test_current_beyond_a_limit_is_reported_and_reduced() -> None:
    vol = VOL.copy()
    vol["AAPL"] = 0.10
    result = apply_limits(pd.Series({"AAPL": 0.5}), pd.Series({"AAPL": 0.3}), SECTORS, vol,
                          Limits())
    assert result.weights["AAPL"] == pytest.approx(0.3 - 0.02 / 2.33 / 0.10)
    assert any("current AAPL weight 0.3000 already breaks max_position" in line
               for line in result.breaches)


def test_net_is_trimmed_on_the_long_side() -> None:
    limits = Limits(max_position=1.0, max_sector=2.0, max_gross=2.0, max_net=0.2)
    targets = pd.Series({"AAPL": 0.6, "XOM": -0.2})
    w = apply_limits(targets, pd.Series(dtype=float), SECTORS, VOL * 0.0, limits).weights
    assert w["XOM"] == pytest.approx(-0.2)
    assert w["AAPL"] == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("targets", "sectors", "vol", "match"),
    [
        ({"AAPL": 0.1, "TSLA": 0.1}, SECTORS, VOL, "no sector for: TSLA"),
        ({"AAPL": 0.1, "JPM": 0.1}, SECTORS, VOL.drop("JPM"), "daily_vol has no value for: JPM"),
        ({"AAPL": np.nan}, SECTORS, VOL, "targets weight is not finite for: AAPL"),
        ({"AAPL": 0.1}, SECTORS, VOL.replace(0.01, -1.0), "daily_vol must be.*AAPL"),
    ],
)
def test_apply_limits_names_bad_inputs(
    targets: dict[str, float], sectors: dict[str, str], vol: pd.Series, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        apply_limits(pd.Series(targets), pd.Series(dtype=float), sectors, vol, Limits())


def test_limits_from_mapping() -> None:
    assert Limits.from_mapping({}) == Limits()
    got = Limits.from_mapping({"max_position": 0.1, "max_consecutive_losses": 3,
                               "halt_action": "flatten", "max_gross": 2})
    assert got == Limits(max_position=0.1, max_consecutive_losses=3, halt_action="flatten",
                         max_gross=2.0)
    with pytest.raises(ValueError, match=r"unknown limit\(s\): max_leverage, max_positon"):
        Limits.from_mapping({"max_positon": 0.1, "max_leverage": 2.0})
    with pytest.raises(ValueError, match="max_position must be a number, got True"):
        Limits.from_mapping({"max_position": True})
    with pytest.raises(ValueError, match=r"max_sector must be a number, got '0\.3'"):
        Limits.from_mapping({"max_sector": "0.3"})
    with pytest.raises(ValueError, match="max_consecutive_losses must be an integer"):
        Limits.from_mapping({"max_consecutive_losses": 2.5})
    with pytest.raises(ValueError, match="max_position must be a finite number > 0"):
        Limits.from_mapping({"max_position": -0.1})
    with pytest.raises(ValueError, match=r"daily_loss_halt must be in \(0, 1\)"):
        Limits.from_mapping({"daily_loss_halt": 1.5})
    with pytest.raises(ValueError, match="halt_action must be one of freeze, flatten"):
        Limits.from_mapping({"halt_action": "panic"})
    with pytest.raises(ValueError, match="max_net must be a finite number >= 0"):
        Limits.from_mapping({"max_net": float("nan")})


def test_the_settings_file_limits_table_is_valid() -> None:
    raw = tomllib.loads((REPO / "afterbell.toml").read_text())
    if "limits" not in raw:
        pytest.skip("afterbell.toml has no [limits] table")
    Limits.from_mapping(raw["limits"])


# --------------------------------------------------------------------------------- orders
def test_orders_round_toward_zero() -> None:
    current = pd.Series({"AAPL": 0.10, "XOM": 0.05})
    targets = pd.Series({"AAPL": 0.15, "XOM": 0.0, "JPM": -0.0333})
    prices = pd.Series({"AAPL": 100.0, "XOM": 30.0, "JPM": 7.0})
    orders = orders_to_reach(current, targets, prices, 1_000_000.0)
    assert list(orders.columns) == ["symbol", "side", "quantity", "notional", "weight_before",
                                    "weight_after"]
    rows = {r.symbol: r for r in orders.itertuples(index=False)}
    assert (rows["AAPL"].side, rows["AAPL"].quantity) == ("buy", 500)  # 0.05 * 1e6 / 100
    assert (rows["XOM"].side, rows["XOM"].quantity) == ("sell", 1666)  # 1666.67 -> 1666
    assert (rows["JPM"].side, rows["JPM"].quantity) == ("sell", 4757)  # 4757.14 -> 4757
    assert rows["JPM"].notional == pytest.approx(4757 * 7.0)
    assert rows["XOM"].weight_after == pytest.approx(0.05 - 1666 * 30.0 / 1e6)
    with pytest.raises(ValueError, match="no price for: JPM"):
        orders_to_reach(current, targets, prices.drop("JPM"), 1e6)
    with pytest.raises(ValueError, match="equity"):
        orders_to_reach(current, targets, prices, 0.0)


def test_rounding_in_opposite_directions_is_repaired() -> None:
    # selling AAPL truncates more (0.304 left) than buying MSFT (0.698): gross 1.002 > 1.0
    limits = Limits(max_position=1.0, max_sector=2.0, max_gross=1.0, max_net=1.0)
    current = pd.Series({"AAPL": 0.5, "MSFT": 0.5})
    targets = pd.Series({"AAPL": 0.3, "MSFT": 0.7})
    prices = pd.Series({"AAPL": 7.0, "MSFT": 3.0})
    plain = orders_to_reach(current, targets, prices, 1000.0)
    assert executed(current, plain, prices, 1000.0).abs().sum() > 1.0
    fixed = orders_to_reach(current, targets, prices, 1000.0, sectors=SECTORS, limits=limits)
    after = executed(current, fixed, prices, 1000.0)
    assert after.abs().sum() <= 1.0 + 1e-12
    assert after["MSFT"] == pytest.approx(0.5 + 65 * 3.0 / 1000.0)  # one share fewer
    with pytest.raises(ValueError, match="sectors"):
        orders_to_reach(current, targets, prices, 1000.0, limits=limits)


# --------------------------------------------------------------------------------- breakers
def sessions(values: list[float]) -> pd.Series:
    return pd.Series(values, index=pd.bdate_range("2024-01-02", periods=len(values)))


@pytest.mark.parametrize(("last", "halted"), [(94.9, True), (95.1, False), (95.0, False)])
def test_daily_loss_halt(last: float, halted: bool) -> None:
    state = check_breakers(sessions([100.0, last]), Limits())
    assert state.halted is halted
    if halted:
        assert state.reasons == ["session 2024-01-03 lost 5.10% of equity "
                                 "(daily_loss_halt 5.00%)"]


@pytest.mark.parametrize(("last", "halted"), [(98.9, True), (99.1, False)])
def test_drawdown_halt(last: float, halted: bool) -> None:
    # a slow slide from the 110 peak: no daily loss beyond 5%, 4 losing sessions only
    state = check_breakers(sessions([100.0, 110.0, 107.0, 104.0, 101.5, last]), Limits())
    assert state.halted is halted
    assert state.losing_streak == 4
    assert state.drawdown == pytest.approx(1.0 - last / 110.0)
    if halted:
        assert len(state.reasons) == 1 and state.reasons[0].startswith("drawdown 10.09%")


def test_consecutive_losses_halt() -> None:
    five = [100.0, 99.9, 99.8, 99.7, 99.6, 99.5]
    state = check_breakers(sessions(five), Limits())
    assert state.halted and state.losing_streak == 5
    assert "5 losing sessions in a row" in state.reasons[0]
    assert not check_breakers(sessions(five[1:]), Limits()).halted  # 4 in a row
    assert not check_breakers(sessions([*five, 99.6]), Limits()).halted  # then a gain
    flat = [100.0, 99.9, 99.8, 99.8, 99.7, 99.6, 99.5]  # a flat session ends the streak
    assert check_breakers(sessions(flat), Limits()).losing_streak == 3
    assert check_breakers(sessions(five), Limits(max_consecutive_losses=6)).halted is False


def test_breakers_on_a_short_or_bad_record() -> None:
    assert not check_breakers(sessions([]), Limits()).halted
    assert check_breakers(sessions([100.0]), Limits()).last_return is None
    with pytest.raises(ValueError, match="2024-01-03"):
        check_breakers(sessions([100.0, -1.0]), Limits())
    with pytest.raises(ValueError, match="increasing"):
        check_breakers(sessions([100.0, 101.0])[::-1], Limits())


def test_kill_switch(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert not kill_switch_on(home)
    assert kill_switch_reason(home) is None
    path = set_kill_switch(home, True, "fat-finger check")
    assert path == kill_switch_path(home) == home / "KILL_SWITCH"
    assert kill_switch_on(home) and kill_switch_reason(home) == "fat-finger check"
    state = check_breakers(sessions([100.0, 101.0]), Limits(), kill_switch_on(home))
    assert state.halted and state.reasons == ["kill switch is on"] and state.kill_switch
    set_kill_switch(home, False, "checked")
    set_kill_switch(home, False, "again: harmless")
    assert not kill_switch_on(home)
    assert not check_breakers(sessions([100.0, 101.0]), Limits(), kill_switch_on(home)).halted
    with pytest.raises(ValueError, match="reason"):
        set_kill_switch(home, True, "  ")


def test_halted_sends_no_order() -> None:
    current = pd.Series({"AAPL": 0.1, "XOM": -0.05})
    targets = pd.Series({"AAPL": 0.15, "JPM": 0.1})
    state = BreakerState(halted=True, reasons=["kill switch is on"])
    result = decide_targets(targets, current, SECTORS, VOL, Limits(), state)
    assert result.weights.to_dict() == {"AAPL": 0.1, "JPM": 0.0, "XOM": -0.05}
    assert result.breaches[0] == "halted: kill switch is on"
    prices = pd.Series({"AAPL": 100.0, "XOM": 30.0, "JPM": 7.0})
    assert orders_to_reach(current, result.weights, prices, 1e6).empty
    # not halted: the ordinary limits
    free = decide_targets(targets, current, SECTORS, VOL, Limits(), BreakerState(False, []))
    assert free.weights["JPM"] == pytest.approx(0.1)


def test_halted_flatten_only_reduces() -> None:
    vol = VOL.copy()
    vol["AAPL"] = 0.10
    current = pd.Series({"AAPL": 0.15, "XOM": -0.05})
    state = BreakerState(halted=True, reasons=["drawdown"])
    result = decide_targets(pd.Series({"JPM": 0.1}), current, SECTORS, vol,
                            Limits(halt_action="flatten"), state)
    w = result.weights
    assert w["XOM"] == 0.0 and w["JPM"] == 0.0
    assert 0.0 < w["AAPL"] < 0.15  # limited by the trade risk: flattened over sessions


# --------------------------------------------------------------------------------- broker
def decision(version: str = "7", signal: float = 0.5) -> dict[str, Any]:
    result = apply_limits(pd.Series({"AAPL": 0.1}), pd.Series(dtype=float), SECTORS, VOL,
                          Limits())
    return decision_record(version, pd.Series({"AAPL": signal}), pd.Series({"AAPL": 0.2}),
                           Limits(), BreakerState(False, []), result, equity=1e6)


def book(weight: float = 0.1) -> tuple[pd.DataFrame, pd.Series]:
    targets = pd.Series({"AAPL": weight})
    orders = orders_to_reach(pd.Series(dtype=float), targets, pd.Series({"AAPL": 100.0}), 1e6)
    return orders, weights_after(pd.Series(dtype=float), orders)


def test_audit_log_is_append_only_and_idempotent(tmp_path: Path) -> None:
    broker = PaperBroker(tmp_path / "paper")
    d = date(2024, 3, 1)
    orders, targets = book()
    folder = broker.write(d, orders, targets, decision(), recorded_at="2024-03-01T07:01:00")
    assert folder == tmp_path / "paper" / "session=2024-03-01"
    first = broker.audit_path.read_bytes()
    records = audit_records(broker.root)
    assert len(records) == 1
    rec = records[0]
    assert rec["model_version"] == "7" and rec["session"] == "2024-03-01"
    assert rec["decision"]["signals"] == {"AAPL": 0.5}
    assert rec["decision"]["limits"]["max_position"] == 0.15
    assert rec["decision"]["breakers"]["halted"] is False
    content = {k: v for k, v in rec.items() if k not in ("id", "recorded_at")}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert rec["id"] == hashlib.sha256(canonical.encode()).hexdigest()

    # a re-run with the same inputs (at another wall-clock time) appends nothing
    broker.write(d, orders, targets, decision(), recorded_at="2024-03-01T09:30:00")
    assert broker.audit_path.read_bytes() == first

    # different inputs append; earlier lines stay byte-identical
    broker.write(d, orders, targets, decision(signal=0.6))
    second = broker.audit_path.read_bytes()
    assert second.startswith(first) and len(audit_records(broker.root)) == 2
    broker.write(date(2024, 3, 4), orders, targets, decision())
    third = broker.audit_path.read_bytes()
    assert third.startswith(second) and len(audit_records(broker.root)) == 3
    # switching the session back to the first decision records that it did
    broker.write(d, orders, targets, decision())
    assert broker.audit_path.read_bytes().startswith(third)
    ids = [r["id"] for r in audit_records(broker.root)]
    assert len(ids) == 4 and ids[-1] == ids[0]


def test_order_files_are_overwritten_on_rerun(tmp_path: Path) -> None:
    broker = PaperBroker(tmp_path)
    d = date(2024, 3, 1)
    orders, targets = book(0.1)
    broker.write(d, orders, targets, decision())
    orders2, targets2 = book(0.12)
    folder = broker.write(d, orders2, targets2, decision(signal=0.6))
    written = pd.read_csv(folder / "orders.csv")
    assert written["quantity"].tolist() == [1200]
    assert pd.read_csv(folder / "targets.csv")["weight"].tolist() == [0.12]
    assert sorted(p.name for p in folder.iterdir()) == ["orders.csv", "targets.csv"]


def test_positions_are_the_latest_earlier_targets(tmp_path: Path) -> None:
    broker = PaperBroker(tmp_path)
    orders, targets = book(0.1)
    assert positions(tmp_path, date(2024, 3, 1)).empty
    broker.write(date(2024, 3, 1), orders, targets, decision())
    orders2, targets2 = book(0.12)
    broker.write(date(2024, 3, 4), orders2, targets2, decision(signal=0.6))
    assert positions(tmp_path, date(2024, 3, 1)).empty  # its own targets are not yet held
    assert positions(tmp_path, "2024-03-04").to_dict() == {"AAPL": 0.1}
    assert positions(tmp_path, date(2024, 3, 5)).to_dict() == {"AAPL": 0.12}


def test_write_rejects_incomplete_decisions(tmp_path: Path) -> None:
    broker = PaperBroker(tmp_path)
    orders, targets = book()
    with pytest.raises(ValueError, match="model_version"):
        broker.write(date(2024, 3, 1), orders, targets, {"signals": {}})
    with pytest.raises(ValueError, match=r"reserved key.*id"):
        broker.write(date(2024, 3, 1), orders, targets, {"model_version": "1", "id": "x"})
    with pytest.raises(ValueError, match="cannot be stored"):
        broker.write(date(2024, 3, 1), orders, targets, {"model_version": "1", "x": object()})
    with pytest.raises(ValueError, match="quantity"):
        broker.write(date(2024, 3, 1), orders.drop(columns="quantity"), targets,
                     {"model_version": "1"})


def test_a_torn_last_line_is_skipped_and_not_extended(tmp_path: Path) -> None:
    broker = PaperBroker(tmp_path)
    orders, targets = book()
    broker.write(date(2024, 3, 1), orders, targets, decision())
    with open(broker.audit_path, "ab") as fh:
        fh.write(b'{"id": "torn')
    broker.write(date(2024, 3, 4), orders, targets, decision())
    assert [r["session"] for r in audit_records(tmp_path)] == ["2024-03-01", "2024-03-04"]
