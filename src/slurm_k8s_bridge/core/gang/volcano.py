"""Volcano: a PodGroup (``minMember`` = the gang's pods, ``minResources`` its total) and pods
for the ``volcano`` scheduler, which binds all of them or none.

The PodGroup is created before the Job and deleted with it; creating one needs Volcano's
``scheduling.volcano.sh/v1beta1`` API (checked before anything is created).
"""

from __future__ import annotations

import copy
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

POD_GROUP = ObjectKind("PodGroup", "scheduling.volcano.sh", "v1beta1", "podgroups")
GROUP_ANNOTATION = "scheduling.k8s.io/group-name"
SCHEDULER = "volcano"


class VolcanoGang(GangBackend):
    name = "volcano"
    uses_queue = True
    kinds = (POD_GROUP,)
    install_hint = "install Volcano or set the partition's gang to builtin"

    def decorate(self, job: dict[str, Any], breq: BridgeRequest, name: str) -> None:
        template = job["spec"]["template"]
        template["metadata"]["annotations"][GROUP_ANNOTATION] = name
        template["spec"]["schedulerName"] = SCHEDULER

    def extra_objects(self, breq: BridgeRequest, name: str,
                      metadata: Mapping[str, Any]) -> list[dict[str, Any]]:
        total = {"cpu": str(breq.cpus_per_node * breq.nodes),
                 "memory": f"{breq.memory_mb_per_node * breq.nodes}Mi"}
        if breq.gpu_resource and breq.gpus_per_node:
            total[breq.gpu_resource] = str(breq.gpus_per_node * breq.nodes)
        spec: dict[str, Any] = {"minMember": breq.nodes, "minResources": total}
        if breq.queue:
            spec["queue"] = breq.queue
        if breq.priority_class:
            spec["priorityClassName"] = breq.priority_class
        return [{"apiVersion": POD_GROUP.api_version, "kind": POD_GROUP.kind,
                 "metadata": copy.deepcopy(dict(metadata)), "spec": spec}]

    def waiting(self, job: Mapping[str, Any], related: Related = NOTHING_RELATED) -> str:
        return ""

    def rbac_rules(self) -> list[dict[str, Any]]:
        return [{"apiGroups": [POD_GROUP.group], "resources": [POD_GROUP.resource],
                 "verbs": ["create", "get", "delete"]}]
