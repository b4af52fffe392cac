"""A ``BridgeRequest`` -> the Kubernetes objects of one job (or array task): a headless
Service, an Indexed Job with one pod per Slurm node, and what the partition's gang backend
adds (``core.gang``). Plain dicts, deterministic names. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from slurm_k8s_bridge.core import contract
from slurm_k8s_bridge.core.config import BridgeConfig
from slurm_k8s_bridge.core.gang import backend
from slurm_k8s_bridge.core.request import BridgeRequest
from slurm_k8s_bridge.core.normalize import normalize
from slurm_k8s_bridge.core.request import SlurmJobRequest


MAX_HOSTNAME = contract.HOSTNAME_MAX


TMP_VOLUME = "tmp"


MUNGE_KEY_DIR = "/etc/slurm-k8s-bridge/munge"


#: Capabilities slurmd/slurmstepd need to run tasks as the job's owner; everything else is dropped.
WORKER_CAPABILITIES: tuple[str, ...] = (
    "SETUID",        # slurmstepd becomes the job owner (setuid) before exec'ing each task
    "SETGID",        # ... and takes the owner's primary and supplementary groups (setgid/setgroups)
    "CHOWN",         # hands the job's spool files, output files and /dev/shm entries to the owner
    "DAC_OVERRIDE",  # opens the owner's working directory and output paths while still root
    "FOWNER",        # chmod/utime on files it does not own (spool, step sockets, X11/PMIx dirs)
    "KILL",          # signals tasks that run under the owner's uid (scancel, time limit, srun -K)
)


def object_name(config: BridgeConfig, job_id: int, array_task_id: int | None = None) -> str:
    """``{cluster_name}-{job_id}`` or ``{cluster_name}-{job_id}-{array_task_id}``."""
    if array_task_id is None:
        return f"{config.cluster_name}-{job_id}"
    return f"{config.cluster_name}-{job_id}-{array_task_id}"


def node_names(breq: BridgeRequest, config: BridgeConfig, job_id: int,
               array_task_id: int | None = None) -> list[str]:
    """The dynamic Slurm node names, which are the pods' hostnames: ``{job}-{index}``."""
    base = object_name(config, job_id, array_task_id)
    return [f"{base}-{index}" for index in range(breq.nodes)]


def render(breq: BridgeRequest, config: BridgeConfig, job_id: int,
           array_task_id: int | None = None) -> list[dict[str, Any]]:
    """The Kubernetes objects of one job (or one array task), in creation order: the
    Service, the gang backend's own objects (a PodGroup for Volcano), the Job."""
    _check_ids(breq, job_id, array_task_id)
    name = object_name(config, job_id, array_task_id)
    longest = f"{name}-{breq.nodes - 1}"
    if len(longest) > MAX_HOSTNAME:
        raise ValueError(f"pod hostname {longest} is longer than {MAX_HOSTNAME} characters")
    labels = _labels(breq, config, job_id, array_task_id)
    selector = _selector(config, job_id, array_task_id)
    annotations = _annotations(breq)
    gang = backend(breq.gang)
    job = _job(name, breq, config, job_id, array_task_id, labels, selector, annotations)
    gang.decorate(job, breq, name)
    return [_service(name, breq, config, labels, selector, annotations),
            *gang.extra_objects(breq, name, _metadata(name, breq, labels, annotations)),
            job]


def render_all(breq: BridgeRequest, config: BridgeConfig, job_id: int) -> list[dict[str, Any]]:
    """Every object of the job: one set per array task (each array task is its own Job)."""
    if breq.array_task_ids is None:
        return render(breq, config, job_id)
    objects: list[dict[str, Any]] = []
    for task_id in breq.array_task_ids:
        objects.extend(render(breq, config, job_id, task_id))
    return objects


def translate_request(req: SlurmJobRequest, config: BridgeConfig, job_id: int) -> list[dict[str, Any]] | None:
    """``normalize`` then ``render_all``; ``None`` when the partition is not bridged."""
    breq = normalize(req, config)
    return None if breq is None else render_all(breq, config, job_id)


