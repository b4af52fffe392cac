"""Fuzzed submissions, the API server's side: every object the bridge renders for a seeded
sample of random accepted requests is accepted by a real kube-apiserver.

The requests come from ``tests/fuzz_requests.py`` both ways the bridge meets them: raw
``job_desc`` fields as slurmctld hands them to job_submit, and sbatch command lines and
``#SBATCH`` lines through the sbatch parser. Each accepted one (``core.normalize``) is
rendered (``core.render``, the path the daemon takes; first and last task of an array) under
three configurations (builtin, Kueue and Volcano gangs), and every object is sent to the API
server with ``dryRun=All``: admission and validation run in full, nothing is stored.

A refusal fails the test with the object and the API's message. Volcano's PodGroup is checked
against the project's structural CRD of it (``slurm_k8s_devcluster/volcano.py``); a kind the API
server does not serve would be skipped, with the reason printed. At the end the job namespaces are listed: dry runs must have created nothing.
``SKB_FUZZ_RENDER=N`` sets the sample size (default 200), ``SKB_FUZZ_SEED`` the seed.
"""

from __future__ import annotations

import copy
import json
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from slurm_k8s_bridge.core.config import BridgeConfig, parse_config
from slurm_k8s_bridge.core.errors import BridgeRefusal
from slurm_k8s_bridge.core.normalize import normalize
from slurm_k8s_bridge.core.render import render
from slurm_k8s_bridge.core.request import BridgeRequest, SlurmJobRequest
from slurm_k8s_bridge.slurm.sbatch import request_from_sbatch
from slurm_k8s_devcluster.k8s import LocalKubeCluster
from slurm_k8s_devcluster.volcano import install_volcano_crds

from .. import fuzz_requests as fz
from ..paths import REPO, EXAMPLE_CONFIG

pytestmark = pytest.mark.k8s

SAMPLE = int(os.environ.get("SKB_FUZZ_RENDER", "200"))
SEED = int(os.environ.get("SKB_FUZZ_SEED", "20261207"))
#: at most this many random requests are drawn to find SAMPLE accepted ones
MAX_DRAWS = 50 * SAMPLE
JOB_ID = 67108863  # Slurm's largest job id (MaxJobId): the longest names


@pytest.fixture(scope="module")
def kube_options() -> dict[str, Any]:
    """No nodes: dry runs need only the API server (and its admission chain)."""
    return {"kwok_nodes": 0}


def _config(**rule: Any) -> BridgeConfig:
    data = copy.deepcopy(yaml.safe_load(EXAMPLE_CONFIG.read_text()))
    data["partitions"]["default"].update(rule)
    return parse_config(data)


CONFIGS = {
    "builtin": _config(),
    "kueue": _config(gang="kueue", queue="gpu-jobs"),
    "volcano": _config(gang="volcano", queue="default", priority_class="slurm-normal"),
}


def accepted_requests(rnd: random.Random) -> list[tuple[str, str, BridgeRequest]]:
    """SAMPLE (origin, configuration name, accepted request), drawn with ``rnd``."""
    found: list[tuple[str, str, BridgeRequest]] = []
    for draw in range(MAX_DRAWS):  # bounded
        if len(found) == SAMPLE:
            break
        config_name = rnd.choice(sorted(CONFIGS))
        origin = "sbatch" if draw % 2 else "job_desc"
        try:
            if origin == "sbatch":
                argv, directives = fz.sbatch_invocation(rnd)
                req = request_from_sbatch(fz.batch_script(directives), argv, 1000, 1000,
                                          script_name="job.sh")
            else:
                req = SlurmJobRequest(**fz.job_desc_fields(rnd))
            breq = normalize(req, CONFIGS[config_name])
        except BridgeRefusal:
            continue
        if breq is not None:
            found.append((origin, config_name, breq))
    assert len(found) == SAMPLE, f"only {len(found)} of {MAX_DRAWS} random requests were accepted"
    return found


def served(api: Any, api_version: str, plural: str) -> str | None:
    """Why the API server does not serve ``plural`` of ``api_version`` (None when it does).
    Built-in kinds (Service, Job) are always served; the others are CRDs, served when a
    CustomResourceDefinition of that group, plural and version is established."""
    if api_version in ("v1", "batch/v1"):
        return None
    group, version = api_version.split("/")
    crds = client.ApiextensionsV1Api(api).list_custom_resource_definition().items
    for crd in crds:
        if crd.spec.group == group and crd.spec.names.plural == plural:
            if any(v.name == version and v.served for v in crd.spec.versions):
                return None
            return f"CRD {plural}.{group} does not serve {version}"
    return (f"no CRD {plural}.{group} on the dev API server (Volcano is not installed; "
            f"{len(crds)} CRDs served)")


PLURALS = {"Job": "jobs", "Service": "services", "PodGroup": "podgroups", "Workload": "workloads"}


