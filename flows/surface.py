"""The volgraph dataflow (docs/architecture.md §4), read top to bottom like its diagram:

    feed ─ChainBatch─► chain[venue|underlying|expiry] ─ExpiryFit/ExpiryLadders/ExpiryGone─► surface[venue|underlying] ─► sinks
           (flows/routing.py)  L2 books, forward, IVs (dirty        analytics nodes, calendar,
                               strikes, small moves), SVI fits      tenors, one patch per epoch
                                   └── SmileFit ─────────────────────────────────────────────► sinks

Items between steps are typed (operators/items.py) and every step's output is split by type
with `op.branch`, so each sink receives only the types it declares in `consumes` (a sink
without `consumes` — a test's — receives all of them). The L2 books live inside the chain
step, keyed by expiry, rather than in a step of their own keyed by instrument: a batch of one
expiry's events is then one bytewax item instead of one item per message per step.

Run it with `volgraph run` (simulator, embedded PostgreSQL and gateway included) or, with
everything external, `python -m bytewax.run flows.surface:flow` (configured by the
environment: VOLGRAPH_CONFIG, VOLGRAPH_URL, VOLGRAPH_PG_DSN, VOLGRAPH_GATEWAY_URL). That bare
entry point sets up its own logging (VOLGRAPH_LOG_FORMAT, else graph.toml runtime.log_format),
serves /metrics (VOLGRAPH_METRICS_PORT / VOLGRAPH_METRICS_HOST, else graph.toml
runtime.metrics_port / metrics_host) and stops gracefully on SIGTERM or SIGINT (flows/services.py).
"""

from __future__ import annotations

import gc
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream, operator
from bytewax.outputs import FixedPartitionedSink

from flows.config import Config, ConfigError, load_config
from flows.metrics import (CALENDAR_VIOLATIONS, COUNTERS, DEPENDENCIES, HANDOFF_SECONDS, STOP, forget_fit, observe_fit,
                           serve_metrics)
from flows.routing import BatchingSource, MarketEvents
from flows.steps import FlowClock, chain_builder, surface_builder
from operators.events import CONSOLIDATED, FeedError, IndexPrice, SmileFit, StatusReport, SurfacePatch, surface_key
from operators.items import ChainBatch, ExpiryFit, ExpiryGone, ExpiryLadders
from operators.state.chain import now_wall_ms

OUTPUT_TYPES = (SmileFit, SurfacePatch, StatusReport)  # what sinks can consume
log = logging.getLogger("volgraph.flow")


@dataclass(frozen=True)
class Feed:
    """A venue source's output, split by type."""

    batches: Stream[ChainBatch]
    indices: Stream[IndexPrice]
    statuses: Stream[StatusReport]
    market: Optional[Stream[MarketEvents]] = None  # with market-event storage on only


@dataclass(frozen=True)
class ChainOut:
    """The chain step's output, split by type."""

    fits: Stream[ExpiryFit]
    gone: Stream[ExpiryGone]
    errors: Stream[FeedError]
    ladders: Stream[ExpiryLadders]  # vol at size between fits


@operator
def feed(step_id: str, flow: Dataflow, source: BatchingSource) -> Feed:
    """One venue's events: ChainBatches for the chain step, index prices, StatusReports, and
    with market-event storage on (source.market) the MarketEvents items to store."""
    items = op.input("input", flow, source)
    batches = op.branch("batches", items, lambda x: type(x) is ChainBatch)
    op.inspect("freshness", batches.trues, _heard)
    indices = op.branch("indices", batches.falses, lambda x: type(x) is IndexPrice)
    if not source.market:
        return Feed(batches.trues, indices.trues, indices.falses)
    market = op.branch("market", indices.falses, lambda x: type(x) is MarketEvents)
    return Feed(batches.trues, indices.trues, market.falses, market.trues)


@operator
def chains(step_id: str, batches: Stream[ChainBatch], builder) -> ChainOut:
    """chain[venue|underlying|expiry]: L2 books, forward, IVs, SVI fits — once per epoch."""
    keyed = op.key_on("key", batches, lambda b: b.key)
    out = op.key_rm("unkey", op.stateful_batch("chain", keyed, builder))
    fits = op.branch("fits", out, lambda x: type(x) is ExpiryFit)
    gone = op.branch("gone", fits.falses, lambda x: type(x) is ExpiryGone)
    ladders = op.branch("ladders", gone.falses, lambda x: type(x) is ExpiryLadders)
    return ChainOut(fits.trues, gone.trues, ladders.falses, ladders.trues)


