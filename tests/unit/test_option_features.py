"""The light stage's option features: a 30-day ATM straddle from the GARCH term forecast."""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from pipelines import lake
from pipelines.calendar import closes_for
from pipelines.rates import rates_for
from pipelines.settings import Settings
from pipelines.stages import OPTION_DAYS, option_rows, price_options


def _garch(sessions: list[str], vols: list[float]) -> pd.DataFrame:
    frame = pd.DataFrame({"symbol": "SPX", "session": pd.to_datetime(sessions),
                          "garch_vol_30d": vols})
    frame["event_timestamp"] = closes_for(frame["session"]).to_numpy()
    return frame


def _bsm_straddle(vol: float, rate: float, t: float) -> float:
    """Call plus put at the money (spot 1, strike 1), closed form: an independent check."""
    d1 = (rate + vol * vol / 2) * t / (vol * math.sqrt(t))
    d2 = d1 - vol * math.sqrt(t)
    call = norm.cdf(d1) - math.exp(-rate * t) * norm.cdf(d2)
    put = math.exp(-rate * t) * norm.cdf(-d2) - norm.cdf(-d1)
    return float(call + put)


def test_straddle_is_bsm_at_the_garch_term_vol_and_the_rate(tmp_path: Path) -> None:
    garch = _garch(["2018-03-01", "2018-03-02", "2018-03-05"], [0.20, np.nan, 0.35])
    rates = pd.DataFrame(
        {"rate": [0.015, 0.015, np.nan], "source": ["fama-french", "fama-french", ""],
         "curve_date": pd.to_datetime(["2018-02-28", "2018-02-28", None]),
         "age_days": pd.array([1, 2, pd.NA], dtype="Int64")},
        index=pd.to_datetime(["2018-03-01", "2018-03-02", "2018-03-05"]),
    )
    out = option_rows(garch, rates)
    t = OPTION_DAYS / 365
    iv = 0.20 * math.sqrt(21 / 252 * 365 / 30)  # same variance over 21 sessions and 30 days
    assert out["garch_iv_30d"].iloc[0] == pytest.approx(iv, rel=1e-12)
    assert out["straddle_30d"].iloc[0] == pytest.approx(_bsm_straddle(iv, 0.015, t), rel=1e-9)
    # no forecast (the GARCH warm-up) or no fresh rate: no price, and the rest still priced
    assert np.isnan(out["straddle_30d"].iloc[1]) and np.isnan(out["straddle_30d"].iloc[2])
    assert out["rate_source"].tolist() == ["fama-french", "fama-french", ""]
    # the straddle grows with the vol; the rate enters only through discounting and the forward
    higher = option_rows(garch.assign(garch_vol_30d=0.3), rates)["straddle_30d"].iloc[0]
    assert higher > out["straddle_30d"].iloc[0]


def test_rates_are_point_in_time_for_every_history_row(tmp_path: Path) -> None:
    sessions = [date(2008, 11, 28), date(2008, 12, 1), date(2008, 12, 2)]
    garch = _garch([d.isoformat() for d in sessions], [0.5, 0.5, 0.5])
    out = option_rows(garch, rates_for(tmp_path / "lake", sessions, days=OPTION_DAYS))
    # December 2008's T-bill rate (0.00%) is dated 2008-11-30: used from 2008-12-01 on only
    assert out["rate_curve_date"].dt.date.tolist() == [date(2008, 10, 31), date(2008, 11, 30),
                                                       date(2008, 11, 30)]
    assert out["rate_30d"].iloc[0] > 0.001 and out["rate_30d"].iloc[1] == 0.0


def test_a_session_without_a_fresh_rate_fails_naming_the_fix(tmp_path: Path) -> None:
    """After the packaged rates end (2018-11) the session needs an ingested Treasury curve."""
    settings = Settings(home=tmp_path / "afterbell", universe=("SPX",))
    day = date(2019, 3, 1)
    lake.write_partitions(settings.lake_dir, "garch", _garch([day.isoformat()], [0.2]))
    with pytest.raises(ValueError, match="afterbell rates ingest"):
        price_options(day.isoformat(), settings)
    assert lake.partition_sessions(settings.lake_dir, "options") == []  # nothing written
