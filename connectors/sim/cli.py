"""The simulators' shared command line: the parser (every option's help says its default), the
options both take, and running a simulator until --seconds pass or Ctrl-C.

`volgraph sim` and `volgraph sim-okx` (flows/cli.py) call the venue modules' main(argv), which
name themselves after that command; `python -m connectors.sim.deribit` / `…okx` pass the module
form as the program name instead. Nothing here knows a venue's options or frames. Like every
module of connectors/sim it must never import the venue parsers (connectors/venues/*) or flows.

The defaults of --host, --port, --seed, --rate, --scale and the venue's key list are graph.toml's
([simulator], [sources.<venue>]): `volgraph sim` / `sim-okx` (flows/cli.py) hands them to main()
as `defaults`; the module form has none, so those options are required there (tests and bench
give them all).
"""

from __future__ import annotations

import argparse
import threading
from typing import Any, Callable, Iterable, Mapping, Optional

from connectors.sim.server import SimServer


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's help ends with "(default: …)"; an option whose default is None says in its
    own help what leaving it out means (a bare "(default: None)" tells the reader nothing)."""

    def _get_help_string(self, action: argparse.Action) -> Optional[str]:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def new_parser(prog: str, description: str, epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """A parser that prints each option's default after its help (give every option a help)."""
    return argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                   formatter_class=_DefaultsFormatter)


def add_configured(p: argparse.ArgumentParser, flag: str, defaults: Optional[Mapping[str, Any]], help: str,
                   **kwargs: Any) -> None:
    """An option whose default is graph.toml's: taken from `defaults` (keyed by its dest), or, in
    the module form (`defaults` None), required."""
    dest = flag.lstrip("-").replace("-", "_")
    if defaults is None:
        p.add_argument(flag, required=True, help=help + " (required here; `volgraph` takes it from graph.toml)",
                       **kwargs)
    else:
        p.add_argument(flag, default=defaults[dest], help=help + "; default from graph.toml", **kwargs)


def add_common_args(p: argparse.ArgumentParser, rate_help: str, defaults: Optional[Mapping[str, Any]]) -> None:
    """The options every simulator's command line takes; `defaults`: graph.toml's [simulator]
    host, port, seed, rate (None: required)."""
    add_configured(p, "--host", defaults, "interface to listen on")
    add_configured(p, "--port", defaults, "port to listen on; 0 = any free port (printed)", type=int)
    add_configured(p, "--seed", defaults, "seed of the market and of message choices: the same seed gives the "
                   "same market", type=int)
    add_configured(p, "--rate", defaults, rate_help, type=float)


def add_size_args(p: argparse.ArgumentParser, scales: Iterable[str], defaults: Optional[Mapping[str, Any]]) -> None:
    """How many options: a named scale (graph.toml [simulator] scale in `defaults`; None:
    required), or its expiry and strike counts overridden."""
    add_configured(p, "--scale", defaults, "how many expiries and strikes per currency (small: 2 expiries × 12 "
                   "strikes; medium: 8 × 25; seed: 12 expiries, 167 BTC / 84 ETH strikes)", choices=sorted(scales))
    p.add_argument("--n-expiries", type=int, default=None, metavar="N",
                   help="keep only the first N expiries of the scale's listing (default: all of them)")
    p.add_argument("--n-strikes", type=int, default=None, metavar="N",
                   help="strikes per expiry (default: the scale's count)")


def add_seconds_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=None,
                   help="stop after this many seconds (default: run until Ctrl-C)")


def split_list(text: str) -> list[str]:
    """"BTC, ETH" → ["BTC", "ETH"] (a comma-separated option; empty items dropped)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def serve_until_stopped(sim: SimServer, seconds: Optional[float], banner: Callable[[str], str], prefix: str) -> int:
    """Start `sim`, print banner(url), run until `seconds` pass or Ctrl-C, stop, print counters."""
    url = sim.start()
    print(banner(url), flush=True)
    done = threading.Event()
    try:
        done.wait(seconds)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
        print(f"{prefix}: stopped; {dict(sim.counters)}", flush=True)
    return 0
