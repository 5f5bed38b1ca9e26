"""The dataflow itself on a finite, known input (bytewax TestingSource, no sockets):
books → chains → surface → sinks, with graph.toml nodes landing in the patches."""

import math
import textwrap

import numpy as np
import pytest
from bytewax.testing import TestingSource, run_main

from flows.surface import CallbackSink, build_flow
from operators.kernels.black import black_price
from operators.state.chain import MS_PER_YEAR
from operators.events import (BookUpdate, IndexPrice, Instrument, SmileFit, StatusReport, SurfacePatch,
                              Ticker, apply_patch)
from flows.config import load_config
from operators.kernels.svi import total_variance

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


@pytest.fixture
def run_flow():
    def run(config):
        out = []
        flow = build_flow(config, TestingSource(market()), [CallbackSink(out.append)], now_ms=lambda: NOW)
        run_main(flow)
        return out
    return run


def test_every_expiry_is_fitted_and_patched(run_flow):
    out = run_flow(load_config())
    fits = [o for o in out if isinstance(o, SmileFit)]
    assert {(f.underlying, round(f.t_years, 6)) for f in fits} == {(u, t) for u in SPOT for t in TENORS}
    for f in fits:
        k = np.log(np.asarray([0.8, 1.0, 1.2]))  # around the money
        fitted = np.sqrt(total_variance((f.a, f.b, f.rho, f.m, f.sigma), k) / f.t_years)
        true = np.sqrt(total_variance(true_params(f.t_years), k + math.log(f.forward / SPOT[f.underlying])) / f.t_years)
        assert np.max(np.abs(fitted - true)) * 100 < 0.3, f
        assert f.butterfly_ok
    surfaces = {}
    for patch in (o for o in out if isinstance(o, SurfacePatch)):
        surfaces[patch.underlying] = apply_patch(surfaces.get(patch.underlying), patch)
    assert set(surfaces) == set(SPOT)
    for und, snap in surfaces.items():
        assert len(snap.expiries) == len(TENORS) and snap.index_px == SPOT[und]
        for view in snap.expiries:
            assert view.rr25 is not None and view.rr25 < 0  # put skew (rho < 0)
            assert view.atm_vol == pytest.approx(view.analytics["atm_vol"])
        assert len(snap.calendar) == 1 and snap.calendar[0].ok
        assert [p.tenor_days for p in snap.tenors] == [1, 7, 30, 60, 90, 180]
    assert any(isinstance(o, StatusReport) for o in out)


def test_a_new_graph_toml_node_appears_in_patches(run_flow, tmp_path):
    path = tmp_path / "graph.toml"
    path.write_text(textwrap.dedent("""
        [nodes.rr15]
        fn = "operators.kernels.analytics:risk_reversal"
        inputs = ["fit"]
        level = "expiry"
        delta = 0.15
    """))
    out = run_flow(load_config(path))
    views = [v for o in out if isinstance(o, SurfacePatch) for v in o.expiries]
    assert views and all(v.analytics["rr15"] is not None for v in views)
    # a 15Δ risk reversal sits further in the wings than 25Δ: more negative under put skew
    assert all(v.analytics["rr15"] < v.rr25 < 0 for v in views)


def test_tune_gc_freezes_the_built_process_and_collects_young_objects_less_often():
    import gc

    from flows.surface import tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == (300_000, 20, 20)
        assert gc.get_freeze_count() > 1000  # modules, config, kernels: out of the collector
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
