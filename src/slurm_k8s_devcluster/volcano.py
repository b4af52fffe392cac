"""Volcano's ``scheduling.volcano.sh/v1beta1`` PodGroup and Queue, as structural CRDs of the
project's own, for the development cluster.

The package registries here serve no Volcano, so its scheduler and controllers cannot run. What
can be checked is the contract with its API: these CRDs declare, from Volcano's published
v1beta1 types, every field the bridge writes (PodGroup ``spec.minMember``, ``minTaskMember``,
``queue``, ``priorityClassName``, ``minResources``) and the status Volcano reports, with types
and bounds, and nothing else -- the API server prunes unknown fields of a structural schema, so
a PodGroup that reads back unchanged used only declared fields, with values of the declared
types. ``install_volcano_crds(kube)`` applies both and waits until they are served.
"""

from __future__ import annotations

from typing import Any

from slurm_k8s_devcluster.k8s import wait_for

GROUP = "scheduling.volcano.sh"
VERSION = "v1beta1"

_INT32 = {"type": "integer", "format": "int32"}
_QUANTITY = {"anyOf": [{"type": "integer"}, {"type": "string"}],
             "pattern": r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$",
             "x-kubernetes-int-or-string": True}
_RESOURCE_LIST = {"type": "object", "additionalProperties": _QUANTITY}


def _crd(plural: str, kind: str, scope: str, short: list[str], spec: dict[str, Any],
         status: dict[str, Any], status_subresource: bool) -> dict[str, Any]:
    version: dict[str, Any] = {
        "name": VERSION, "served": True, "storage": True,
        "schema": {"openAPIV3Schema": {"type": "object", "properties": {
            "apiVersion": {"type": "string"}, "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": {"type": "object", "properties": spec},
            "status": {"type": "object", "properties": status}}}},
    }
    if status_subresource:
        version["subresources"] = {"status": {}}
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{GROUP}"},
            "spec": {"group": GROUP, "scope": scope, "versions": [version],
                     "names": {"plural": plural, "singular": kind.lower(), "kind": kind,
                               "listKind": f"{kind}List", "shortNames": short}}}


def podgroup_crd() -> dict[str, Any]:
    condition = {"type": "object", "properties": {
        "type": {"type": "string"}, "status": {"type": "string"},
        "transitionID": {"type": "string"},
        "lastTransitionTime": {"type": "string", "format": "date-time"},
        "reason": {"type": "string"}, "message": {"type": "string"}}}
    spec = {
        # all pods of the gang, or none (Volcano's gang plugin)
        "minMember": {**_INT32, "minimum": 0},
        "minTaskMember": {"type": "object", "additionalProperties": {**_INT32, "minimum": 0}},
        "queue": {"type": "string"},
        "priorityClassName": {"type": "string"},
        "minResources": _RESOURCE_LIST,
    }
    status = {
        "phase": {"type": "string", "enum": ["Pending", "Running", "Unknown", "Inqueue"]},
        "conditions": {"type": "array", "items": condition},
        "running": _INT32, "succeeded": _INT32, "failed": _INT32,
    }
    return _crd("podgroups", "PodGroup", "Namespaced", ["pg", "podgroup-v1beta1"], spec, status,
                status_subresource=False)


def queue_crd() -> dict[str, Any]:
    spec = {"weight": {**_INT32, "minimum": 1}, "capability": _RESOURCE_LIST,
            "reclaimable": {"type": "boolean"}}
    status = {"state": {"type": "string", "enum": ["Open", "Closed", "Closing", "Unknown"]},
              **{k: _INT32 for k in ("unknown", "pending", "running", "inqueue")}}
    return _crd("queues", "Queue", "Cluster", ["q", "queue-v1beta1"], spec, status,
                status_subresource=True)


def install_volcano_crds(kube: Any, timeout: float = 60.0) -> None:
    """Apply the PodGroup and Queue CRDs as admin and wait until both are Established."""
    from kubernetes import client
    crds = (podgroup_crd(), queue_crd())
    with kube.admin_client() as api_client:
        api = client.ApiextensionsV1Api(api_client)
        existing = {c.metadata.name for c in api.list_custom_resource_definition().items}
        for crd in (c for c in crds if c["metadata"]["name"] not in existing):
            api.create_custom_resource_definition(crd)
        for crd in crds:
            name = crd["metadata"]["name"]
            wait_for(lambda name=name: any(
                c.type == "Established" and c.status == "True"
                for c in (api.read_custom_resource_definition(name).status.conditions or [])),
                timeout, f"CRD {name} Established")

__all__ = ["GROUP", "VERSION", "install_volcano_crds", "podgroup_crd", "queue_crd"]
