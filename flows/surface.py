"""The volgraph dataflow (DESIGN.md §4), read top to bottom like its diagram:

    feed ─► chain[underlying|expiry] ─────────────► surface[underlying] ─► gateway, postgres
            L2 books, forward, IVs (dirty strikes,      analytics nodes, calendar,
            small moves), SVI fit schedule              tenors, one patch per epoch
                          └──────────── fits ────────────────────────────────► postgres

(The L2 books live inside the chain step, keyed by expiry, rather than in a step of their
own keyed by instrument: a batch of one expiry's events is then one bytewax item instead
of one item per message per step — see README, Benchmarks.)

Run it with `volgraph run` (simulator, embedded PostgreSQL and gateway included) or, with
everything external, `python -m bytewax.run flows.surface:flow` (configured by the
environment: VOLGRAPH_CONFIG, VOLGRAPH_URL, VOLGRAPH_PG_DSN, VOLGRAPH_GATEWAY_URL).
"""

from __future__ import annotations

import gc
import os
import socket
import time
from datetime import datetime, timezone
from typing import Callable, Optional

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows.metrics import COUNTERS, STOP
from flows.steps import FlowClock, chain_builder, surface_builder
from operators.state.chain import now_wall_ms
from operators.events import (BookUpdate, FeedError, FuturePrice, IndexPrice, Instrument,
                              StatusReport, SurfacePatch, Ticker, CONSOLIDATED,
                              chain_key, surface_key)
from flows.config import Config, ConfigError, load_config


def build_flow(config: Config, source, sinks: list, *, now_ms: Callable[[], int] = now_wall_ms,
               clock_rate: float = 1.0, flow_id: str = "volgraph") -> Dataflow:
    """`source` (one, or a list with one per venue) yields normalised events; each sink
    receives fits, patches and status reports. With several sources and consolidation on,
    every option event also feeds the combined surface (venue "all"). `now_ms` is the flow's
    clock (a replay's exchange clock, say) and `clock_rate` its flow ms per wall ms (a paced
    replay's speed): epochs fall every runtime.epoch_ms of it."""
    flow = Dataflow(flow_id)
    sources = list(source) if isinstance(source, (list, tuple)) else [source]
    consolidate = config.consolidation.enabled and len(sources) > 1
    # each source's events, grouped per expiry: (chain key, [events], flow ms they entered) —
    # one bytewax item per expiry per source batch instead of one per message (bytewax costs
    # µs per item per step)
    clock = FlowClock(now_ms, clock_rate)
    feeds = [op.input(f"feed_{i}", flow, BatchingSource(src, config.runtime.status_interval_ms, consolidate, now_ms))
             for i, src in enumerate(sources)]
    feed = feeds[0] if len(feeds) == 1 else op.merge("feeds", *feeds)

    # chain[underlying|expiry]: L2 books, forward, IVs, SVI — once per epoch
    chain_in = op.filter_map("chain_in", feed, lambda x: (x[0], x) if type(x) is tuple else None)
    chain_out = op.stateful_batch("chain", chain_in, chain_builder(config, clock))

    # surface[underlying]: analytics nodes, calendar, tenors — one patch per epoch
    fits_and_ends = op.filter("fits_and_ends", chain_out, lambda kv: kv[1][0] != "error")
    indices = op.filter_map("indices", feed,
                            lambda e: (surface_key(e.venue, e.underlying), e) if type(e) is IndexPrice else None)
    to_surface = op.map("to_surface", op.merge("surface_merge", op.map("fit_key", fits_and_ends, _surface_keyed),
                                                  indices), lambda kv: (kv[0], kv))
    patches = op.map("patches", op.stateful_batch("surface", to_surface, surface_builder(config, clock)),
                     lambda kv: _count_patch(kv[1]))

    errors = op.filter_map("errors", chain_out, lambda kv: kv[1][1] if kv[1][0] == "error" else None)
    op.inspect("count_errors", errors, lambda _s, e: COUNTERS.add(f"errors.{e.reason}"))
    fits = op.filter_map("fits", chain_out, lambda kv: kv[1][1] if kv[1][0] == "fit" else None)
    statuses = op.filter("status", feed, lambda e: type(e) is StatusReport)
    out = op.merge("out", fits, patches, statuses)
    for i, sink in enumerate(sinks):
        op.output(f"sink_{i}", out, sink)
    return flow


