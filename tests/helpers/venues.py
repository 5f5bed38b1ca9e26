"""Shared helpers of the venue connector tests (tests/test_{deribit,okx}_{client,parse}.py):
reading a client's events until a condition holds, grouping and chain-checking book events,
and the hand-written real-shape frames with one field changed; json_paths (every path into a
decoded JSON value) serves the gateway's frame fuzzing too. Test support only: no fixtures with
side effects, no sleeps."""

from __future__ import annotations

import collections
import json
import time

import orjson
from hypothesis import strategies as st

from operators.events import ORDER_FREE, BookUpdate, FeedError, Instrument, expand_books

from tests.helpers.config import deribit_kwargs, okx_kwargs
from tests.helpers.data import FRAMES_DIR
DELETE = object()  # frame_with(..., DELETE) removes the field


def collect(client, events, until, timeout=20.0, what="condition"):
    """Drain into `events` until until(events) holds; fail with the counters if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        events.extend(client.drain(5_000, timeout=0.1))
        if until(events):
            return events
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; counters {client.counters()}")


def books(events):
    """BookUpdates per instrument, in order."""
    out = collections.defaultdict(list)
    for e in events:
        if isinstance(e, BookUpdate):
            out[e.instrument].append(e)
    return out


def check_chains(events):
    """Per instrument: a snapshot first, then changes chaining prev_seq → seq (Deribit change_id,
    OKX seqId); after a seq_gap FeedError the next book event of that instrument is a snapshot."""
    last: dict[str, int | None] = {}
    for e in events:
        if isinstance(e, FeedError) and e.reason == "seq_gap":
            last[e.instrument] = None
        elif isinstance(e, BookUpdate):
            if e.kind == "snapshot":
                last[e.instrument] = e.seq
            else:
                assert last.get(e.instrument) is not None, f"change before snapshot: {e}"
                assert e.prev_seq == last[e.instrument], f"broken chain: {e}"
                last[e.instrument] = e.seq


def deribit_client(url, currencies=("BTC",), **kw):
    """A DeribitClient for tests: fast reconnects, quick heartbeats, no subscribe throttle."""
    from connectors.venues.deribit import DeribitClient
    return DeribitClient(**deribit_kwargs(url=url, currencies=currencies, **{
        **_FAST, "heartbeat_s": 0.3, "subscribe_per_s": 1000.0, **kw}))


def okx_client(url, families=("BTC-USD",), **kw):
    """An OkxClient for tests: fast reconnects, no connect throttle."""
    from connectors.venues.okx import OkxClient
    return OkxClient(**okx_kwargs(url=url, families=families, **{**_FAST, "connects_per_s": 1000.0, **kw}))


_FAST = {"reconnect_min_s": 0.05, "reconnect_max_s": 0.5, "seed": 1}


def check_discovery(events) -> list:
    """What every venue client owes the flow at start: every Instrument before any market
    event, each book opening with a snapshot, and chains that hold together. Returns the
    Instruments."""
    insts = [e for e in events if isinstance(e, Instrument)]
    first_market = next(i for i, e in enumerate(events) if not isinstance(e, Instrument))
    assert first_market == len(insts), "a market event came before an Instrument"
    for inst, bk in books(events).items():
        assert bk[0].kind == "snapshot", f"{inst}'s first book event is a {bk[0].kind}"
    check_chains(events)
    return insts


def stream_target(client, sim, names) -> tuple[list, str]:
    """Collect until every book of `names` has its first snapshot, then until one book with
    bids and asks on the simulator streams changes. Returns (events so far, that book's name)."""
    events: list = []
    collect(client, events, lambda ev: len(books(ev)) == len(names), what="every book's first snapshot")
    target = next(n for n in names if all(sim.book(n)[:2]))
    collect(client, events, lambda ev: len(books(ev)[target]) >= 2, what="target streaming")
    return events, target


def inject_when_streaming(client, sim, target: str, fault: str) -> tuple[list, int]:
    """Collect until book `target` streams changes, then have the simulator inject `fault` into
    it. Returns (events so far, the index in them where the fault was injected)."""
    events: list = []
    collect(client, events, lambda ev: len(books(ev).get(target, [])) >= 2, what="target streaming")
    sim.inject(fault, target)
    return events, len(events)


def run_source(source, flow_id: str, until=None, what: str = "condition") -> tuple[list, collections.Counter]:
    """Run `source` alone in a bytewax flow until until(events so far, their count by type)
    holds (then it is stopped; fails naming `what` after tests/helpers/flowrun.py's deadline),
    or without `until` until it ends by itself; its events and their count by type."""
    import threading

    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, run_main

    from tests.helpers.flowrun import StoppableSource, run_until

    def counted(events):
        return collections.Counter(type(e).__name__ for e in events)

    out: list = []
    flow = Dataflow(flow_id)
    stop = threading.Event()
    op.output("out", op.input("in", flow, source if until is None else StoppableSource(source, stop)),
              TestingSink(out))
    if until is None:
        run_main(flow)
    else:
        run_until(flow, stop, lambda: until(list(out), counted(list(out))), what=what)
    return out, counted(out)


def load_frames(file_name: str) -> dict:
    """tests/data/frames/<file_name>: JSON lines {"name", "frame"} → {name: frame}."""
    return {row["name"]: row["frame"] for row in map(orjson.loads, (FRAMES_DIR / file_name).read_bytes().splitlines())}


def frame_with(frames: dict, name: str, path: tuple, value) -> bytes:
    """A copy of a real-shaped frame with one field replaced (DELETE removes it)."""
    frame = orjson.loads(orjson.dumps(frames[name]))
    node = frame
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return json.dumps(frame).encode()  # stdlib json: fuzzed values include ints beyond 64 bits


def json_paths(node, prefix=(), *, leaves_only: bool = False):
    """Every path (tuple of keys and indices) into a decoded JSON value, the root () first;
    leaves_only: only the paths to values that are neither objects nor arrays."""
    if not (leaves_only and isinstance(node, (dict, list))):
        yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from json_paths(v, prefix + (k,), leaves_only=leaves_only)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from json_paths(v, prefix + (i,), leaves_only=leaves_only)


def mutate_json(value, data, values, times) -> None:
    """Change `value` (decoded JSON) in place `data.draw(times)` times: at a drawn path, drop the
    key (half the time, in an object) or set a value drawn from `values` (hypothesis strategies)."""
    paths = [p for p in json_paths(value) if p]
    for _ in range(data.draw(times)):
        path = data.draw(st.sampled_from(paths))
        node = value
        try:
            for key in path[:-1]:
                node = node[key]
            if data.draw(st.booleans()) and isinstance(node, dict):
                node.pop(path[-1], None)
            else:
                node[path[-1]] = data.draw(values)
        except (KeyError, IndexError, TypeError):
            continue


def monday_noon_ms() -> int:
    """The next Monday 12:00 UTC after now: the model clock to pin a started simulator to
    (now_ms=...) where fits are checked against its true smile. On the wall clock a test run
    late on a Thursday or early on a Friday met a weekly hours or minutes from expiry, whose
    tick-wide quotes span 5–15 vol points: no quote pins that smile. Pinned, every run sees
    the same calendar (its nearest weekly 3.8 days out) and frames stamped in the model's time
    (SimServer.stamp_ms); chains expire by the wall clock, which runs behind it."""
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc)
    day = now.replace(hour=12, minute=0, second=0, microsecond=0) + dt.timedelta(days=(7 - now.weekday()) % 7)
    if day <= now:
        day += dt.timedelta(days=7)
    return int(day.timestamp() * 1000)


