"""The Kubernetes manifests: schema-valid, consistent with each other, and keeping the promises in the docs.

Core resources are validated offline against Kubernetes' OpenAPI schemas with `kubernetes-validate`
(PyPI; skipped with that reason where it is not installed). ServiceMonitor and PrometheusRule are
Prometheus Operator CRDs with no bundled schema: they are checked structurally here instead.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from vramwatch.config import DaemonConfig, load_file

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "kubernetes"
CORE = ["namespace.yaml", "serviceaccount.yaml", "configmap.yaml", "daemonset.yaml", "service.yaml"]
# Oldest Kubernetes still common on GPU clusters, and the newest schema the validator ships.
VERSIONS = ["1.28.0", "1.37.0"]


def load(name: str) -> dict[str, Any]:
    docs = list(yaml.safe_load_all((K8S / name).read_text()))
    assert len(docs) == 1, f"{name}: one resource per file"
    doc = docs[0]
    assert isinstance(doc, dict)
    return doc


def container() -> dict[str, Any]:
    containers = load("daemonset.yaml")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result = containers[0]
    assert isinstance(result, dict)
    return result


def walk(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair in a nested YAML document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", CORE)
def test_core_manifest_valid(name: str, version: str) -> None:
    """Each core manifest validates strictly (unknown fields rejected) against the Kubernetes schema."""
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (test extra)")
    kv.validate(load(name), version, strict=True)


def test_validation_is_live() -> None:
    """The schema check above rejects a misspelt securityContext field, so passing it means something."""
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (test extra)")
    ds = load("daemonset.yaml")
    ds["spec"]["template"]["spec"]["securityContext"]["runAsNonRot"] = True
    with pytest.raises(kv.ValidationError):
        kv.validate(ds, VERSIONS[-1], strict=True)


def test_daemonset_sees_host_pids_and_all_gpus_without_claiming_one() -> None:
    """hostPID for attribution, the nvidia runtime with utility caps, all GPUs visible, no nvidia.com/gpu request."""
    spec = load("daemonset.yaml")["spec"]["template"]["spec"]
    assert spec["hostPID"] is True
    assert spec["runtimeClassName"] == "nvidia"
    env = {e["name"]: e["value"] for e in container()["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
    assert not any(key == "nvidia.com/gpu" for key, _ in walk(container()["resources"]))
    assert any(t.get("key") == "nvidia.com/gpu" for t in spec["tolerations"])


def test_daemonset_least_privilege() -> None:
    """Non-root, no capabilities, no escalation, read-only root, no host paths, no API token."""
    spec = load("daemonset.yaml")["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    sc = container()["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["privileged"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert not any(key == "hostPath" for key, _ in walk(spec["volumes"]))
    assert spec["automountServiceAccountToken"] is False
    assert {"cpu", "memory"} <= container()["resources"]["limits"].keys()


def test_probes_on_the_metrics_port() -> None:
    """Liveness asks /healthz (a stalled sampler restarts the pod); readiness asks /metrics (vramwatch_up 0 stays
    scraped while the driver is missing); both on the named port the container listens on."""
    c = container()
    port_names = {p["name"] for p in c["ports"]}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/metrics"
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] in port_names
    listen = c["args"][c["args"].index("--listen") + 1]
    assert int(listen.rsplit(":", 1)[1]) == next(p["containerPort"] for p in c["ports"] if p["name"] == "metrics")


def test_config_mount_matches_argument_and_loads(tmp_path: Path) -> None:
    """--config points into the ConfigMap's mount, and the ConfigMap's TOML passes the daemon's loader."""
    c = container()
    config_arg = Path(c["args"][c["args"].index("--config") + 1])
    mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
    assert config_arg.parent == Path(mount["mountPath"])
    text = load("configmap.yaml")["data"][config_arg.name]
    path = tmp_path / config_arg.name
    path.write_text(text)
    daemon, _, _ = load_file(path)
    assert daemon.log_format == "json"
    assert daemon.interval == DaemonConfig().interval


def test_container_command_accepted_by_the_cli(tmp_path: Path) -> None:
    """The container's command and args parse with the real CLI, reading the ConfigMap's config."""
    c = container()
    assert c["command"] == ["vramwatch"]
    args = list(c["args"])
    config = Path(args[args.index("--config") + 1])
    local = tmp_path / config.name
    local.write_text(load("configmap.yaml")["data"][config.name])
    args[args.index("--config") + 1] = str(local)
    result = subprocess.run(
        [sys.executable, "-m", "vramwatch", *args, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "--listen" in result.stdout


def test_service_selects_the_daemonset_pods() -> None:
    """The headless Service selects the DaemonSet's pod labels and targets its metrics port."""
    pod_labels = load("daemonset.yaml")["spec"]["template"]["metadata"]["labels"]
    svc = load("service.yaml")["spec"]
    assert svc["clusterIP"] == "None"
    assert svc["selector"].items() <= pod_labels.items()
    assert {p["targetPort"] for p in svc["ports"]} <= {p["name"] for p in container()["ports"]}


def test_servicemonitor_structure() -> None:
    """ServiceMonitor (no bundled schema): right API, selects the Service, scrapes its port, job is vramwatch."""
    sm = load("servicemonitor.yaml")
    svc = load("service.yaml")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["kind"] == "ServiceMonitor"
    assert sm["metadata"]["namespace"] == svc["metadata"]["namespace"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert svc["metadata"]["namespace"] in sm["spec"]["namespaceSelector"]["matchNames"]
    # jobLabel names the Service label whose value becomes `job`; the alert rules expect "vramwatch".
    assert svc["metadata"]["labels"][sm["spec"]["jobLabel"]] == "vramwatch"
    endpoints = sm["spec"]["endpoints"]
    assert endpoints
    svc_ports = {p["name"] for p in svc["spec"]["ports"]}
    for ep in endpoints:
        assert ep["port"] in svc_ports
        assert ep.get("path", "/metrics") == "/metrics"
        assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "relabelings", "metricRelabelings", "scheme"}


def test_prometheusrule_matches_rules_file() -> None:
    """The operator's PrometheusRule carries exactly the groups of prometheus/vramwatch-rules.yml."""
    rule = load("prometheusrule.yaml")
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    rules_file = yaml.safe_load((REPO / "prometheus" / "vramwatch-rules.yml").read_text())
    assert rule["spec"] == rules_file


def test_namespace_allows_hostpid_only_knowingly() -> None:
    """hostPID needs the privileged Pod Security level; restricted stays as warn/audit so waivers are visible."""
    labels = load("namespace.yaml")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"


def test_kustomization_lists_every_manifest() -> None:
    """`kubectl apply -k` applies every manifest in the folder, and nothing that is missing."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_every_manifest_in_the_vramwatch_namespace() -> None:
    """Namespaced resources all live in the vramwatch namespace the Namespace manifest creates."""
    ns = load("namespace.yaml")["metadata"]["name"]
    for name in sorted({p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "namespace.yaml"}):
        assert load(name)["metadata"]["namespace"] == ns, name