def _check_ids(breq: BridgeRequest, job_id: int, array_task_id: int | None) -> None:
    if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id <= 0:
        raise ValueError(f"job id must be a positive integer, not {job_id!r}")
    if breq.array_task_ids is None and array_task_id is not None:
        raise ValueError("array_task_id given for a job that is not an array")
    if breq.array_task_ids is not None and array_task_id not in breq.array_task_ids:
        raise ValueError(f"array task {array_task_id} is not one of the job's array tasks")


def _labels(breq: BridgeRequest, config: BridgeConfig, job_id: int, array_task_id: int | None) -> dict[str, str]:
    labels = {contract.MANAGED_BY_LABEL: contract.MANAGED_BY, **_selector(config, job_id, array_task_id)}
    if breq.job_name:
        labels[contract.JOB_NAME_LABEL] = breq.job_name
    if breq.user_id is not None:
        labels[contract.UID_LABEL] = str(breq.user_id)
    return labels


def _selector(config: BridgeConfig, job_id: int, array_task_id: int | None) -> dict[str, str]:
    selector = {contract.CLUSTER_LABEL: config.cluster_name, contract.JOB_ID_LABEL: str(job_id)}
    if array_task_id is not None:
        selector[contract.ARRAY_TASK_LABEL] = str(array_task_id)
    return selector


def _annotations(breq: BridgeRequest) -> dict[str, str]:
    out = {contract.PARTITION_ANNOTATION: breq.partition, contract.SHAPES_ANNOTATION: ",".join(breq.shapes)}
    if breq.account:
        out[contract.ACCOUNT_ANNOTATION] = breq.account
    if breq.qos:
        out[contract.QOS_ANNOTATION] = breq.qos
    return out


def _metadata(name: str, breq: BridgeRequest, labels: Mapping[str, str],
              annotations: Mapping[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": breq.namespace, "labels": dict(labels), "annotations": dict(annotations)}


def _service(name: str, breq: BridgeRequest, config: BridgeConfig, labels: Mapping[str, str],
             selector: Mapping[str, str], annotations: Mapping[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, breq, labels, annotations),
        "spec": {
            "clusterIP": "None",
            # pods must resolve each other before they are Ready: slurmd registers first
            "publishNotReadyAddresses": True,
            "selector": dict(selector),
            "ports": [{"name": "slurmd", "port": config.slurmd_port, "targetPort": config.slurmd_port,
                       "protocol": "TCP"}],
        },
    }


def _resources(breq: BridgeRequest) -> dict[str, str]:
    resources = {"cpu": str(breq.cpus_per_node), "memory": f"{breq.memory_mb_per_node}Mi"}
    if breq.gpu_resource and breq.gpus_per_node:
        resources[breq.gpu_resource] = str(breq.gpus_per_node)
    return resources


def _job(name: str, breq: BridgeRequest, config: BridgeConfig, job_id: int, array_task_id: int | None,
         labels: Mapping[str, str], selector: Mapping[str, str], annotations: Mapping[str, str]) -> dict[str, Any]:
    job_labels = dict(labels)
    pod_annotations = dict(annotations)
    spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": breq.nodes,
        "parallelism": breq.nodes,
        # One failed pod fails its index only: the other pods keep running until their
        # slurmd have told Slurm the run ended (the daemon then removes the Job).
        "backoffLimitPerIndex": 0,
        "template": {
            "metadata": {"labels": dict(labels), "annotations": pod_annotations},
            "spec": _pod_spec(name, breq, config, job_id, array_task_id, selector),
        },
    }
    if breq.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = breq.active_deadline_seconds
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": _metadata(name, breq, job_labels, annotations), "spec": spec}


def _pod_spec(name: str, breq: BridgeRequest, config: BridgeConfig, job_id: int, array_task_id: int | None,
              selector: Mapping[str, str]) -> dict[str, Any]:
    volumes, mounts = _volumes(config)
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "subdomain": name,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [_container(breq, config, job_id, array_task_id, mounts)],
        "volumes": volumes,
        "affinity": _affinity(breq, selector),
        "tolerations": [dict(t) for t in breq.tolerations],
    }
    if breq.node_selector:
        pod["nodeSelector"] = dict(breq.node_selector)
    if breq.priority_class:
        pod["priorityClassName"] = breq.priority_class
    if breq.service_account:
        pod["serviceAccountName"] = breq.service_account
    return pod


