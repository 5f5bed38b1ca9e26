"""The simulators' true market: per currency a seeded spot process (GBM with jumps) and a vol
level, an SSVI surface over it, the option grid listed on it, and every option's price now.

`Market` is venue-free and both simulators price with it (connectors/sim/deribit.py names its
options the Deribit way, connectors/sim/okx.py the OKX way, over the same arrays). The SSVI
surface has θ(T) from an ATM term structure and a power-law φ with η(1+|ρ|) ≤ 2, so it is
butterfly- and calendar-free by construction; raw SVI slices follow from it. Option prices are
Black-76 (operators.kernels.black) at the true vol on each expiry's forward (spot × e^{basis·T}),
in coin. The sequence of market states is a function of the seed, the currency's index and the
tick count only (`step` draws from its own generator), so the same seed gives the same market.

It must never import the venue parsers (connectors/venues/*) or flows: the tests compare the
simulators against those parsers. Frames and protocols are the venue modules' business.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from connectors.sim.expiries import YEAR_MS, deribit_expiries
from operators.kernels.black import black_price, d1_d2, greeks


@dataclass(frozen=True)
class CurrencyModel:
    """The true market of one currency. Vols are decimals; times in years."""

    spot_usd: float
    spot_vol: float  # GBM diffusion vol of the spot
    jump_per_year: float  # Poisson intensity of spot jumps
    jump_mean: float  # mean log-jump
    jump_sd: float
    atm_vol_short: float  # ATM vol as T → 0
    atm_vol_long: float  # ATM vol as T → ∞
    term_tau_years: float  # decay of the ATM term structure
    rho: float  # SSVI skew
    eta: float  # SSVI power-law φ(θ) = η / (θ^γ (1+θ)^(1−γ)); η(1+|ρ|) ≤ 2 keeps it arb-free
    gamma: float
    basis_per_year: float  # forward = spot × e^{basis·T}
    strike_step_min: float  # smallest "nice" strike step in USD
    future_tick_usd: float
    option_min_amount: float  # contracts (coin)
    future_contract_usd: float
    level_vol: float = 0.3  # vol-of-vol of the level multiplier λ (per √year)
    level_kappa: float = 2.0  # its mean reversion per year


MODELS: dict[str, CurrencyModel] = {
    "BTC": CurrencyModel(100_000.0, 0.50, 20.0, 0.0, 0.02, 0.55, 0.50, 0.25, -0.10, 1.0, 0.4, 0.03,
                         50.0, 2.5, 0.1, 10.0),
    "ETH": CurrencyModel(3_500.0, 0.65, 20.0, 0.0, 0.03, 0.70, 0.62, 0.25, -0.15, 1.0, 0.4, 0.03,
                         5.0, 0.05, 1.0, 1.0),
}

# How many expiries of each Deribit kind, strikes per expiry, their spread in standard
# deviations of the forward, and book depth.
SCALES: dict[str, dict[str, Any]] = {
    "small": {"plan": {"daily": 1, "weekly": 1, "monthly": 0, "quarterly": 0}, "n_strikes": 12,
              "n_sd": 2.5, "depth": 5},
    "medium": {"plan": {"daily": 1, "weekly": 2, "monthly": 3, "quarterly": 2}, "n_strikes": 25,
               "n_sd": 3.0, "depth": 5},
    "seed": {"plan": {"daily": 2, "weekly": 3, "monthly": 4, "quarterly": 3},
             "n_strikes": {"BTC": 167, "ETH": 84}, "n_sd": 4.0, "depth": 8},
}


def check_scale(scale: str) -> dict[str, Any]:
    """The settings of a named scale; a ValueError naming the scale and the choices otherwise."""
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r}: use one of {', '.join(SCALES)}")
    return SCALES[scale]


def nice_step(raw: float, minimum: float) -> float:
    """The smallest 1, 2, 2.5 or 5 × 10^n at or above `raw` (and `minimum`): a strike step."""
    raw = max(raw, minimum)
    mag = 10.0 ** math.floor(math.log10(raw))
    for mult in (1.0, 2.0, 2.5, 5.0, 10.0):
        if mult * mag >= raw - 1e-12:
            return mult * mag
    return 10.0 * mag


class Market:
    """The option grid, state and current prices of one currency (vectorised over options:
    option i has strike[i], expiries[exp_idx[i]], is_call[i]; calls and puts alternate)."""

    def __init__(self, name: str, model: CurrencyModel, expiries: list[int], n_strikes: int, n_sd: float,
                 seed: int, index: int, created_ms: int):
        self.name = name
        self.model = model
        self.rng = np.random.default_rng([seed, index])  # the market path: seed and tick count only
        self.spot = model.spot_usd
        self.level = 1.0  # multiplier on all ATM vols (uniform in T keeps θ(T) increasing)
        self.expiries = expiries
        self.created_ms = created_ms
        self.n_strikes = n_strikes
        self.n_sd = n_sd
        self._build_grid(created_ms)

    # SSVI -------------------------------------------------------------------------------------
    def atm_vol(self, t_years):
        m = self.model
        t = np.asarray(t_years, float)
        return self.level * (m.atm_vol_long + (m.atm_vol_short - m.atm_vol_long) * np.exp(-t / m.term_tau_years))

    def theta(self, t_years):
        t = np.asarray(t_years, float)
        return self.atm_vol(t) ** 2 * t

    def phi(self, theta):
        m = self.model
        return m.eta / (theta ** m.gamma * (1.0 + theta) ** (1.0 - m.gamma))

    def total_variance(self, k, t_years):
        th = self.theta(t_years)
        ph = self.phi(th)
        rho = self.model.rho
        return 0.5 * th * (1.0 + rho * ph * k + np.sqrt((ph * k + rho) ** 2 + 1.0 - rho * rho))

    def raw_svi(self, t_years: float) -> tuple[float, float, float, float, float]:
        """SSVI slice → raw SVI (a, b, ρ, m, σ) (Gatheral–Jacquier 2014, lemma 3.3)."""
        th = float(self.theta(t_years))
        ph = float(self.phi(th))
        rho = self.model.rho
        return (0.5 * th * (1.0 - rho * rho), 0.5 * th * ph, rho, -rho / ph, math.sqrt(1.0 - rho * rho) / ph)

    def forward(self, t_years):
        return self.spot * np.exp(self.model.basis_per_year * np.asarray(t_years, float))

    # the option grid --------------------------------------------------------------------------
    def _build_grid(self, now_ms: int) -> None:
        strikes, exp_idx, calls = [], [], []
        self.strikes_by_expiry: dict[int, list[float]] = {}
        for e_i, expiry in enumerate(self.expiries):
            t = max((expiry - now_ms) / YEAR_MS, 1e-6)
            fwd = float(self.forward(t))
            sd = float(self.atm_vol(t)) * math.sqrt(t)
            lo, hi = fwd * math.exp(-self.n_sd * sd), fwd * math.exp(self.n_sd * sd)
            step = nice_step((hi - lo) / max(self.n_strikes - 1, 1), self.model.strike_step_min)
            # centre the grid on the forward so the money is always covered
            first = max(step, round(fwd / step) * step - step * ((self.n_strikes - 1) // 2))
            ks = [first + i * step for i in range(self.n_strikes)]
            self.strikes_by_expiry[expiry] = ks
            for k in ks:
                for call in (True, False):
                    strikes.append(k)
                    exp_idx.append(e_i)
                    calls.append(call)
        self.strike = np.array(strikes, float)
        self.exp_idx = np.array(exp_idx, np.int64)
        self.is_call = np.array(calls, bool)
        rng = random.Random(f"{self.name}-static")
        self.open_interest = [round(rng.uniform(0, 2000), 1) for _ in strikes]

    def expiry_of(self, i: int) -> int:
        """The expiry (epoch ms) of option i."""
        return self.expiries[int(self.exp_idx[i])]

    def listing_strikes(self, expiry: int, n: int, now_ms: int) -> list[float]:
        """`n` strikes a venue would list at a new expiry now: around its forward, 5 % apart (a
        nice step), the middle one nearest the forward (intraday listings, either simulator)."""
        t = max((expiry - now_ms) / YEAR_MS, 1e-6)
        fwd = float(self.forward(t))
        step = nice_step(fwd * 0.05, self.model.strike_step_min)
        first = round(fwd / step) * step - step * ((n - 1) // 2)
        return [first + i * step for i in range(n)]

    def add_options(self, expiry: int, strikes: Sequence[float],
                    taken: Optional[Callable[[float], bool]] = None) -> list[float]:
        """List calls and puts at new (expiry, strike) pairs intraday; returns the strikes listed
        (each added a call, then a put, at the end of the arrays). A strike already listed at
        that expiry, or one `taken(strike)` refuses (a venue's name already in use), is passed
        over. Existing options keep their positions (the arrays are extended, never reordered)."""
        expiry_of = [self.expiries[i] for i in self.exp_idx.tolist()]  # before the list changes
        if expiry not in self.expiries:
            self.expiries = sorted(self.expiries + [expiry])
            self.strikes_by_expiry[expiry] = []
        added = []
        for k in strikes:
            k = float(k)
            if k in self.strikes_by_expiry[expiry]:
                continue
            if taken is not None and taken(k):
                continue
            self.strikes_by_expiry[expiry] = sorted(self.strikes_by_expiry[expiry] + [k])
            added.append(k)
            expiry_of.extend((expiry, expiry))
            self.open_interest.extend((100.0, 100.0))
            self.strike = np.append(self.strike, [k, k])
            self.is_call = np.append(self.is_call, [True, False])
        self.exp_idx = np.array([self.expiries.index(e) for e in expiry_of], np.int64)
        return added

    # dynamics ---------------------------------------------------------------------------------
    def step(self, dt_years: float) -> None:
        """One tick of the spot (GBM + compound Poisson jumps) and the vol level (OU)."""
        m = self.model
        z, z_level = self.rng.standard_normal(2)
        n_jumps = self.rng.poisson(m.jump_per_year * dt_years)
        jump = float(self.rng.normal(m.jump_mean, m.jump_sd, n_jumps).sum()) if n_jumps else 0.0
        comp = m.jump_per_year * (math.exp(m.jump_mean + 0.5 * m.jump_sd ** 2) - 1.0)  # keeps E[S] driftless
        self.spot *= math.exp((-0.5 * m.spot_vol ** 2 - comp) * dt_years + m.spot_vol * math.sqrt(dt_years) * z + jump)
        self.level += m.level_kappa * (1.0 - self.level) * dt_years + m.level_vol * math.sqrt(dt_years) * z_level
        self.level = min(max(self.level, 0.5), 2.0)

    def reprice(self, now_ms: int) -> None:
        """All option prices at the current state (vectorised: 3 Black-76 calls per tick)."""
        exp = np.array(self.expiries, np.int64)
        self.t_e = np.maximum((exp - now_ms) / YEAR_MS, 1e-6)
        self.fwd_e = self.forward(self.t_e)
        t = self.t_e[self.exp_idx]
        f = self.fwd_e[self.exp_idx]
        k = np.log(self.strike / f)
        w = self.total_variance(k, t)
        vol = np.sqrt(w / t)
        z = np.abs(k) / (vol * np.sqrt(t))
        half = 0.005 + 0.015 * np.minimum(z, 3.0) / 3.0  # half-spread in vol: 0.5 pt ATM, 2 pts in the wings
        true_usd = black_price(f, self.strike, t, vol, self.is_call)
        bid_usd = black_price(f, self.strike, t, np.maximum(vol - half, 0.01), self.is_call)
        ask_usd = black_price(f, self.strike, t, vol + half, self.is_call)
        g = greeks(f, self.strike, t, vol, self.is_call)
        self.t = t
        self.f = f
        self.vol = vol
        self.true_coin = true_usd / f
        self.bid_coin = np.minimum(bid_usd / f, self.true_coin)
        self.ask_coin = np.maximum(ask_usd / f, self.true_coin)
        self.delta = g["delta"]
        self.gamma = g["gamma"]
        self.vega_usd_pt = g["vega"] / 100.0  # per vol point, as Deribit shows it
        d1, _ = d1_d2(f, self.strike, t, vol)
        pdf = np.exp(-0.5 * d1 * d1) / math.sqrt(2 * math.pi)
        self.theta_usd_day = -f * pdf * vol / (2 * np.sqrt(t)) / 365.0  # undiscounted Black-76 theta per day


def new_market(coin: str, index: int, *, seed: int, start_ms: int, scale: str,
               plan: Optional[dict[str, int]] = None, n_expiries: Optional[int] = None,
               n_strikes: Optional[int] = None, cls: type = Market) -> Market:
    """The market of `coin` (a key of MODELS), the `index`-th a simulator runs, listed at
    start_ms: the scale's expiry plan and strike count unless `plan`, `n_expiries` (keep the
    first n) or `n_strikes` say otherwise. `cls` is a venue's subclass that names the options."""
    cfg = check_scale(scale)
    exps = deribit_expiries(start_ms, **(plan or cfg["plan"]))
    if n_expiries is not None:
        exps = exps[:n_expiries]
    ns = n_strikes or (cfg["n_strikes"][coin] if isinstance(cfg["n_strikes"], dict) else cfg["n_strikes"])
    return cls(coin, MODELS[coin], exps, ns, cfg["n_sd"], seed, index, start_ms)
