"""Synthetic universes of daily bars for scale tests and benchmarks (issue 8).

The shipped real universe has 22 symbols; a scale benchmark needs hundreds. :func:`make_universe`
generates a universe with the properties the pipeline's stages react to, from a seed:

- returns: a single-index model, ``r_it = mu + b_i f_t + e_it``. The market return ``f_t`` and
  every idiosyncratic return ``e_it`` follow a GARCH(1,1) with standardised Student-t
  innovations (each symbol its own persistence, tail thickness and long-run volatility, drawn
  from ranges typical of US stocks), so volatility clusters both across the market (as in 2008)
  and per name;
- cross-sectional correlation: through the market factor, ``corr(r_i, r_j) = b_i b_j var(f) /
  (sd(r_i) sd(r_j))`` in the long run;
- consistent OHLCV: the close follows the returns; the open gaps from the previous close by a
  share of the day's return; high and low bracket open and close by half-normal excursions scaled
  by the day's conditional volatility; volume is log-normal and grows with the absolute return;
  prices on the US tick (cents, 1/100 cent below a dollar), so every bar satisfies
  ``low <= open, close <= high``;
- listing gaps: some symbols list after the first session (IPOs), some stop before the last
  (delistings); :func:`listings` gives the ranges the data-quality suite expects;
- the market index itself (``index_symbol``, default ``SPX``, the pipeline's market symbol):
  ``mu + f_t``, listed throughout, so market features, betas and the risk stage have their
  reference.

It is pure (a frame out of a spec) and fast: the GARCH recursions run vectorised over symbols
(500 symbols x 10 years in well under a second).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from pipelines import calendar
from pipelines.schema import BAR_COLUMNS

#: Trading sessions per year (annualisation of the volatility ranges).
SESSIONS_PER_YEAR = 252
#: GICS sectors drawn for the stocks (the ``max_sector`` limit of the orders needs one each).
GICS_SECTORS: tuple[str, ...] = (
    "Communication Services", "Consumer Discretionary", "Consumer Staples", "Energy",
    "Financials", "Health Care", "Industrials", "Information Technology", "Materials",
    "Real Estate", "Utilities",
)
#: Sector of the synthetic market index.
INDEX_SECTOR = "Index: synthetic market"

#: Largest absolute daily log return generated (a limit-up/limit-down day); far beyond any
#: GARCH-t draw but for a handful of extreme tails, and below a 2:1 split's log(2).
MAX_ABS_RETURN = 0.25


@dataclass(frozen=True)
class UniverseSpec:
    """Size, dates and parameter ranges of a synthetic universe.

    Parameters
    ----------
    symbols : int
        Number of symbols, named ``SYN0000``, ``SYN0001``, ...
    years : int
        Calendar years of NYSE sessions ending on ``end``.
    end : datetime.date
        Last calendar day (its session included when it is one).
    seed : int
        Seed of every random draw: the same spec gives the same frame.
    annual_vol : tuple of float
        Range of the symbols' long-run annualised volatility (uniform), market part included;
        the idiosyncratic part keeps at least ``min_idio_vol``.
    persistence : tuple of float
        Range of ``alpha + beta`` of the idiosyncratic GARCH (uniform).
    alpha : tuple of float
        Range of its ARCH coefficient ``alpha`` (uniform; ``beta`` = persistence - alpha).
    nu : tuple of float
        Range of its Student-t degrees of freedom (uniform, > 2).
    market_loading : tuple of float
        Range of ``b_i``, the symbol's beta to the market return (uniform).
    market : tuple of float
        ``(alpha, beta, nu, annual_vol)`` of the market return's GARCH-t.
    min_idio_vol : float
        Floor of the idiosyncratic long-run annualised volatility.
    drift : float
        Annualised mean log return of every symbol (the median price path grows at this rate).
    late_listing, early_delisting : float
        Shares of symbols that list after the first session / stop before the last one, each
        at a uniformly drawn session of the middle 80% of the range.
    price : tuple of float
        Range of the first close (uniform, dollars).
    volume : tuple of float
        Range of the median daily volume (log-uniform, shares).
    index_symbol : str or None
        Name of the market index's bars (None: no index). Defaults to the pipeline's market
        symbol, so that the market features are computed from it.
    """

    symbols: int = 50
    years: int = 10
    end: date = date(2018, 12, 31)
    seed: int = 7
    annual_vol: tuple[float, float] = (0.15, 0.60)
    persistence: tuple[float, float] = (0.93, 0.99)
    alpha: tuple[float, float] = (0.03, 0.12)
    nu: tuple[float, float] = (4.0, 10.0)
    market_loading: tuple[float, float] = (0.5, 1.5)
    market: tuple[float, float, float, float] = (0.08, 0.90, 6.0, 0.16)
    min_idio_vol: float = 0.08
    drift: float = 0.05
    late_listing: float = 0.1
    early_delisting: float = 0.05
    price: tuple[float, float] = (10.0, 300.0)
    volume: tuple[float, float] = (2e5, 2e7)
    index_symbol: str | None = "SPX"

    def __post_init__(self) -> None:
        if self.index_symbol is not None and self.index_symbol in self.names:
            raise ValueError(f"index_symbol {self.index_symbol!r} clashes with a stock name")
        if self.symbols < 1 or self.years < 1:
            raise ValueError(f"symbols and years must be positive, got {self.symbols} and "
                             f"{self.years}")
        for name in ("annual_vol", "persistence", "alpha", "nu", "market_loading", "price",
                     "volume"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be a range 0 < low <= high, got {(lo, hi)}")
        if self.alpha[1] >= self.persistence[0] or self.persistence[1] >= 1:
            raise ValueError("need alpha < persistence < 1 for every draw: alpha "
                             f"{self.alpha}, persistence {self.persistence}")
        if self.nu[0] <= 2 or self.market[2] <= 2:
            raise ValueError("Student-t degrees of freedom must exceed 2 (finite variance)")
        m_alpha, m_beta, _, m_vol = self.market
        if not (m_alpha > 0 and m_beta >= 0 and m_alpha + m_beta < 1 and m_vol > 0):
            raise ValueError(f"market (alpha, beta, nu, annual_vol) needs alpha + beta < 1 "
                             f"and a positive vol, got {self.market}")
        for name in ("late_listing", "early_delisting"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a share in [0, 1]")

    @property
    def names(self) -> tuple[str, ...]:
        """The stocks, ``SYN0000`` ... in order."""
        return tuple(f"SYN{i:04d}" for i in range(self.symbols))

    @property
    def universe(self) -> tuple[str, ...]:
        """Every symbol of the bars: the stocks, then the index (if any)."""
        return self.names + ((self.index_symbol,) if self.index_symbol else ())

    def sessions(self) -> list[date]:
        """NYSE sessions of the ``years`` calendar years ending on ``end``."""
        start = date(self.end.year - self.years, self.end.month, self.end.day)
        return [d for d in calendar.sessions_between(start, self.end) if d > start]


@dataclass(frozen=True)
class SymbolParams:
    """The drawn parameters of every symbol (arrays in :attr:`UniverseSpec.names` order)."""

    omega: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    nu: np.ndarray
    loading: np.ndarray
    first: np.ndarray
    last: np.ndarray

    sector: np.ndarray

    def frame(self, names: tuple[str, ...], sessions: list[date]) -> pd.DataFrame:
        """One row per symbol: GARCH parameters, loading, sector, listing range."""
        return pd.DataFrame({
            "symbol": names, "omega": self.omega, "alpha": self.alpha, "beta": self.beta,
            "nu": self.nu, "loading": self.loading, "sector": self.sector,
            "first_session": [sessions[i] for i in self.first],
            "last_session": [sessions[i] for i in self.last],
        })


def _std_t(rng: np.random.Generator, nu: np.ndarray | float, size: tuple[int, ...]) -> np.ndarray:
    """Student-t draws scaled to unit variance."""
    nu_arr = np.asarray(nu, dtype=np.float64)
    return rng.standard_t(nu_arr, size=size) * np.sqrt((nu_arr - 2.0) / nu_arr)


def draw_params(spec: UniverseSpec, n_sessions: int, rng: np.random.Generator) -> SymbolParams:
    """Per-symbol GARCH-t parameters, market loadings and listing ranges."""
    n = spec.symbols
    persistence = rng.uniform(*spec.persistence, size=n)
    alpha = rng.uniform(*spec.alpha, size=n)
    beta = persistence - alpha
    total_var = rng.uniform(*spec.annual_vol, size=n) ** 2
    nu = rng.uniform(*spec.nu, size=n)
    loading = rng.uniform(*spec.market_loading, size=n)
    idio_var = np.maximum(total_var - (loading * spec.market[3]) ** 2, spec.min_idio_vol**2)
    omega = idio_var / SESSIONS_PER_YEAR * (1.0 - persistence)
    first = np.zeros(n, dtype=np.int64)
    last = np.full(n, n_sessions - 1, dtype=np.int64)
    lo, hi = int(0.1 * n_sessions), max(int(0.9 * n_sessions), int(0.1 * n_sessions) + 1)
    late = rng.random(n) < spec.late_listing
    first[late] = rng.integers(lo, hi, size=int(late.sum()))
    early = rng.random(n) < spec.early_delisting
    last[early] = rng.integers(lo, hi, size=int(early.sum()))
    # a symbol both listing late and delisting early keeps at least a year of sessions
    short = last - first < SESSIONS_PER_YEAR
    last[short] = np.minimum(first[short] + SESSIONS_PER_YEAR, n_sessions - 1)
    first[short] = np.minimum(first[short], last[short] - SESSIONS_PER_YEAR).clip(min=0)
    sector = np.array(GICS_SECTORS, dtype=object)[rng.integers(0, len(GICS_SECTORS), size=n)]
    return SymbolParams(omega, alpha, beta, nu, loading, first, last, sector)


def _garch_t(omega: np.ndarray, alpha: np.ndarray, beta: np.ndarray, z: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """GARCH(1,1) paths ``(eps, sigma)`` of innovations ``z`` ``(T, N)``, started at the
    long-run variance: ``s2_t = omega + alpha eps_{t-1}**2 + beta s2_{t-1}``."""
    s2 = omega / (1.0 - alpha - beta)
    eps = np.empty_like(z)
    sigma = np.empty_like(z)
    for t in range(len(z)):
        sd = np.sqrt(s2)
        sigma[t] = sd
        eps[t] = sd * z[t]
        s2 = omega + alpha * eps[t] ** 2 + beta * s2
    return eps, sigma


def simulate_returns(
    spec: UniverseSpec, params: SymbolParams, n_sessions: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Daily log returns and their conditional volatilities ``(n_sessions, symbols)``, the
    market return and its conditional volatility ``(n_sessions,)``; 250 burn-in sessions are
    simulated and dropped."""
    burn = 250
    total = n_sessions + burn
    m_alpha, m_beta, m_nu, m_vol = spec.market
    m_omega = m_vol**2 / SESSIONS_PER_YEAR * (1.0 - m_alpha - m_beta)
    market, m_sigma = _garch_t(np.array([m_omega]), np.array([m_alpha]), np.array([m_beta]),
                               _std_t(rng, m_nu, (total, 1)))
    idio, i_sigma = _garch_t(params.omega, params.alpha, params.beta,
                             _std_t(rng, params.nu, (total, spec.symbols)))
    b = params.loading
    rets = spec.drift / SESSIONS_PER_YEAR + b * market + idio
    vols = np.sqrt((b * m_sigma) ** 2 + i_sigma**2)
    return (np.clip(rets[burn:], -MAX_ABS_RETURN, MAX_ABS_RETURN), vols[burn:],
            market[burn:, 0], m_sigma[burn:, 0])


