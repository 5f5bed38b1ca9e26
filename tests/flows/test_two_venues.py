"""Two venues at once: Deribit and OKX simulators over loopback, each venue's surface kept
apart, and a combined surface (venue "all") built from the best fresh quote per strike
with venue attribution."""

import math
import threading

import numpy as np

from connectors.venues.okx import OkxSource
from connectors.sim.okx import OkxSimulator
from connectors.sim.deribit import Simulator
from flows.surface import build_flow, venue_sources
from tests.helpers.sinks import CallbackSink
from operators.state import chain
from operators.events import CONSOLIDATED, SurfacePatch
from operators.merge import apply_patch
from flows.config import load_config
from tests.helpers.flowrun import StoppableSource, holds, run_until
from tests.helpers.venues import monday_noon_ms, smile_error_pts
from tests.helpers.config import okx_kwargs, sim_kwargs

PLAN = {"daily": 0, "weekly": 1, "monthly": 1, "quarterly": 1}


def test_each_venue_and_the_combined_surface():
    """Both venues quote; then Deribit stalls (socket open, nothing sent) for longer than
    venue_stale_ms: the combined surface must switch to OKX's quotes, never average them."""
    clock = monday_noon_ms()  # one model clock for both venues (see monday_noon_ms)
    deribit = Simulator(**sim_kwargs(seed=11, rate=1500, currencies=("BTC",), scale="small", plan=PLAN, n_strikes=13,
                                     now_ms=clock))
    # another seed: the two markets move apart a little, like two real venues
    okx = OkxSimulator(**sim_kwargs(seed=12, rate=1500, families=["BTC-USD"], scale="small", plan=PLAN, n_strikes=13,
                                    now_ms=clock))
    deribit_url, _ = deribit.start(), okx.start()
    out: list = []
    stalled = threading.Event()

    def collect(item):
        out.append(item)
        # once the combined surface is up, silence Deribit (from another thread: never block the flow)
        if (not stalled.is_set() and isinstance(item, SurfacePatch) and item.venue == CONSOLIDATED
                and len(item.expiries) >= 2):
            stalled.set()
            threading.Thread(target=deribit.inject, args=("stall",), kwargs={"seconds": 5.0}, daemon=True).start()

    try:
        chain.warm_up()
        config = load_config(overrides={"sources": {"okx": {"enabled": True}},
                                        "consolidation": {"venue_stale_ms": 1500}})
        # Deribit as `volgraph run` builds it from graph.toml, here on the grouped book channel
        (deribit_source,) = venue_sources(load_config(overrides={
            "sources": {"okx": {"enabled": False}, "deribit": {"currencies": ["BTC"], "book": "grouped"}}}),
            urls={"deribit": deribit_url})
        assert deribit_source.book_depth == 10
        stop = threading.Event()
        sources = [StoppableSource(deribit_source, stop),
                   StoppableSource(OkxSource(**okx_kwargs(OkxSource, url=okx.url, families=["BTC-USD"],
                                                          connects_per_s=1000.0)), stop)]
        run_until(build_flow(config, sources, [CallbackSink(collect)]), stop,
                  lambda: stalled.is_set() and holds(lambda: check(deribit, okx, list(out))),
                  what="a combined surface quoting Deribit, then only OKX during Deribit's stall")
    finally:
        deribit.stop()
        okx.stop()
    assert stalled.is_set()
    check(deribit, okx, out)


def check(deribit, okx, out):
    """The three surfaces merged from the patches in `out`; raises AssertionError on the first miss."""
    surfaces = {}
    attributions = []  # (time, set of venues quoted) of every combined view
    for patch in (e for e in out if isinstance(e, SurfacePatch)):
        key = (patch.venue, patch.underlying)
        surfaces[key] = apply_patch(surfaces.get(key), patch)
        if patch.venue == CONSOLIDATED:
            for view in patch.expiries:
                attributions.append(set(view.bid_venue) | set(view.ask_venue))
    assert set(surfaces) == {("deribit", "BTC"), ("okx", "BTC"), (CONSOLIDATED, "BTC")}
    expiries = set(deribit.expiries("BTC")) & set(okx.expiries("BTC"))
    combined = {v.expiry_ms: v for v in surfaces[(CONSOLIDATED, "BTC")].expiries}
    assert expiries <= set(combined)
    # before the stall Deribit quotes (it wins ties, being listed first); during it only OKX does
    assert any("deribit" in a for a in attributions)
    assert any(a == {"okx"} for a in attributions)
    for expiry_ms in expiries:
        view = combined[expiry_ms]
        # every quote says which venue it came from
        assert len(view.bid_venue) == len(view.strikes) == len(view.ask_venue)
        assert set(view.bid_venue) | set(view.ask_venue) <= {"deribit", "okx"}
        fit = view.fit
        assert fit.butterfly_ok and fit.venue == CONSOLIDATED
        # the combined smile still sits on the (shared) true surface
        err_pts = smile_error_pts(view, lambda K, f: deribit.true_vol("BTC", expiry_ms, K, forward=f))
        rms = math.sqrt(float(np.mean(err_pts ** 2)))
        assert rms <= 1.0, (expiry_ms, rms)