def check_smile_against_truth(view, true_vol, label) -> None:
    """A fitted smile against the simulator's true one at the quoted strikes. A wing quoted a
    tick or two wide does not pin its vol: there the fit must stay within a quarter of the
    quotes' bid-ask IV band (+0.5 vol pt) of the truth; where the band is narrower than 4 vol
    pts, within 0.5 pt RMS. (A weekly a few days out has wings ~9 pts wide.)"""
    import math

    import numpy as np

    err_pts = smile_error_pts(view, true_vol)
    width_pts = np.array([(a - b) * 100 if a and b else np.inf for b, a in zip(view.bid_iv, view.ask_iv)])
    print(label, "err", np.round(err_pts, 2).tolist(), "band", np.round(width_pts, 1).tolist())
    assert np.all(np.abs(err_pts) <= 0.5 + width_pts / 4), (label, err_pts, width_pts)
    pinned = err_pts[width_pts <= 4.0]
    assert len(pinned) >= 4, (label, width_pts)
    rms = math.sqrt(float(np.mean(pinned ** 2)))
    assert rms <= 0.5, (label, rms, err_pts)


def smile_error_pts(view, true_vol):
    """Fitted minus true vol, in vol points, at the strikes quoted behind an ExpiryView;
    true_vol(strike, forward) is the simulator's true smile taken against the fit's forward."""
    import numpy as np

    from operators.kernels.svi import total_variance

    fit = view.fit
    strikes = np.asarray(view.strikes)
    fitted = np.sqrt(total_variance((fit.a, fit.b, fit.rho, fit.m, fit.sigma), np.log(strikes / fit.forward))
                     / fit.t_years)
    true = np.array([true_vol(K, fit.forward) for K in strikes])
    return (fitted - true) * 100


def assert_same_events_books_run_together(got: list, want: list) -> None:
    """`got` (BookBatches included: a replay's parse_columns) holds `want` (parse_frame frame by
    frame) as parse_columns promises: every event but the order-free ones (operators.events
    ORDER_FREE) in the same order, the order-free ones in the same order, each instrument's own
    events in the same order."""
    got = expand_books(got)
    for pick in (lambda e: type(e) not in ORDER_FREE, lambda e: type(e) in ORDER_FREE):
        assert [e for e in got if pick(e)] == [e for e in want if pick(e)]
    mine = collections.defaultdict(list)
    for e in got:
        mine[getattr(e, "instrument", "")].append(e)
    theirs = collections.defaultdict(list)
    for e in want:
        theirs[getattr(e, "instrument", "")].append(e)
    assert mine == theirs
