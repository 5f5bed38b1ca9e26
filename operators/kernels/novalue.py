"""NoValue: raised by a graph.toml node function whose inputs legitimately give no value.

Example: the bid smile's 25Δ risk reversal when no bid is quoted as far out as the 25Δ strike.
That is market data, not a failure of the node: operators/state/nodes.py makes the value None
and counts it as `node_no_value.<node>` (not `node_errors.*`, and not logged), and so for the
nodes that read it. A node that returns NaN instead is counted as a failure (non_finite).
Pure: no imports, no I/O.
"""


class NoValue(ArithmeticError):
    """The node has no value for these inputs (the message says why); not a failure."""
