"""render(): the Kubernetes objects of a bridged job, as plain dicts."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

from slurm_k8s_bridge.core.config import BridgeConfig, parse_config
from slurm_k8s_bridge.core.render import (
    WORKER_CAPABILITIES,
    node_names,
    render,
    render_all,
    translate_request,
)

from .conftest import EXAMPLE_CONFIG
from .helpers import bridged, container, env, kind, pod_spec, request

pytestmark = pytest.mark.unit

LABEL = "slurm-k8s-bridge.io/"


def config_with(**top: Any) -> BridgeConfig:
    data = copy.deepcopy(yaml.safe_load(EXAMPLE_CONFIG.read_text()))
    for key, value in top.items():
        if key.startswith("gpu_"):
            data["partitions"]["gpu"][key[4:]] = value
        else:
            data[key] = value
    return parse_config(data)


@pytest.fixture()
def job_objects(config: BridgeConfig) -> list[dict[str, Any]]:
    breq = bridged(config, "-N", "2", "--gres=gpu:h100:4", "-c", "8", "--ntasks-per-node=4", "--mem=64G",
                   "-t", "90", "-J", "llm train", "-A", "physics", "-q", "high")
    return render(breq, config, 4242)


def test_objects_and_names(job_objects: list[dict[str, Any]]) -> None:
    assert [o["kind"] for o in job_objects] == ["Service", "Job"]
    assert {o["metadata"]["name"] for o in job_objects} == {"slurm-4242"}
    assert {o["metadata"]["namespace"] for o in job_objects} == {"physics"}


def test_headless_service_selects_the_job_pods(job_objects: list[dict[str, Any]]) -> None:
    service = kind(job_objects, "Service")[0]
    job = kind(job_objects, "Job")[0]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == {LABEL + "cluster": "slurm", LABEL + "job-id": "4242"}
    assert all(pod_labels[k] == v for k, v in service["spec"]["selector"].items())


def test_indexed_job(job_objects: list[dict[str, Any]]) -> None:
    job = kind(job_objects, "Job")[0]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 2
    assert spec["backoffLimitPerIndex"] == 0 and "backoffLimit" not in spec
    assert spec["activeDeadlineSeconds"] == 90 * 60 + 300
    assert "suspend" not in spec
    pod = pod_spec(job)
    assert pod["restartPolicy"] == "Never"
    assert pod["subdomain"] == "slurm-4242"
    assert pod["enableServiceLinks"] is False
    assert pod["automountServiceAccountToken"] is False
    assert pod["priorityClassName"] == "slurm-high"
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_resources_requests_equal_limits(job_objects: list[dict[str, Any]]) -> None:
    resources = container(kind(job_objects, "Job")[0])["resources"]
    assert resources["requests"] == resources["limits"] == {"cpu": "32", "memory": "65536Mi", "nvidia.com/gpu": "4"}


def test_node_affinity_and_tolerations(job_objects: list[dict[str, Any]]) -> None:
    pod = pod_spec(kind(job_objects, "Job")[0])
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "In",
                                            "values": ["NVIDIA-H100-80GB-HBM3"]}]}]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert "podAffinity" not in pod["affinity"]


def test_container_security(job_objects: list[dict[str, Any]]) -> None:
    security = container(kind(job_objects, "Job")[0])["securityContext"]
    assert security["privileged"] is False
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert set(security["capabilities"]["add"]) == {"SETUID", "SETGID", "CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL"}
    assert tuple(security["capabilities"]["add"]) == WORKER_CAPABILITIES
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}


def test_environment_describes_the_slurm_node(job_objects: list[dict[str, Any]]) -> None:
    values = env(kind(job_objects, "Job")[0])
    assert values["SLURM_K8S_CLUSTER"] == "slurm"
    assert values["SLURM_K8S_JOB_ID"] == "4242"
    assert "SLURM_K8S_ARRAY_TASK_ID" not in values
    assert values["SLURM_K8S_NODE_GRES"] == "gpu:h100:4"
    assert values["SLURM_K8S_NODE_CPUS"] == "32"
    assert values["SLURM_K8S_NODE_MEMORY_MB"] == "65536"
    assert values["SLURM_K8S_NODE_FEATURES"] == "k8s-pod,h100,hopper"
    assert values["SLURM_K8S_JOB_UID"] == "1000" and values["SLURM_K8S_JOB_GID"] == "1000"
    assert values["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert values["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}


def test_labels_and_annotations(job_objects: list[dict[str, Any]]) -> None:
    for obj in job_objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "slurm-k8s-bridge"
        assert labels[LABEL + "cluster"] == "slurm"
        assert labels[LABEL + "job-id"] == "4242"
        assert labels[LABEL + "job-name"] == "llm-train"
        assert labels[LABEL + "uid"] == "1000"
        assert LABEL + "array-task-id" not in labels
        annotations = obj["metadata"]["annotations"]
        assert annotations[LABEL + "partition"] == "gpu"
        assert annotations[LABEL + "account"] == "physics"
        assert annotations[LABEL + "qos"] == "high"


def test_shared_mounts_at_the_same_path(job_objects: list[dict[str, Any]]) -> None:
    job = kind(job_objects, "Job")[0]
    volumes = {v["name"]: v for v in pod_spec(job)["volumes"]}
    mounts = {m["mountPath"]: m for m in container(job)["volumeMounts"]}
    home = mounts["/home"]
    assert volumes[home["name"]]["hostPath"] == {"path": "/home", "type": "Directory"}
    assert home["readOnly"] is False
    assert volumes[mounts["/tmp"]["name"]] == {"name": "tmp", "emptyDir": {}}


def _leaves(obj: Any, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], Any]:
    """Every scalar of rendered objects by its path (list items by position, env and
    containers by name), so that two renders can be compared field by field."""
    if isinstance(obj, dict):
        out: dict[tuple[Any, ...], Any] = {}
        for key, value in obj.items():
            out.update(_leaves(value, (*path, key)))
        return out
    if isinstance(obj, list):
        out = {}
        for i, value in enumerate(obj):
            key = value.get("name", i) if isinstance(value, dict) else i
            out.update(_leaves(value, (*path, key)))
        return out
    return {path: obj}


def _differing(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[tuple[Any, ...], tuple[Any, Any]]:
    left, right = _leaves(a), _leaves(b)
    return {p: (left.get(p), right.get(p)) for p in left.keys() | right.keys() if left.get(p) != right.get(p)}


def test_render_is_deterministic() -> None:
    """Two independent renders of one job are identical (fresh configurations parsed
    separately, requests normalized separately, another job rendered in between), and
    renders of different jobs differ exactly where they must: a render that ignored its
    input, or depended on hidden state, fails here."""
    argv = ("--gpus=16", "-C", "a100|h100")
    config_a, config_b = config_with(), config_with()
    assert config_a is not config_b
    breq_a, breq_b = bridged(config_a, *argv), bridged(config_b, *argv)
    assert breq_a is not breq_b
    pristine = copy.deepcopy(breq_a)

    first = render(breq_a, config_a, 7001)
    snapshot = copy.deepcopy(first)
    kind(first, "Job")[0]["metadata"]["labels"]["scribbled"] = "by the caller"   # not shared
    container(kind(first, "Job")[0])["env"].clear()
    render(bridged(config_a, "-N", "3", "--gres=gpu:h100:2", "-J", "other"), config_a, 7002)
    second = render(breq_b, config_b, 7001)
    assert breq_a == pristine                                  # render left its input alone
    assert second == snapshot
    assert json.dumps(second) == json.dumps(snapshot)          # same key order too
    again = render(breq_a, config_a, 7001)                     # and again, after all that
    assert json.dumps(again) == json.dumps(snapshot)

    # another job id: other names, job-id labels, selector, subdomain, SLURM_K8S_JOB_ID -- nothing else
    other_id = render(bridged(config_b, *argv), config_b, 7002)
    diff = _differing(snapshot, other_id)
    job_id_label = LABEL + "job-id"
    for i in range(2):                                          # Service, Job
        assert (i, "metadata", "name") in diff
        assert (i, "metadata", "labels", job_id_label) in diff
    assert (0, "spec", "selector", job_id_label) in diff
    assert (1, "spec", "template", "metadata", "labels", job_id_label) in diff
    assert (1, "spec", "template", "spec", "subdomain") in diff
    assert kind(other_id, "Job")[0]["metadata"]["name"] == "slurm-7002"
    assert kind(other_id, "Job")[0]["metadata"]["labels"][job_id_label] == "7002"
    assert env(kind(other_id, "Job")[0])["SLURM_K8S_JOB_ID"] == "7002"
    assert all(isinstance(old, str) and old.replace("7001", "7002") == new
               for old, new in diff.values()), diff

    # other GPU counts: other GPU resources and node GRES, same names
    def gpus_per_pod(objects: list[dict[str, Any]]) -> tuple[str, str, str]:
        job = kind(objects, "Job")[0]
        resources = container(job)["resources"]
        return (resources["requests"]["nvidia.com/gpu"], resources["limits"]["nvidia.com/gpu"],
                env(job)["SLURM_K8S_NODE_GRES"])

    two = render(bridged(config_a, "-N", "1", "--gres=gpu:h100:2"), config_a, 7003)
    four = render(bridged(config_b, "-N", "1", "--gres=gpu:h100:4"), config_b, 7003)
    assert gpus_per_pod(two) == ("2", "2", "gpu:h100:2")
    assert gpus_per_pod(four) == ("4", "4", "gpu:h100:4")
    assert {o["metadata"]["name"] for o in two} == {o["metadata"]["name"] for o in four} == {"slurm-7003"}
    # other node counts: another gang size
    three_nodes = render(bridged(config_b, "-N", "3", "--gres=gpu:h100:2"), config_b, 7003)
    assert kind(two, "Job")[0]["spec"]["completions"] == 1
    assert kind(three_nodes, "Job")[0]["spec"]["completions"] == 3
    assert kind(three_nodes, "Job")[0]["spec"]["parallelism"] == 3


def test_no_gpus_no_gpu_resource_or_toleration(config: BridgeConfig) -> None:
    job = kind(render(bridged(config, "-c", "4"), config, 1), "Job")[0]
    assert "nvidia.com/gpu" not in container(job)["resources"]["limits"]
    assert all(t.get("key") != "nvidia.com/gpu" for t in pod_spec(job)["tolerations"])
    assert env(job)["SLURM_K8S_NODE_GRES"] == ""


def test_mig_resource(config: BridgeConfig) -> None:
    job = kind(render(bridged(config, "--gres=gpu:3g.40gb:2"), config, 1), "Job")[0]
    assert container(job)["resources"]["limits"]["nvidia.com/mig-3g.40gb"] == "2"
    assert "nvidia.com/gpu" not in container(job)["resources"]["limits"]


def test_kueue_suspends_and_labels_the_job() -> None:
    config = config_with(gpu_gang="kueue", gpu_queue="gpu-queue")
    objects = render(bridged(config, "--gres=gpu:8"), config, 9)
    job = kind(objects, "Job")[0]
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert not kind(objects, "PodGroup")


def test_volcano_pod_group() -> None:
    config = config_with(gpu_gang="volcano", gpu_queue="research")
    objects = render(bridged(config, "-N", "3", "--gres=gpu:8", "-c", "16", "--mem=100G"), config, 9)
    assert [o["kind"] for o in objects] == ["Service", "PodGroup", "Job"]
    group = kind(objects, "PodGroup")[0]
    assert group["apiVersion"] == "scheduling.volcano.sh/v1beta1"
    assert group["spec"]["minMember"] == 3
    assert group["spec"]["queue"] == "research"
    assert group["spec"]["minResources"] == {"cpu": "48", "memory": f"{3 * 102400}Mi", "nvidia.com/gpu": "24"}
    job = kind(objects, "Job")[0]
    assert pod_spec(job)["schedulerName"] == "volcano"
    assert job["spec"]["template"]["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == "slurm-9"
    assert "suspend" not in job["spec"]


def test_matching_or_renders_pod_affinity(config: BridgeConfig) -> None:
    objects = render(bridged(config, "-N", "2", "--gres=gpu:8", "-C", "[a100|h100]"), config, 5)
    affinity = pod_spec(kind(objects, "Job")[0])["affinity"]["podAffinity"]
    assert affinity["requiredDuringSchedulingIgnoredDuringExecution"] == [{
        "labelSelector": {"matchLabels": {LABEL + "cluster": "slurm", LABEL + "job-id": "5"}},
        "topologyKey": "nvidia.com/gpu.product"}]


def test_node_feature_renders_node_selector(config: BridgeConfig) -> None:
    pod = pod_spec(kind(render(bridged(config, "-C", "hopper&ib"), config, 5), "Job")[0])
    assert pod["nodeSelector"] == {"feature.node.kubernetes.io/rdma.capable": "true"}


def test_array_job_has_one_job_per_task(config: BridgeConfig) -> None:
    breq = bridged(config, "--array=0-15:4%2", "--gres=gpu:1")
    objects = render_all(breq, config, 77)
    jobs = kind(objects, "Job")
    assert [j["metadata"]["name"] for j in jobs] == ["slurm-77-0", "slurm-77-4", "slurm-77-8", "slurm-77-12"]
    assert len(kind(objects, "Service")) == 4
    for job, task in zip(jobs, (0, 4, 8, 12), strict=True):
        assert job["metadata"]["labels"][LABEL + "array-task-id"] == str(task)
        assert env(job)["SLURM_K8S_ARRAY_TASK_ID"] == str(task)
        assert pod_spec(job)["subdomain"] == f"slurm-77-{task}"
    assert breq.array_max_concurrent == 2


def test_render_checks_array_task_ids(config: BridgeConfig) -> None:
    plain = bridged(config)
    with pytest.raises(ValueError):
        render(plain, config, 1, array_task_id=3)
    array = bridged(config, "--array=1-3")
    with pytest.raises(ValueError):
        render(array, config, 1)
    with pytest.raises(ValueError):
        render(array, config, 1, array_task_id=9)
    with pytest.raises(ValueError):
        render(plain, config, 0)


def test_hostnames_fit_in_63_characters() -> None:
    config = config_with(cluster_name="a" * 20)
    breq = bridged(config, "--array=4000000", "-N", "1000", "--gpus=1000")
    names = node_names(breq, config, 4294967294, 4000000)
    assert len(names) == 1000
    assert names[-1] == "a" * 20 + "-4294967294-4000000-999"
    assert max(len(n) for n in names) <= 63
    assert kind(render(breq, config, 4294967294, 4000000), "Job")[0]["spec"]["completions"] == 1000


def test_translate_request(config: BridgeConfig) -> None:
    assert translate_request(request("-p", "cpu"), config, 3) is None
    objects = translate_request(request("--gres=gpu:1"), config, 3)
    assert objects is not None and [o["kind"] for o in objects] == ["Service", "Job"]


def test_munge_secret_and_conf_server() -> None:
    config = config_with(munge_key_secret="slurm-munge", conf_server="slurmctld.slurm:6817",
                         worker_command=["/usr/local/bin/worker"])
    job = kind(render(bridged(config), config, 3), "Job")[0]
    volumes = {v["name"]: v for v in pod_spec(job)["volumes"]}
    assert volumes["munge-key"]["secret"] == {"secretName": "slurm-munge", "defaultMode": 0o400}
    values = env(job)
    assert values["SLURM_K8S_CONF_SERVER"] == "slurmctld.slurm:6817"
    assert values["SLURM_K8S_MUNGE_KEY_FILE"].endswith("/munge.key")
    assert container(job)["command"] == ["/usr/local/bin/worker"]
