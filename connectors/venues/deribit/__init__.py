"""Deribit JSON-RPC v2 over websocket (docs/protocols.md §A), one job per module:
names.py (instrument names, expiry codes), parse.py (frames -> events; never raises),
client.py (the websocket client thread), source.py (the bytewax source, `from_config`).

This file only re-exports the public names, so `from connectors.venues.deribit import
parse_frame, DeribitSource, ...` keeps working; it holds no code of its own.

Staleness contract with the book step: a `FeedError(reason="seq_gap", instrument=X)` means
"the book of X is incomplete: withhold it until the next snapshot of X". The client owns book
integrity (the rule: connectors/venues/base.py): it emits seq_gap on a change_id gap, a crossed
book, an unreadable book frame, and when X's book passed the queue's bound, and in each case
resubscribes X's book channel, so X's next BookUpdate is a fresh snapshot. It also emits it for
every live book when a session ends (their snapshots follow the reconnect) and for a delisted
option (no snapshot follows: withheld for good). Counters keep the causes apart (gaps, crossed,
errors.<reason>, gaps_queue, delisted).
"""

from connectors.venues.base import now_ms
from connectors.venues.deribit.client import DeribitClient, RpcError
from connectors.venues.deribit.names import (EXPIRY_HOUR_UTC, VENUE, InstrumentNameError, format_expiry,
                                             format_instrument_name, format_strike, instrument_kind,
                                             parse_instrument_name)
from connectors.venues.deribit.parse import (DEFAULT_MAX_FRAME_BYTES, GROUPED_DEPTHS, MAX_AMOUNT, MAX_PRICE, Control,
                                             grouped_depth, parse_frame, parse_frames)
from connectors.venues.deribit.source import DeribitPartition, DeribitSource, from_config

__all__ = ["DEFAULT_MAX_FRAME_BYTES", "EXPIRY_HOUR_UTC", "GROUPED_DEPTHS", "MAX_AMOUNT", "MAX_PRICE",
           "VENUE", "Control", "DeribitClient", "DeribitPartition", "DeribitSource", "InstrumentNameError", "RpcError",
           "format_expiry", "format_instrument_name", "format_strike", "from_config", "grouped_depth",
           "instrument_kind", "now_ms", "parse_frame", "parse_frames", "parse_instrument_name"]