def _surface_keyed(kv):
    key, item = kv
    return key.rsplit("|", 1)[0], item  # venue|underlying|expiry → venue|underlying


def _count_patch(patch: SurfacePatch) -> SurfacePatch:
    COUNTERS.add("patches")
    COUNTERS.set("patch_lag_ms", patch.ts_emit_ms - patch.ts_exchange_ms)
    return patch


class BatchingSource(FixedPartitionedSource):
    """Wraps a source of events: groups each batch per expiry key, stamped with the flow time
    reading it began (the epoch it entered in), interleaves a StatusReport every interval,
    counts events in and feed errors by reason."""

    def __init__(self, inner: FixedPartitionedSource, interval_ms: int, consolidate: bool = False,
                 now_ms: Callable[[], int] = now_wall_ms):
        self.inner = inner
        self.interval_ms = interval_ms
        self.consolidate = consolidate
        self.now_ms = now_ms

    def list_parts(self):
        return self.inner.list_parts()

    def build_part(self, step_id, for_part, resume_state):
        return _BatchingPartition(self.inner.build_part(step_id, for_part, resume_state), self.interval_ms,
                                  self.consolidate, self.now_ms)


class _BatchingPartition(StatefulSourcePartition):
    def __init__(self, inner: StatefulSourcePartition, interval_ms: int, consolidate: bool,
                 now_ms: Callable[[], int]):
        self.inner = inner
        self.consolidate = consolidate
        self.now_ms = now_ms
        # one report per process: the counters are process-wide, whatever the partition
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.interval_ms = interval_ms
        self.next_report_ms = 0
        # option instrument → its chain keys (its venue's, and the combined one), from Instrument events
        self.route: dict[str, tuple[str, ...]] = {}
        self.expiries: dict[tuple[str, str], set[str]] = {}  # (venue, underlying) → chain keys

    def next_batch(self):
        if STOP.is_set():
            raise StopIteration
        entered_ms = self.now_ms()
        events = self.inner.next_batch()
        out: list = []
        if events:
            COUNTERS.add("messages_in", len(events))
            groups: dict[str, list] = {}
            route = self.route
            index: dict[tuple[str, str], IndexPrice] = {}
            for e in events:
                kind = type(e)
                if kind is BookUpdate or kind is Ticker:  # the bulk: no list made per event
                    keys = route.get(e.instrument)
                    if keys is not None:
                        for key in keys:
                            group = groups.get(key)
                            if group is None:
                                groups[key] = [e]
                            else:
                                group.append(e)
                    elif kind is BookUpdate:
                        COUNTERS.add("errors.unknown_instrument")
                elif kind is Instrument:
                    if e.kind == "option":
                        keys = route[e.instrument] = self._keys(e.venue, e.underlying, e.expiry_ms)
                        for key in keys:
                            groups.setdefault(key, []).append(e)
                elif kind is FuturePrice:
                    for key in self._keys(e.venue, e.underlying, e.expiry_ms):
                        groups.setdefault(key, []).append(e)
                elif kind is IndexPrice:
                    index[(e.venue, e.underlying)] = e  # the latest per batch is all that matters
                elif kind is FeedError:
                    COUNTERS.add(f"errors.{e.reason}")
                    for key in route.get(e.instrument, ()):
                        groups.setdefault(key, []).append(e)
                else:
                    out.append(e)
            for (venue, underlying), e in index.items():
                out.append(e)
                for key in self.expiries.get((venue, underlying), ()):
                    groups.setdefault(key, []).append(e)
                if self.consolidate:
                    out.append(msgspec.structs.replace(e, venue=CONSOLIDATED))
                    for key in self.expiries.get((CONSOLIDATED, underlying), ()):
                        groups.setdefault(key, []).append(e)
            out.extend((key, evs, entered_ms) for key, evs in groups.items())
        now = int(time.time() * 1000)
        if now >= self.next_report_ms:
            self.next_report_ms = now + self.interval_ms
            out.append(StatusReport(self.name, now, COUNTERS.started_ms, COUNTERS.snapshot()))
        return out

    def _keys(self, venue: str, underlying: str, expiry_ms: int) -> tuple[str, ...]:
        keys = [chain_key(venue, underlying, expiry_ms)]
        self.expiries.setdefault((venue, underlying), set()).add(keys[0])
        if self.consolidate:
            keys.append(chain_key(CONSOLIDATED, underlying, expiry_ms))
            self.expiries.setdefault((CONSOLIDATED, underlying), set()).add(keys[1])
        return tuple(keys)

    def next_awake(self):
        inner = self.inner.next_awake()
        report = datetime.fromtimestamp(self.next_report_ms / 1000.0, tz=timezone.utc)
        # None means "poll again at once": keep it, or the report timer would throttle the feed
        return None if inner is None else min(inner, report)

    def snapshot(self):
        return self.inner.snapshot()

    def close(self):
        self.inner.close()


