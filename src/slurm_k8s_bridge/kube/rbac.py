"""The daemon's least privilege, generated from what the code does: its ServiceAccount, a Role
in each job namespace (the Jobs, Services, pods and events the daemon touches, plus what each
gang backend creates: ``core.gang``), read access to Nodes, and -- only with
``native_gpu_usage`` -- the pods of every namespace. ``deploy/rbac*.yaml`` hold its output
(a unit test checks they agree)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from slurm_k8s_bridge.core import gang
from slurm_k8s_bridge.core.config import BridgeConfig, job_namespaces


#: the daemon's ServiceAccount and the namespace it runs in (deploy/rbac.yaml)
SERVICE_ACCOUNT = "slurm-k8s-bridge"


DAEMON_NAMESPACE = "slurm-k8s-bridge"


RBAC_LABELS: Mapping[str, str] = {"app.kubernetes.io/name": "slurm-k8s-bridge",
                                  "app.kubernetes.io/component": "daemon"}


NODES_CLUSTER_ROLE = "slurm-k8s-bridge-nodes"


#: the Role that lets replicas elect their leader (``leader_election.enabled`` only)
LEADER_ELECTION_ROLE = "slurm-k8s-bridge-leader-election"


#: read-only access to the pods of every namespace (``native_gpu_usage: true`` only)
POD_READER_CLUSTER_ROLE = "slurm-k8s-bridge-pod-reader"


def job_namespace_rules(volcano: bool = True) -> list[dict[str, Any]]:
    """What the daemon does in a job namespace, and nothing more: the Jobs, Services, pods
    and events, plus each gang backend's own kinds (``volcano=False`` leaves out the
    backends' extra kinds, for a site without them)."""
    rules: list[dict[str, Any]] = [
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "list", "watch", "delete"]},
        {"apiGroups": [""], "resources": ["services"], "verbs": ["create", "get", "delete"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "list", "watch"]},
    ]
    if volcano:
        for backend in gang.BACKENDS.values():
            rules += backend.rbac_rules()
    return rules


def native_gpu_usage_rbac(*, daemon_namespace: str = DAEMON_NAMESPACE,
                          service_account: str = SERVICE_ACCOUNT) -> list[dict[str, Any]]:
    """What ``native_gpu_usage: true`` adds: a ClusterRole that lists and watches pods in
    every namespace (nothing else: no get, no secrets, no writes), and its binding."""
    labels = dict(RBAC_LABELS)
    subject = {"kind": "ServiceAccount", "name": service_account, "namespace": daemon_namespace}
    return [{
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": POD_READER_CLUSTER_ROLE, "labels": dict(labels)},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}],
    }, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": POD_READER_CLUSTER_ROLE, "labels": dict(labels)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": POD_READER_CLUSTER_ROLE},
        "subjects": [subject],
    }]


def leader_election_rbac(*, lease_namespace: str = DAEMON_NAMESPACE,
                         lease_name: str = "slurm-k8s-bridge",
                         daemon_namespace: str = DAEMON_NAMESPACE,
                         service_account: str = SERVICE_ACCOUNT) -> list[dict[str, Any]]:
    """What ``leader_election.enabled`` adds (``daemon.leader``): create Leases in the
    lease namespace (create cannot name its object), get and update only the one Lease."""
    labels = dict(RBAC_LABELS)
    return [{
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": LEADER_ELECTION_ROLE, "namespace": lease_namespace,
                     "labels": dict(labels)},
        "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                   "verbs": ["create"]},
                  {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                   "resourceNames": [lease_name], "verbs": ["get", "update"]}],
    }, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": LEADER_ELECTION_ROLE, "namespace": lease_namespace,
                     "labels": dict(labels)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": LEADER_ELECTION_ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": service_account,
                      "namespace": daemon_namespace}],
    }]


