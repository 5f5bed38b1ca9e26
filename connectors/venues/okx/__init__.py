"""OKX v5 public websocket, options (docs/protocols.md §B, §C), one job per module:
names.py (instrument ids, families, expiry codes), parse.py (frames -> events, the units the
events carry; never raises), rest.py (instrument discovery over REST), client.py (the websocket
client thread), source.py (the bytewax source, `from_config`).

This file only re-exports the public names, so `from connectors.venues.okx import parse_frame,
OkxSource, ...` keeps working; it holds no code of its own.

Staleness contract with the book step (as for Deribit, connectors/venues/deribit/__init__.py):
a `FeedError(reason="seq_gap", instrument=X)` means "the book of X is incomplete: withhold it
until the next snapshot of X". The client owns book integrity (the rule:
connectors/venues/base.py): it emits seq_gap on a seqId gap, a crossed book, an unreadable book
frame and when its queue had to drop a book event of X (each time resubscribing X's `books`
channel), and for every book of a connection that closed or was replaced after a 64008 notice
(the reconnect resubscribes); X's next BookUpdate is then a fresh snapshot.
"""

from connectors.venues.okx.client import OkxClient
from connectors.venues.okx.names import (DEFAULT_REST_URL, DEPTH_CHANNELS, EXPIRY_HOUR_UTC,
                                         INCREMENTAL_BOOKS, INDEX_TICKERS_PATH, INSTRUMENTS_PATH, VENUE, InstIdError,
                                         family_coin, format_expiry, format_inst_id, format_strike, inst_family,
                                         parse_inst_id)
from connectors.venues.okx.parse import (DEFAULT_MAX_FRAME_BYTES, NOTICE_SERVICE_UPGRADE, Control, instrument_from_row,
                                         instruments_from_rows, parse_frame, rest_instruments_frame)
from connectors.venues.okx.rest import RestInstrumentsFetcher, default_rest_url
from connectors.venues.okx.source import OkxPartition, OkxSource, from_config

__all__ = ["DEFAULT_MAX_FRAME_BYTES", "DEFAULT_REST_URL", "DEPTH_CHANNELS", "EXPIRY_HOUR_UTC",
           "INCREMENTAL_BOOKS", "INDEX_TICKERS_PATH", "INSTRUMENTS_PATH", "NOTICE_SERVICE_UPGRADE", "VENUE", "Control",
           "InstIdError", "OkxClient", "OkxPartition", "OkxSource", "RestInstrumentsFetcher", "default_rest_url",
           "family_coin", "format_expiry", "format_inst_id", "format_strike", "from_config", "inst_family",
           "instrument_from_row", "instruments_from_rows", "parse_frame", "parse_inst_id", "rest_instruments_frame"]
