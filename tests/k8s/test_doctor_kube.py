"""``slurm-k8s-bridge doctor`` against the real control plane of the k8s tier, as the daemon's
own ServiceAccount: healthy (with and without the bridge's Slurm side), then broken one thing
at a time -- an unreachable API server, a CA that did not sign the server's certificate, a
token the server rejects, a ServiceAccount missing one RBAC verb, a job namespace that does
not exist, a GPU node without its product label, Kueue configured but not installed (and a
LocalQueue missing once it is), and no GPU nodes at all. Each broken setup must make the
doctor exit 1 and name the cause.

The doctor runs as the real command (``python -m slurm_k8s_bridge.cli doctor --json``).
The configuration is the example one (slurm_plugins/k8s-bridge.example.yaml), as the bridge
cluster of tests/k8s/conftest.py uses it; the ServiceAccount gets exactly the RBAC
``required_rbac`` makes for it (``DaemonRbac.of_config``).
"""

from __future__ import annotations

import base64
import copy
import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from slurm_k8s_bridge.doctor.report import Finding, Report
from slurm_k8s_bridge.kube.rbac import DAEMON_NAMESPACE, required_rbac
from slurm_k8s_devcluster.bridge import BridgeCluster
from slurm_k8s_devcluster.k8s import LocalKubeCluster

from ..kube_env import DaemonRbac
from ..paths import REPO, EXAMPLE_CONFIG as EXAMPLE

pytestmark = pytest.mark.k8s

SA_USER = f"system:serviceaccount:{DAEMON_NAMESPACE}:slurm-k8s-bridge"
KUEUE_CRDS = Path.home() / ".cache" / "slurm-k8s-bridge" / "k8s"


@pytest.fixture(scope="module")
def daemon_rbac() -> DaemonRbac:
    return DaemonRbac.of_config(EXAMPLE)


def doctor(*args: str, config: Path = EXAMPLE, kubeconfig: Path | None = None,
           env: dict[str, str] | None = None) -> tuple[int, list[dict[str, str]], str]:
    cmd = [sys.executable, "-m", "slurm_k8s_bridge.cli", "doctor", "--config", str(config),
           "--timeout", "10", *args]
    if kubeconfig is not None:
        cmd += ["--kubeconfig", str(kubeconfig)]
    proc = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=180,
                          env=env, check=False)
    assert proc.stdout, proc.stderr
    findings = json.loads(proc.stdout)["findings"]
    text = Report([Finding(**f) for f in findings]).as_text()   # what the admin reads
    print(text)
    return proc.returncode, findings, text


def kube_doctor(kubeconfig: Path, config: Path = EXAMPLE) -> tuple[int, list[dict[str, str]], str]:
    return doctor("--no-slurm", config=config, kubeconfig=kubeconfig)


