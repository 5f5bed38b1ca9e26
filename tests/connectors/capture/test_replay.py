"""connectors.capture.replay: recorded raw Deribit frames → events through the real parser, into the real
dataflow. Recordings are made by the real simulator's frame code (its offline methods, also
tested here); no sockets, no sleeps (pacing is checked through next_awake, never timed)."""

from __future__ import annotations

import gzip
import math
from datetime import datetime, timezone

import orjson
import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import run_main
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.venues.deribit import Control, parse_frame, parse_frames
from connectors.capture.replay import (PrefetchReader, ReplayFormatError, ReplaySource, count_frames, read_frames,
                               write_frames)
from connectors.capture.replay import _wall_ms as replay_wall_ms
from connectors.capture import replay as replay_module
from connectors.sim.deribit import Simulator
from flows.surface import build_flow
from tests.helpers.sinks import CallbackSink
from operators.events import (BookBatch, BookUpdate, FuturePrice, IndexPrice, Instrument, SmileFit, SurfacePatch, Ticker,
                              expand_books)
from flows.config import load_config
from operators.kernels.svi import total_variance
from tests.helpers.config import sim_kwargs
from tests.helpers.recordings import HEARTBEAT, START_MS, record
from tests.helpers.venues import assert_same_events_books_run_together

@pytest.fixture(scope="module")
def frames():
    return record()


@pytest.fixture
def recording(tmp_path, frames):
    path = tmp_path / "btc.jsonl.gz"
    assert write_frames(path, frames) == len(frames)
    return path


class EventClock:
    """now_ms = the newest ts_recv_ms the parser has seen: a flow clock derived from the events."""

    def __init__(self):
        self.now = 0
        self.parsed: list[int] = []  # ts_recv_ms of every frame parsed (to see what was replayed)

    def parse(self, raws, ts_recv_ms, max_bytes):  # a replay's batch parser
        self.parsed.extend(ts_recv_ms)
        self.now = max(self.now, *ts_recv_ms)
        return parse_frames(raws, ts_recv_ms, max_bytes)

    def __call__(self) -> int:
        return self.now


def run_replay(path, clock=None, **kw):
    clock = clock or EventClock()
    out = []
    source = ReplaySource(path, parse=clock.parse, **kw)
    run_main(build_flow(load_config(), source, [CallbackSink(out.append)], now_ms=clock))
    return out, clock


def drain(part) -> list:
    events = []
    while True:
        try:
            events.extend(part.next_batch())
        except StopIteration:
            return events


# ---------------------------------------------------------------- file format


def test_write_then_read_gives_the_frames_back(recording, frames):
    assert list(read_frames(recording)) == frames
    assert count_frames(recording) == len(frames)
    assert list(read_frames(recording, skip=len(frames) - 3)) == frames[-3:]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**53), st.text(max_size=200)), max_size=30))
def test_any_frames_round_trip(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("rt") / "f.jsonl.gz"
    assert write_frames(path, rows) == len(rows)
    assert list(read_frames(path)) == [(ts, text) for ts, text in rows]


def test_a_bad_line_names_the_file_the_line_and_the_format(tmp_path):
    path = tmp_path / "bad.jsonl.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(orjson.dumps({"ts_recv_ms": 1, "frame": HEARTBEAT}) + b"\n")
        fh.write(b'{"ts": 2, "frame": "x"}\n')
    with pytest.raises(ReplayFormatError, match=r"bad.jsonl.gz:2: .*ts_recv_ms"):
        list(read_frames(path))
    with gzip.open(path, "wb") as fh:
        fh.write(b'{"ts_recv_ms": "2", "frame": "x"}\n')
    with pytest.raises(ReplayFormatError, match="must be an integer"):
        list(read_frames(path))


_ODD_LINES = (b"", b"   ", b"not json", b'{"ts": 2, "frame": "x"}', b'{"ts_recv_ms": "2", "frame": "x"}',
              b'{"ts_recv_ms": true, "frame": "x"}', b'{"ts_recv_ms": 1, "frame": "a"},{"ts_recv_ms": 2, "frame": "b"}',
              b'{"ts_recv_ms": 1', b'"frame": "a"}', b"[]", b'{"ts_recv_ms": 3, "frame": "c", "extra": [1]}')


def _one_by_one(data: bytes, skip: int) -> tuple[list, str]:
    """The rule, plainly: every line after the first `skip` decoded alone, blank ones passed
    over; the frames up to the first bad line, and that line's error."""
    out = []
    for lineno, line in enumerate(data.split(b"\n"), start=1):
        if lineno <= skip or not line.strip():
            continue
        try:
            out.append(replay_module._decode_line(line, "f", lineno))
        except ReplayFormatError as exc:
            return out, str(exc)
    return out, ""


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.tuples(st.integers(0, 2**53), st.text(max_size=40)).map(
           lambda r: orjson.dumps({"ts_recv_ms": r[0], "frame": r[1]})), st.sampled_from(_ODD_LINES)), max_size=30),
       st.booleans(), st.lists(st.integers(0, 2_000), max_size=4), st.integers(0, 35))
