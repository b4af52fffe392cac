"""Stand-ins for the containers of bridged pods that run on KWOK nodes.

KWOK plays the kubelet: its pods turn Running but run no process. A real bridged pod runs
munge and ``slurmd -Z`` (one dynamic Slurm node per pod, see ``docs/pod-requirements.md``);
``PodStandIns`` does that part on this machine. For every bridge pod that is Running on a
KWOK node it starts a real dynamic slurmd through ``LocalSlurmCluster.start_dynamic_slurmd``:

* node name = the pod's ``spec.hostname`` (the Indexed Job's ``<job>-<index>``);
* ``--conf`` from the container's environment, as the worker image builds it:
  ``SLURM_K8S_NODE_CPUS`` (Sockets=1 CoresPerSocket=N ThreadsPerCore=1; the harness runs
  slurmd with ``SlurmdParameters=config_overrides``, so a configuration larger than this
  machine is accepted as it is), ``SLURM_K8S_NODE_MEMORY_MB`` (RealMemory),
  ``SLURM_K8S_NODE_GRES`` (Gres; the harness writes the node's gres.conf line with as many
  fake GPU device files as the count) and ``SLURM_K8S_NODE_FEATURES`` (Feature, starting
  with ``k8s-pod`` so the node joins the bridged partition's NodeSet);
* its own network namespace (a free netns index of the harness) and the pod's identity in
  slurmd's environment (``SLURM_K8S_JOB_ID``, ``SLURM_K8S_CLUSTER``, ``POD_NAME``, ...), as
  in the pod, so the SPANK plugin's pod-side half runs as it would there.

The slurmd is stopped when its pod is gone, no longer Running, or replaced by another pod
with the same hostname (a requeued job's new gang). A pod being deleted keeps its slurmd
as a real worker's entrypoint does (docs/pod-requirements.md): until its Slurm node runs no
job any more, or its grace period (``terminationGracePeriodSeconds``) is over. With an API client the
stand-ins hold the pods with a finalizer (``GRACE_FINALIZER``) while they run, so that
KWOK, which would remove a deleted pod at once, removes it only then. The Slurm node itself is
left to the bridge daemon, exactly as when a real pod ends (its node stays in slurmctld
until someone deletes it).

A background thread polls every ``interval`` seconds (0.5 by default). It reads pods either
from a ``k8s_access.KubeAccess`` watch cache (``pods()``/``nodes()``) or, given a
``kubernetes.client.ApiClient``, by listing (pods of ``namespace`` with the bridge's labels,
and Nodes to tell KWOK nodes apart). ``stop()`` stops the thread and every slurmd it started.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from slurm_k8s_bridge.core import contract
from slurm_k8s_devcluster.k8s import KWOK_NODE_ANNOTATION
from slurm_k8s_devcluster.slurm import LocalSlurmCluster

LOG = logging.getLogger("slurm_k8s_devcluster.podsim")

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
CLUSTER_LABEL = contract.CLUSTER_LABEL
MANAGED_BY = "slurm-k8s-bridge"
#: pod environment passed on to the stand-in slurmd (what the worker image's slurmd sees)
POD_IDENTITY_ENV = ("SLURM_K8S_CLUSTER", "SLURM_K8S_JOB_ID", "SLURM_K8S_ARRAY_TASK_ID",
                    "SLURM_K8S_PARTITION", "SLURM_K8S_JOB_UID", "SLURM_K8S_JOB_GID")


#: held on a pod while its stand-in runs (API client path): KWOK removes it after the stand-in
GRACE_FINALIZER = contract.LABEL_PREFIX + "podsim-grace"
#: Slurm node states of a slurmd that still runs (or ends) a job
_BUSY = ("ALLOCATED", "MIXED", "COMPLETING")
#: job states (squeue %T) of a job Slurm has not finished with on its nodes
_UNFINISHED = ("RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "PENDING", "REQUEUED",
               "SIGNALING", "STAGE_OUT", "RESIZING")


class PodSimError(RuntimeError):
    """A pod cannot be stood in for (bad environment, too many GPUs, ...)."""


@dataclass
class StandIn:
    node: str                 # Slurm node name = pod hostname
    pod: str                  # namespace/name
    uid: str
    netns_index: int
    conf: str
    started: float = field(default_factory=time.monotonic)
    #: when its pod was first seen being deleted (monotonic)
    deleted_at: float | None = None


def pod_env(pod: Mapping[str, Any]) -> dict[str, str]:
    """The literal ``value`` environment of the pod's first container, plus POD_NAME /
    POD_NAMESPACE / POD_IP / K8S_NODE_NAME resolved from the pod (their fieldRefs)."""
    spec = pod.get("spec") or {}
    meta = pod.get("metadata") or {}
    containers = spec.get("containers") or [{}]
    env: dict[str, str] = {}
    for item in containers[0].get("env") or []:
        if "value" in item and item.get("name"):
            env[str(item["name"])] = str(item["value"])
    env["POD_NAME"] = str(meta.get("name") or "")
    env["POD_NAMESPACE"] = str(meta.get("namespace") or "")
    env["POD_IP"] = str((pod.get("status") or {}).get("podIP") or "")
    env["K8S_NODE_NAME"] = str(spec.get("nodeName") or "")
    return env


def slurmd_conf_line(env: Mapping[str, str]) -> str:
    """``slurmd -Z --conf`` of a pod, from the SLURM_K8S_NODE_* variables."""
    try:
        cpus = int(env["SLURM_K8S_NODE_CPUS"])
        memory = int(env["SLURM_K8S_NODE_MEMORY_MB"])
    except (KeyError, ValueError) as exc:
        raise PodSimError(f"pod environment lacks a valid SLURM_K8S_NODE_CPUS / "
                          f"SLURM_K8S_NODE_MEMORY_MB: {exc}") from None
    if cpus <= 0 or memory <= 0:
        raise PodSimError(f"CPUs {cpus} / memory {memory} MB must be positive")
    features = env.get("SLURM_K8S_NODE_FEATURES", "")
    if not features.split(",")[0] == "k8s-pod":
        raise PodSimError(f"SLURM_K8S_NODE_FEATURES={features!r} does not start with k8s-pod")
    parts = ["Sockets=1", f"CoresPerSocket={cpus}", "ThreadsPerCore=1", f"RealMemory={memory}"]
    gres = env.get("SLURM_K8S_NODE_GRES", "")
    if gres:
        parts.append(f"Gres={gres}")
    parts.append(f"Feature={features}")
    return " ".join(parts)


class PodStandIns:
    """Real dynamic slurmd for the bridge's pods Running on KWOK nodes (see module doc)."""

    def __init__(self, kube_access_or_api: Any, slurm_cluster: LocalSlurmCluster,
                 namespace: str, cluster_name: str, *, interval: float = 0.5,
                 stop_grace: float = 5.0, max_failures: int = 3) -> None:
        self.source = kube_access_or_api
        self.cluster = slurm_cluster
        self.namespace = namespace
        self.cluster_name = cluster_name
        self.interval = min(max(interval, 0.05), 5.0)
        self.stop_grace = stop_grace
        self.max_failures = max_failures
        self.label_selector = f"{MANAGED_BY_LABEL}={MANAGED_BY},{CLUSTER_LABEL}={cluster_name}"
        self._standins: dict[str, StandIn] = {}        # node name -> stand-in
        self._failures: dict[str, int] = {}            # pod uid -> failed starts
        self.errors: list[str] = []                    # what could not be stood in for
        self.history: list[tuple[float, str, str]] = []  # (time, "start"/"stop", node)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._uses_cache = callable(getattr(kube_access_or_api, "pods", None)) and \
            callable(getattr(kube_access_or_api, "nodes", None))

    # -- lifecycle --
    def start(self) -> PodStandIns:
        if self._thread is not None:
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pod-standins", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the poller and every stand-in slurmd (nodes stay in slurmctld)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._lock:
            for name in list(self._standins):
                self._stop_one(name, "stand-ins stopped")
        if not self._uses_cache:   # no pod may keep waiting for a stand-in that is gone
            with contextlib.suppress(Exception):
                for pod in self._pods_and_kwok_nodes()[0]:
                    self._release(pod)

    def __enter__(self) -> PodStandIns:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def running(self) -> dict[str, str]:
        """Node name -> ``namespace/pod`` of every stand-in now running."""
        with self._lock:
            return {n: s.pod for n, s in self._standins.items()}

    # -- observe --
    def _pods_and_kwok_nodes(self) -> tuple[list[dict[str, Any]], set[str]]:
        if self._uses_cache:
            pods = [p for (ns, _), p in self.source.pods().items() if ns == self.namespace]
            nodes = self.source.nodes()
            kwok = {name for name, n in nodes.items() if _is_kwok(n)}
            return pods, kwok
        from kubernetes import client  # the API client path
        api = self.source
        core = client.CoreV1Api(api)
        pods = api.sanitize_for_serialization(core.list_namespaced_pod(
            self.namespace, label_selector=self.label_selector, _request_timeout=10)).get("items") or []
        nodes = api.sanitize_for_serialization(core.list_node(_request_timeout=10)).get("items") or []
        kwok = {(n.get("metadata") or {}).get("name") for n in nodes if _is_kwok(n)}
        return pods, {k for k in kwok if k}

    def _wanted(self, pods: list[dict[str, Any]], kwok: set[str],
                terminating: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
        """hostname -> pod, for every live Running bridge pod on a KWOK node; the Running
        ones being deleted go into ``terminating`` instead."""
        out: dict[str, dict[str, Any]] = {}
        for pod in pods:
            meta = pod.get("metadata") or {}
            labels = meta.get("labels") or {}
            spec = pod.get("spec") or {}
            if labels.get(MANAGED_BY_LABEL) != MANAGED_BY or \
                    labels.get(CLUSTER_LABEL) != self.cluster_name:
                continue
            if (pod.get("status") or {}).get("phase") != "Running":
                continue
            if spec.get("nodeName") not in kwok:
                continue
            host = spec.get("hostname") or ""
            if not host:
                continue
            if meta.get("deletionTimestamp"):
                if terminating is not None:
                    terminating[host] = pod
                continue
            out[host] = pod
        return out

    # -- act --
    def sync_once(self) -> None:
        """One round: start and stop stand-ins so they match the Running pods."""
        pods, kwok = self._pods_and_kwok_nodes()
        terminating: dict[str, dict[str, Any]] = {}
        wanted = self._wanted(pods, kwok, terminating)
        for pod in pods:   # a finalizer of ours on a pod no stand-in serves: let it go
            meta = pod.get("metadata") or {}
            if meta.get("deletionTimestamp") and GRACE_FINALIZER in (meta.get("finalizers") or []) \
                    and not any(s.uid == meta.get("uid") for s in self._standins.values()):
                self._release(pod)
        with self._lock:
            for name, standin in list(self._standins.items()):
                pod = wanted.get(name)
                ending = terminating.get(name)
                if ending is not None and (ending.get("metadata") or {}).get("uid") == standin.uid:
                    if standin.deleted_at is None:
                        standin.deleted_at = time.monotonic()
                    if self._in_grace(name, ending, standin.deleted_at):
                        continue
                    self._stop_one(name, "pod deleted: its grace period is over or its "
                                         "node runs no job")
                    self._release(ending)
                elif pod is None or (pod.get("metadata") or {}).get("uid") != standin.uid:
                    self._stop_one(name, "pod gone or replaced")
                elif not self._alive(name):
                    self._stop_one(name, "slurmd exited")
                    self._failures[standin.uid] = self._failures.get(standin.uid, 0) + 1
            for name, pod in sorted(wanted.items()):
                if name in self._standins or self._stop.is_set():
                    continue
                uid = str((pod.get("metadata") or {}).get("uid") or "")
                if self._failures.get(uid, 0) >= self.max_failures:
                    continue
                try:
                    self._start_one(name, pod)
                except Exception as exc:  # noqa: BLE001 - recorded, retried a few times
                    self._failures[uid] = self._failures.get(uid, 0) + 1
                    msg = f"{name} ({(pod.get('metadata') or {}).get('name')}): {exc}"
                    self.errors.append(msg)
                    LOG.warning("stand-in not started: %s", msg)

    def _in_grace(self, name: str, pod: Mapping[str, Any], deleted_at: float) -> bool:
        """A deleted pod's worker stays while its node runs a job, within the pod's grace
        period counted from when the deletion was first seen (KWOK's own delete, at once
        and with no grace, moves ``deletionTimestamp`` to that moment)."""
        grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds")
        grace = 30 if grace is None else int(grace)
        if time.monotonic() - deleted_at >= grace or not self._alive(name):
            return False
        try:
            state = self.cluster.show_node(name).get("State", "")
            # a job Slurm has not finished with here: running, completing, or requeued
            # with this node still in its NodeList (its epilog not yet reported)
            jobs = self.cluster.run(["squeue", "-h", "-a", "-t", "all", "-w", name,
                                     "-o", "%T"]).stdout.split()
        except Exception:  # noqa: BLE001 - slurmctld busy: keep it this round
            return True
        return any(word in state for word in _BUSY) or any(s in _UNFINISHED for s in jobs)

    def _hold(self, pod: Mapping[str, Any]) -> None:
        """Put GRACE_FINALIZER on a pod whose stand-in starts (API client path only)."""
        meta = pod.get("metadata") or {}
        finalizers = list(meta.get("finalizers") or [])
        if self._uses_cache or GRACE_FINALIZER in finalizers:
            return
        from kubernetes import client
        patch = ([{"op": "add", "path": "/metadata/finalizers/-", "value": GRACE_FINALIZER}]
                 if finalizers else
                 [{"op": "add", "path": "/metadata/finalizers", "value": [GRACE_FINALIZER]}])
        client.CoreV1Api(self.source).patch_namespaced_pod(
            meta.get("name"), meta.get("namespace"), patch, _request_timeout=10)

    def _release(self, pod: Mapping[str, Any]) -> None:
        """Take GRACE_FINALIZER off a pod (KWOK, or the API server, then removes it)."""
        meta = pod.get("metadata") or {}
        finalizers = list(meta.get("finalizers") or [])
        if self._uses_cache or GRACE_FINALIZER not in finalizers:
            return
        from kubernetes import client
        index = finalizers.index(GRACE_FINALIZER)
        patch = [{"op": "test", "path": f"/metadata/finalizers/{index}", "value": GRACE_FINALIZER},
                 {"op": "remove", "path": f"/metadata/finalizers/{index}"}]
        try:
            client.CoreV1Api(self.source).patch_namespaced_pod(
                meta.get("name"), meta.get("namespace"), patch, _request_timeout=10)
        except Exception as exc:  # noqa: BLE001 - gone already, or changed: next round
            LOG.info("finalizer of %s not removed yet: %s", meta.get("name"), exc)

    def _alive(self, name: str) -> bool:
        proc = self.cluster._procs.get(f"slurmd:{name}")
        return proc is not None and proc.poll() is None

    def _free_netns_index(self) -> int:
        used = set(self.cluster._netns) | {s.netns_index for s in self._standins.values()}
        for index in range(len(self.cluster.node_names) + 1, 241):
            if index not in used:
                return index
        raise PodSimError("no free network namespace index (at most 240)")

    def _start_one(self, name: str, pod: Mapping[str, Any]) -> None:
        env = pod_env(pod)
        conf = slurmd_conf_line(env)
        if name in self.cluster._dynamic:   # a slurmd of ours for an earlier pod: replace
            self.cluster.stop_slurmd(name, grace=self.stop_grace)
        # a new pod's spool is a fresh emptyDir: no credential state of an earlier pod's slurmd
        shutil.rmtree(self.cluster.spool_dir / name, ignore_errors=True)
        index = self._free_netns_index()
        identity = {k: env[k] for k in POD_IDENTITY_ENV if env.get(k)}
        identity.update({k: env[k] for k in ("POD_NAME", "POD_NAMESPACE", "POD_IP") if env.get(k)})
        # The harness gives every slurmd the cluster's slurmd_env; a pod's slurmd gets its
        # own identity on top (only this thread starts slurmd while the stand-ins run).
        saved = self.cluster.slurmd_env
        self.cluster.slurmd_env = {**saved, **identity}
        try:
            self.cluster.start_dynamic_slurmd(name, conf, netns_index=index, wait=False)
        except Exception:
            with contextlib.suppress(Exception):
                self.cluster.stop_slurmd(name, grace=self.stop_grace)
            raise
        finally:
            self.cluster.slurmd_env = saved
        meta = pod.get("metadata") or {}
        self._standins[name] = StandIn(node=name, pod=f"{meta.get('namespace')}/{meta.get('name')}",
                                       uid=str(meta.get("uid") or ""), netns_index=index, conf=conf)
        self.history.append((time.time(), "start", name))
        try:
            self._hold(pod)
        except Exception as exc:  # noqa: BLE001 - without it the pod just ends at once
            self.errors.append(f"finalizer on {meta.get('name')}: {exc}")
        LOG.info("stand-in slurmd %s for pod %s (netns %d): %s", name, meta.get("name"), index, conf)

    def _stop_one(self, name: str, why: str) -> None:
        standin = self._standins.pop(name, None)
        try:
            self.cluster.stop_slurmd(name, grace=self.stop_grace)
        except Exception as exc:  # noqa: BLE001 - keep stopping the others
            self.errors.append(f"stopping {name}: {exc}")
        self.history.append((time.time(), "stop", name))
        LOG.info("stand-in slurmd %s stopped: %s", name, why)
        del standin

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self.sync_once()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - API hiccup: try again
                failures += 1
                if failures in (1, 10, 100):
                    self.errors.append(f"poll: {exc!r}")
                LOG.warning("pod stand-ins: poll failed: %r", exc)
            self._stop.wait(self.interval)


def _is_kwok(node: Mapping[str, Any]) -> bool:
    annotations = (node.get("metadata") or {}).get("annotations") or {}
    return annotations.get(KWOK_NODE_ANNOTATION[0]) == KWOK_NODE_ANNOTATION[1]


__all__ = ["PodSimError", "PodStandIns", "StandIn", "pod_env", "slurmd_conf_line"]