class CallbackSink(DynamicSink):
    """Hands every output item to a function (the CLI's status line, tests)."""

    def __init__(self, fn: Callable[[object], None]):
        self.fn = fn

    def build(self, step_id, worker_index, worker_count):
        fn = self.fn

        class _Part(StatelessSinkPartition):
            def write_batch(self, items):
                for item in items:
                    fn(item)

        return _Part()


def tune_gc() -> None:
    """Call once the process is built, before the flow runs. The flow allocates a few small
    objects per message and keeps long-lived books; reference counting frees almost all of
    them at once (events are immutable and hold no cycles), so the cyclic collector mostly
    walks objects that are about to die. Everything built so far (modules, kernels, config)
    is frozen out of it, and a young collection waits for 300,000 more live objects than
    freed ones — above what a source batch holds alive at once (5,000 shock frames of 32
    levels ≈ 175,000): at 10,000 the young collections took ~6 % of the CPU at full speed
    (830 → 32 ms of collector time per 13 s run; longest pause 13 → 1.6 ms), at 100,000 a
    shock batch still met a 26 ms one. CPython's default (700) cost 13–18 % of throughput."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(300_000, 20, 20)


def venue_sources(config: Config, urls: Optional[dict[str, str]] = None, run_seconds: Optional[float] = None) -> list:
    """One bytewax source per enabled venue; `urls` overrides a venue's URL (the simulators)."""
    urls = urls or {}
    sources = []
    # a partition per worker slot: each process reads the expiries it computes (connectors/venues/placement.py)
    workers = config.runtime.workers * config.runtime.processes
    d = config.sources.deribit
    if d.enabled:
        from connectors.venues.deribit import DeribitSource

        sources.append(DeribitSource(url=urls.get("deribit", d.url), currencies=d.currencies, depth=d.depth,
                                     book=d.book, interval=d.book_interval, heartbeat_s=d.heartbeat_s,
                                     queue_max=d.queue_max, max_frame_bytes=d.max_frame_bytes, run_seconds=run_seconds,
                                     route_workers=workers))
    o = config.sources.okx
    if o.enabled:
        from connectors.venues.okx import OkxSource

        sources.append(OkxSource(url=urls.get("okx", o.url), families=o.families, queue_max=o.queue_max,
                                 max_frame_bytes=o.max_frame_bytes, run_seconds=run_seconds, route_workers=workers))
    if not sources:
        raise ConfigError(f"{config.path}: no venue is enabled; set [sources.deribit] or [sources.okx] enabled = true")
    return sources


def default_flow(config_path: Optional[str] = None) -> Dataflow:
    """The flow as `python -m bytewax.run flows.surface:flow` builds it: all parts external.
    VOLGRAPH_URL / VOLGRAPH_OKX_URL override the venues' URLs."""
    from connectors.gateway.server.publisher import GatewaySink
    from connectors.postgres import PostgresSink

    config = load_config(config_path or os.environ.get("VOLGRAPH_CONFIG"))
    urls = {venue: os.environ[var] for venue, var in (("deribit", "VOLGRAPH_URL"), ("okx", "VOLGRAPH_OKX_URL"))
            if var in os.environ}
    source = venue_sources(config, urls)
    sinks = []
    gw = config.sinks.gateway
    if gw.enabled:
        url = os.environ.get("VOLGRAPH_GATEWAY_URL", f"ws://{gw.host}:{gw.port}/publish")
        sinks.append(GatewaySink(url, token=gw.publish_token))
    pg = config.sinks.postgres
    dsn = os.environ.get("VOLGRAPH_PG_DSN", pg.dsn)
    if pg.enabled and dsn:
        sinks.append(PostgresSink(dsn, batch_rows=pg.batch_rows, flush_ms=pg.flush_ms))
    flow = build_flow(config, source, sinks)
    tune_gc()
    return flow


def __getattr__(name: str):
    # `flow` is built on first access so importing this module stays side-effect free.
    if name == "flow":
        return default_flow()
    raise AttributeError(name)