def test_lines_in_any_chunks_read_as_one_by_one(lines, newline_at_end, cuts, skip):
    """Whatever the chunk cuts and the skip, frames_in_chunks gives the frames a plain
    line-by-line read gives, and stops at the same bad line with the same error."""
    data = b"\n".join(lines) + (b"\n" if newline_at_end else b"")
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in zip(points, points[1:])]
    want, error = _one_by_one(data, skip)
    got = []
    try:
        for row in replay_module.frames_in_chunks(iter(chunks), "f", skip):
            got.append(row)
        assert not error, error
    except ReplayFormatError as exc:
        assert str(exc) == error
    assert got == want


def test_bad_arguments_are_refused_with_the_fix(recording, tmp_path):
    with pytest.raises(FileNotFoundError, match="write_frames"):
        ReplaySource(tmp_path / "missing.jsonl.gz")
    with pytest.raises(ValueError, match="positive number"):
        ReplaySource(recording, speed="fast")
    with pytest.raises(ValueError, match="positive number"):
        ReplaySource(recording, speed=0)
    with pytest.raises(ValueError, match="stamp_recv"):
        ReplaySource(recording, stamp_recv="now")
    src = ReplaySource(recording)
    assert src.list_parts() == ["btc.jsonl.gz"]
    with pytest.raises(ValueError, match="not this source's file"):
        src.build_part("in", "other.jsonl.gz", None)


# ---------------------------------------------------------------- the simulator's offline frames


def test_offline_frames_are_what_a_subscriber_reads():
    sim = Simulator(**sim_kwargs(scale="small", seed=3, now_ms=START_MS, currencies=("BTC",)))
    listing = parse_frame(sim.offline_instruments_frame("BTC", "option", req_id=9, ts_ms=START_MS), START_MS,
                          64 << 20)
    insts = [e for e in listing if isinstance(e, Instrument)]
    assert {i.instrument for i in insts} == set(sim.instrument_names("BTC", "option"))
    assert isinstance(listing[-1], Control) and listing[-1].id == 9
    name = insts[0].instrument
    snap = parse_frame(sim.offline_initial_frame(f"book.{name}.100ms", START_MS), START_MS)[0]
    assert isinstance(snap, BookUpdate) and snap.kind == "snapshot" and snap.ts_exchange_ms == START_MS
    bids, asks = sim.quote_levels(name)
    assert [px for px, _ in snap.bids] == bids and [px for px, _ in snap.asks] == asks
    spot = sim.spot("BTC")
    sim.offline_shock("BTC", 0.01)
    assert sim.spot("BTC") == pytest.approx(spot * 1.01, rel=1e-12)
    change = parse_frame(sim.offline_frame(f"book.{name}.100ms", START_MS + 5), START_MS + 5)[0]
    assert change.kind == "change" and change.prev_seq == snap.seq and change.ts_exchange_ms == START_MS + 5
    index = parse_frame(sim.offline_frame("deribit_price_index.btc_usd", START_MS + 5), START_MS + 5)[0]
    assert isinstance(index, IndexPrice) and index.price == round(sim.spot("BTC"), 2)
    with pytest.raises(ValueError, match="not a channel"):
        sim.offline_frame("book.ETH-NOPE.100ms", START_MS)
    with pytest.raises(ValueError, match="relative move"):
        sim.offline_shock("BTC", 5.0)