def dry_run_create(api: Any, obj: dict[str, Any]) -> None:
    """POST ``obj`` with dryRun=All; raises ApiException when the API server refuses it. A
    custom object must come back with its spec unchanged (a structural schema prunes fields
    it does not declare instead of refusing them)."""
    group_version, kind = obj["apiVersion"], obj["kind"]
    body: Any = obj  # the client takes plain dicts as bodies
    ns = obj["metadata"]["namespace"]
    if kind == "Service":
        client.CoreV1Api(api).create_namespaced_service(ns, body, dry_run="All")
    elif kind == "Job":
        client.BatchV1Api(api).create_namespaced_job(ns, body, dry_run="All")
    else:
        group, version = group_version.split("/")
        back = client.CustomObjectsApi(api).create_namespaced_custom_object(
            group, version, ns, PLURALS[kind], body, dry_run="All")
        if back.get("spec") != obj.get("spec"):
            raise ApiException(status=0, reason=f"spec changed by the API server: sent "
                                                f"{obj.get('spec')}, got {back.get('spec')}")


def api_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "").get("message"))
    except (TypeError, ValueError):
        return f"HTTP {exc.status} {exc.reason}: {exc.body!r}"


def test_rendered_objects_pass_server_side_validation(kube_cluster: LocalKubeCluster,
                                                      kube_admin: Any) -> None:
    started = time.monotonic()
    install_volcano_crds(kube_cluster)   # the project's structural PodGroup CRD (no Volcano)
    sample = accepted_requests(random.Random(SEED))
    checked: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    skip_reasons: dict[str, str] = {}
    origins: Counter[str] = Counter()
    namespaces: set[str] = set()
    refusals: list[str] = []
    for origin, config_name, breq in sample:
        origins[f"{origin}/{config_name}"] += 1
        config = CONFIGS[config_name]
        ids = breq.array_task_ids
        tasks = [None] if ids is None else sorted({ids[0], ids[-1]})
        for task in tasks:
            for obj in render(breq, config, JOB_ID, task):
                kind = obj["kind"]
                if kind not in skip_reasons:
                    skip_reasons[kind] = served(kube_admin, obj["apiVersion"], PLURALS.get(kind, "?")) or ""
                if skip_reasons[kind]:
                    skipped[kind] += 1
                    continue
                ns = obj["metadata"]["namespace"]
                if ns not in namespaces:
                    kube_cluster.ensure_namespace(ns)
                    namespaces.add(ns)
                try:
                    dry_run_create(kube_admin, obj)
                except ApiException as exc:
                    refusals.append(f"{kind} {obj['metadata']['name']} ({origin}, {config_name}): "
                                    f"{api_message(exc)}\n{yaml.safe_dump(obj, sort_keys=False)}")
                    continue
                checked[kind] += 1
    wall = time.monotonic() - started

    core, batch = client.CoreV1Api(kube_admin), client.BatchV1Api(kube_admin)
    created: dict[str, list[Any]] = {}
    for ns in sorted(namespaces):
        found: list[Any] = [*batch.list_namespaced_job(ns).items, *core.list_namespaced_service(ns).items]
        created[ns] = [getattr(o.metadata, "name", "?") for o in found]

    print(f"\n{SAMPLE} accepted random requests (seed {SEED}), by origin/configuration: "
          + ", ".join(f"{k} {v}" for k, v in sorted(origins.items())))
    print(f"{'kind':<12} {'checked':>8} {'skipped':>8}  reason skipped")
    for kind in sorted(set(checked) | set(skipped)):
        print(f"{kind:<12} {checked[kind]:>8} {skipped[kind]:>8}  {skip_reasons.get(kind) or '-'}")
    print(f"refused by the API server: {len(refusals)}; wall time {wall:.1f}s")
    for kind, reason in sorted(skip_reasons.items()):
        if reason:
            print(f"SKIP {kind}: {reason}")
    assert not refusals, f"{len(refusals)} rendered objects refused by the API server:\n" + \
        "\n".join(refusals[:5])
    assert checked["Job"] >= SAMPLE and checked["Service"] >= SAMPLE, checked
    assert not any(created.values()), f"dry runs created objects: {created}"


def test_the_dry_run_does_refuse_a_broken_object(kube_cluster: LocalKubeCluster, kube_admin: Any) -> None:
    """The check above can fail: a rendered Job with one field made invalid is refused."""
    _, config_name, breq = accepted_requests(random.Random(SEED))[0]
    job = next(o for o in render(breq, CONFIGS[config_name], JOB_ID) if o["kind"] == "Job")
    kube_cluster.ensure_namespace(job["metadata"]["namespace"])
    job["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "-1"
    with pytest.raises(ApiException) as refused:
        dry_run_create(kube_admin, job)
    print(f"\nbroken Job refused: {api_message(refused.value)}")
    assert refused.value.status == 422
