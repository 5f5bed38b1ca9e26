"""connectors/venues/placement.py against real bytewax runs: where a key's stateful step runs, and which
worker reads each slot of a source split per worker."""

import random

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.testing import TestingSource, cluster_main

from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.venues.placement import Placement, expiry_slot, routed_key, slot_names, slot_of_name, worker_of
from operators.events import chain_key, split_chain_key
from tests.helpers.sinks import WorkerSink


def _keys() -> list[str]:
    rng = random.Random(11)
    alphabet = "abcXYZ019|-_.é中😀"
    keys = ["", "a", "1234567", "12345678", "123456789"]  # around SipHash's 8-byte blocks
    keys += [chain_key("deribit", u, 1767686400000 + d * 86_400_000) for u in ("BTC", "ETH") for d in range(40)]
    keys += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(200)]
    return keys


def _ran_on(name: str, keys, workers: int) -> dict:
    """key → the worker a real bytewax cluster of `workers` ran its stateful step on."""
    flow = Dataflow(name)
    keyed = op.input("in", flow, TestingSource([(k, 1) for k in keys]))
    counted = op.stateful_map("count", keyed, lambda state, v: ((state or 0) + v, (state or 0) + v))
    sink = WorkerSink()
    op.output("out", op.map("key", counted, lambda kv: kv[0]), sink)
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return dict(sink.seen)


@pytest.mark.parametrize("workers", [2, 3])
def test_worker_of_is_where_bytewax_runs_the_key(workers):
    keys = _keys()
    ran_on = _ran_on("placement_keys", keys, workers)
    assert sorted(ran_on) == sorted(set(keys))
    wrong = {k: (ran_on[k], worker_of(k, workers)) for k in ran_on if ran_on[k] != worker_of(k, workers)}
    assert not wrong, f"bytewax ran these keys elsewhere (ran on, predicted): {wrong}"
    assert len(set(ran_on.values())) == workers  # the keys really spread


@pytest.mark.parametrize("workers", [2, 3])
def test_a_routed_key_runs_on_its_slot(workers):
    bases = [chain_key("deribit", u, 1767686400000 + d * 86_400_000) for u in ("BTC", "ETH") for d in range(30)]
    wanted = {routed_key(b, slot, workers): slot for b in bases for slot in range(workers)}
    assert _ran_on("placement_routed", wanted, workers) == wanted
    for b in bases:
        home = worker_of(b, workers)
        assert routed_key(b, home, workers) == b  # a key already on its slot is left as it is
        for slot in range(workers):
            assert split_chain_key(routed_key(b, slot, workers)) == split_chain_key(b)


class _NamedParts(FixedPartitionedSource):
    """Each partition yields its own name once."""

    def __init__(self, names):
        self.names = names

    def list_parts(self):
        return list(self.names)

    def build_part(self, step_id, for_part, resume_state):
        class _Part(StatefulSourcePartition):
            done = False

            def next_batch(self):
                if self.done:
                    raise StopIteration
                self.done = True
                return [for_part]

            def snapshot(self):
                return None

        return _Part()


@pytest.mark.parametrize("workers", [2, 3])
def test_slot_k_of_every_group_is_read_on_worker_k(workers):
    names = [n for base in ("deribit-ETH", "deribit-BTC", "okx-BTC") for n in slot_names(base, workers)]
    random.Random(3).shuffle(names)  # bytewax sorts them: the order given must not matter
    flow = Dataflow("placement_parts")
    sink = WorkerSink()
    op.output("out", op.input("in", flow, _NamedParts(names)), sink)
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    read_on = dict(sink.seen)
    assert sorted(read_on) == sorted(names)
    for base in ("deribit-ETH", "deribit-BTC", "okx-BTC"):
        assert [read_on[n] for n in slot_names(base, workers)] == list(range(workers))


def test_slot_names():
    assert slot_names("BTC", 1) == ["BTC"]
    assert slot_names("BTC", 2) == ["BTC.w0of2", "BTC.w1of2"]
    names = slot_names("BTC", 12)
    assert names == sorted(names) and names[10] == "BTC.w10of12" and names[2] == "BTC.w02of12"
    with pytest.raises(ValueError, match="at least one worker"):
        worker_of("x", 0)


def test_expiry_slot_is_the_chain_keys_worker_and_none_for_what_every_slot_reads():
    expiry = 1767686400000
    assert expiry_slot("deribit", "BTC", expiry, 2) == worker_of(chain_key("deribit", "BTC", expiry), 2)
    assert expiry_slot("deribit", "BTC", 0, 2) is None  # a perpetual: every slot
    assert expiry_slot("deribit", "BTC", expiry, 1) is None  # one worker: one slot reads all