def test_offline_frames_are_deterministic_given_the_seed():
    assert record(n_ticks=3, per_tick=40, seed=11) == record(n_ticks=3, per_tick=40, seed=11)
    assert record(n_ticks=3, per_tick=40, seed=11) != record(n_ticks=3, per_tick=40, seed=12)


# ---------------------------------------------------------------- partition behaviour


def test_partition_emits_parsed_events_and_skips_session_frames(recording, frames):
    part = ReplaySource(recording, batch_max=64).build_part("in", "btc.jsonl.gz", None)
    events = drain(part)
    expected = [e for ts, f in frames for e in parse_frame(f, ts, 64 << 20) if not isinstance(e, Control)]
    assert_same_events_books_run_together(events, expected)
    assert any(type(e) is BookBatch for e in events)  # the books in columns (operators/events.py)
    events = expand_books(events)
    assert part.snapshot() == len(frames)
    kinds = {type(e) for e in events}
    assert {Instrument, BookUpdate, Ticker, FuturePrice, IndexPrice} <= kinds and Control not in kinds
    assert isinstance(events[0], Instrument)  # a recording starts with discovery


def test_resuming_from_a_snapshot_skips_the_consumed_frames(recording, frames):
    src = ReplaySource(recording, batch_max=50)
    part = src.build_part("in", "btc.jsonl.gz", None)
    part.next_batch()
    part.next_batch()
    offset = part.snapshot()
    assert offset == 100
    rest = drain(src.build_part("in", "btc.jsonl.gz", offset))
    assert_same_events_books_run_together(
        rest, [e for ts, f in frames[offset:] for e in parse_frame(f, ts, 64 << 20) if not isinstance(e, Control)])


def test_max_frames_ends_the_run_and_the_offset_carries_on(recording, frames):
    src = ReplaySource(recording, batch_max=40, max_frames=90)
    part = src.build_part("in", "btc.jsonl.gz", None)
    drain(part)
    assert part.snapshot() == 90
    part2 = src.build_part("in", "btc.jsonl.gz", 90)
    drain(part2)
    assert part2.snapshot() == 180


def test_paced_replay_waits_with_next_awake_not_sleep(tmp_path):
    path = tmp_path / "paced.jsonl.gz"
    idx = '{"jsonrpc":"2.0","method":"subscription","params":{"channel":"deribit_price_index.btc_usd",' \
          '"data":{"index_name":"btc_usd","price":%s,"timestamp":%d}}}'
    write_frames(path, [(START_MS, idx % (100000.0, START_MS)), (START_MS + 400_000, idx % (100001.0, START_MS))])
    part = ReplaySource(path, speed=10.0).build_part("in", "paced.jsonl.gz", None)
    first = part.next_batch()
    assert [e.price for e in first] == [100000.0]
    wake = part.next_awake()
    # the second frame is 400 s later in the recording: due 40 s after the start at 10× speed
    assert wake == datetime.fromtimestamp((part.started_wall_ms + 40_000) / 1000.0, tz=timezone.utc)
    assert part.next_batch() == []  # not due yet: nothing, and the source does not block
    assert part.snapshot() == 1


def test_paced_replay_lets_frames_gather_after_a_part_batch(tmp_path):
    """Frames due a millisecond apart: after a part batch the partition reads again no sooner
    than gather_ms (a batch of many frames instead of a bytewax round per frame)."""
    path = tmp_path / "gather.jsonl.gz"
    idx = '{"jsonrpc":"2.0","method":"subscription","params":{"channel":"deribit_price_index.btc_usd",' \
          '"data":{"index_name":"btc_usd","price":%s,"timestamp":%d}}}'
    write_frames(path, [(START_MS + i, idx % (100000.0 + i, START_MS + i)) for i in range(10)])
    part = ReplaySource(path, speed=1.0, gather_ms=7.0).build_part("in", "gather.jsonl.gz", None)
    assert [e.price for e in part.next_batch()] == [100000.0]  # only the first is due at the start
    read_ms = replay_wall_ms()
    wake_ms = part.next_awake().timestamp() * 1000
    # the next frame is due 1 ms after the start; the partition waits the 7 ms instead
    assert wake_ms >= part.started_wall_ms + 7.0 and wake_ms <= read_ms + 7.0 + 1.0


