"""deploy/: the kustomize base and overlays agree with the code.

* deploy/base/rbac.yaml is exactly ``slurm-k8s-bridge rbac`` of deploy/base/k8s-bridge.yaml
  (neither more nor less), and it is exactly what each overlay's configuration needs;
* the Kueue overlay's configuration differs from the base's only in gang and queue;
* the Deployment runs 2 replicas of the controller image with leader election on, every
  container non-root without privilege escalation, no hostPath anywhere; the daemon's
  command line parses with the real parser; the PDB and the Service select its pods;
  the munged sidecar's socket is the one the daemon's slurm.conf names.
(tests/k8s/test_deploy.py builds the overlays with kubectl and dry-runs them on a real
API server.)
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from slurm_k8s_bridge.cli import build_parser
from slurm_k8s_bridge.core.config import job_namespaces, load_config
from slurm_k8s_bridge.kube.rbac import (
    DAEMON_NAMESPACE,
    SERVICE_ACCOUNT,
    rbac_for_config,
    render_rbac_for_config,
)

pytestmark = pytest.mark.unit

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
BASE = DEPLOY / "base"
BASE_CONFIG = "deploy/base/k8s-bridge.yaml"
OVERLAYS = ("builtin", "kueue")
IMAGE = "localhost/slurm-k8s-bridge-controller"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _objects(kind: str) -> list[dict[str, Any]]:
    return [d for p in sorted(BASE.glob("*.yaml")) if p.name not in ("kustomization.yaml",
                                                                   "k8s-bridge.yaml")
            for d in _docs(p) if d.get("kind") == kind]


def _deployment() -> dict[str, Any]:
    (deployment,) = _objects("Deployment")
    return deployment


def _config_of(overlay: str) -> Path:
    own = DEPLOY / "overlays" / overlay / "k8s-bridge.yaml"
    return own if own.exists() else BASE / "k8s-bridge.yaml"


def test_base_rbac_is_what_the_code_generates() -> None:
    text = (BASE / "rbac.yaml").read_text()
    config = load_config(BASE / "k8s-bridge.yaml")
    assert text == render_rbac_for_config(config, BASE_CONFIG), \
        f"regenerate: slurm-k8s-bridge rbac --config {BASE_CONFIG} --as-source {BASE_CONFIG}" \
        f" > deploy/base/rbac.yaml"
    objects = _docs(BASE / "rbac.yaml")
    assert objects == rbac_for_config(config)
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert ("Role", "slurm-k8s-bridge-leader-election") in kinds   # leader election is on
    assert ("ClusterRole", "slurm-k8s-bridge-pod-reader") not in kinds  # native usage is off


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_needs_exactly_the_base_rbac(overlay: str) -> None:
    kustomization = yaml.safe_load((DEPLOY / "overlays" / overlay / "kustomization.yaml").read_text())
    assert "../../base" in kustomization["resources"]
    assert not [r for r in kustomization["resources"] if "rbac" in r.lower()]
    assert rbac_for_config(load_config(_config_of(overlay))) == _docs(BASE / "rbac.yaml")


def test_kueue_config_is_the_base_with_kueue_gangs() -> None:
    base = yaml.safe_load((BASE / "k8s-bridge.yaml").read_text())
    kueue = yaml.safe_load(_config_of("kueue").read_text())
    assert kueue["partitions"]["default"]["gang"] == "kueue"
    assert kueue["partitions"]["default"]["queue"] == "slurm-gpu"
    expected = copy.deepcopy(base)
    expected["partitions"]["default"].update(gang="kueue", queue="slurm-gpu")
    assert kueue == expected
    (queue,) = _docs(DEPLOY / "overlays" / "kueue" / "localqueue.yaml")
    assert (queue["kind"], queue["metadata"]["name"], queue["metadata"]["namespace"]) == (
        "LocalQueue", "slurm-gpu", "slurm-jobs")


def _keys(obj: Any) -> set[str]:
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in _keys(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in _keys(v)}
    return set()


def test_no_hostpath_anywhere() -> None:
    for path in sorted(DEPLOY.rglob("*.yaml")):
        assert "hostPath" not in _keys(_docs(path)), path
        assert "host_path" not in _keys(_docs(path)), path


def test_the_deployment() -> None:
    deployment = _deployment()
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    assert spec["replicas"] == 2
    assert deployment["metadata"]["namespace"] == DAEMON_NAMESPACE
    assert pod["serviceAccountName"] == SERVICE_ACCOUNT
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["securityContext"]["runAsNonRoot"] is True
    containers = pod["containers"] + pod["initContainers"]
    assert {c["name"] for c in containers} == {"daemon", "munged"}
    for c in containers:
        assert c["image"].split(":")[0] == IMAGE, c["name"]
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
        assert sc["readOnlyRootFilesystem"] is True and sc["runAsUser"] != 0
    (munged,) = pod["initContainers"]
    assert munged["restartPolicy"] == "Always"        # a native sidecar: up before the daemon
    kinds = {next(k for k in v if k != "name") for v in pod["volumes"]}
    assert kinds <= {"configMap", "secret", "emptyDir"}, kinds


def test_the_daemon_command_parses_and_names_the_mounted_config() -> None:
    pod = _deployment()["spec"]["template"]["spec"]
    (daemon,) = pod["containers"]
    command = daemon["command"]
    assert command[:4] == ["/usr/bin/tini", "--", "slurm-k8s-bridge", "run"]
    args = build_parser().parse_args([a.replace("$(POD_NAME)", "pod-0") for a in command[3:]])
    config_mount = next(m for m in daemon["volumeMounts"] if m["name"] == "config")
    assert Path(args.config).parent == Path(config_mount["mountPath"])
    assert Path(args.config).name == "k8s-bridge.yaml"
    assert args.metrics_host == "0.0.0.0" and args.leader_elect_identity == "pod-0"
    assert load_config(BASE / "k8s-bridge.yaml").leader_election.enabled
    port = next(p for p in daemon["ports"] if p["name"] == "metrics")
    assert port["containerPort"] == args.metrics_port


def test_munged_socket_is_the_one_slurm_conf_names() -> None:
    pod = _deployment()["spec"]["template"]["spec"]
    (munged,) = pod["initContainers"]
    socket = re.search(r"--socket=(\S+)", munged["command"][-1])
    assert socket is not None
    conf = (BASE / "slurm.conf").read_text()
    assert f"AuthInfo=socket={socket.group(1)}" in conf
    (daemon,) = pod["containers"]
    shared = {m["name"]: m["mountPath"] for m in daemon["volumeMounts"]}
    assert socket.group(1).startswith(shared["munge-socket"] + "/")


def test_pdb_service_namespaces_and_secrets() -> None:
    labels = _deployment()["spec"]["template"]["metadata"]["labels"]
    (pdb,) = _objects("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (service,) = _objects("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    config = load_config(BASE / "k8s-bridge.yaml")
    namespaces = {n["metadata"]["name"] for n in _objects("Namespace")}
    assert namespaces == {DAEMON_NAMESPACE, *job_namespaces(config)}
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    secrets = {(s["namespace"], s["name"]) for s in kustomization["secretGenerator"]}
    assert secrets == {(ns, config.munge_key_secret)
                       for ns in (DAEMON_NAMESPACE, *job_namespaces(config))}
    for generator in kustomization["secretGenerator"]:   # the worker pods name it as it is
        if generator["namespace"] != DAEMON_NAMESPACE:
            assert generator["options"]["disableNameSuffixHash"] is True
    files = {f for g in kustomization["configMapGenerator"] for f in g["files"]}
    assert files == {"k8s-bridge.yaml", "slurm.conf"}
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml", "k8s-bridge.yaml"}
    assert listed == on_disk