@operator
def surfaces(step_id: str, items: Stream, builder) -> Stream[SurfacePatch]:
    """surface[venue|underlying]: analytics nodes, calendar, tenors — one patch per epoch."""
    keyed = op.key_on("key", items, lambda x: x.surface_key if type(x) is not IndexPrice
                      else surface_key(x.venue, x.underlying))
    return op.map("count", op.key_rm("unkey", op.stateful_batch("surface", keyed, builder)), _count_patch)


def build_flow(config: Config, source, sinks: list, *, now_ms: Callable[[], int] = now_wall_ms,
               clock_rate: float = 1.0, flow_id: str = "volgraph") -> Dataflow:
    """`source` (one, or a list with one per venue) yields normalised events; each sink receives
    the output types in its `consumes` (SmileFit, SurfacePatch, StatusReport), or all of them.
    With several sources and consolidation on, every option event also feeds the combined
    surface (venue "all"). `now_ms` is the flow's clock (a replay's exchange clock, say) and
    `clock_rate` its flow ms per wall ms (a paced replay's speed): epochs fall every
    runtime.epoch_ms of it."""
    flow = Dataflow(flow_id)
    sources = list(source) if isinstance(source, (list, tuple)) else [source]
    consolidate = config.consolidation.enabled and len(sources) > 1
    clock = FlowClock(now_ms, clock_rate)
    market = any(getattr(sink, "stores_market_events", False) for sink in sinks)
    feeds = [feed(f"feed_{i}", flow, BatchingSource(src, interval_ms=config.runtime.status_interval_ms,
                                                      consolidate=consolidate, now_ms=now_ms,
                                                      index_venue=config.consolidation.index_venue, market=market))
             for i, src in enumerate(sources)]
    watch_dependencies(config, sinks)
    merged = (lambda name, streams: streams[0] if len(streams) == 1 else op.merge(name, *streams))
    chain = chains("chains", merged("batches", [f.batches for f in feeds]), chain_builder(config, clock))
    op.inspect("count_errors", chain.errors, lambda _s, e: COUNTERS.add(f"errors.{e.reason}"))
    op.inspect("forget_fits", chain.gone, lambda _s, g: forget_fit(g.venue, g.underlying, g.expiry_ms))
    patches = surfaces("surfaces", op.merge("to_surface", chain.fits, chain.ladders, chain.gone,
                                            *(f.indices for f in feeds)),
                       surface_builder(config, clock))
    by_type = {SmileFit: op.map("smile_fits", chain.fits, _observe_fit), SurfacePatch: patches,
               StatusReport: merged("statuses", [f.statuses for f in feeds])}
    for i, sink in enumerate(sinks):
        if getattr(sink, "stores_market_events", False):  # the sources' events (market_event_sink)
            # a resumed partition rolls back to its snapshot when any source sends its events again
            # (a source that does not declare it is taken as live: connectors/postgres/market_sink.py)
            sink.resends = any(getattr(src, "resends_after_resume", False) for src in sources)
            market_events_output(f"market_events_{i}", feeds, sink)
            continue
        wanted = getattr(sink, "consumes", OUTPUT_TYPES)
        unknown = [t for t in wanted if t not in by_type]
        if unknown:
            raise ConfigError(f"sink {type(sink).__name__} consumes {', '.join(t.__name__ for t in unknown)}; "
                              f"the flow outputs {', '.join(t.__name__ for t in OUTPUT_TYPES)}: fix its `consumes`")
        stream = merged(f"sink_{i}_in", [by_type[t] for t in wanted])
        if isinstance(sink, FixedPartitionedSink):  # items go to the partition of their key (the surface's)
            stream = op.key_on(f"sink_{i}_key", stream, sink.key_of)
        op.output(f"sink_{i}", stream, sink)
    return flow


