"""The deployment files, checked offline: the compose stack with Debian's ``docker-compose``
(its bundled Compose-spec schema), the Grafana dashboard and Prometheus config against the
metrics Vigil really exports, the Kubernetes manifests against the Kubernetes schemas that
``kubernetes-validate`` ships (strict: unknown fields fail)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cli.main import build_parser
from cluster.metrics import GatewayMetrics, WorkerMetrics
from pipeline.config import load_config
from server.metrics import Metrics
from tests.factories import REPO

DOCKER = REPO / "docker"
DEPLOY = REPO / "deploy"
K8S_VERSION = "1.30.0"


def _compose(path: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is not installed (`make install` installs Debian's)")
    return subprocess.run(
        [exe, "-f", str(path), "--project-directory", str(DOCKER), "config"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _exported_names() -> set[str]:
    """Every sample name a gateway or a worker exports (histograms with their suffixes)."""
    names: set[str] = set()
    for extra in (GatewayMetrics, WorkerMetrics):
        m = Metrics(None if extra is GatewayMetrics else lambda: None)
        extra(m.registry)
        for family in m.registry.collect():
            names.add(family.name)
            for suffix in ("_total", "_bucket", "_count", "_sum", "_created", "_info"):
                names.add(family.name + suffix)
    return names


def test_compose_stack_is_valid_and_runs_our_commands(tmp_path: Path) -> None:
    result = _compose(DOCKER / "compose.yaml")
    assert result.returncode == 0, result.stderr
    stack = yaml.safe_load(result.stdout)
    services = stack["services"]
    assert {"redis", "worker", "gateway", "prometheus", "grafana", "camera"} <= set(services)
    assert services["worker"]["deploy"]["replicas"] == 2
    assert "--appendonly" in services["redis"]["command"]
    parser = build_parser()
    for name in ("worker", "gateway"):
        svc = services[name]
        assert svc["read_only"] is True and svc["user"] == "10001:10001"
        args = parser.parse_args(svc["command"])
        assert args.command == name
        mounts = [v.split(":")[:2] if isinstance(v, str) else [v["source"], v["target"]]
                  for v in svc["volumes"]]  # fmt: skip
        source = next(src for src, target in mounts if target == str(args.config))
        cfg = load_config(Path(source))  # the mounted config is valid Vigil config
        assert cfg.redis.url == "redis://redis:6379/0"
        assert cfg.auth.keys_file.startswith("/run/secrets/")
    # the check can fail: an unknown key in a service is refused
    broken = tmp_path / "compose.yaml"
    text = (DOCKER / "compose.yaml").read_text()
    broken.write_text(text.replace("  gateway:\n", "  gateway:\n    replicaz: 3\n", 1))
    assert _compose(broken).returncode != 0


def test_prometheus_scrapes_every_vigil_process() -> None:
    prom = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    assert jobs["vigil-gateway"]["static_configs"][0]["targets"] == ["gateway:8000"]
    assert jobs["vigil-worker"]["dns_sd_configs"][0]["names"] == ["worker"]


def test_grafana_dashboard_queries_only_metrics_vigil_exports() -> None:
    dash = json.loads((DOCKER / "grafana" / "dashboards" / "vigil.json").read_text())
    exported = _exported_names()
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\bvigil_[a-z0-9_]+", e)}
    assert used and used <= exported, sorted(used - exported)
    titles = " | ".join(p["title"].lower() for p in dash["panels"])
    for wanted in ("fps", "dropped", "p99", "per worker", "events per minute"):
        assert wanted in titles, wanted
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    provider = yaml.safe_load(
        (DOCKER / "grafana" / "provisioning" / "dashboards" / "vigil.yaml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((DEPLOY / name).read_text()):
            docs.append((name, doc))
    return docs


def test_kubernetes_manifests_validate_against_the_schemas() -> None:
    docs = _manifests()
    kinds = {d["kind"] for _, d in docs}
    assert {"Deployment", "Service", "StatefulSet", "HorizontalPodAutoscaler",
            "PodDisruptionBudget"} <= kinds  # fmt: skip
    for _, doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises on any error
    typo = next(d for _, d in docs if d["kind"] == "Deployment")
    bad = json.loads(json.dumps(typo))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_workloads_are_probed_limited_and_unprivileged() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    for gen in kustomization["configMapGenerator"]:
        for f in gen["files"]:
            load_config(DEPLOY / f)  # the mounted config is valid Vigil config
    parser = build_parser()
    vigil = [d for _, d in _manifests() if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in vigil} == {"vigil-gateway", "vigil-worker"}
    for d in vigil:
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        (c,) = pod["containers"]
        assert parser.parse_args(c["args"]).command in ("gateway", "worker")
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["resources"]["requests"] and c["resources"]["limits"]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
    hpa = next(d for _, d in _manifests() if d["kind"] == "HorizontalPodAutoscaler")
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert metric in _exported_names()
    rules = next(d for _, d in _manifests() if d["kind"] == "ConfigMap")
    assert metric in rules["data"]["config.yaml"]
    kubectl = shutil.which("kubectl")
    if kubectl:  # where kubectl is installed, kustomize must also build the whole set
        out = subprocess.run([kubectl, "kustomize", str(DEPLOY)], capture_output=True,
                             text=True, timeout=60)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "registry.example.com/vigil:cpu" in out.stdout