def make_universe(spec: UniverseSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Canonical bars and the parameters of a synthetic universe.

    Parameters
    ----------
    spec : UniverseSpec
        Size, dates, seed and parameter ranges.

    Returns
    -------
    bars : pandas.DataFrame
        :data:`~pipelines.schema.BAR_COLUMNS`, sorted by (session, symbol), one row per symbol
        and session of its listing range; ``adj_close`` equals ``close`` (no corporate actions).
        The index (``spec.index_symbol``) starts at 1,000.
    params : pandas.DataFrame
        One row per symbol of :attr:`UniverseSpec.universe`: ``omega``, ``alpha``, ``beta``,
        ``nu`` of the idiosyncratic GARCH-t (the index: of the market GARCH-t; daily log-return
        units), ``loading`` (beta to the market; the index 1), ``sector`` (a GICS sector
        drawn uniformly; the index :data:`INDEX_SECTOR`), ``first_session``, ``last_session``.
    """
    rng = np.random.default_rng(spec.seed)
    sessions = spec.sessions()
    t_n = len(sessions)
    params = draw_params(spec, t_n, rng)
    rets, vols, market, m_sigma = simulate_returns(spec, params, t_n, rng)
    if spec.index_symbol is not None:  # the index: one more column, listed throughout
        m_alpha, m_beta, m_nu, m_vol = spec.market
        rets = np.column_stack([rets, spec.drift / SESSIONS_PER_YEAR + market])
        vols = np.column_stack([vols, m_sigma])
        params = SymbolParams(
            *(np.append(a, v) for a, v in (
                (params.omega, m_vol**2 / SESSIONS_PER_YEAR * (1 - m_alpha - m_beta)),
                (params.alpha, m_alpha), (params.beta, m_beta), (params.nu, m_nu),
                (params.loading, 1.0), (params.first, 0), (params.last, t_n - 1),
                (params.sector, INDEX_SECTOR))))
    n = rets.shape[1]

    first_close = np.asarray(rng.uniform(*spec.price, size=n), dtype=np.float64)
    if spec.index_symbol is not None:
        first_close[-1] = 1000.0
    close = first_close * np.exp(np.cumsum(rets, axis=0) - rets[0])
    prev_close = np.vstack([first_close * np.exp(-rets[0]), close[:-1]])
    gap_share = rng.uniform(0.1, 0.5, size=(t_n, n))
    open_ = prev_close * np.exp(gap_share * rets)
    up = np.abs(rng.standard_normal((t_n, n))) * 0.5 * vols
    down = np.abs(rng.standard_normal((t_n, n))) * 0.5 * vols
    high = np.maximum(open_, close) * np.exp(up)
    low = np.minimum(open_, close) * np.exp(-down)
    median_volume = np.exp(rng.uniform(np.log(spec.volume[0]), np.log(spec.volume[1]), size=n))
    volume = median_volume * np.exp(0.4 * rng.standard_normal((t_n, n))
                                    + 8.0 * np.abs(rets - rets.mean(axis=0)))

    listed = np.zeros((t_n, n), dtype=bool)
    steps = np.arange(t_n)[:, None]
    listed[(steps >= params.first) & (steps <= params.last)] = True
    rows, cols = np.nonzero(listed)  # row-major: by session, then column
    names = np.array(spec.universe, dtype=object)
    prices = {k: _tick(v[rows, cols]) for k, v in
              (("open", open_), ("high", high), ("low", low), ("close", close))}
    bars = pd.DataFrame({
        "symbol": names[cols],
        "session": pd.to_datetime(np.array(sessions, dtype="datetime64[D]")[rows]).astype(
            "datetime64[ns]"),
        **prices,
        "adj_close": prices["close"],
        "volume": np.round(volume[rows, cols]),
    })
    if (bars[["open", "high", "low", "close"]] <= 0).any().any():
        raise ValueError("a synthetic price reached zero at the tick: raise the price range "
                         "or lower the volatility range")
    if spec.index_symbol is not None:
        bars = bars.sort_values(["session", "symbol"], kind="stable", ignore_index=True)
    return bars[list(BAR_COLUMNS)], params.frame(spec.universe, sessions)


def _tick(prices: np.ndarray) -> np.ndarray:
    """Prices on the US tick: cents from one dollar, 1/100 of a cent below (Reg NMS 612).
    Rounding is monotone, so it keeps ``low <= open, close <= high``."""
    return np.where(prices >= 1.0, np.round(prices, 2), np.round(prices, 4))


def sectors(params: pd.DataFrame) -> dict[str, str]:
    """Sector of each symbol of :func:`make_universe`'s parameters (the orders' ``sectors``)."""
    return dict(zip(params["symbol"].astype(str), params["sector"].astype(str), strict=True))


def listings(params: pd.DataFrame) -> dict[str, tuple[date, date]]:
    """Listing ranges (symbol -> first, last session) of :func:`make_universe`'s parameters, in
    the form the bar quality suite's ``expected`` takes."""
    return {str(sym): (first, last) for sym, first, last in zip(
        params["symbol"], params["first_session"], params["last_session"], strict=True)}
