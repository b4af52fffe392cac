"""deploy/ against a real kube-apiserver: ``kubectl kustomize`` builds each overlay (the
kubectl of the cached control-plane binaries), and the built-in overlay is applied with
server-side dry-run (schemas, defaulting, admission): every object is accepted; the
daemon's pod, created as a dry run in its namespace, passes the namespace's Pod Security
level (restricted); and the ServiceAccount, once the RBAC is really applied, may do what
the daemon does and nothing it does not (SubjectAccessReview).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from slurm_k8s_bridge.kube.rbac import DAEMON_NAMESPACE, SERVICE_ACCOUNT
from slurm_k8s_devcluster.k8s import LocalKubeCluster

from ..paths import REPO

pytestmark = pytest.mark.k8s



@pytest.fixture(scope="module")
def kube_options() -> dict[str, Any]:
    return {"kwok_nodes": 0}


def kubectl(bin_dir: Path, *args: str, kubeconfig: Path | None = None, stdin: str | None = None
            ) -> str:
    cmd = [str(bin_dir / "kubectl"), *(["--kubeconfig", str(kubeconfig)] if kubeconfig else []),
           *args]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120,
                          check=False, cwd=REPO)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd[1:])} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


@pytest.mark.parametrize("overlay", ["builtin", "kueue"])
def test_overlays_build(k8s_bin_dir: Path, overlay: str) -> None:
    objects = [o for o in yaml.safe_load_all(kubectl(k8s_bin_dir, "kustomize",
                                                     f"deploy/overlays/{overlay}")) if o]
    kinds = sorted({o["kind"] for o in objects})
    print(f"\n{overlay}: {len(objects)} objects: {', '.join(kinds)}")
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "ClusterRole",
            "ClusterRoleBinding", "Deployment", "PodDisruptionBudget", "Service", "ConfigMap",
            "Secret"} <= set(kinds)
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    config = next(o for o in objects if o["kind"] == "ConfigMap"
                  and o["metadata"]["name"].startswith("slurm-k8s-bridge-config-"))
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == config["metadata"]["name"]  # hash rewritten
    gang = yaml.safe_load(config["data"]["k8s-bridge.yaml"])["partitions"]["default"]["gang"]
    assert gang == overlay


def test_builtin_overlay_is_accepted_by_the_api_server(k8s_bin_dir: Path,
                                                       kube_cluster: LocalKubeCluster,
                                                       kube_admin: Any) -> None:
    built = kubectl(k8s_bin_dir, "kustomize", "deploy/overlays/builtin")
    objects = [o for o in yaml.safe_load_all(built) if o]
    admin = kube_cluster.kubeconfig
    # a dry run creates nothing: the objects in the namespaces need them to exist, and the
    # pod below its ServiceAccount
    namespaces = yaml.safe_dump_all([o for o in objects
                                     if o["kind"] in ("Namespace", "ServiceAccount")])
    kubectl(k8s_bin_dir, "apply", "--server-side", "-f", "-", kubeconfig=admin, stdin=namespaces)
    out = kubectl(k8s_bin_dir, "apply", "--server-side", "--dry-run=server", "-f", "-",
                  kubeconfig=admin, stdin=built)
    print(f"\n{out}")
    assert out.count("serverside-applied (server dry run)") == len(objects), out

    # the pod the Deployment makes, in its namespace: Pod Security (restricted) must admit it
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "slurm-k8s-bridge-dry-run", "namespace": DAEMON_NAMESPACE,
                        "labels": deployment["spec"]["template"]["metadata"]["labels"]},
           "spec": deployment["spec"]["template"]["spec"]}
    core = client.CoreV1Api(kube_admin)
    created = core.create_namespaced_pod(DAEMON_NAMESPACE, pod, dry_run="All")
    assert created.spec.service_account_name == SERVICE_ACCOUNT
    labels = core.read_namespace(DAEMON_NAMESPACE).metadata.labels
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    # and a pod that breaks "restricted" is refused there: the check above can fail
    root = json.loads(json.dumps(pod))
    root["spec"]["containers"][0]["securityContext"]["runAsUser"] = 0
    with pytest.raises(client.ApiException) as refused:
        core.create_namespaced_pod(DAEMON_NAMESPACE, root, dry_run="All")
    assert refused.value.status == 403 and "restricted" in refused.value.body


def test_the_service_account_may_do_what_the_daemon_does(k8s_bin_dir: Path,
                                                         kube_cluster: LocalKubeCluster,
                                                         kube_admin: Any) -> None:
    built = kubectl(k8s_bin_dir, "kustomize", "deploy/overlays/builtin")
    rbac = [o for o in yaml.safe_load_all(built) if o and o["kind"] in (
        "Namespace", "ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")]
    kubectl(k8s_bin_dir, "apply", "--server-side", "-f", "-", kubeconfig=kube_cluster.kubeconfig,
            stdin=yaml.safe_dump_all(rbac))
    authz = client.AuthorizationV1Api(kube_admin)
    user = f"system:serviceaccount:{DAEMON_NAMESPACE}:{SERVICE_ACCOUNT}"

    def allowed(verb: str, group: str, resource: str, namespace: str | None,
                name: str | None = None) -> bool:
        review = authz.create_subject_access_review({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": user, "groups": ["system:serviceaccounts",
                                              f"system:serviceaccounts:{DAEMON_NAMESPACE}"],
                     "resourceAttributes": {"verb": verb, "group": group, "resource": resource,
                                            "namespace": namespace, "name": name}}})
        return bool(review.status.allowed)

    lease = ("coordination.k8s.io", "leases", DAEMON_NAMESPACE)
    assert allowed("create", *lease)
    assert allowed("update", *lease, "slurm-k8s-bridge")
    assert allowed("get", *lease, "slurm-k8s-bridge")
    assert not allowed("update", *lease, "kube-controller-manager")
    assert not allowed("delete", *lease, "slurm-k8s-bridge")
    assert allowed("create", "batch", "jobs", "slurm-jobs")
    assert allowed("watch", "", "pods", "slurm-jobs")
    assert not allowed("create", "batch", "jobs", "default")
    assert not allowed("get", "", "secrets", "slurm-jobs")
    assert not allowed("list", "", "pods", "kube-system")      # native_gpu_usage is off