def market_events_output(step_id: str, feeds: list[Feed], sink) -> None:
    """The events every source emitted, once each, to a market-event sink: the sources' own
    MarketEvents items (flows/routing.py makes one per surface per batch in the loop that
    routes the events), keyed by surface. Items, not events, cross the bytewax steps: bytewax
    costs microseconds per item per step (docs/benchmarks.md "Market events")."""
    streams = [f.market for f in feeds]
    items = streams[0] if len(streams) == 1 else op.merge(f"{step_id}_in", *streams)
    op.output(step_id, op.key_on(f"{step_id}_key", items, sink.key_of), sink)


_first_patch: set[tuple[str, str]] = set()


def _count_patch(patch: SurfacePatch) -> SurfacePatch:
    COUNTERS.add("patches")
    # every patch carries the surface's whole set of calendar checks (operators/state/surface.py)
    CALENDAR_VIOLATIONS.labels(patch.venue, patch.underlying).set(sum(not c.ok for c in patch.calendar))
    COUNTERS.set("patch_lag_ms", patch.ts_emit_ms - patch.ts_exchange_ms)
    key = (patch.venue, patch.underlying)
    if key not in _first_patch:  # one line per surface, not per patch: the epoch is its trace id
        _first_patch.add(key)
        log.info("first patch of %s:%s (%d expiries)", patch.venue, patch.underlying, len(patch.expiries),
                 extra={"epoch": patch.epoch})
    return patch


def _heard(_step: str, batch: ChainBatch) -> None:
    venue = batch.key[:batch.key.index("|")]
    if venue != CONSOLIDATED:  # the combined surface's copy of the same events
        COUNTERS.heard(venue)


def _observe_fit(item: ExpiryFit) -> SmileFit:
    fit = item.fit
    observe_fit(fit.venue, fit.underlying, fit.expiry_ms, fit.fit_ms, fit.rmse_vol_pts, fit.butterfly_ok)
    return fit


def watch_dependencies(config: Config, sinks: list) -> None:
    """The probes behind volgraph_dependency_up and the StatusReports' `dependency.*` counters:
    the feeds (up while a message came within consolidation.venue_stale_ms) and, with a
    PostgreSQL sink, the database (its writers' state) and the write backlog."""
    started_s = time.time()
    stale_s = config.consolidation.venue_stale_ms / 1000.0

    def feeds():
        last = COUNTERS.last_message_s
        age = time.time() - (last if last is not None else started_s)
        return (None if last is None else age <= stale_s), age

    COUNTERS.forget_probes()
    COUNTERS.probe("feeds", feeds)
    DEPENDENCIES.backlog = None
    lists = [sink.writers for sink in sinks if isinstance(getattr(sink, "writers", None), list)]
    if not lists:
        return

    def all_writers():  # PostgresSink.writers fills in as bytewax builds the partitions
        return [w for ws in lists for w in ws]

    def database():
        tried = [w for w in all_writers() if w.db_since_s is not None]
        if not tried:
            return None, time.time() - started_s
        return all(w.db_up for w in tried), time.time() - max(w.db_since_s for w in tried)

    def backlog():
        stats = [w.stats() for w in all_writers()]
        return float(sum(s["pending"] for s in stats)), float(sum(s["spilled"] for s in stats))

    COUNTERS.probe("database", database)
    DEPENDENCIES.backlog = backlog


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
    """One bytewax source per enabled venue (connectors/venues/registry.py); `urls` overrides a
    venue's URL (the simulators)."""
    from connectors.venues import VENUES

    urls = urls or {}
    # a partition per worker slot: each process reads the expiries it computes (connectors/venues/placement.py)
    workers = config.runtime.workers * config.runtime.processes
    sources = [v.source_from_config()(getattr(config.sources, name), url=urls.get(name), run_seconds=run_seconds,
                                      route_workers=workers)
               for name, v in VENUES.items() if getattr(config.sources, name).enabled]
    if not sources:
        sections = " or ".join(f"[{v.config_section}]" for v in VENUES.values())
        raise ConfigError(f"{config.path}: no venue is enabled; set {sections} enabled = true")
    return sources


