"""The dataflow itself on a finite, known input (bytewax TestingSource, no sockets):
books → chains → surface → sinks, with graph.toml nodes landing in the patches."""

import math

import numpy as np
import pytest
from bytewax.testing import TestingSource

from flows.surface import build_flow

from tests.helpers.config import RR15_NODE_TOML
from tests.helpers.sinks import CallbackSink
from operators.events import Instrument, SmileFit, StatusReport, SurfacePatch
from operators.merge import apply_patch
from flows.config import ConfigError, load_config
from operators.kernels.svi import total_variance
from tests.helpers.market import NOW, SPOT, TENORS, market, true_params


@pytest.fixture
def run_flow(entry_point):
    """Runs the flow on market() under `entry_point` (one worker, or a 1×2 cluster: see
    tests/flows/conftest.py); the assertions below hold whatever the workers' interleaving."""
    def run(config):
        out = []
        flow = build_flow(config, TestingSource(market()), [CallbackSink(out.append)], now_ms=lambda: NOW)
        entry_point(flow)
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
            assert view.analytics["rr25"] is not None and view.analytics["rr25"] < 0  # put skew (rho < 0)
            assert view.analytics["atm_vol"] == pytest.approx(0.6, abs=0.01)  # true_params: w(0) = 0.36 t
        assert len(snap.calendar) == 1 and snap.calendar[0].ok
        assert [p.tenor_days for p in snap.tenors] == [1, 7, 30, 60, 90, 180]
    assert any(isinstance(o, StatusReport) for o in out)


def test_a_new_graph_toml_node_appears_in_patches(run_flow, tmp_path):
    path = tmp_path / "graph.toml"
    path.write_text(RR15_NODE_TOML)
    out = run_flow(load_config(path))
    views = [v for o in out if isinstance(o, SurfacePatch) for v in o.expiries]
    assert views and all(v.analytics["rr15"] is not None for v in views)
    # a 15Δ risk reversal sits further in the wings than 25Δ: more negative under put skew
    assert all(v.analytics["rr15"] < v.analytics["rr25"] < 0 for v in views)


def test_each_sink_receives_only_the_types_it_consumes(entry_point):
    fits, patches, everything = [], [], []
    sinks = [CallbackSink(fits.append, consumes=(SmileFit,)), CallbackSink(patches.append, consumes=(SurfacePatch,)),
             CallbackSink(everything.append)]
    entry_point(build_flow(load_config(), TestingSource(market()), sinks, now_ms=lambda: NOW))
    assert fits and {type(o) for o in fits} == {SmileFit}
    assert patches and {type(o) for o in patches} == {SurfacePatch}
    assert {type(o) for o in everything} == {SmileFit, SurfacePatch, StatusReport}
    assert len(everything) == len(fits) + len(patches) + sum(isinstance(o, StatusReport) for o in everything)


def test_a_sink_asking_for_a_type_the_flow_does_not_output_is_refused():
    with pytest.raises(ConfigError, match="consumes.*Instrument.*the flow outputs SmileFit, SurfacePatch, StatusReport"):
        build_flow(load_config(), TestingSource([]), [CallbackSink(print, consumes=(Instrument,))])


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
