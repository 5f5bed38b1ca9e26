"""deploy/k8s/*.yaml, deploy/helm/values.yaml, deploy/prometheus/, deploy/waxctl.sh, offline.

No cluster is reachable here, so: `kubernetes-validate --strict -k K8S_VERSION` over every
manifest (strict: unknown fields fail), then what it does not check — enum values
(imagePullPolicy), quantities (cpu, memory, storage), probes on /healthz at the container's real
port, Services/HPA/PDB pointing at real workloads, no Secret and no secret value in any file,
terminationGracePeriodSeconds consistent with volgraph's stop time, non-root read-only
containers — and that the copies kept in ConfigMaps equal their source files.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from flows.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.31.0"  # the oldest Kubernetes these manifests promise to run on
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
# volgraph stops every process within 5 s of SIGTERM (issue #16 "Processes"; the measured time is a
# row of the stop benchmark): the grace period must exceed it with a margin, without hiding a hang.
STOP_BUDGET_S = 5
PULL_POLICIES = {"Always", "IfNotPresent", "Never"}
CPU = re.compile(r"^(\d+m|\d+(\.\d+)?)$")
BYTES = re.compile(r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$")
SECRETISH = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|DSN|CREDENTIAL|API_KEY", re.I)


def docs() -> list[tuple[Path, dict]]:
    out = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path, doc))
    return out


def by_kind(kind: str) -> list[dict]:
    return [d for _p, d in docs() if d["kind"] == kind]


def pod_specs() -> list[tuple[str, dict]]:
    out = []
    for _p, d in docs():
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            out.append((f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]))
    return out


def containers(spec: dict) -> list[dict]:
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def quantity(value: str) -> float:
    """A Kubernetes quantity as a number (cpu in cores, bytes in bytes)."""
    value = str(value)
    if value.endswith("m"):
        return float(value[:-1]) / 1000
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "k": 1e3, "M": 1e6, "G": 1e9,
             "T": 1e12, "P": 1e15}
    for suffix, scale in units.items():
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * scale
    return float(value)


def test_there_are_manifests_for_every_part():
    kinds = {(d["kind"], d["metadata"]["name"]) for _p, d in docs()}
    for expected in [("Deployment", "volgraph-gateway"), ("Service", "volgraph-gateway"),
                     ("HorizontalPodAutoscaler", "volgraph-gateway"), ("PodDisruptionBudget", "volgraph-gateway"),
                     ("StatefulSet", "volgraph-postgres"), ("ConfigMap", "volgraph-prometheus"),
                     ("ConfigMap", "volgraph-grafana-dashboards"), ("ConfigMap", "volgraph-grafana-datasources"),
                     ("ConfigMap", "volgraph-config")]:
        assert expected in kinds, expected


def test_kubernetes_validate_strict_passes_every_manifest():
    exe = Path(sys.executable).with_name("kubernetes-validate")
    result = subprocess.run([str(exe), "--strict", "-k", K8S_VERSION, *map(str, MANIFESTS)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    passed = re.findall(r"passed for resource (\S+)", result.stdout + result.stderr)
    assert len(passed) == len(docs())  # every document checked, none silently ignored


def test_kubernetes_validate_strict_rejects_an_unknown_field(tmp_path):
    """The validator really is strict: a misspelt field fails (the check above means something)."""
    bad = yaml.safe_load_all((DEPLOY / "k8s" / "gateway.yaml").read_text())
    deployment = next(d for d in bad if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(deployment))
    exe = Path(sys.executable).with_name("kubernetes-validate")
    result = subprocess.run([str(exe), "--strict", "-k", K8S_VERSION, str(path)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0
    assert "imagePullPolicyy" in result.stdout + result.stderr


def test_images_are_pinned_and_pull_policies_are_valid_enums():
    for name, spec in pod_specs():
        for c in containers(spec):
            assert c.get("imagePullPolicy") in PULL_POLICIES, (name, c["name"], c.get("imagePullPolicy"))
            image = c["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), (name, image)


def test_resource_quantities_parse_and_requests_fit_in_limits():
    for name, spec in pod_specs():
        for c in containers(spec):
            res = c.get("resources", {})
            assert res.get("requests") and res.get("limits"), (name, c["name"], "requests and limits both set")
            for kind in ("requests", "limits"):
                for key, value in res[kind].items():
                    pattern = CPU if key == "cpu" else BYTES
                    assert pattern.match(str(value)), (name, c["name"], kind, key, value)
            for key, req in res["requests"].items():
                if key in res["limits"]:
                    assert quantity(req) <= quantity(res["limits"][key]), (name, key, req, res["limits"][key])
    for _p, d in docs():
        if d["kind"] == "StatefulSet":
            for claim in d["spec"].get("volumeClaimTemplates", []):
                assert BYTES.match(claim["spec"]["resources"]["requests"]["storage"])


def test_quantity_parser_against_known_values():
    assert quantity("250m") == 0.25
    assert quantity("1") == 1.0
    assert quantity("512Mi") == 512 * 2**20
    assert quantity("2Gi") == 2 * 2**30
    assert not CPU.match("1 core") and not BYTES.match("2GB")


def _port_numbers(container: dict) -> dict:
    return {p.get("name", str(p["containerPort"])): p["containerPort"] for p in container.get("ports", [])}


def test_gateway_probes_hit_healthz_on_the_port_the_gateway_listens_on():
    (gateway,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "volgraph-gateway"]
    (c,) = gateway["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    listen_port = int(env["VOLGRAPH_GATEWAY_PORT"])
    assert env["VOLGRAPH_GATEWAY_HOST"] == "0.0.0.0"
    ports = _port_numbers(c)
    assert listen_port in ports.values()
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = c[probe]["httpGet"]
        port = get["port"]
        assert ports.get(port, port) == listen_port, (probe, port)
        # /healthz answers 503 while the flow is away: it decides readiness only, never a restart
        assert get["path"] in ("/healthz", "/livez"), (probe, get["path"])
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert c["startupProbe"]["httpGet"]["path"] == "/livez"
    annotations = gateway["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == listen_port


def test_services_hpa_and_pdb_point_at_real_workloads():
    workloads = {(d["kind"], d["metadata"]["name"]): d for d in by_kind("Deployment") + by_kind("StatefulSet")}
    templates = [(d["spec"]["template"]["metadata"]["labels"], d["spec"]["template"]["spec"]) for d in workloads.values()]
    for svc in by_kind("Service"):
        selector = svc["spec"]["selector"]
        matched = [spec for labels, spec in templates if selector.items() <= labels.items()]
        assert matched, svc["metadata"]["name"]
        for port in svc["spec"]["ports"]:
            target = port["targetPort"]
            names = {n: p for spec in matched for c in spec["containers"] for n, p in _port_numbers(c).items()}
            assert target in names or target in names.values(), (svc["metadata"]["name"], target)
    for hpa in by_kind("HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["kind"], ref["name"]) in workloads
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        target = workloads[(ref["kind"], ref["name"])]
        c = target["spec"]["template"]["spec"]["containers"][0]
        assert "cpu" in c["resources"]["requests"]  # a CPU utilization target needs a CPU request
    for pdb in by_kind("PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert any(selector.items() <= labels.items() for labels, _s in templates), pdb["metadata"]["name"]
        hpa_min = min(h["spec"]["minReplicas"] for h in by_kind("HorizontalPodAutoscaler"))
        assert pdb["spec"]["minAvailable"] < hpa_min  # a drain can always proceed


def test_termination_grace_covers_the_stop_time_with_a_margin():
    for name, spec in pod_specs():
        grace = spec["terminationGracePeriodSeconds"]
        if "postgres" in name:
            assert grace >= 30, name  # PostgreSQL's own checkpoint on stop, not volgraph's
        else:
            assert STOP_BUDGET_S < grace <= 3 * STOP_BUDGET_S, (name, grace)


def test_containers_run_as_non_root_with_a_read_only_root_filesystem():
    for name, spec in pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        for c in containers(spec):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (name, c["name"])


def test_no_secret_is_written_in_any_deploy_file():
    for _p, d in docs():
        assert d["kind"] != "Secret", "Secrets are created out of band (docs/operations.md), never in deploy/"
    for name, spec in pod_specs():
        for c in containers(spec):
            for e in c.get("env", []):
                if SECRETISH.search(e["name"]):
                    assert "value" not in e and "secretKeyRef" in e["valueFrom"], (name, e["name"])
    text_files = [p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml", ".json", ".sh", ".toml", "")]
    for path in text_files + [DEPLOY / "Dockerfile", ROOT / ".dockerignore"]:
        text = path.read_text()
        assert not re.search(r"postgres(ql)?://[^:\s/@]+:[^@\s<.]+@", text), path  # a DSN with a password
        assert not re.search(r"(?i)(token|password)\s*[=:]\s*['\"]?[A-Za-z0-9+/_-]{16,}", text), path
        assert "BEGIN PRIVATE KEY" not in text and "BEGIN RSA" not in text, path
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    assert not values.get("envRenderSecret")
    for key in values["env"]:
        assert not SECRETISH.search(key), key


def test_flow_config_is_a_valid_graph_toml_and_matches_the_helm_shape(tmp_path):
    (cm,) = [d for d in by_kind("ConfigMap") if d["metadata"]["name"] == "volgraph-config"]
    path = tmp_path / "graph.toml"
    path.write_text(cm["data"]["graph.toml"])
    config = load_config(path)  # unknown keys or bad values raise ConfigError
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    shape = values["configuration"]
    assert (config.runtime.processes, config.runtime.workers) == (shape["processesCount"], shape["workersPerProcess"])
    assert shape["recovery"]["enabled"] is True
    assert shape["recovery"]["partsCount"] >= shape["processesCount"]
    assert config.runtime.metrics_host == "0.0.0.0"
    assert int(values["env"]["VOLGRAPH_METRICS_PORT"]) == int(values["podAnnotations"]["prometheus.io/port"])
    assert config.runtime.data_dir.startswith("/var/recovery/")  # the only writable volume the chart mounts
    assert values["env"]["VOLGRAPH_CONFIG"] == "/etc/volgraph/graph.toml"
    (mount,) = [m for m in values["extraSecretMounts"] if m["name"] == "volgraph-config"]
    assert mount["mountPath"] == "/etc/volgraph"
    assert mount["projected"]["sources"][0]["configMap"]["name"] == "volgraph-config"
    assert values["configuration"]["pythonFileName"] == "dataflow.py"
    assert values["image"]["pullPolicy"] in PULL_POLICIES
    assert values["securityContext"]["readOnlyRootFilesystem"] is True
    assert values["podSecurityContext"]["runAsUser"] == 65532


def test_configmap_copies_equal_their_source_files():
    cms = {d["metadata"]["name"]: d["data"] for d in by_kind("ConfigMap")}
    prom = DEPLOY / "prometheus" / "prometheus.yml"
    assert cms["volgraph-prometheus"]["prometheus.yml"] == prom.read_text()
    prov = DEPLOY / "grafana" / "provisioning"
    assert cms["volgraph-grafana-datasources"]["prometheus.yaml"] == (prov / "datasources" / "prometheus.yaml").read_text()
    assert cms["volgraph-grafana-providers"]["volgraph.yaml"] == (prov / "dashboards" / "volgraph.yaml").read_text()


def test_prometheus_scrapes_the_ports_the_processes_serve_metrics_on():
    for name in ("prometheus.yml", "prometheus-local.yml"):
        conf = yaml.safe_load((DEPLOY / "prometheus" / name).read_text())
        jobs = {j["job_name"]: j for j in conf["scrape_configs"]}
        assert set(jobs) == {"volgraph-gateway", "volgraph-flow"}
        assert all(j["metrics_path"] == "/metrics" for j in jobs.values())
    local = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-local.yml").read_text())
    targets = {j["job_name"]: j["static_configs"][0]["targets"][0] for j in local["scrape_configs"]}
    project = load_config()
    assert targets["volgraph-gateway"].endswith(f":{project.sinks.gateway.port}")
    assert targets["volgraph-flow"].endswith(f":{project.runtime.metrics_port}")
    k8s = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    flow_job = next(j for j in k8s["scrape_configs"] if j["job_name"] == "volgraph-flow")
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    assert any(r.get("replacement", "").endswith(":" + values["env"]["VOLGRAPH_METRICS_PORT"])
               for r in flow_job["relabel_configs"])


WAXCTL_FLAGS = {  # `waxctl dataflow deploy --help` (Waxctl Pro 0.12), the flags the script may use
    "--name", "--namespace", "--processes", "--workers", "--recovery", "--recovery-parts", "--recovery-size",
    "--recovery-snapshot-interval", "--image-repository", "--image-tag", "--image-pull-policy",
    "--chart-values-file", "--yes", "--dry-run",
}


def test_waxctl_script_uses_documented_flags_and_rewrites_the_shape(tmp_path):
    script = DEPLOY / "waxctl.sh"
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)], timeout=30).returncode == 0
    used = set(re.findall(r"\s(--[a-z][a-z-]*)", script.read_text().split("set -euo pipefail", 1)[1]))
    used -= {"--from-file", "--dry-run=client", "--from-literal"}
    kubectl_flags = {"--from-file"}
    assert used - kubectl_flags <= WAXCTL_FLAGS, used - WAXCTL_FLAGS
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "DRY_RUN": "1", "PROCESSES": "3", "WORKERS": "2",
           "NAMESPACE": "vg-test"}
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    config_yaml, _sep, rest = result.stdout.partition("\n---\n")
    cm = yaml.safe_load(config_yaml)
    assert cm["metadata"]["namespace"] == "vg-test"
    graph = tomllib.loads(cm["data"]["graph.toml"])
    assert (graph["runtime"]["processes"], graph["runtime"]["workers"]) == (3, 2)
    for part in ("--processes 3", "--workers 2", "--recovery ", "--recovery-parts 3", "--namespace vg-test",
                 "--chart-values-file " + str(DEPLOY / "helm" / "values.yaml"), str(DEPLOY / "dataflow.py")):
        assert part in rest, (part, rest)
    bad = subprocess.run(["bash", str(script)], env={**env, "PROCESSES": "0"}, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "integers ≥ 1" in bad.stderr
    fewer = subprocess.run(["bash", str(script)], env={**env, "RECOVERY_PARTS": "2"}, capture_output=True,
                           text=True, timeout=60)
    assert fewer.returncode == 2 and "give every process a partition" in fewer.stderr


@pytest.mark.parametrize("name", ["gateway.yaml", "postgres-demo.yaml", "doctor-job.yaml"])
def test_secret_references_name_the_secrets_the_runbook_tells_ops_to_create(name):
    runbook = (ROOT / "docs" / "operations.md").read_text()
    text = (DEPLOY / "k8s" / name).read_text()
    for secret, key in re.findall(r"secretKeyRef:\s*\n\s*name: (\S+)\s*\n\s*key: (\S+)", text):
        assert secret in runbook and key in runbook, (name, secret, key)


def test_helm_pod_labels_do_not_collide_with_the_charts_own():
    """bytewax's chart writes app.kubernetes.io/name and /instance into the pod labels itself
    (templates/_helpers.tpl selectorLabels); a podLabels entry with either key would make a
    duplicate key in the rendered pod template."""
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    assert not {"app.kubernetes.io/name", "app.kubernetes.io/instance"} & set(values["podLabels"])