def default_flow(config_path: Optional[str] = None) -> Dataflow:
    """The flow as `python -m bytewax.run flows.surface:flow` builds it: all parts external.
    Each venue's url_env (connectors/venues/registry.py: VOLGRAPH_URL, VOLGRAPH_OKX_URL) overrides its URL."""
    from connectors.gateway.publisher import GatewaySink
    from connectors.venues import VENUES

    config = load_config(config_path or os.environ.get("VOLGRAPH_CONFIG"))
    from flows.services import StartError, StopSignals, check_port_free, setup_logging

    try:
        setup_logging("flow", default=config.runtime.log_format)
    except StartError as exc:
        raise ConfigError(str(exc)) from None
    port = int(os.environ.get("VOLGRAPH_METRICS_PORT") or config.runtime.metrics_port)
    host = os.environ.get("VOLGRAPH_METRICS_HOST") or config.runtime.metrics_host
    if port:
        fix = "set VOLGRAPH_METRICS_PORT (or runtime.metrics_port) to a free port (0: no /metrics) or stop that process"
        try:
            check_port_free(host, port, "flow metrics", fix)
            serve_metrics(port, host)
        except (StartError, OSError) as exc:
            raise ConfigError(str(exc) if isinstance(exc, StartError) else f"flow metrics: {exc.strerror}; {fix}") from None
        log.info("flow metrics on http://%s:%d/metrics", host, port)
    StopSignals(lambda name: (log.info("%s: stopping; the flow drains its input and flushes its sinks", name),
                              STOP.set())).install()
    urls = {name: os.environ[v.url_env] for name, v in VENUES.items() if v.url_env in os.environ}
    source = venue_sources(config, urls)
    sinks = []
    gw = config.sinks.gateway
    if gw.enabled:
        url = os.environ.get("VOLGRAPH_GATEWAY_URL", f"ws://{gw.host}:{gw.port}/publish")
        sinks.append(GatewaySink(url, token=gw.publish_token, token_file=gw.publish_token_file))  # or $VOLGRAPH_PUBLISH_TOKEN
    pg = config.sinks.postgres
    dsn = os.environ.get("VOLGRAPH_PG_DSN", pg.dsn)
    if pg.enabled and dsn:
        from flows.runs import cluster_run_id, run_info
        run = run_info(config, source="live", detail=" ".join(sorted(urls.values())) or "graph.toml sources",
                       run_id=cluster_run_id(config))
        log.info("run %s (code %s, config %s)", run.run_id, run.code_version, run.config_hash)
        sinks.append(postgres_sink(config, dsn, run, os.path.join(config.runtime.data_dir, "spill")))
        events = market_event_sink(config, dsn, run, os.path.join(config.runtime.data_dir, "spill"))
        if events is not None:
            sinks.append(events)
    flow = build_flow(config, source, sinks)
    tune_gc()
    return flow


def postgres_sink(config: Config, dsn: str, run, spill_dir):
    """The PostgreSQL sink as graph.toml configures it: one partition per worker slot."""
    from connectors.postgres import PostgresSink

    pg = config.sinks.postgres
    return PostgresSink(dsn, run=run, partitions=config.runtime.processes * config.runtime.workers,
                        on_handoff=HANDOFF_SECONDS.observe,
                        batch_rows=pg.batch_rows, flush_ms=pg.flush_ms, handoff_timeout_s=pg.handoff_timeout_s, depth_vols=pg.depth_vols,
                        spill_dir=spill_dir)


def market_event_sink(config: Config, dsn: str, run, spill_dir):
    """The market-event sink as graph.toml configures it ([sinks.postgres] market_events,
    market_batch_items, market_retention_days), or None when storage is off."""
    pg = config.sinks.postgres
    if not pg.market_events:
        return None
    from connectors.postgres.market_sink import MarketEventSink

    return MarketEventSink(dsn, run=run, partitions=config.runtime.processes * config.runtime.workers,
                           batch_rows=pg.market_batch_items, flush_ms=pg.flush_ms,
                           handoff_timeout_s=pg.handoff_timeout_s, retention_days=pg.market_retention_days,
                           spill_dir=spill_dir)


def __getattr__(name: str):
    # `flow` is built on first access so importing this module stays side-effect free.
    if name == "flow":
        return default_flow()
    raise AttributeError(name)