def test_a_shared_start_paces_from_that_wall_time(tmp_path):
    """Partitions in several processes pace against one clock: nothing is due before the start,
    the first frame is due at it, and run_seconds counts from it."""
    path = tmp_path / "shared.jsonl.gz"
    idx = '{"jsonrpc":"2.0","method":"subscription","params":{"channel":"deribit_price_index.btc_usd",' \
          '"data":{"index_name":"btc_usd","price":100000.0,"timestamp":%d}}}'
    write_frames(path, [(START_MS, idx % START_MS)])
    start = replay_wall_ms() + 60_000
    part = ReplaySource(path, speed=1.0, start_wall_ms=start, run_seconds=1.0).build_part("in", "shared.jsonl.gz", None)
    assert part.next_batch() == []  # a minute early: not due, and not past run_seconds either
    assert part.next_awake() == datetime.fromtimestamp(start / 1000.0, tz=timezone.utc)
    assert part.snapshot() == 0


def test_wall_stamping_replaces_the_recorded_receive_time(recording):
    part = ReplaySource(recording, stamp_recv="wall").build_part("in", "btc.jsonl.gz", None)
    events = expand_books(part.next_batch())
    assert all(e.ts_recv_ms >= part.started_wall_ms for e in events) and part.started_wall_ms > START_MS + 10**9


# ---------------------------------------------------------------- through the dataflow


def _fit_key(f: SmileFit) -> tuple:
    return tuple(getattr(f, name) for name in f.__struct_fields__ if name not in ("ts_emit_ms", "fit_ms"))


def test_replay_through_the_flow_gives_fits_and_patches(recording, frames):
    out, clock = run_replay(recording)
    fits = [o for o in out if isinstance(o, SmileFit)]
    patches = [o for o in out if isinstance(o, SurfacePatch)]
    assert len(clock.parsed) == len(frames)
    sim = Simulator(**sim_kwargs(scale="small", seed=7, now_ms=START_MS, currencies=("BTC",)))
    assert {f.expiry_ms for f in fits} == set(sim.expiries("BTC"))
    assert patches and all(p.underlying == "BTC" for p in patches)
    for fit in {f.expiry_ms: f for f in fits}.values():  # the last fit of each expiry
        # the fitted smile is the simulator's true one, within the books' half-spread (0.5–2 vol pts)
        assert abs(fit.forward / sim.forward("BTC", fit.expiry_ms) - 1.0) < 0.005
        for k in (-0.05, 0.0, 0.05):
            fitted = math.sqrt(float(total_variance((fit.a, fit.b, fit.rho, fit.m, fit.sigma), k)) / fit.t_years)
            true = sim.true_vol("BTC", fit.expiry_ms, fit.forward * math.exp(k), forward=fit.forward)
            assert abs(fitted - true) < 0.01, (fit, k, fitted, true)
        assert fit.n_quotes >= 6


def test_the_same_recording_twice_gives_identical_fits(recording):
    first, _ = run_replay(recording)
    second, _ = run_replay(recording)
    a = [_fit_key(o) for o in first if isinstance(o, SmileFit)]
    b = [_fit_key(o) for o in second if isinstance(o, SmileFit)]
    assert a and a == b


def test_a_restarted_flow_resumes_after_the_consumed_frames(recording, frames, tmp_path):
    db = tmp_path / "recovery"
    db.mkdir()
    init_db_dir(db, 1)
    clock = EventClock()
    source = ReplaySource(recording, parse=clock.parse, batch_max=25, max_frames=150)
    run_main(build_flow(load_config(), source, [CallbackSink(lambda _: None)], now_ms=clock),
             epoch_interval=None, recovery_config=RecoveryConfig(str(db)))
    assert len(clock.parsed) == 150
    clock2 = EventClock()
    out = []
    source2 = ReplaySource(recording, parse=clock2.parse, batch_max=25)
    run_main(build_flow(load_config(), source2, [CallbackSink(out.append)], now_ms=clock2),
             recovery_config=RecoveryConfig(str(db)))
    # the second run parsed exactly the frames the first did not: none twice, none lost
    assert clock2.parsed == [ts for ts, _ in frames[150:]]
    assert any(isinstance(o, SmileFit) for o in out)


# ---------------------------------------------------------------- several files, read-ahead thread