def required_rbac(namespaces: Sequence[str], *, daemon_namespace: str = DAEMON_NAMESPACE,
                  service_account: str = SERVICE_ACCOUNT, volcano: bool = True,
                  native_gpu_usage: bool = False, leader_election: bool = False,
                  lease_namespace: str | None = None,
                  lease_name: str = "slurm-k8s-bridge") -> list[dict[str, Any]]:
    """The RBAC objects of the daemon's least privilege: its ServiceAccount (in
    ``daemon_namespace``), a Role + RoleBinding in each job namespace, and a ClusterRole +
    ClusterRoleBinding for reading Nodes. ``volcano``: may create PodGroups.
    ``native_gpu_usage`` (the configuration key): also ``native_gpu_usage_rbac``;
    ``leader_election``: also ``leader_election_rbac`` for Lease ``lease_name`` in
    ``lease_namespace`` (default: the daemon's namespace)."""
    if not namespaces:
        raise ValueError("at least one job namespace is needed")
    if len(set(namespaces)) != len(namespaces):
        raise ValueError(f"job namespaces repeat: {list(namespaces)}")
    labels = dict(RBAC_LABELS)
    subject = {"kind": "ServiceAccount", "name": service_account, "namespace": daemon_namespace}
    objects: list[dict[str, Any]] = [{
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": service_account, "namespace": daemon_namespace, "labels": dict(labels)},
    }]
    for namespace in namespaces:
        objects.append({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": service_account, "namespace": namespace, "labels": dict(labels)},
            "rules": job_namespace_rules(volcano),
        })
        objects.append({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": service_account, "namespace": namespace, "labels": dict(labels)},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": service_account},
            "subjects": [dict(subject)],
        })
    objects.append({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": NODES_CLUSTER_ROLE, "labels": dict(labels)},
        "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]}],
    })
    objects.append({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": NODES_CLUSTER_ROLE, "labels": dict(labels)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NODES_CLUSTER_ROLE},
        "subjects": [dict(subject)],
    })
    if native_gpu_usage:
        objects += native_gpu_usage_rbac(daemon_namespace=daemon_namespace,
                                         service_account=service_account)
    if leader_election:
        objects += leader_election_rbac(lease_namespace=lease_namespace or daemon_namespace,
                                        lease_name=lease_name, daemon_namespace=daemon_namespace,
                                        service_account=service_account)
    return objects


RBAC_YAML_HEADER = """\
# RBAC of the slurm-k8s-bridge daemon: exactly what slurm_k8s_bridge/kube/ uses.
# Generated from slurm_k8s_bridge.kube.rbac.required_rbac(["slurm-jobs"]); a unit test
# checks they agree. One more job namespace: copy its Role and RoleBinding.
# The daemon runs in namespace slurm-k8s-bridge as ServiceAccount slurm-k8s-bridge.
# With native_gpu_usage: true in the configuration, apply rbac-native-gpu-usage.yaml too.
"""


NATIVE_GPU_USAGE_RBAC_YAML_HEADER = """\
# Only for native_gpu_usage: true (slurm-k8s-bridge configuration), on top of rbac.yaml:
# the daemon lists and watches the pods of every namespace, to show in Slurm (the Comment
# of each mirrored k8s-<node>) the GPUs that Kubernetes-native pods hold on each node.
# Opt-in because it lets the daemon read every pod's spec cluster-wide (environment values
# and commands included); it grants no get, no secrets and no writes.
# Generated from slurm_k8s_bridge.kube.rbac.native_gpu_usage_rbac(); a unit test checks
# they agree.
"""


def render_rbac_yaml(namespaces: Sequence[str] = ("slurm-jobs",), **kwargs: Any) -> str:
    """``required_rbac`` as the multi-document YAML of deploy/rbac.yaml."""
    body = yaml.safe_dump_all(required_rbac(namespaces, **kwargs), sort_keys=False, explicit_start=True)
    return RBAC_YAML_HEADER + body


def render_native_gpu_usage_rbac_yaml(**kwargs: Any) -> str:
    """``native_gpu_usage_rbac`` as deploy/rbac-native-gpu-usage.yaml."""
    body = yaml.safe_dump_all(native_gpu_usage_rbac(**kwargs), sort_keys=False, explicit_start=True)
    return NATIVE_GPU_USAGE_RBAC_YAML_HEADER + body


def rbac_for_config(config: BridgeConfig, *, daemon_namespace: str = DAEMON_NAMESPACE,
                    service_account: str = SERVICE_ACCOUNT) -> list[dict[str, Any]]:
    """Exactly the RBAC a daemon with ``config`` needs: its job namespaces, and the pod
    reader and Lease rights only when ``native_gpu_usage`` / ``leader_election`` are on."""
    le = config.leader_election
    return required_rbac(job_namespaces(config), daemon_namespace=daemon_namespace,
                         service_account=service_account,
                         native_gpu_usage=config.native_gpu_usage,
                         leader_election=le.enabled, lease_namespace=le.namespace,
                         lease_name=le.lease_name)


def render_rbac_for_config(config: BridgeConfig, source: str) -> str:
    """``rbac_for_config`` as YAML (``slurm-k8s-bridge rbac``; deploy/base/rbac.yaml)."""
    header = (f"# RBAC of the slurm-k8s-bridge daemon for {source}, generated by\n"
              f"#   slurm-k8s-bridge rbac --config {source}\n"
              "# (slurm_k8s_bridge.kube.rbac.rbac_for_config); a unit test checks they agree.\n")
    return header + yaml.safe_dump_all(rbac_for_config(config), sort_keys=False,
                                       explicit_start=True)
