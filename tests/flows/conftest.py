"""Fixtures of the dataflow tests. `entry_point` runs a flow the way bytewax's own test-suite
does (its pytests/conftest.py): once on a single worker (`run_main`) and once as a cluster
of one process with two worker threads, so keyed state lands on both workers and every
exchange between them is exercised. Use it only where the input is finite and the
assertions do not depend on the order the workers emit in.
"""

import pytest
from bytewax.testing import cluster_main, run_main


def _cluster_1x2(flow, **kwargs):
    return cluster_main(flow, [], 0, worker_count_per_proc=2, **kwargs)


@pytest.fixture(params=["run_main", "cluster_main-1x2"])
def entry_point_name(request) -> str:
    return request.param


@pytest.fixture
def entry_point(entry_point_name):
    """flow (and run_main's keyword arguments) → runs it to completion."""
    return {"run_main": run_main, "cluster_main-1x2": _cluster_1x2}[entry_point_name]
