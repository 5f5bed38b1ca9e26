"""`volgraph grafana render` and `volgraph grafana provision`, as argparse sub-commands.

flows/cli.py hooks them in with

    from connectors.grafana.cli import add_grafana_commands, run_grafana_command
    from flows.metrics import METRICS
    add_grafana_commands(sub, known_metrics=METRICS)
    ...
    if args.command == "grafana": return run_grafana_command(args)

(`add_grafana_commands` sets `func` on the parsed namespace too, so `args.func(args)` works).
`known_metrics` is the one list of exposed metrics: render refuses a dashboard that queries a
name outside it. Never imports flows; no volatility maths.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from connectors.grafana import dashboards


def add_grafana_commands(subparsers, known_metrics: Optional[Mapping[str, Any] | Iterable[str]] = None):
    """Add `grafana` with its `render` and `provision` sub-commands to an argparse subparsers object."""
    grafana = subparsers.add_parser(
        "grafana", help="Grafana dashboards as code: render the JSON, or push it to a Grafana server",
        description="The volgraph dashboard and alert rules are built by connectors/grafana/dashboards.py. "
                    "`render` writes them (deploy/grafana/ holds the rendered copy for file provisioning); "
                    "`provision` pushes them to a running Grafana over its HTTP API.")
    grafana.set_defaults(func=run_grafana_command, known_metrics=known_metrics)
    sub = grafana.add_subparsers(dest="grafana_command", required=True, metavar="ACTION")
    render = sub.add_parser(
        "render", help="write the dashboard JSON (and its alert rules)",
        description="Without --out, print the dashboard JSON to stdout. With --out DIR, write "
                    f"DIR/{dashboards.DASHBOARD_FILE} and DIR/{dashboards.ALERTS_FILE}; with --k8s FILE, also "
                    "the ConfigMap holding both (deploy/k8s/grafana-dashboards.yaml).")
    render.add_argument("--out", metavar="DIR", help="directory to write the files into (default: print the dashboard)")
    render.add_argument("--k8s", metavar="FILE", help="also write the Kubernetes ConfigMap with both files here")
    render.add_argument("--namespace", default="volgraph",
                        help="the ConfigMap's namespace (default: %(default)s)")
    provision = sub.add_parser(
        "provision", help="push the dashboard and alert rules to a Grafana server",
        description="Create the folder if missing, overwrite the dashboard, create or update the alert "
                    "rules. The API token comes from $GRAFANA_TOKEN (a service account token, Editor role).")
    provision.add_argument("--url", required=True, help="Grafana's base URL, e.g. http://grafana:3000")
    provision.add_argument("--timeout-s", type=float, default=10.0,
                           help="seconds per HTTP request (default: %(default)s)")
    return grafana


def run_grafana_command(args: argparse.Namespace, out=None, err=None) -> int:
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    known = getattr(args, "known_metrics", None)
    if known is not None:
        unknown = dashboards.unknown_metrics(known)
        if unknown:
            print(f"volgraph grafana: the dashboard queries metrics no process exposes: {', '.join(unknown)}; "
                  "fix the query in connectors/grafana/dashboards.py or add the metric to flows/metrics.py METRICS",
                  file=err)
            return 2
    if args.grafana_command == "render":
        if args.out is None and args.k8s is None:
            out.write(dashboards.render(dashboards.dashboard()))
            return 0
        if args.out is not None:
            target = Path(args.out)
            target.mkdir(parents=True, exist_ok=True)
            for name, text in dashboards.rendered_files().items():
                (target / name).write_text(text, encoding="utf-8")
                print(f"wrote {target / name}", file=out)
        if args.k8s is not None:
            Path(args.k8s).write_text(dashboards.configmap_yaml(args.namespace), encoding="utf-8")
            print(f"wrote {args.k8s}", file=out)
        return 0
    if args.grafana_command == "provision":
        from connectors.grafana.provision import ProvisionError, provision, token_from_env

        try:
            result = provision(args.url, token_from_env(), timeout_s=args.timeout_s)
        except ProvisionError as exc:
            print(f"volgraph grafana provision: {exc}", file=err)
            return 1
        print(f"folder {dashboards.FOLDER_UID}: {'created' if result.folder_created else 'exists'}", file=out)
        print(f"dashboard {dashboards.DASHBOARD_UID}: pushed ({result.dashboard_url or 'no url returned'})", file=out)
        print(f"alert rules: {len(result.rules_created)} created, {len(result.rules_updated)} updated", file=out)
        return 0
    return 2
