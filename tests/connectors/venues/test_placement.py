"""connectors/venues/placement.py against real bytewax runs: where a key's stateful step runs, and which
worker reads each slot of a source split per worker."""

import random
import threading

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSource, cluster_main

from connectors.venues.placement import expiry_slot, slot_names, worker_of
from operators.events import chain_key


class _WorkerSink(DynamicSink):
    """Records (item, index of the worker that wrote it); a dynamic sink writes on the worker
    that produced the item, with no exchange before it."""

    def __init__(self):
        self.seen: list[tuple[object, int]] = []
        self.lock = threading.Lock()

    def build(self, step_id, worker_index, worker_count):
        sink = self

        class _Part(StatelessSinkPartition):
            def write_batch(self, items):
                with sink.lock:
                    sink.seen.extend((item, worker_index) for item in items)

        return _Part()


def _keys() -> list[str]:
    rng = random.Random(11)
    alphabet = "abcXYZ019|-_.é中😀"
    keys = ["", "a", "1234567", "12345678", "123456789"]  # around SipHash's 8-byte blocks
    keys += [chain_key("deribit", u, 1767686400000 + d * 86_400_000) for u in ("BTC", "ETH") for d in range(40)]
    keys += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(200)]
    return keys


@pytest.mark.parametrize("workers", [2, 3])
def test_worker_of_is_where_bytewax_runs_the_key(workers):
    keys = _keys()
    flow = Dataflow("placement_keys")
    keyed = op.input("in", flow, TestingSource([(k, 1) for k in keys]))
    counted = op.stateful_map("count", keyed, lambda state, v: ((state or 0) + v, (state or 0) + v))
    sink = _WorkerSink()
    op.output("out", op.map("key", counted, lambda kv: kv[0]), sink)
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    ran_on = dict(sink.seen)
    assert sorted(ran_on) == sorted(set(keys))
    wrong = {k: (ran_on[k], worker_of(k, workers)) for k in ran_on if ran_on[k] != worker_of(k, workers)}
    assert not wrong, f"bytewax ran these keys elsewhere (ran on, predicted): {wrong}"
    assert len(set(ran_on.values())) == workers  # the keys really spread


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
    sink = _WorkerSink()
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