def test_slot_of_name_inverts_slot_names():
    for workers in (2, 3, 12):
        for k, name in enumerate(slot_names("deribit-BTC", workers)):
            assert slot_of_name(name) == (k, workers)
    assert slot_of_name("workload.BTC.w1of2.jsonl.gz") == (1, 2)  # a replayed recording of slot 1
    assert slot_of_name("deribit-BTC") is None and slot_of_name("BTC.w2of2") is None
    assert slot_of_name("BTC.w1of2x") is None


# ---------------------------------------------------------------- Placement (pure)

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
T0_MS = 1_767_686_400_000  # 2026-01-06 08:00 UTC: its fresh-start round began at 07:30
LISTED_MS = T0_MS - 30 * DAY_MS  # when the expiries live at the start were listed


def _options(listing: dict, listed_ms: int = LISTED_MS) -> list[tuple[int, int]]:
    """{expiry_ms: option count} listed at one time → one (expiry_ms, listed_ms) per option."""
    return [(e, listed_ms) for e, n in listing.items() for _ in range(n)]


def test_a_fresh_start_splits_a_skewed_listing_evenly():
    """12 expiries of 24 to 1,148 options (4,008 in all, short expiries thin and long ones deep,
    as listings are): longest first to the least-loaded slot splits them 6/6 and 2,004/2,004."""
    counts = [24, 40, 56, 80, 120, 160, 240, 320, 400, 520, 900, 1148]
    listing = {T0_MS + (i + 1) * DAY_MS: n for i, n in enumerate(counts)}
    assert sum(counts) == 4008
    slots = Placement(2).assign("BTC", _options(listing), T0_MS)
    load = [sum(n for e, n in listing.items() if slots[e] == k) for k in (0, 1)]
    assert load == [2004, 2004] and sorted(slots.values()).count(0) == 6
    capped = Placement(2, cap=100).assign("BTC", _options(listing), T0_MS)  # a slot reads 100 options at most
    assert sorted(capped.values()).count(0) == 6  # eight expiries of 100 and four thinner ones: 6/6


def test_new_listings_go_to_the_least_loaded_slot_at_their_listing_and_live_expiries_never_move():
    p = Placement(2)
    first = p.assign("BTC", _options({T0_MS + DAY_MS: 100, T0_MS + 2 * DAY_MS: 60, T0_MS + 3 * DAY_MS: 30}), T0_MS)
    assert first == {T0_MS + DAY_MS: 0, T0_MS + 2 * DAY_MS: 1, T0_MS + 3 * DAY_MS: 1}
    # listed a day on, as the first expiry ends (slot 0 is then empty): the new one goes there,
    # weighed by what was listed with it, not by strikes added later
    listed = T0_MS + DAY_MS
    later = p.assign("BTC", _options({T0_MS + 2 * DAY_MS: 60, T0_MS + 3 * DAY_MS: 30})
                     + _options({T0_MS + 4 * DAY_MS: 10}, listed) + _options({T0_MS + 4 * DAY_MS: 500}, listed + HOUR_MS),
                     listed + 2 * HOUR_MS)
    assert later == {T0_MS + 2 * DAY_MS: 1, T0_MS + 3 * DAY_MS: 1, T0_MS + 4 * DAY_MS: 0}
    assert p.slot_of("deribit", "BTC", 0) is None  # a perpetual: every slot reads it
    assert p.slot_of("deribit", "ETH", T0_MS) == expiry_slot("deribit", "ETH", T0_MS, 2)  # not placed: the hash
    assert Placement(2, p.state()).state() == p.state()
    with pytest.raises(ValueError, match="another worker count"):
        Placement(1, p.state())


def test_an_expiry_ending_in_the_fresh_starts_round_is_placed_by_the_hash_and_weighs_nothing():
    ending = T0_MS + 20 * 60_000  # 08:20, inside the round 07:30–08:30: a slot starting at 08:21 never sees it
    p = Placement(2)
    got = p.assign("BTC", _options({ending: 500, T0_MS + DAY_MS: 40, T0_MS + 2 * DAY_MS: 30}), T0_MS)
    assert ending not in got and p.slot_of("deribit", "BTC", ending) == expiry_slot("deribit", "BTC", ending, 2)
    assert got == Placement(2).assign("BTC", _options({T0_MS + DAY_MS: 40, T0_MS + 2 * DAY_MS: 30}), T0_MS + 21 * 60_000)


def test_a_snapshot_from_before_listing_order_still_resumes():
    old = {"BTC": {T0_MS + DAY_MS: (1, 100), T0_MS + 2 * DAY_MS: (0, 60)}}
    p = Placement(2, old)
    assert p.placed("BTC") == {T0_MS + DAY_MS: 1, T0_MS + 2 * DAY_MS: 0}
    got = p.assign("BTC", _options({T0_MS + DAY_MS: 100, T0_MS + 2 * DAY_MS: 60, T0_MS + 3 * DAY_MS: 10}, T0_MS),
                   T0_MS + HOUR_MS)
    assert got == {T0_MS + DAY_MS: 1, T0_MS + 2 * DAY_MS: 0, T0_MS + 3 * DAY_MS: 0}  # 60 against 100