def _affinity(breq: BridgeRequest, selector: Mapping[str, str]) -> dict[str, Any]:
    affinity: dict[str, Any] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [t.to_dict() for t in breq.node_affinity_terms]}}}
    if breq.same_shape_topology_key:
        affinity["podAffinity"] = {"requiredDuringSchedulingIgnoredDuringExecution": [{
            "labelSelector": {"matchLabels": dict(selector)},
            "topologyKey": breq.same_shape_topology_key,
        }]}
    return affinity


def _volumes(config: BridgeConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    # slurmd, slurmstepd and PMIx keep sockets and spool files in /tmp: each pod its own
    volumes: list[dict[str, Any]] = [{"name": TMP_VOLUME, "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": TMP_VOLUME, "mountPath": "/tmp"}]
    for index, shared in enumerate(config.shared_mounts):
        volume = f"shared-{index}"
        volumes.append({"name": volume, "hostPath": {"path": shared.host_path, "type": "Directory"}})
        mounts.append({"name": volume, "mountPath": shared.path, "readOnly": shared.read_only})
    if config.munge_key_secret:
        volumes.append({"name": "munge-key", "secret": {"secretName": config.munge_key_secret,
                                                         "defaultMode": 0o400}})
        mounts.append({"name": "munge-key", "mountPath": MUNGE_KEY_DIR, "readOnly": True})
    return volumes, mounts


def _container(breq: BridgeRequest, config: BridgeConfig, job_id: int, array_task_id: int | None,
               mounts: list[dict[str, Any]]) -> dict[str, Any]:
    resources = _resources(breq)
    container: dict[str, Any] = {
        "name": "slurmd",
        "image": breq.image,
        "env": _env(breq, config, job_id, array_task_id),
        "ports": [{"name": "slurmd", "containerPort": config.slurmd_port, "protocol": "TCP"}],
        # a worker that fails to start says why in its status (the daemon shows it in squeue)
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "securityContext": {
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "runAsUser": 0,
            "capabilities": {"drop": ["ALL"], "add": list(WORKER_CAPABILITIES)},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
    }
    if config.worker_command:
        container["command"] = list(config.worker_command)
    return container


def _env(breq: BridgeRequest, config: BridgeConfig, job_id: int, array_task_id: int | None) -> list[dict[str, Any]]:
    values: list[tuple[str, str]] = [
        ("SLURM_K8S_CLUSTER", config.cluster_name),
        (contract.POD_JOB_ID_ENV, str(job_id)),
    ]
    if array_task_id is not None:
        values.append(("SLURM_K8S_ARRAY_TASK_ID", str(array_task_id)))
    values += [
        ("SLURM_K8S_PARTITION", breq.partition),
        ("SLURM_K8S_NODE_GRES", breq.node_gres),
        ("SLURM_K8S_NODE_CPUS", str(breq.cpus_per_node)),
        ("SLURM_K8S_NODE_MEMORY_MB", str(breq.memory_mb_per_node)),
        ("SLURM_K8S_NODE_FEATURES", ",".join((contract.POD_NODE_FEATURE, *breq.node_features))),
        ("SLURM_K8S_SLURMD_PORT", str(config.slurmd_port)),
    ]
    if breq.user_id is not None:
        values.append(("SLURM_K8S_JOB_UID", str(breq.user_id)))
    if breq.group_id is not None:
        values.append(("SLURM_K8S_JOB_GID", str(breq.group_id)))
    if config.conf_server:
        values.append(("SLURM_K8S_CONF_SERVER", config.conf_server))
    if config.munge_key_secret:
        values.append(("SLURM_K8S_MUNGE_KEY_FILE", f"{MUNGE_KEY_DIR}/munge.key"))
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in values]
    for name, path in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace"),
                       ("POD_IP", "status.podIP"), ("K8S_NODE_NAME", "spec.nodeName")):
        env.append({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
    return env
