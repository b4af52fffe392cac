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
from slurm_k8s_bridge.core.normalize import normalize
from slurm_k8s_bridge.core.request import BridgeRequest, SlurmJobRequest

MAX_HOSTNAME = contract.HOSTNAME_MAX


TMP_VOLUME = "tmp"


MUNGE_KEY_DIR = "/etc/slurm-k8s-bridge/munge"


#: The only capabilities the worker keeps (everything else is dropped, and the bounding set
#: is this list): what root needs to launch the job's tasks as their owner, exactly as on a
#: compute node. Each is documented in docs/security.md; none is beyond the Pod Security
#: "baseline" set, and none lets the pod reach the host (no SYS_ADMIN, NET_ADMIN, NET_RAW,
#: SYS_PTRACE, MKNOD, SYS_RESOURCE).
WORKER_CAPABILITIES: tuple[str, ...] = (
    "SETUID",        # slurmstepd setuid()s to the job owner before exec'ing each task;
                     # the entrypoint starts munged as the munge user (setpriv)
    "SETGID",        # ... and takes the owner's primary and supplementary groups (setgid/initgroups)
    "CHOWN",         # hands the job's spool directory (job script, environment) to the owner;
                     # the munge key and munged's directories to the munge user
    "DAC_OVERRIDE",  # root writes where it is not the owner: the key into munge's 0700 /etc/munge,
                     # the removal of the owner's 0700 spool directory at job end, the owner's
                     # working directory and output paths opened while still root
    "FOWNER",        # chmod of what root does not own: /run/munge and the key after their chown
    "KILL",          # signals tasks that run under the owner's uid (scancel, time limit, srun -K)
)

#: Paths the worker writes at run time, each an emptyDir of the pod (name, path, who writes).
#: With them the root filesystem is read-only (``read_only_root``). A site whose slurm.conf
#: (served to slurmd in configless mode) names other SlurmdSpoolDir/SlurmdLogFile/SlurmdPidFile
#: paths must mount them too (``shared_mounts``).
WRITABLE_PATHS: tuple[tuple[str, str, str], ...] = (
    (TMP_VOLUME, "/tmp", "slurmstepd and the PMIx server: per-job directories and UNIX sockets"),
    ("run", "/run", "munged's socket and pid file, slurmd's pid file, GPU placeholder devices"),
    ("slurmd-spool", "/var/spool/slurmd", "slurmd: conf-cache, job scripts, step sockets (nss_slurm)"),
    ("slurm-log", "/var/log/slurm", "slurmd and slurmstepd log files, where slurm.conf names them"),
    ("munge-lib", "/var/lib/munge", "munged's PRNG seed file"),
    ("munge-log", "/var/log/munge", "munged's log file"),
)

#: Writable only when the munge key comes from a Secret (``munge_key_secret``): without one the
#: key is the image's own, under these paths, and the entrypoint re-owns it in place -- then the
#: root filesystem stays writable (the one exception; docs/security.md).
KEY_WRITABLE_PATHS: tuple[tuple[str, str, str], ...] = (
    ("munge-etc", "/etc/munge", "the munge key, copied from the Secret with owner munge, mode 0400"),
    # the Secret is mounted below it, at MUNGE_KEY_DIR
    ("bridge-etc", "/etc/slurm-k8s-bridge", "pod-gres.conf: the pod's GPUs, included by gres.conf"),
)


def read_only_root(config: BridgeConfig) -> bool:
    """Whether the worker's root filesystem is read-only: when the munge key comes from a Secret."""
    return config.munge_key_secret is not None


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
        # a preempted or evicted pod keeps running this long: the job's --signal TIME, then
        # the requeue's SIGTERM..SIGKILL (KillWait); the worker stays up until its steps end
        "terminationGracePeriodSeconds": breq.termination_grace_seconds,
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
    # every path the worker writes is the pod's own emptyDir (never a shared host path)
    writable = WRITABLE_PATHS + (KEY_WRITABLE_PATHS if read_only_root(config) else ())
    volumes: list[dict[str, Any]] = [{"name": name, "emptyDir": {}} for name, _, _ in writable]
    mounts: list[dict[str, Any]] = [{"name": name, "mountPath": path} for name, path, _ in writable]
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
            # no_new_privs only stops an execve() from *gaining* privileges (setuid bits, file
            # capabilities). Root here already holds WORKER_CAPABILITIES, so exec'ing slurmd and
            # slurmstepd gains nothing, and slurmstepd's setuid() to the owner is a syscall that
            # CAP_SETUID allows, not an exec. The tasks run with no capabilities and cannot
            # regain any (a setuid sudo or ping in the image stays unprivileged).
            "allowPrivilegeEscalation": False,
            # root: slurmd must become each job's owner. With the capabilities, this is where
            # the pod departs from the "restricted" Pod Security Standard (docs/security.md)
            "runAsUser": 0,
            "capabilities": {"drop": ["ALL"], "add": list(WORKER_CAPABILITIES)},
            "readOnlyRootFilesystem": read_only_root(config),
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
