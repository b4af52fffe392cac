"""Observe: what Slurm and Kubernetes say, turned into the planner's types (``daemon.plan``).

Pure functions on what the clients return (tested on literal objects): Slurm's job records
become ``BridgedJob`` (a pending array stands for its tasks), the bridge's Jobs and their pods
become ``Gang`` (which backend holds a suspended Job and why: ``core.gang``; which
ResourceQuota refuses its pods: ``quota_refusal``), Kubernetes nodes that are NotReady are lost.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from slurm_k8s_bridge.core import gang as gangs
from slurm_k8s_bridge.core.contract import ARRAY_TASK_LABEL, JOB_ID_LABEL
from slurm_k8s_bridge.daemon.plan import BridgedJob, Gang, GangKey, PodInfo
from slurm_k8s_bridge.kube.cache import event_time
from slurm_k8s_bridge.slurm.records import SlurmJob, eligible


#: container waiting/terminated reasons that mean the pod will not run as it is
_BAD_WAITING = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CrashLoopBackOff",
                "CreateContainerConfigError", "CreateContainerError", "RunContainerError"}


def bridged_jobs_from_slurm(jobs: Iterable[SlurmJob], now: datetime | None = None
                            ) -> tuple[list[BridgedJob], dict[GangKey, SlurmJob]]:
    """Planner view of every bridged job; a pending array record stands for its tasks."""
    out: list[BridgedJob] = []
    records: dict[GangKey, SlurmJob] = {}
    for job in jobs:
        ok, why = eligible(job, now) if job.state == "PENDING" else (False, job.state)
        common = dict(state=job.state, held=job.priority == 0, eligible=ok,
                      wait_reason="" if ok else why, comment=job.comment,
                      order=(job.submit_time, job.job_id), requeue=job.requeue,
                      restarts=job.restarts)
        if job.is_array_meta:
            assert job.array_job_id is not None
            for task in job.pending_array_tasks:
                key = GangKey(job.array_job_id, task)
                out.append(BridgedJob(key=key, **common))  # type: ignore[arg-type]
                records[key] = job
            continue
        if job.array_task_id is not None and job.array_job_id is not None:
            key = GangKey(job.array_job_id, job.array_task_id)
        else:
            key = GangKey(job.job_id)
        nodes = tuple(n for n in job.nodelist.split(",") if n) if job.nodelist else ()
        out.append(BridgedJob(key=key, nodes=_expand_hostlist(nodes), **common))  # type: ignore[arg-type]
        records[key] = job
    return out, records


_RANGE = re.compile(r"^(?P<prefix>.*)\[(?P<body>[0-9,\-]+)\](?P<suffix>.*)$")


def _expand_hostlist(parts: tuple[str, ...]) -> tuple[str, ...]:
    """``a-[0-1]`` -> ``a-0, a-1`` (the forms scontrol prints for our node names)."""
    names: list[str] = []
    joined = ",".join(parts)
    # split on commas outside brackets
    depth, current = 0, ""
    for ch in joined:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            names.append(current)
            current = ""
        else:
            current += ch
    if current:
        names.append(current)
    out: list[str] = []
    for name in names:
        m = _RANGE.match(name)
        if not m:
            out.append(name)
            continue
        for piece in m["body"].split(","):
            lo, _, hi = piece.partition("-")
            width = len(lo)
            for i in range(int(lo), int(hi or lo) + 1):
                out.append(f"{m['prefix']}{i:0{width}d}{m['suffix']}")
    return tuple(out)


#: the DisruptionTarget condition's reasons (Kubernetes 1.26+), in the bridge's words
_DISRUPTIONS = {
    "PreemptionByScheduler": "preempted by kube-scheduler for a higher-priority pod",
    "EvictionByEvictionAPI": "evicted through the Eviction API",
    "TerminationByKubelet": "terminated by the kubelet (node pressure or shutdown)",
    "DeletionByTaintManager": "deleted by a NoExecute taint on its node",
    "DeletionByPodGC": "deleted by the pod garbage collector (node gone)",
}


def pod_info(pod: Mapping[str, Any]) -> PodInfo:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    sched = conditions.get("PodScheduled") or {}
    scheduled = sched.get("status") == "True" or bool(spec.get("nodeName"))
    problem = ""
    failed = phase == "Failed"
    if not scheduled and sched.get("reason"):
        problem = f"{sched.get('reason')}: {sched.get('message', '')}".strip(": ")
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        waiting = state.get("waiting") or {}
        terminated = state.get("terminated") or {}
        if waiting.get("reason") in _BAD_WAITING:
            problem = f"{waiting['reason']}: {waiting.get('message', '')}".strip(": ")
        if terminated:
            problem = (f"{terminated.get('reason', 'Terminated')} "
                       f"(exit code {terminated.get('exitCode')})")
            last = [ln for ln in str(terminated.get("message") or "").splitlines() if ln.strip()]
            if last:  # the container's last words (terminationMessagePolicy)
                problem += f": {last[-1].strip()[:160]}"
            failed = True
    if status.get("reason") in ("Evicted", "Preempting", "DeadlineExceeded", "NodeLost"):
        problem = f"{status['reason']}: {status.get('message', '')}".strip(": ")
        failed = True
    disruption = conditions.get("DisruptionTarget") or {}
    disrupted = ""
    if disruption.get("status") == "True":
        # Kubernetes says why it is taking the pod away (preemption, eviction, ...):
        # that, not "deleted", is what the job's comment must tell
        words = _DISRUPTIONS.get(str(disruption.get("reason")),
                                 f"disrupted ({disruption.get('reason') or 'no reason given'})")
        if spec.get("priority") is not None:
            words += f" (the pod's priority {spec.get('priority')})"
        message = str(disruption.get("message") or "").strip()
        problem = disrupted = f"{words}: {message}" if message else words
        failed = True
    if phase == "Succeeded":
        failed, problem = True, problem or "pod exited (Succeeded) while the job was running"
    hostname = spec.get("hostname") or meta.get("name", "")
    started = status.get("startTime")
    for cs in status.get("containerStatuses") or []:
        started = ((cs.get("state") or {}).get("running") or {}).get("startedAt") or started
        break
    return PodInfo(name=meta.get("name", ""), hostname=hostname, phase=phase,
                   scheduled=scheduled, node_name=spec.get("nodeName") or "",
                   problem=problem, failed=failed,
                   terminating=bool(meta.get("deletionTimestamp")),
                   started=_k8s_time(started), disrupted=disrupted)


def _k8s_time(value: Any) -> datetime | None:
    """An RFC 3339 time from the API (``...Z``) as an aware datetime."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def _slurm_time(value: str) -> datetime | None:
    """A time scontrol prints (local time, no zone) as an aware datetime."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).astimezone()
    except ValueError:
        return None


def gang_key_of(obj: Mapping[str, Any]) -> GangKey | None:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    try:
        job_id = int(labels[JOB_ID_LABEL])
    except (KeyError, ValueError):
        return None
    task = labels.get(ARRAY_TASK_LABEL)
    return GangKey(job_id, int(task) if task not in (None, "") else None)


def gang_from_k8s(job: Mapping[str, Any], pods: Iterable[Mapping[str, Any]],
                  related: gangs.Related = gangs.NOTHING_RELATED,
                  events: Iterable[Mapping[str, Any]] = ()) -> Gang | None:
    """The planner's view of one of the bridge's Jobs; ``related``: what the watch cache
    holds of the kinds the gang backends read around it (``KubeAccess.related``);
    ``events``: the Job's Events (``KubeAccess.events_for``), for ``quota_refusal``."""
    key = gang_key_of(job)
    if key is None:
        return None
    meta = job.get("metadata") or {}
    spec = job.get("spec") or {}
    status = job.get("status") or {}
    failed = ""
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            failed = f"{cond.get('reason', '')}: {cond.get('message', '')}".strip(": ")
    waiting = gangs.waiting_reason(job, related)
    # A requeued job's new Job has the old one's name: the old Job's pods, still
    # terminating, are not this gang's (they would read as failed pods of the new gang).
    uid = meta.get("uid")
    pods = [p for p in pods if not uid or _controller_uid(p) in (None, uid)]
    live = sum(1 for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp"))
    size = int(spec.get("completions") or spec.get("parallelism") or 0)
    if not waiting and live < size:
        # not a pod failure: the Job controller retries (with its own back-off) by itself
        waiting = quota_refusal(job, events)
    return Gang(key=key, namespace=meta.get("namespace", ""), name=meta.get("name", ""),
                pods=tuple(sorted((pod_info(p) for p in pods), key=lambda p: p.hostname)),
                size=size, waiting_admission=waiting, failed=failed,
                failed_pods=int(status.get("failed") or 0),
                failed_indexes=str(status.get("failedIndexes") or ""),
                created=_k8s_time(meta.get("creationTimestamp")))


#: quota admission's refusal, in the Job controller's FailedCreate Event ("Error creating:
#: pods \"x\" is forbidden: exceeded quota: NAME, requested: R=V,..., used: ..., limited: ...")
_EXCEEDED = re.compile(r"exceeded quota: (?P<name>[^,\s]+), requested: (?P<requested>\S*?), "
                       r"used: (?P<used>\S*?), limited: (?P<limited>[^\s,]+(?:,[^\s,]+)*)")


def quota_refusal(job: Mapping[str, Any], events: Iterable[Mapping[str, Any]]) -> str:
    """Why the Job controller cannot create a Job's pods, when a ResourceQuota refuses them:
    ``waiting: ResourceQuota NS/NAME: requested nvidia.com/gpu=8, used 8, limited 8``, from
    the latest of the Job's pod-creation Events (FailedCreate, SuccessfulCreate) when it is
    such a refusal; "" otherwise (pods created since, another failure, no Event). Events of
    an older Job of the same name (a requeue) are not this one's."""
    meta = job.get("metadata") or {}
    uid = meta.get("uid")
    latest: Mapping[str, Any] | None = None
    for event in events:
        involved = event.get("involvedObject") or {}
        if event.get("reason") not in ("FailedCreate", "SuccessfulCreate"):
            continue
        if uid and involved.get("uid") and involved.get("uid") != uid:
            continue
        if latest is None or event_time(event) >= event_time(latest):
            latest = event
    if latest is None or latest.get("reason") != "FailedCreate":
        return ""
    found = _EXCEEDED.search(str(latest.get("message") or latest.get("note") or ""))
    if not found:
        return ""
    lists = [_quantities(found[part]) for part in ("requested", "used", "limited")]
    names = [k for k in lists[0] if k in lists[2]] or list(lists[2])
    detail = "; ".join(f"requested {_resource(k)}={lists[0].get(k, '?')}, used {lists[1].get(k, '?')}, "
                       f"limited {lists[2].get(k, '?')}" for k in names)
    namespace = (latest.get("involvedObject") or {}).get("namespace") or meta.get("namespace") or ""
    return f"waiting: ResourceQuota {namespace}/{found['name']}: {detail}"


def _quantities(text: str) -> dict[str, str]:
    """``requests.nvidia.com/gpu=8,requests.cpu=2`` (quota admission's prettyPrint) as a dict."""
    out: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if sep and key:
            out[key] = value
    return out


def _resource(quota_key: str) -> str:
    """``requests.nvidia.com/gpu`` -> ``nvidia.com/gpu`` (a request is what users think of)."""
    return quota_key.removeprefix("requests.")


def _controller_uid(pod: Mapping[str, Any]) -> str | None:
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("kind") == "Job" and ref.get("controller") and ref.get("uid"):
            return str(ref["uid"])
    return None


def lost_nodes(nodes: Mapping[str, Mapping[str, Any]]) -> frozenset[str]:
    """Kubernetes nodes whose Ready condition is not True."""
    lost = set()
    for name, node in nodes.items():
        ready = [c for c in (node.get("status") or {}).get("conditions") or []
                 if c.get("type") == "Ready"]
        if ready and ready[0].get("status") != "True":
            lost.add(name)
    return frozenset(lost)
