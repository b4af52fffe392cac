"""Volcano's PodGroup API served by the dev API server (``slurm_k8s_devcluster/volcano.py``:
structural CRDs of the project's own, from Volcano's published v1beta1 types), and every
PodGroup the bridge renders accepted by it, unchanged.

Volcano's scheduler and controllers are not served by the registries here and do not run:
what is exercised is the API contract (field names, types, bounds, the daemon's RBAC and its
check that the API exists), not Volcano's gang scheduling itself.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from slurm_k8s_bridge.core.config import parse_config
from slurm_k8s_bridge.core.normalize import normalize
from slurm_k8s_bridge.core.render import render
from slurm_k8s_bridge.kube.access import KubeAccess
from slurm_k8s_bridge.slurm.sbatch import request_from_sbatch
from slurm_k8s_devcluster.k8s import LocalKubeCluster
from slurm_k8s_devcluster.volcano import GROUP, VERSION, install_volcano_crds

from ..kube_env import DaemonRbac, started_access
from ..paths import EXAMPLE_CONFIG
from .conftest import JOBS_NS

pytestmark = pytest.mark.k8s

QUEUE = "batch"


def _config_data() -> dict[str, Any]:
    data = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    data["partitions"]["gpu"] = {"gang": "volcano", "queue": QUEUE}
    return data


@pytest.fixture(scope="module")
def volcano(kube_cluster: LocalKubeCluster) -> LocalKubeCluster:
    install_volcano_crds(kube_cluster)
    return kube_cluster


@pytest.fixture(scope="module")
def daemon_rbac(tmp_path_factory: pytest.TempPathFactory) -> DaemonRbac:
    path = tmp_path_factory.mktemp("volcano") / "k8s-bridge.yaml"
    path.write_text(yaml.safe_dump(_config_data()))
    return DaemonRbac.of_config(path)


def _objects(job_id: int, *options: str) -> list[dict[str, Any]]:
    config = parse_config(copy.deepcopy(_config_data()))
    breq = normalize(request_from_sbatch("#!/bin/bash\nsrun true\n", ["-p", "gpu", *options],
                                         1000, 1000), config)
    assert breq is not None
    return render(breq, config, job_id)


CASES = [
    ("-N2", "--gres=gpu:h100:8"),
    ("-N4", "--gpus-per-node=a100:8", "--qos=high"),
    ("-N1", "--gres=gpu:1g.10gb:3", "--mem=10G"),
    ("-N3", "-c", "16", "--exclusive"),
]


@pytest.mark.parametrize("options", CASES, ids=[" ".join(c) for c in CASES])
def test_every_rendered_pod_group_is_accepted_unchanged(volcano: LocalKubeCluster, admin: Any,
                                                       options: tuple[str, ...]) -> None:
    job_id = 400 + CASES.index(options)
    group = next(o for o in _objects(job_id, *options) if o["kind"] == "PodGroup")
    api = client.CustomObjectsApi(admin)
    volcano.ensure_namespace(JOBS_NS)
    created = api.create_namespaced_custom_object(GROUP, VERSION, JOBS_NS, "podgroups", group)
    try:
        assert created["spec"] == group["spec"], "fields were pruned or changed by the schema"
        nodes = int(options[0][2:])
        assert created["spec"]["minMember"] == nodes
        assert created["spec"]["queue"] == QUEUE
        print(f"\nPodGroup for {' '.join(options)}: {created['spec']}")
    finally:
        api.delete_namespaced_custom_object(GROUP, VERSION, JOBS_NS, "podgroups",
                                            group["metadata"]["name"])


def test_the_schema_refuses_what_volcano_would(volcano: LocalKubeCluster, admin: Any) -> None:
    api = client.CustomObjectsApi(admin)
    volcano.ensure_namespace(JOBS_NS)
    bad = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "PodGroup",
           "metadata": {"name": "bad-pg", "namespace": JOBS_NS},
           "spec": {"minMember": "two", "minResources": {"nvidia.com/gpu": "eight"}}}
    with pytest.raises(ApiException) as refused:
        api.create_namespaced_custom_object(GROUP, VERSION, JOBS_NS, "podgroups", bad)
    assert refused.value.status == 422
    assert "minMember" in refused.value.body and "minResources" in refused.value.body


@pytest.fixture(scope="module")
def access(volcano: LocalKubeCluster, sa_client: Any) -> Iterator[KubeAccess]:
    with started_access(sa_client, [JOBS_NS]) as kube:
        yield kube


def test_the_daemon_creates_a_volcano_gang_with_its_own_rbac(access: KubeAccess, admin: Any) -> None:
    """As the daemon's ServiceAccount (RBAC from the configuration: create/get/delete of
    podgroups): the PodGroup first, then the Service and the Job; deleting the gang removes all."""
    objects = _objects(450, "-N2", "--gres=gpu:h100:8")
    assert [o["kind"] for o in objects] == ["Service", "PodGroup", "Job"]
    access.apply_gang(objects)
    api = client.CustomObjectsApi(admin)
    group = api.get_namespaced_custom_object(GROUP, VERSION, JOBS_NS, "podgroups", "slurm-450")
    job = client.BatchV1Api(admin).read_namespaced_job("slurm-450", JOBS_NS)
    assert group["spec"]["minMember"] == 2 and job.spec.parallelism == 2
    template = job.spec.template
    assert template.spec.scheduler_name == "volcano"
    assert template.metadata.annotations["scheduling.k8s.io/group-name"] == "slurm-450"
    access.delete_gang(JOBS_NS, "slurm-450")
