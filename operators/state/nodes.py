"""The analytics DAG at run time: graph.toml's nodes, evaluated per expiry in topological order.

Loading and validating the nodes is the config layer's job (flows/config.py); this module only
holds a loaded node and runs a tuple of them. Pure state logic: no I/O, no bytewax, never
imports connectors or flows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    fn_path: str
    fn: Callable[..., Any]
    inputs: tuple[str, ...]
    level: str
    params: dict[str, Any]


def evaluate_nodes(nodes: tuple[Node, ...], fit_params: tuple, t_years: float) -> dict[str, float | None]:
    """Run expiry-level nodes in topological order: fn(*inputs, t_years, **params).

    A node that raises or returns a non-finite value yields None (and its dependants see None);
    the surface never fails because one analytic did.
    """
    values: dict[str, Any] = {"fit": fit_params}
    out: dict[str, float | None] = {}
    for node in nodes:
        args = [values.get(dep) for dep in node.inputs]
        if any(a is None for a in args):
            values[node.name] = out[node.name] = None
            continue
        try:
            result = float(node.fn(*args, t_years, **node.params))
        except Exception:  # noqa: BLE001 — an analytic's failure is reported as a missing value
            result = None
        if result is not None and result != result or result in (float("inf"), float("-inf")):
            result = None
        values[node.name] = out[node.name] = result
    return out
