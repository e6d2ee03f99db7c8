"""GARCH-t VaR backtest pipeline on a short span of the S&P 500: causality, windows, report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.risk import basel_zone
from pipelines.var_backtest import (
    FORECAST_COLUMNS,
    garch_var_forecasts,
    load_sp500_returns,
    render_markdown,
    run_var_backtest,
)

START, END = "2007-01-01", "2009-12-31"
WINDOW = 250
FORECASTS = ["mu", "sigma", "nu", "var_99", "var_95", "fhs_99", "fhs_95"]


@pytest.fixture(scope="module")
def returns() -> pd.Series:
    return load_sp500_returns(START, END)


@pytest.fixture(scope="module")
def forecasts(returns: pd.Series) -> pd.DataFrame:
    return garch_var_forecasts(returns, window=WINDOW, refit_every=21)


def test_forecasts_shape_and_order(returns: pd.Series, forecasts: pd.DataFrame) -> None:
    assert list(forecasts.columns) == list(FORECAST_COLUMNS)
    assert forecasts.index.equals(returns.index[WINDOW:])
    np.testing.assert_array_equal(forecasts["ret"], returns.iloc[WINDOW:])
    assert forecasts[FORECASTS].notna().all().all()
    assert (forecasts["var_99"] > forecasts["var_95"]).all()
    assert (forecasts["fhs_99"] > forecasts["fhs_95"]).all()
    assert (forecasts["var_95"] > 0).all() and (forecasts["var_99"] < 0.5).all()
    # every forecast's parameters were estimated on sessions strictly before it
    assert (pd.to_datetime(forecasts["fit_end"]) < forecasts.index).all()
    assert forecasts["fit_end"].nunique() == -(-len(forecasts) // 21)


def test_no_look_ahead(returns: pd.Series, forecasts: pd.DataFrame) -> None:
    """Altering the returns from session j on leaves every forecast up to and including j's."""
    j = WINDOW + 130  # inside a refit block
    altered = returns.copy()
    tail = altered.iloc[j:].to_numpy()
    altered.iloc[j:] = -3.0 * tail[::-1]
    again = garch_var_forecasts(altered, window=WINDOW, refit_every=21)
    cut = returns.index[j]
    pd.testing.assert_frame_equal(forecasts.loc[:cut, FORECASTS], again.loc[:cut, FORECASTS])
    after = returns.index[j + 1]
    assert not np.allclose(forecasts.loc[after:, "var_99"], again.loc[after:, "var_99"])


def test_run_writes_per_window_report(tmp_path: Path) -> None:
    out = tmp_path / "docs" / "var_backtest.md"
    table = run_var_backtest(out, start=START, end=END, window=WINDOW, refit_every=21)
    windows = table[table["window"] != "all"]
    assert len(windows) == 2 and table["window"].iloc[-1] == "all"
    assert (windows["n"] == 250).all()
    assert windows["expected"].tolist() == pytest.approx([2.5, 2.5])
    for row in table.itertuples():
        assert row.zone == basel_zone(row.exceptions, row.n, 0.99)
    whole = table.iloc[-1]
    assert whole["n"] == len(load_sp500_returns(START, END)) - WINDOW
    assert whole["exceptions"] >= windows["exceptions"].sum()
    assert 0.0 < whole["rate_95"] < 0.2
    meta = table.attrs["meta"]
    assert meta["refit_every"] == 21 and meta["window"] == WINDOW and meta["seconds"] > 0
    text = out.read_text()
    assert text == render_markdown(table, meta)
    assert "| window | start | end | sessions | exceptions 99% |" in text
    for row in windows.itertuples():
        cells = f"| {row.window} | {row.start.date()} | {row.end.date()} | 250 | {row.exceptions} |"
        assert cells in text
    assert "GARCH(1,1) FHS" in text and "afterbell risk var-backtest" in text


def test_bad_settings_raise(returns: pd.Series) -> None:
    with pytest.raises(ValueError, match="window"):
        garch_var_forecasts(returns, window=50)
    with pytest.raises(ValueError, match="refit_every"):
        garch_var_forecasts(returns, refit_every=0)
    with pytest.raises(ValueError, match="more than window"):
        garch_var_forecasts(returns.iloc[:300], window=300)
