"""Kueue: the Job is created suspended with its LocalQueue in ``kueue.x-k8s.io/queue-name``;
Kueue unsuspends it once the ClusterQueue's quota admits the whole gang.

The bridge creates nothing of Kueue's (its Workload is Kueue's own), so it needs no extra
RBAC; a suspended Job reads as waiting for admission.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from slurm_k8s_bridge.core.gang.base import GangBackend

if TYPE_CHECKING:
    from slurm_k8s_bridge.core.request import BridgeRequest

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


class KueueGang(GangBackend):
    name = "kueue"
    uses_queue = True
    needs_queue = True

    def decorate(self, job: dict[str, Any], breq: BridgeRequest, name: str) -> None:
        if breq.queue:
            job["metadata"]["labels"][QUEUE_LABEL] = breq.queue
        job["spec"]["suspend"] = True

    def waiting(self, job: Mapping[str, Any]) -> str:
        if not (job.get("spec") or {}).get("suspend"):
            return ""
        queue = ((job.get("metadata") or {}).get("labels") or {}).get(QUEUE_LABEL, "")
        return f"waiting for admission by Kueue (queue {queue})" if queue else "suspended"
