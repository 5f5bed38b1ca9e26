"""A finite two-underlying, two-expiry market for the dataflow tests (tests/flows/): every
option listed, one book snapshot and one ticker each, then the index — the events the
connectors emit, priced from a known SSVI-like smile so a fit can be checked against it.
Test support only: no fixtures, no I/O."""

from __future__ import annotations

import math

import numpy as np

from operators.events import BookUpdate, IndexPrice, Instrument, Ticker
from operators.kernels.black import black_price
from operators.kernels.svi import total_variance
from operators.state.chain import MS_PER_YEAR

NOW = 1_900_000_000_000
SPOT = {"BTC": 60_000.0, "ETH": 3_000.0}
TENORS = (0.05, 0.3)  # years


def true_params(t):
    # an SSVI-like slice: total ATM variance grows with t, put skew
    theta, b, sigma = 0.36 * t, 0.25 * math.sqrt(t), 0.2
    return (theta - b * sigma, b, -0.4, 0.0, sigma)  # w(0) = theta: 60 % ATM vol


def market():
    events = []
    for und, spot in SPOT.items():
        for t in TENORS:
            expiry = NOW + int(t * MS_PER_YEAR)
            params = true_params(t)
            for strike in spot * np.exp(np.linspace(-0.5, 0.5, 15)):
                strike = float(round(strike))
                vol = math.sqrt(total_variance(params, math.log(strike / spot)) / t)
                for cp in "CP":
                    name = f"{und}-{expiry}-{int(strike)}-{cp}"
                    events.append(Instrument("deribit", name, und, "option", expiry, strike, cp, 0.0001, 1.0, und))
                    bid = float(black_price(spot, strike, t, vol - 0.003, cp == "C")) / spot
                    ask = float(black_price(spot, strike, t, vol + 0.003, cp == "C")) / spot
                    events.append(BookUpdate("deribit", name, NOW, NOW, 1, None, "snapshot",
                                             ((bid, 1.0), (bid * 0.9, 2.0)), ((ask, 1.0),)))
                    events.append(Ticker("deribit", name, NOW, NOW, underlying_px=spot))
        events.append(IndexPrice("deribit", und, NOW, NOW, spot))
    return events
