"""The rendered worker pod under the real API server's PodSecurity admission.

One module-scoped control plane (tests/k8s/conftest.py's ``kube_cluster``, one KWOK GPU
node). A namespace labelled ``pod-security.kubernetes.io/enforce=baseline`` and
``warn=restricted`` takes the objects ``core.render`` makes for a job (hardened
configuration: munge key from a Secret, no host paths): they are admitted, the Job
controller's pods are admitted, and the restricted warnings the API server returns name
exactly the exceptions that tests/unit/test_pod_security.py names (printed). The example
configuration's pod, whose ``shared_mounts`` are hostPath volumes, is refused there with
the API server's reason. deploy/networkpolicy.yaml is accepted by the API server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from slurm_k8s_bridge.core.render import WORKER_CAPABILITIES, render

from ..kube_env import REPO, poll
from ..unit.helpers import bridged, kind
from ..unit.test_pod_security import EXCEPTIONS, HARDENED, config_with

pytestmark = pytest.mark.k8s

NS = "pss-baseline"
LABELS = {"pod-security.kubernetes.io/enforce": "baseline",
          "pod-security.kubernetes.io/enforce-version": "latest",
          "pod-security.kubernetes.io/warn": "restricted",
          "pod-security.kubernetes.io/warn-version": "latest"}
JOB_ID = 4242


@pytest.fixture(scope="module")
def kube_options() -> dict[str, Any]:
    return {"kwok_nodes": 1}


@pytest.fixture(scope="module")
def namespace(kube_admin: Any) -> Iterator[str]:
    core: Any = client.CoreV1Api(kube_admin)
    core.create_namespace({"metadata": {"name": NS, "labels": LABELS}})
    yield NS
    core.delete_namespace(NS)


def _objects(config_overrides: dict[str, Any], *argv: str) -> list[dict[str, Any]]:
    config = config_with(**config_overrides)
    objects = render(bridged(config, *argv), config, JOB_ID)
    for obj in objects:
        obj["metadata"]["namespace"] = NS
    return objects


def _pod(job: dict[str, Any], name: str) -> dict[str, Any]:
    template = job["spec"]["template"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": template["metadata"]["labels"]},
            "spec": template["spec"]}


def _create(api: Any, path: str, body: dict[str, Any]) -> list[str]:
    """POST ``body`` to ``path`` as the API server sees it; the PodSecurity warnings it returns."""
    method, url, headers, data, _ = api.param_serialize(
        "POST", path, header_params={"Accept": "application/json", "Content-Type": "application/json"},
        body=body, auth_settings=list(api.configuration.auth_settings() or {}))
    reply = api.call_api(method, url, header_params=headers, body=data).response
    assert 200 <= reply.status <= 299, f"POST {path}: {reply.status} {reply.data[:500]!r}"
    raw = reply.headers.getlist("Warning")
    # RFC 7234 warn-text: a quoted string, its inner quotes escaped
    return [m.group(1).replace('\\"', '"') for w in raw
            for m in [re.match(r'^\d{3} \S+ "(.*)"$', w.strip())] if m]


def _reasons(warning: str) -> dict[str, str]:
    """``would violate PodSecurity "restricted:latest": A (detail), B (detail)`` -> {A: detail}."""
    body = warning.split(": ", 1)[1]
    items, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and body.startswith(", ", i):
            items.append(body[start:i])
            start = i + 2
    items.append(body[start:])
    out = {}
    for item in items:
        m = re.fullmatch(r"(.+?) \((.*)\)", item.strip())
        assert m, f"cannot read {item!r} in {warning!r}"
        out[m.group(1)] = m.group(2)
    return out


def test_the_rendered_job_is_admitted_under_baseline_with_the_named_restricted_warnings(
        kube_admin: Any, namespace: str) -> None:
    objects = _objects(HARDENED, "-N", "2", "--gres=gpu:1", "-c", "2", "--mem=1G")
    warnings: dict[str, list[str]] = {}
    for obj in objects:
        plural = obj["kind"].lower() + "s"
        group = "/api/v1" if obj["apiVersion"] == "v1" else f"/apis/{obj['apiVersion']}"
        warnings[obj["kind"]] = _create(kube_admin, f"{group}/namespaces/{namespace}/{plural}", obj)
    job_warnings = [w for w in warnings["Job"] if "PodSecurity" in w]
    print("\nAPI server warnings for the rendered Job (enforce=baseline, warn=restricted):")
    for w in job_warnings:
        print(f"  {w}")
    assert len(job_warnings) == 1 and '"restricted:latest"' in job_warnings[0], warnings
    reasons = _reasons(job_warnings[0])
    expected = {e.check for e in EXCEPTIONS if e.level == "restricted" and not e.configured}
    assert set(reasons) == expected, reasons
    assert set(re.findall(r'"([A-Z_]+)"', reasons["unrestricted capabilities"])) == set(WORKER_CAPABILITIES)
    assert not [w for w in warnings["Service"] if "PodSecurity" in w]

    # the Job controller's pods pass the enforced baseline: both indexes exist
    core: Any = client.CoreV1Api(kube_admin)
    selector = f"slurm-k8s-bridge.io/job-id={JOB_ID}"
    pods = poll(lambda: (p := core.list_namespaced_pod(namespace, label_selector=selector).items)
                and len(p) == 2 and p, timeout=60, what="the Job's two pods", interval=0.5,
                alive=lambda: None, transient=(), diagnostics=lambda: _events(kube_admin, namespace))
    for pod in pods:
        sc = pod.spec.containers[0].security_context
        assert sc.read_only_root_filesystem is True and sc.allow_privilege_escalation is False
    assert "violates PodSecurity" not in _events(kube_admin, namespace)


def _events(api: Any, namespace: str) -> str:
    core: Any = client.CoreV1Api(api)
    return "\n".join(f"{e.reason}: {e.message}" for e in core.list_namespaced_event(namespace).items)


def test_a_pod_with_host_paths_is_refused_under_baseline(kube_admin: Any, namespace: str) -> None:
    job = kind(_objects({}, "--gres=gpu:1"), "Job")[0]
    pod = _pod(job, "with-shared-mounts")
    core: Any = client.CoreV1Api(kube_admin)
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(namespace, pod)
    message = json.loads(str(refused.value.body))["message"]
    print(f"\nthe example configuration's pod (shared_mounts /home): {refused.value.status} {message}")
    assert refused.value.status == 403
    assert 'violates PodSecurity "baseline:latest": hostPath volumes (volume "shared-0")' in message


def test_the_hardened_pod_alone_is_admitted(kube_admin: Any, namespace: str) -> None:
    job = kind(_objects(HARDENED, "--gres=gpu:1"), "Job")[0]
    warnings = _create(kube_admin, f"/api/v1/namespaces/{namespace}/pods", _pod(job, "hardened"))
    assert [set(_reasons(w)) for w in warnings if "PodSecurity" in w] == [
        {"runAsNonRoot != true", "runAsUser=0", "unrestricted capabilities"}]
    core: Any = client.CoreV1Api(kube_admin)
    pod = core.read_namespaced_pod("hardened", namespace)
    assert pod.spec.security_context.seccomp_profile.type == "RuntimeDefault"


def test_the_example_network_policies_are_accepted(kube_admin: Any, namespace: str) -> None:
    docs = [d for d in yaml.safe_load_all((REPO / "deploy" / "networkpolicy.yaml").read_text()) if d]
    assert [d["kind"] for d in docs] == ["NetworkPolicy"] * 3
    net: Any = client.NetworkingV1Api(kube_admin)
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
        net.create_namespaced_network_policy(namespace, doc)
    names = {p.metadata.name for p in net.list_namespaced_network_policy(namespace).items}
    assert names == {"slurm-k8s-bridge-workers", "slurm-k8s-bridge-peers", "slurm-k8s-bridge-job-4242"}
    # the per-gang template selects exactly the pods the bridge renders for job 4242
    job = kind(_objects(HARDENED, "--gres=gpu:1"), "Job")[0]
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    for doc in docs:
        selector = doc["spec"]["podSelector"]["matchLabels"]
        assert selector.items() <= pod_labels.items(), (doc["metadata"]["name"], selector)
