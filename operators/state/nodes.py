"""The analytics DAG at run time: graph.toml's nodes, evaluated level by level in topological order.

Three levels (docs/architecture.md §5), each with its built-in inputs and the levels it may read:
  - "expiry": after each fit of an expiry, fn(*inputs, t_years, **params) → one number; built-ins
    "fit" (raw SVI params) and "quotes" (operators.kernels.strike.StrikeData of the expiry's
    quotes); may read other expiry nodes.
  - "instrument": with the expiry, for each of its strikes, fn(*inputs, t_years, **params) → one
    number per strike (called once per expiry with StrikeData arrays: write it elementwise);
    built-ins "fit" and "strike"; may read expiry nodes (the expiry's value) and other
    instrument nodes (arrays over the strikes).
  - "underlying": once per epoch in which any expiry changed, fn(*inputs, **params) → one number;
    built-in "fits" (operators.kernels.term.TermFits, every live expiry in expiry order); may read
    expiry nodes (an array aligned with the fits, NaN where missing) and other underlying nodes.
Loading and validating the nodes is the config layer's job (flows/config.py, which takes these
rules from here); this module only holds a loaded node, runs a tuple of them and accounts for
the ones that fail. Pure state
logic: no I/O beyond one log line per (node, kind of failure), no bytewax, never imports
connectors or flows (the flow reads the failure counts off NodeFailures.counts).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from operators.kernels.novalue import NoValue

log = logging.getLogger("volgraph.nodes")

# Failure kinds (the <reason> of a `node_errors.<node>.<reason>` counter) besides the name of
# the exception a node raised:
NON_FINITE = "non_finite"  # returned NaN or ±inf
NOT_A_NUMBER = "not_a_number"  # returned something float() refuses (None, a string, a tuple)
MISSING_INPUT = "missing_input"  # an input node had no value, so this one was not run
# Not a failure: the node raised NoValue (operators/kernels/novalue.py: e.g. no quote that far out),
# or an input had no value for that reason; counted as `node_no_value.<node>`, never logged.
NO_VALUE = "no_value"

# (node, reason) pairs already logged in this process: every surface (one per venue and
# underlying) evaluates the same nodes, and one line per failure kind is what a user needs.
_LOGGED: set[tuple[str, str]] = set()

LEVELS = ("expiry", "instrument", "underlying")
# level -> the built-in inputs its nodes may name
BUILTINS: dict[str, tuple[str, ...]] = {"expiry": ("fit", "quotes"), "instrument": ("fit", "strike"),
                                        "underlying": ("fits",)}
# level -> the levels of the nodes its nodes may read (an expiry node cannot read a per-strike
# or a whole-underlying value: it has no one value of them)
READS: dict[str, tuple[str, ...]] = {"expiry": ("expiry",), "instrument": ("expiry", "instrument"),
                                     "underlying": ("expiry", "underlying")}


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
    and logged once per (node, reason) per process with the node, the failure and the fix;
    values a node legitimately lacks (NoValue) are counted as `node_no_value.<node>` only.
    One per surface logic; counts only grow (the flow reports deltas)."""

    counts: Counter = field(default_factory=Counter)

    def no_value(self, node: Node) -> None:
        self.counts[f"node_no_value.{node.name}"] += 1

    def note(self, node: Node, reason: str, where: Any, detail: str) -> None:
        """`where`: the expiry's t_years, or a string saying where (e.g. "underlying BTC")."""
        self.counts[f"node_errors.{node.name}.{reason}"] += 1
        if (node.name, reason) in _LOGGED:
            return
        _LOGGED.add((node.name, reason))
        if reason == MISSING_INPUT:
            fix = "fix the failing input node first (its own log line says how)"
        else:
            fix = f"fix {node.fn_path} or the parameters of [nodes.{node.name}] in graph.toml"
        at = f"t_years={where:.6g}" if isinstance(where, float) else str(where)
        log.warning("analytics node %r (%s) %s at %s; its value is None, and so is every node "
                    "that reads it; %s. Logged once per node and kind of failure; counted as "
                    "node_errors.%s.%s", node.name, node.fn_path, detail, at, fix, node.name, reason)