def failed(findings: list[dict[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in findings:
        if f["status"] == "fail":
            assert f.get("fix"), f
            out.setdefault(f["check"], []).append(f["message"])
    return out


def assert_names(findings: list[dict[str, str]], check: str, pattern: str) -> None:
    fails = failed(findings)
    assert check in fails, f"{check} did not fail; failures: {fails}"
    assert any(re.search(pattern, m) for m in fails[check]), fails[check]


def status_of(findings: list[dict[str, str]], check: str) -> str | None:
    found = [f["status"] for f in findings if f["check"] == check]
    return found[0] if found else None


def edited_kubeconfig(source: Path, tmp_path: Path, edit: Any) -> Path:
    data = yaml.safe_load(source.read_text())
    edit(data)
    path = tmp_path / "edited.kubeconfig"
    path.write_text(yaml.safe_dump(data))
    return path


def edited_config(tmp_path: Path, edit: Any) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text())
    edit(data)
    path = tmp_path / "k8s-bridge.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- healthy ------------------------------------------------------------------------------

def test_the_healthy_daemon_identity_passes(sa_kubeconfig: Path) -> None:
    rc, findings, text = kube_doctor(sa_kubeconfig)
    assert rc == 0, text
    for check in ("config", "kube.api", "kube.credentials", "kube.namespace.slurm-jobs",
                  "kube.namespace.physics", "kube.rbac", "kube.gpu_nodes"):
        assert status_of(findings, check) == "ok", f"{check}\n{text}"
    assert SA_USER in text
    assert status_of(findings, "kube.kueue") == "skip"      # the example admits with builtin


def test_the_whole_healthy_dev_cluster_passes(bridge: BridgeCluster, sa_kubeconfig: Path) -> None:
    """slurmctld host and Kubernetes together: every check runs, nothing fails."""
    rc, findings, text = doctor("--slurm-conf", str(bridge.cluster.conf_path),
                                config=bridge.config_path, kubeconfig=sa_kubeconfig,
                                env=bridge.cluster.env())
    assert rc == 0, text
    # every check ran (Kueue's only where a partition admits through it)
    assert [f["check"] for f in findings if f["status"] == "skip"] == ["kube.kueue"], text
    for check in ("slurm.job_submit", "plugin.job_submit_k8s.so", "munge", "slurmctld", "kube.rbac"):
        assert status_of(findings, check) == "ok", f"{check}\n{text}"


# -- broken, one thing at a time ---------------------------------------------------------

def test_unreachable_api_server(sa_kubeconfig: Path, tmp_path: Path) -> None:
    port = free_port()

    def edit(data: dict[str, Any]) -> None:
        data["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    rc, findings, _ = kube_doctor(edited_kubeconfig(sa_kubeconfig, tmp_path, edit))
    assert rc == 1
    assert_names(findings, "kube.api", rf"127\.0\.0\.1:{port} cannot be reached.*Connection refused")


def test_a_ca_that_did_not_sign_the_servers_certificate(sa_kubeconfig: Path, tmp_path: Path) -> None:
    key, crt = tmp_path / "other-ca.key", tmp_path / "other-ca.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "1",
                    "-subj", "/CN=another-ca"], check=True, capture_output=True)

    def edit(data: dict[str, Any]) -> None:
        data["clusters"][0]["cluster"]["certificate-authority-data"] = \
            base64.b64encode(crt.read_bytes()).decode()
    rc, findings, _ = kube_doctor(edited_kubeconfig(sa_kubeconfig, tmp_path, edit))
    assert rc == 1
    assert_names(findings, "kube.tls", r"certificate the kubeconfig's CA does not trust")


def test_a_token_the_server_rejects(sa_kubeconfig: Path, tmp_path: Path) -> None:
    def edit(data: dict[str, Any]) -> None:
        data["users"][0]["user"]["token"] = "not-a-token"
    rc, findings, _ = kube_doctor(edited_kubeconfig(sa_kubeconfig, tmp_path, edit))
    assert rc == 1
    assert_names(findings, "kube.credentials", r"rejects the credentials.*401")


@pytest.fixture(scope="module")
def partial_kubeconfig(kube_cluster: LocalKubeCluster, daemon_rbac: DaemonRbac,
                       tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ServiceAccount with the daemon's RBAC less one verb: delete on Jobs in slurm-jobs."""
    name = "doctor-partial"
    objects = copy.deepcopy(required_rbac(list(daemon_rbac.job_namespaces), service_account=name,
                                          native_gpu_usage=daemon_rbac.native_gpu_usage))
    for obj in objects:
        if obj["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            obj["metadata"]["name"] += f"-{name}"
        if obj["kind"] == "ClusterRoleBinding":
            obj["roleRef"]["name"] += f"-{name}"
        if obj["kind"] == "Role" and obj["metadata"]["namespace"] == "slurm-jobs":
            for rule in obj["rules"]:
                if rule["resources"] == ["jobs"]:
                    rule["verbs"] = [v for v in rule["verbs"] if v != "delete"]
    kube_cluster.apply_as_admin(objects)
    return Path(kube_cluster.kubeconfig_for_service_account(
        DAEMON_NAMESPACE, name, tmp_path_factory.mktemp("partial") / "partial.kubeconfig"))


def test_a_service_account_missing_one_rbac_verb(partial_kubeconfig: Path) -> None:
    rc, findings, _ = kube_doctor(partial_kubeconfig)
    assert rc == 1
    fails = failed(findings)
    assert list(fails) == ["kube.rbac"], fails
    want = (f"system:serviceaccount:{DAEMON_NAMESPACE}:doctor-partial may not delete "
            "jobs.batch in namespace slurm-jobs")
    assert fails["kube.rbac"] == [want]


def test_a_job_namespace_that_does_not_exist(sa_kubeconfig: Path, kube_cluster: LocalKubeCluster,
                                             tmp_path: Path) -> None:
    def edit(data: dict[str, Any]) -> None:
        data["partitions"]["default"]["namespace"] = "absent-jobs"
    config = edited_config(tmp_path, edit)
    rc, findings, _ = kube_doctor(sa_kubeconfig, config)
    assert rc == 1
    # the daemon may not read namespaces, and no Role can exist in one that does not
    assert_names(findings, "kube.namespace.absent-jobs", r"absent-jobs does not exist")
    (rbac,) = failed(findings)["kube.rbac"]     # one line for the namespace, every verb in it
    assert re.fullmatch(rf"{SA_USER} may not create,get,list,watch,delete jobs\.batch; .* "
                        r"in namespace absent-jobs", rbac), rbac
    rc, findings, _ = kube_doctor(kube_cluster.kubeconfig, config)   # an administrator can tell
    assert rc == 1
    assert failed(findings)["kube.namespace.absent-jobs"] == [
        "namespace absent-jobs does not exist: bridged jobs there cannot start"]


def test_a_gpu_node_without_its_product_label(sa_kubeconfig: Path, kube_cluster: LocalKubeCluster,
                                              admin: Any) -> None:
    from kubernetes import client
    (name,) = kube_cluster.add_gpu_nodes(1, prefix="nolabel")
    try:
        client.CoreV1Api(admin).patch_node(name, {"metadata": {"labels": {"nvidia.com/gpu.product": None}}})
        rc, findings, _ = kube_doctor(sa_kubeconfig)
        assert rc == 1
        assert_names(findings, "kube.gpu_nodes",
                     rf"node {name} has 8 nvidia.com/gpu but no nvidia.com/gpu.product label")
    finally:
        kube_cluster.delete_nodes([name])


def kueue_config(tmp_path: Path) -> Path:
    def edit(data: dict[str, Any]) -> None:
        data["partitions"]["default"].update({"gang": "kueue", "queue": "gpu-jobs"})
        data["accounts"] = {}
    return edited_config(tmp_path, edit)


@pytest.fixture
def localqueue_crd(admin: Any) -> Iterator[dict[str, Any]]:
    """Kueue's own LocalQueue CRD (from the cached Kueue build), installed for one test."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    found = sorted(KUEUE_CRDS.glob("kueue-*/share/kueue/crd/kueue.x-k8s.io_localqueues.yaml"))
    if not found:
        pytest.skip(f"Kueue's CRDs are not cached under {KUEUE_CRDS} (scripts/build-kueue.sh)")
    crd = yaml.safe_load(found[-1].read_text())
    ext = client.ApiextensionsV1Api(admin)
    ext.create_custom_resource_definition(crd)
    try:
        yield crd
    finally:
        try:
            ext.delete_custom_resource_definition(crd["metadata"]["name"])
        except ApiException as exc:
            if exc.status != 404:
                raise


def test_kueue_configured_but_not_installed(sa_kubeconfig: Path, tmp_path: Path) -> None:
    rc, findings, _ = kube_doctor(sa_kubeconfig, kueue_config(tmp_path))
    assert rc == 1
    assert_names(findings, "kube.kueue", r"partition rules .*use gang: kueue but Kueue is not installed")


def test_kueue_installed_but_the_local_queue_missing(kube_cluster: LocalKubeCluster, admin: Any,
                                                     localqueue_crd: dict[str, Any],
                                                     tmp_path: Path) -> None:
    from kubernetes import client
    config = kueue_config(tmp_path)
    version = next(v["name"] for v in localqueue_crd["spec"]["versions"] if v.get("storage"))
    custom = client.CustomObjectsApi(admin)

    def served() -> bool:
        _, findings, _ = kube_doctor(kube_cluster.kubeconfig, config)
        return not any("not installed" in m for m in failed(findings).get("kube.kueue", []))
    from slurm_k8s_devcluster.k8s import wait_for
    wait_for(served, 60, "the LocalQueue CRD served")
    rc, findings, _ = kube_doctor(kube_cluster.kubeconfig, config)
    assert rc == 1
    assert_names(findings, "kube.kueue.slurm-jobs.gpu-jobs", r"LocalQueue slurm-jobs/gpu-jobs does not exist")
    custom.create_namespaced_custom_object("kueue.x-k8s.io", version, "slurm-jobs", "localqueues", {
        "apiVersion": f"kueue.x-k8s.io/{version}", "kind": "LocalQueue",
        "metadata": {"name": "gpu-jobs", "namespace": "slurm-jobs"}, "spec": {"clusterQueue": "gpu"}})
    rc, findings, text = kube_doctor(kube_cluster.kubeconfig, config)
    assert rc == 0, text
    assert status_of(findings, "kube.kueue.slurm-jobs.gpu-jobs") == "ok"


def test_no_gpu_nodes(sa_kubeconfig: Path, kube_cluster: LocalKubeCluster, admin: Any) -> None:
    """Last: it deletes this module's GPU nodes."""
    from kubernetes import client
    names = [n.metadata.name for n in client.CoreV1Api(admin).list_node().items]
    kube_cluster.delete_nodes(names)
    rc, findings, _ = kube_doctor(sa_kubeconfig)
    assert rc == 1
    assert_names(findings, "kube.gpu_nodes", r"no node has nvidia.com/gpu capacity")
