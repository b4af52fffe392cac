"""Kueue: the Job is created suspended with its LocalQueue in ``kueue.x-k8s.io/queue-name``;
Kueue unsuspends it once the ClusterQueue's quota admits the whole gang.

The bridge creates nothing of Kueue's: Kueue makes a Workload for the Job (controlled by
it) and says in the Workload's ``QuotaReserved`` condition why it is not admitted. The
daemon reads Workloads (``reads_owned``) and LocalQueues (``reads_named``: which
ClusterQueue a queue feeds) in its job namespaces, and ``waiting`` turns Kueue's message
into the bridge's words::

    kueue: waiting for quota in ClusterQueue gpu: 16 nvidia.com/gpu requested, 8 free

The messages read are those of Kueue's flavor assigner (v0.17: ``insufficient unused
quota for R in flavor F, N more needed`` and ``insufficient quota for R in flavor F, ...
current podset request (N) > maximum capacity (M)``); any other is quoted as it is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from slurm_k8s_bridge.core.gang.base import (
    NOTHING_RELATED,
    GangBackend,
    ObjectKind,
    Related,
)

if TYPE_CHECKING:
    from slurm_k8s_bridge.core.request import BridgeRequest

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
#: Kueue reads a Job's WorkloadPriorityClass from this label
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
WORKLOAD = ObjectKind("Workload", "kueue.x-k8s.io", "v1beta2", "workloads")
LOCAL_QUEUE = ObjectKind("LocalQueue", "kueue.x-k8s.io", "v1beta2", "localqueues")

_UNUSED = re.compile(r"insufficient unused quota for (?P<res>\S+) in flavor (?P<flavor>\S+), "
                     r"(?P<needed>\S+) more needed")
_NO_FIT = re.compile(r"insufficient quota for (?P<res>\S+) in flavor (?P<flavor>\S+), .*?"
                     r"current podset request \((?P<req>[^)]*)\) > maximum capacity \((?P<max>[^)]*)\)")


class KueueGang(GangBackend):
    name = "kueue"
    uses_queue = True
    needs_queue = True
    reads_owned = (WORKLOAD,)
    reads_named = (LOCAL_QUEUE,)

    def decorate(self, job: dict[str, Any], breq: BridgeRequest, name: str) -> None:
        if breq.queue:
            job["metadata"]["labels"][QUEUE_LABEL] = breq.queue
        if breq.workload_priority_class:
            job["metadata"]["labels"][PRIORITY_LABEL] = breq.workload_priority_class
        job["spec"]["suspend"] = True

    def waiting(self, job: Mapping[str, Any], related: Related = NOTHING_RELATED) -> str:
        if not (job.get("spec") or {}).get("suspend"):
            return ""
        queue = ((job.get("metadata") or {}).get("labels") or {}).get(QUEUE_LABEL, "")
        if not queue:
            return "suspended"
        workloads = related.owned.get(WORKLOAD.kind) or ()
        local = related.named.get((LOCAL_QUEUE.kind, queue))
        cluster_queue = str(((local or {}).get("spec") or {}).get("clusterQueue") or "")
        if not workloads:
            return f"kueue: waiting for admission by Kueue (LocalQueue {queue})"
        return workload_reason(workloads[0], queue, cluster_queue)

    def rbac_rules(self) -> list[dict[str, Any]]:
        return [{"apiGroups": [WORKLOAD.group], "resources": [WORKLOAD.resource, LOCAL_QUEUE.resource],
                 "verbs": ["get", "list", "watch"]}]


def workload_reason(workload: Mapping[str, Any], queue: str, cluster_queue: str = "") -> str:
    """Why Kueue has not admitted a Workload, in the bridge's words ("kueue: ...")."""
    status = workload.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or ()}
    where = f"ClusterQueue {cluster_queue}" if cluster_queue else f"the ClusterQueue of LocalQueue {queue}"
    evicted = conditions.get("Evicted") or {}
    if evicted.get("status") == "True":
        return f"kueue: evicted ({evicted.get('reason', '')}): {evicted.get('message', '')}".rstrip(": ")
    admitted = conditions.get("Admitted") or {}
    if admitted.get("status") == "True":
        return f"kueue: admitted in {where}, waiting for Kueue to start the Job"
    reserved = conditions.get("QuotaReserved") or {}
    if reserved.get("status") == "True":
        return f"kueue: quota reserved in {where}, waiting for admission checks"
    message = str(reserved.get("message") or "")
    if not message:
        return f"kueue: waiting for admission in {where} (LocalQueue {queue})"
    requested = _requested(status)
    several = len(set(re.findall(r" in flavor (\S+?),", message))) > 1
    # a flavor that could admit it later wins over one that never can
    m = _UNUSED.search(message)
    which = f" (flavor {m['flavor']})" if m and several else ""
    if m:
        total = requested.get(m["res"], "")
        if total.isdigit() and m["needed"].isdigit():
            free = max(0, int(total) - int(m["needed"]))
            return f"kueue: waiting for quota in {where}: {total} {m['res']} requested, {free} free{which}"
        return f"kueue: waiting for quota in {where}: {m['res']}: {m['needed']} more needed{which}"
    m = _NO_FIT.search(message)
    which = f" (flavor {m['flavor']})" if m and several else ""
    if m:
        return (f"kueue: {where} can never admit it: {m['req']} {m['res']} requested, "
                f"at most {m['max']}{which}")
    return f"kueue: {message} ({where})"


def _requested(status: Mapping[str, Any]) -> dict[str, str]:
    """Resource -> what the whole Workload requests (``status.resourceRequests``, summed
    over its pod sets where the quantities are whole numbers)."""
    out: dict[str, str] = {}
    for podset in status.get("resourceRequests") or ():
        for res, qty in ((podset or {}).get("resources") or {}).items():
            qty = str(qty)
            old = out.get(res)
            if old is None:
                out[res] = qty
            elif old.isdigit() and qty.isdigit():
                out[res] = str(int(old) + int(qty))
    return out