def test_several_files_make_one_partition_each(tmp_path, frames):
    btc, eth = tmp_path / "btc.jsonl.gz", tmp_path / "eth.jsonl.gz"
    write_frames(btc, frames[:300])
    write_frames(eth, frames[300:])
    src = ReplaySource([btc, eth], batch_max=70)
    assert src.list_parts() == ["btc.jsonl.gz", "eth.jsonl.gz"]
    got_eth = drain(src.build_part("in", "eth.jsonl.gz", None))
    got_btc = drain(src.build_part("in", "btc.jsonl.gz", None))
    expect = lambda rows: [e for ts, f in rows for e in parse_frame(f, ts, 64 << 20) if not isinstance(e, Control)]  # noqa: E731
    assert_same_events_books_run_together(got_btc, expect(frames[:300]))
    assert_same_events_books_run_together(got_eth, expect(frames[300:]))
    # each partition resumes from its own offset
    part = src.build_part("in", "eth.jsonl.gz", 5)
    assert_same_events_books_run_together(drain(part), expect(frames[305:]))
    assert part.snapshot() == len(frames) - 300
    with pytest.raises(ValueError, match="'btc.jsonl.gz', 'eth.jsonl.gz'"):
        src.build_part("in", "sol.jsonl.gz", None)
    other = tmp_path / "again"
    other.mkdir()
    write_frames(other / "btc.jsonl.gz", frames[:3])
    with pytest.raises(ValueError, match="must differ"):
        ReplaySource([btc, other / "btc.jsonl.gz"])
    with pytest.raises(ValueError, match="at least one"):
        ReplaySource([])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**53), st.text(max_size=300)), max_size=40), st.integers(0, 45),
       st.integers(1, 3))
def test_prefetch_reader_gives_what_read_frames_gives(tmp_path_factory, rows, skip, depth):
    path = tmp_path_factory.mktemp("pf") / "f.jsonl.gz"
    write_frames(path, rows)
    reader = PrefetchReader(path, skip=skip, depth=depth)
    try:
        assert list(reader) == list(read_frames(path, skip=skip)) == [(ts, t) for ts, t in rows[skip:]]
    finally:
        reader.close()


def test_prefetch_reader_spans_many_blocks_and_gzip_members(tmp_path, frames):
    # a recording bigger than several read-ahead blocks, as two concatenated gzip members
    big = frames * 40
    a, b = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    write_frames(a, big)
    write_frames(b, frames[:10], compresslevel=1)
    both = tmp_path / "both.jsonl.gz"
    both.write_bytes(a.read_bytes() + b.read_bytes())
    reader = PrefetchReader(both, skip=7, depth=1)
    assert list(reader) == list(read_frames(both, skip=7)) == (big + frames[:10])[7:]
    reader.close()


def test_prefetch_reader_reports_a_truncated_file_and_stops_on_close(tmp_path, frames):
    path = tmp_path / "cut.jsonl.gz"
    write_frames(path, frames * 20)
    path.write_bytes(path.read_bytes()[:-5000])
    with pytest.raises(EOFError, match="cut.jsonl.gz: the gzip stream ends early"):
        list(PrefetchReader(path))
    # closed after one frame with the queue full: the thread ends (join waits on it, no sleep)
    write_frames(path, frames * 200)
    reader = PrefetchReader(path, depth=1)
    assert next(reader) == frames[0]
    reader.close()
    reader._thread.join(timeout=10)
    assert not reader._thread.is_alive()


def test_prefetch_preload_and_inline_partitions_emit_the_same_events(recording):
    def events(**kw):
        return drain(ReplaySource(recording, batch_max=33, **kw).build_part("in", "btc.jsonl.gz", None))

    inline = expand_books(events(prefetch=False))
    assert expand_books(events(prefetch=True)) == inline and len(inline) > 100
    assert expand_books(events(preload=True)) == inline and expand_books(events(preload=True, prefetch=False)) == inline
    # a preloaded partition resumes after the frames its snapshot counts, like the others
    first = ReplaySource(recording, batch_max=33, preload=True).build_part("in", "btc.jsonl.gz", None)
    head = first.next_batch() + first.next_batch()
    resumed = ReplaySource(recording, batch_max=33, preload=True).build_part("in", "btc.jsonl.gz", first.snapshot())
    assert expand_books(head + drain(resumed)) == inline
