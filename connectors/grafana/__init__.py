"""Grafana as code (`volgraph grafana render|provision`).

dashboards.py  the dashboard and its alert rules as plain data (dicts), and the metric names they query
provision.py   pushes them to a Grafana server over its HTTP API with grafana-client
cli.py         `add_grafana_commands(subparsers, known_metrics=...)` for the volgraph CLI

Imports nothing at package level. Never imports flows (the CLI hands it the metric list) and
never computes anything about volatility.
"""