def test_two_slots_agree_whatever_discoveries_see_two_listings_in():
    """A month end is listed, then a daily that expires before it. Slot 0's client discovers
    between the two listings; slot 1's only after both. Placed in listing order and weighed as
    at each listing, both put the daily in the same place (by discovery order they did not)."""
    live = _options({T0_MS + 10 * DAY_MS: 300, T0_MS + 20 * DAY_MS: 250})
    month_end, daily = T0_MS + 30 * DAY_MS, T0_MS + 5 * DAY_MS
    early, late = Placement(2), Placement(2)
    assert early.assign("BTC", live, T0_MS) == late.assign("BTC", live, T0_MS)
    early.assign("BTC", live + _options({month_end: 100}, T0_MS + 1), T0_MS + 1)
    both = live + _options({month_end: 100}, T0_MS + 1) + _options({daily: 40}, T0_MS + 2)
    assert early.assign("BTC", both, T0_MS + 2) == late.assign("BTC", both, T0_MS + 2)


_expiry = st.tuples(st.integers(1, 60), st.integers(1, 80))  # (days to expiry, options)


@st.composite
def _worlds(draw):
    """A venue's listing over ten days, and each of two slots' discovery times: both first
    discover within one fresh-start round (they start together), then every 1 minute to 6 hours."""
    at_start = draw(st.lists(_expiry, min_size=1, max_size=12))
    options = [(T0_MS + d * DAY_MS, LISTED_MS - draw(st.integers(0, 30)) * DAY_MS) for d, n in at_start for _ in range(n)]
    for _ in range(draw(st.integers(0, 8))):  # later listings: a burst of strikes, more strikes added later
        listed = T0_MS + draw(st.integers(0, 10 * DAY_MS))
        expiry = listed + draw(st.integers(1, 40)) * DAY_MS
        options += [(expiry, listed + draw(st.integers(0, 59_000))) for _ in range(draw(st.integers(1, 60)))]
        options += [(expiry, listed + draw(st.integers(60_000, 3 * DAY_MS))) for _ in range(draw(st.integers(0, 20)))]
    for _ in range(draw(st.integers(0, 4))):  # strikes added to expiries live at the start
        d, _n = draw(st.sampled_from(at_start))
        options += [(T0_MS + d * DAY_MS, T0_MS + draw(st.integers(0, 5 * DAY_MS)))] * draw(st.integers(1, 10))
    slots = []
    for _ in range(2):
        t = T0_MS + draw(st.integers(-30 * 60_000, 29 * 60_000))  # in the round 07:30–08:30
        times = [t]
        for gap in draw(st.lists(st.integers(60_000, 6 * HOUR_MS), max_size=30)):
            times.append(times[-1] + gap)
        while times[-1] < T0_MS + 11 * DAY_MS:
            times.append(times[-1] + 6 * HOUR_MS)
        slots.append(times)
    return options, slots


@settings(max_examples=100, deadline=None)
@given(workers=st.integers(2, 4), cap=st.sampled_from([None, 50]), world=_worlds())
def test_every_slot_places_alike_whenever_it_discovers(workers, cap, world):
    """Two slots discovering the same listing at their own moments: every expiry both placed has
    one slot, a live expiry never moves, and every expiry live past the fresh start's round is
    placed as soon as it is seen."""
    options, discoveries = world
    placements = [Placement(workers, cap=cap) for _ in discoveries]
    seen: list[dict[int, int]] = [{}, {}]
    for k, (p, times) in enumerate(zip(placements, discoveries)):
        for now in times:
            visible = [(e, t) for e, t in options if t <= now and e > now]
            got = p.assign("BTC", visible, now)
            assert all(0 <= s < workers for s in got.values()) and all(e > now for e in got)
            start = Placement.round_of(times[0])
            assert {e for e, _ in visible if e > start + 3_600_000} <= set(got)
            for e, s in got.items():
                assert seen[k].setdefault(e, s) == s, "a live expiry moved"
    both = set(seen[0]) & set(seen[1])
    assert {e: seen[0][e] for e in both} == {e: seen[1][e] for e in both}


@settings(max_examples=100, deadline=None)
@given(workers=st.integers(2, 4), listing=st.dictionaries(st.integers(1, 60).map(lambda d: T0_MS + d * DAY_MS),
                                                          st.integers(1, 1_000), min_size=1, max_size=30))
def test_a_fresh_start_is_even_to_within_its_largest_expiry(workers, listing):
    """Longest-processing-time bound: the busiest slot exceeds the mean load by at most the
    largest expiry."""
    got = Placement(workers).assign("BTC", _options(listing), T0_MS)
    load = [sum(n for e, n in listing.items() if got[e] == k) for k in range(workers)]
    assert max(load) <= sum(load) / workers + max(listing.values())
