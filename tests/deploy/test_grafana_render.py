"""`volgraph grafana render` output equals what deploy/ keeps for file provisioning
(deploy/grafana/volgraph.json, volgraph-alerts.json, deploy/k8s/grafana-dashboards.yaml), so the
provisioned copies never drift from connectors/grafana/dashboards.py. The sub-commands are
driven through an argparse parser built the way flows/cli.py hooks them in."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import yaml

from connectors.grafana import dashboards
from connectors.grafana.cli import add_grafana_commands
from flows.metrics import METRICS

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "volgraph grafana render --out deploy/grafana --k8s deploy/k8s/grafana-dashboards.yaml"


def parser(known=METRICS):
    p = argparse.ArgumentParser(prog="volgraph")
    add_grafana_commands(p.add_subparsers(dest="command", required=True), known_metrics=known)
    return p


def test_render_to_files_equals_the_provisioned_copies(tmp_path):
    k8s = tmp_path / "grafana-dashboards.yaml"
    args = parser().parse_args(["grafana", "render", "--out", str(tmp_path), "--k8s", str(k8s)])
    out = io.StringIO()
    assert args.func(args, out=out, err=io.StringIO()) == 0
    for name in (dashboards.DASHBOARD_FILE, dashboards.ALERTS_FILE):
        assert (tmp_path / name).read_text() == (ROOT / "deploy" / "grafana" / name).read_text(), \
            f"deploy/grafana/{name} is stale: run `{REGENERATE}`"
    assert k8s.read_text() == (ROOT / "deploy" / "k8s" / "grafana-dashboards.yaml").read_text(), \
        f"deploy/k8s/grafana-dashboards.yaml is stale: run `{REGENERATE}`"
    configmap = yaml.safe_load(k8s.read_text())
    assert configmap["data"][dashboards.DASHBOARD_FILE] == (tmp_path / dashboards.DASHBOARD_FILE).read_text()


def test_render_to_stdout_prints_the_dashboard_json():
    args = parser().parse_args(["grafana", "render"])
    out = io.StringIO()
    assert args.func(args, out=out, err=io.StringIO()) == 0
    board = json.loads(out.getvalue())
    assert board["uid"] == dashboards.DASHBOARD_UID
    assert out.getvalue() == (ROOT / "deploy" / "grafana" / dashboards.DASHBOARD_FILE).read_text()


def test_render_refuses_a_dashboard_querying_an_unexposed_metric(tmp_path):
    known = {k: v for k, v in METRICS.items() if k != "volgraph_fit_seconds"}
    args = parser(known).parse_args(["grafana", "render", "--out", str(tmp_path)])
    err = io.StringIO()
    assert args.func(args, out=io.StringIO(), err=err) == 2
    assert "volgraph_fit_seconds" in err.getvalue() and "flows/metrics.py METRICS" in err.getvalue()
    assert not (tmp_path / dashboards.DASHBOARD_FILE).exists()


def test_provisioning_files_name_the_datasource_and_folder_the_dashboard_uses():
    prov = ROOT / "deploy" / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yaml").read_text())
    assert [d["uid"] for d in ds["datasources"]] == [dashboards.DATASOURCE_UID]
    providers = yaml.safe_load((prov / "dashboards" / "volgraph.yaml").read_text())["providers"]
    assert providers[0]["folderUid"] == dashboards.FOLDER_UID and providers[0]["type"] == "file"
    alerts = json.loads((ROOT / "deploy" / "grafana" / dashboards.ALERTS_FILE).read_text())
    assert alerts["groups"][0]["folder"] == dashboards.FOLDER_TITLE
