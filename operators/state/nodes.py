"""The analytics DAG at run time: graph.toml's nodes, evaluated per expiry in topological order.

Loading and validating the nodes is the config layer's job (flows/config.py); this module only
holds a loaded node, runs a tuple of them and accounts for the ones that fail. Pure state
logic: no I/O beyond one log line per (node, kind of failure), no bytewax, never imports
connectors or flows (the flow reads the failure counts off NodeFailures.counts).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

log = logging.getLogger("volgraph.nodes")

# Failure kinds (the <reason> of a `node_errors.<node>.<reason>` counter) besides the name of
# the exception a node raised:
NON_FINITE = "non_finite"  # returned NaN or ±inf
NOT_A_NUMBER = "not_a_number"  # returned something float() refuses (None, a string, a tuple)
MISSING_INPUT = "missing_input"  # an input node had no value, so this one was not run

# (node, reason) pairs already logged in this process: every surface (one per venue and
# underlying) evaluates the same nodes, and one line per failure kind is what a user needs.
_LOGGED: set[tuple[str, str]] = set()


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    fn_path: str
    fn: Callable[..., Any]
    inputs: tuple[str, ...]
    level: str
    params: dict[str, Any]
    unit: str = ""  # display unit from graph.toml (`unit = "vol pts"`); "" = none given


@dataclass
class NodeFailures:
    """Failed node evaluations, counted per node and reason (`node_errors.<node>.<reason>`),
    and logged once per (node, reason) per process with the node, the failure and the fix.
    One per surface logic; counts only grow (the flow reports deltas)."""

    counts: Counter = field(default_factory=Counter)

    def note(self, node: Node, reason: str, t_years: float, detail: str) -> None:
        self.counts[f"node_errors.{node.name}.{reason}"] += 1
        if (node.name, reason) in _LOGGED:
            return
        _LOGGED.add((node.name, reason))
        if reason == MISSING_INPUT:
            fix = "fix the failing input node first (its own log line says how)"
        else:
            fix = f"fix {node.fn_path} or the parameters of [nodes.{node.name}] in graph.toml"
        log.warning("analytics node %r (%s) %s at t_years=%.6g; its value is None, and so is every node "
                    "that reads it; %s. Logged once per node and kind of failure; counted as "
                    "node_errors.%s.%s", node.name, node.fn_path, detail, t_years, fix, node.name, reason)


def evaluate_nodes(nodes: tuple[Node, ...], fit_params: tuple, t_years: float,
                   failures: Optional[NodeFailures] = None) -> dict[str, float | None]:
    """Run expiry-level nodes in topological order: fn(*inputs, t_years, **params).

    A node that raises or returns a non-finite value yields None (and its dependants see None);
    the surface never fails because one analytic did. With `failures`, each such None is
    counted and logged there (see NodeFailures).
    """
    values: dict[str, Any] = {"fit": fit_params}
    out: dict[str, float | None] = {}
    for node in nodes:
        args = [values.get(dep) for dep in node.inputs]
        result: Optional[float] = None
        if any(a is None for a in args):
            if failures is not None:
                missing = [dep for dep, a in zip(node.inputs, args) if a is None]
                failures.note(node, MISSING_INPUT, t_years,
                              f"was not run: no value from input {', '.join(map(repr, missing))}")
            values[node.name] = out[node.name] = None
            continue
        try:
            raw = node.fn(*args, t_years, **node.params)
        except Exception as exc:  # noqa: BLE001 — an analytic's failure is reported as a missing value
            if failures is not None:
                failures.note(node, type(exc).__name__, t_years, f"raised {exc!r}")
        else:
            try:
                result = float(raw)
            except (TypeError, ValueError):
                if failures is not None:
                    failures.note(node, NOT_A_NUMBER, t_years, f"returned {raw!r}, not a number")
            else:
                if not math.isfinite(result):
                    if failures is not None:
                        failures.note(node, NON_FINITE, t_years, f"returned {result!r}")
                    result = None
        values[node.name] = out[node.name] = result
    return out