def _run(nodes: tuple[Node, ...], values: dict[str, Any], tail: tuple, where: Any,
         failures: Optional[NodeFailures], n_strikes: Optional[int] = None) -> dict[str, Any]:
    """fn(*inputs, *tail, **params) for each node in order; `values` holds the inputs by name
    (built-ins and the other levels' values) and gains each node's result. A scalar level gives
    float | None per node; with n_strikes, an array of n_strikes floats (NaN where that strike
    has no value) or None when the node gave no value at any strike."""
    out: dict[str, Any] = {}
    absent: set[str] = set()  # nodes without a value that is not a failure (NoValue)
    for node in nodes:
        args = [values.get(dep) for dep in node.inputs]
        result: Any = None
        if any(a is None for a in args):
            missing = [dep for dep, a in zip(node.inputs, args) if a is None]
            if all(dep in absent for dep in missing):
                absent.add(node.name)
                if failures is not None:
                    failures.no_value(node)
            elif failures is not None:
                failures.note(node, MISSING_INPUT, where,
                              f"was not run: no value from input {', '.join(map(repr, missing))}")
            values[node.name] = out[node.name] = None
            continue
        try:
            raw = node.fn(*args, *tail, **node.params)
        except NoValue:
            absent.add(node.name)
            if failures is not None:
                failures.no_value(node)
        except Exception as exc:  # noqa: BLE001 — an analytic's failure is reported as a missing value
            if failures is not None:
                failures.note(node, type(exc).__name__, where, f"raised {exc!r}")
        else:
            result = _scalar(node, raw, where, failures) if n_strikes is None else \
                _per_strike(node, raw, n_strikes, where, failures)
        values[node.name] = out[node.name] = result
    return out


def _scalar(node: Node, raw: Any, where: Any, failures: Optional[NodeFailures]) -> Optional[float]:
    try:
        result = float(raw)
    except (TypeError, ValueError):
        if failures is not None:
            failures.note(node, NOT_A_NUMBER, where, f"returned {raw!r}, not a number")
        return None
    if not math.isfinite(result):
        if failures is not None:
            failures.note(node, NON_FINITE, where, f"returned {result!r}")
        return None
    return result


def _per_strike(node: Node, raw: Any, n: int, where: Any, failures: Optional[NodeFailures]) -> Optional[np.ndarray]:
    """The node's values as n floats; a scalar is broadcast. Some strikes without a value (NaN)
    is data (e.g. no bid there); none at all is a failure."""
    try:
        arr = np.asarray(raw, dtype=float)
        if arr.ndim == 0:
            arr = np.full(n, float(arr))
        elif arr.shape != (n,):
            arr = None
    except (TypeError, ValueError):
        arr = None
    if arr is None:
        if failures is not None:
            failures.note(node, NOT_A_NUMBER, where, f"returned {str(raw)[:80]}, not one number per strike ({n})")
        return None
    finite = np.isfinite(arr)
    if finite.all():
        return arr
    arr = np.where(finite, arr, np.nan)
    if n and not finite.any():
        if failures is not None:
            failures.note(node, NON_FINITE, where, "returned no finite value at any strike")
        return None
    return arr


def evaluate_nodes(nodes: tuple[Node, ...], fit_params: tuple, t_years: float,
                   failures: Optional[NodeFailures] = None, quotes: Any = None) -> dict[str, float | None]:
    """Run expiry-level nodes in topological order: fn(*inputs, t_years, **params), inputs from
    the built-ins "fit" (fit_params) and "quotes" (a StrikeData; None: the node is not run) and
    earlier nodes.

    A node that raises or returns a non-finite value yields None (and its dependants see None);
    the surface never fails because one analytic did. With `failures`, each such None is
    counted and logged there (see NodeFailures).
    """
    return _run(nodes, {"fit": fit_params, "quotes": quotes}, (t_years,), t_years, failures)


def evaluate_strike_nodes(nodes: tuple[Node, ...], fit_params: tuple, t_years: float, strike: Any,
                          expiry_values: dict[str, Optional[float]], failures: Optional[NodeFailures] = None
                          ) -> dict[str, tuple[Optional[float], ...]]:
    """Run instrument-level nodes once for an expiry's strikes (`strike`: a StrikeData): node
    name -> one value per strike (None where it has none; all None when the node failed)."""
    n = int(np.asarray(strike.strike).size)
    values: dict[str, Any] = {**expiry_values, "fit": fit_params, "strike": strike}
    out = _run(nodes, values, (t_years,), t_years, failures, n_strikes=n)
    return {name: (tuple([None] * n) if arr is None else
                   tuple(None if x != x else x for x in arr.tolist())) for name, arr in out.items()}


def evaluate_underlying_nodes(nodes: tuple[Node, ...], fits: Any, expiry_values: dict[str, np.ndarray],
                              where: str, failures: Optional[NodeFailures] = None) -> dict[str, Optional[float]]:
    """Run underlying-level nodes once: "fits" is a TermFits of every live expiry, an expiry node
    named as an input is its values aligned with the fits (NaN where missing)."""
    return _run(nodes, {**expiry_values, "fits": fits}, (), where, failures)
