"""normalize(): what a bridged job asks of each pod, and every refusal in the user's words."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from slurm_k8s_bridge.core.config import BridgeConfig, parse_config
from slurm_k8s_bridge.core.errors import BridgeRefusal
from slurm_k8s_bridge.core.request import SlurmJobRequest
from slurm_k8s_bridge.core.request import LabelRequirement, NodeSelectorTerm
from slurm_k8s_bridge.core.constraints import parse_constraint
from slurm_k8s_bridge.core.normalize import expand_array, label_value, normalize
from slurm_k8s_bridge.core.gpus import parse_tres

from .conftest import EXAMPLE_CONFIG
from .helpers import bridged, refused, request

pytestmark = pytest.mark.unit

H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"
PRODUCT = "nvidia.com/gpu.product"


def config_with(**changes: Any) -> BridgeConfig:
    data = copy.deepcopy(yaml.safe_load(EXAMPLE_CONFIG.read_text()))
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return parse_config(data)


def products(breq: Any) -> list[tuple[str, ...]]:
    return [term.requirements[0].values for term in breq.node_affinity_terms]


# -- partitions -------------------------------------------------------------------------

def test_unbridged_partition_passes_through(config: BridgeConfig) -> None:
    assert normalize(request("-p", "cpu", "--gres=gpu:8"), config) is None


def test_default_partition_is_bridged(config: BridgeConfig) -> None:
    breq = bridged(config, "--gres=gpu:2")
    assert breq.partition == "gpu"
    assert breq.namespace == "slurm-jobs"


def test_unlisted_partition_falls_under_default_rule(config: BridgeConfig) -> None:
    assert bridged(config, "-p", "hopper-prod", "--gres=gpu:2").partition == "hopper-prod"


def test_several_partitions_with_a_bridged_one_are_refused(config: BridgeConfig) -> None:
    refusal = refused(config, "-p", "gpu,cpu")
    assert refusal.code == "ESLURM_INVALID_PARTITION_NAME"
    assert refusal.message == ("-p gpu,cpu names several partitions; slurm-k8s-bridge runs a job in exactly one "
                               "when any of them (gpu) is bridged")


def test_several_unbridged_partitions_pass_through() -> None:
    config = config_with(partitions__debug={"bridged": False})
    assert normalize(request("-p", "cpu,debug"), config) is None


def test_heterogeneous_job_is_refused(config: BridgeConfig) -> None:
    refusal = refused(config, req=SlurmJobRequest(het_job_offset=1, tres_per_node="gres:gpu:1"))
    assert refusal.message == "heterogeneous jobs are not supported by slurm-k8s-bridge yet"
    assert refusal.code == "ESLURM_NOT_SUPPORTED"


def test_het_offset_no_val_is_not_a_het_job(config: BridgeConfig) -> None:
    assert normalize(SlurmJobRequest(het_job_offset=0xFFFFFFFE), config) is not None


# -- GPUs -------------------------------------------------------------------------------

def test_gres_per_node_untyped_may_use_every_shape(config: BridgeConfig) -> None:
    breq = bridged(config, "-N", "2", "--gres=gpu:4")
    assert (breq.nodes, breq.gpus_per_node, breq.gpu_resource) == (2, 4, "nvidia.com/gpu")
    assert breq.shapes == ("h100", "a100")
    assert products(breq) == [(H100, A100)]
    assert breq.node_gres == "gpu:4"
    assert breq.gpu_type is None


def test_typed_gres_pins_the_shape(config: BridgeConfig) -> None:
    breq = bridged(config, "--gres=gpu:a100:8")
    assert breq.shapes == ("a100",)
    assert products(breq) == [(A100,)]
    assert breq.node_gres == "gpu:a100:8"
    assert breq.gpu_type == "a100"


def test_more_gpus_per_node_than_any_shape(config: BridgeConfig) -> None:
    refusal = refused(config, "--gres=gpu:16")
    assert refusal.message == ("--gres=gpu:16 asks for 16 GPUs per node, but the largest GPU node shape in "
                               "partition gpu (h100) has 8")
    assert refusal.code == "ESLURM_INVALID_GRES"


def test_unknown_gpu_type_lists_what_exists(config: BridgeConfig) -> None:
    refusal = refused(config, "--gres=gpu:v100:2")
    assert refusal.message == ("--gres=gpu:v100:2 asks for GPU type v100, but partition gpu has h100, a100 "
                               "(MIG profiles: 1g.10gb, 3g.40gb, 7g.80gb)")
    assert refusal.code == "ESLURM_INVALID_GRES_TYPE"


def test_gpus_per_job_derives_nodes_from_the_shape(config: BridgeConfig) -> None:
    breq = bridged(config, "--gpus=16")
    assert (breq.nodes, breq.gpus_per_node, breq.node_range) == (2, 8, (1, 16))
    breq = bridged(config, "--gpus=h100:24")
    assert (breq.nodes, breq.gpus_per_node, breq.shapes) == (3, 8, ("h100",))


def test_gpus_per_job_spread_over_given_nodes(config: BridgeConfig) -> None:
    breq = bridged(config, "--gpus=16", "-N", "4")
    assert (breq.nodes, breq.gpus_per_node) == (4, 4)


def test_gpus_that_cannot_be_spread(config: BridgeConfig) -> None:
    refusal = refused(config, "--gpus=12", "-N", "8")
    assert refusal.message == "--gpus=12 cannot be spread evenly over 8 nodes (-N 8)"
    assert refusal.code == "ESLURM_INVALID_GRES"
    refusal = refused(config, "--gpus=13", "-N", "5-7")
    assert refusal.message == "--gpus=13 cannot be spread evenly over 5 to 7 nodes (-N 5-7)"


def test_node_range_takes_smallest_count_that_fits(config: BridgeConfig) -> None:
    breq = bridged(config, "-N", "2-8", "--gpus=32")
    assert (breq.nodes, breq.gpus_per_node, breq.node_range) == (4, 8, (2, 8))
    breq = bridged(config, "-N", "1-4", "--gres=gpu:8", "-n", "800")
    assert (breq.nodes, breq.tasks_per_node, breq.cpus_per_node) == (4, 200, 200)
    assert breq.shapes == ("h100",)


def test_gpus_per_task_packs_tasks(config: BridgeConfig) -> None:
    breq = bridged(config, "--gpus-per-task=2", "-n", "8")
    assert (breq.nodes, breq.tasks_per_node, breq.gpus_per_node, breq.tasks) == (2, 4, 8, 8)


def test_gpus_per_task_times_tasks_over_a_node(config: BridgeConfig) -> None:
    refusal = refused(config, "--gpus-per-task=2", "--ntasks-per-node=8", "-N", "1")
    assert refusal.message == ("--gpus-per-task=2 with 8 tasks per node asks for 16 GPUs per node, but the "
                               "largest GPU node shape in partition gpu (h100) has 8")


def test_gres_and_gpus_encodings_of_newer_slurm(config: BridgeConfig) -> None:
    req = SlurmJobRequest(min_nodes=2, max_nodes=2, tres_per_node="gres/gpu:h100:4",
                          tres_per_task="cpu=4,gres/gpu=2", num_tasks=4, cpus_per_task=4)
    breq = normalize(req, config)
    assert breq is not None
    assert (breq.gpus_per_node, breq.shapes, breq.tasks_per_node, breq.cpus_per_node) == (4, ("h100",), 2, 8)


def test_non_gpu_gres_is_refused(config: BridgeConfig) -> None:
    refusal = refused(config, req=SlurmJobRequest(tres_per_node="gres:shard:1"))
    assert refusal.message == ("--gres=shard:1 asks for gres shard; slurm-k8s-bridge runs jobs whose generic "
                               "resources are GPUs only")
    assert refusal.code == "ESLURM_INVALID_GRES"


def test_two_gpu_counts_in_one_option_are_refused(config: BridgeConfig) -> None:
    refusal = refused(config, "--gpus-per-node=4", "--gres=gpu:2")
    assert refusal.message == ("--gres=gpu:4 and --gres=gpu:2 both ask for GPUs; give one GPU count per option")


def test_different_gpu_types_are_refused(config: BridgeConfig) -> None:
    refusal = refused(config, req=SlurmJobRequest(tres_per_job="gres:gpu:h100:4", tres_per_node="gres:gpu:a100:2"))
    assert refusal.code == "ESLURM_INVALID_GRES_TYPE"
    assert "ask for different GPU types" in refusal.message


def test_gpus_per_socket_is_refused(config: BridgeConfig) -> None:
    refusal = refused(config, "--gpus-per-socket=2", "--sockets-per-node=2")
    assert refusal.code == "ESLURM_NOT_SUPPORTED"
    assert refusal.message.startswith("--gpus-per-socket is not supported")


def test_malformed_tres_is_refused(config: BridgeConfig) -> None:
    refusal = refused(config, req=SlurmJobRequest(tres_per_node="gres:gpu:h100:x:2"))
    assert refusal.message == "--gres: cannot read 'gres:gpu:h100:x:2'"


@pytest.mark.parametrize("text, items", [
    ("gres:gpu:2", [("gres", "gpu", None, 2)]),
    ("gres:gpu:h100:8", [("gres", "gpu", "h100", 8)]),
    ("gres/gpu:h100:8", [("gres", "gpu", "h100", 8)]),
    ("gres/gpu=4", [("gres", "gpu", None, 4)]),
    ("gres/gpu:a100=4", [("gres", "gpu", "a100", 4)]),
    ("gres:gpu", [("gres", "gpu", None, 1)]),
    ("cpu=4,gres/gpu=2", [("tres", "cpu", None, 4), ("gres", "gpu", None, 2)]),
    ("gres:gpu:1g.10gb:2", [("gres", "gpu", "1g.10gb", 2)]),
])
def test_parse_tres(text: str, items: list[tuple[Any, ...]]) -> None:
    assert [(i.kind, i.name, i.type, i.count) for i in parse_tres(text, "--gres")] == items


# -- MIG --------------------------------------------------------------------------------

def test_mig_profile_as_gres_type(config: BridgeConfig) -> None:
    breq = bridged(config, "--gres=gpu:1g.10gb:2")
    assert breq.gpu_resource == "nvidia.com/mig-1g.10gb"
    assert breq.gpus_per_node == 2
    assert breq.shapes == ("a100",)
    assert breq.node_gres == "gpu:1g.10gb:2"


def test_mig_per_node_limit_is_per_gpu_times_gpus(config: BridgeConfig) -> None:
    assert bridged(config, "--gres=gpu:1g.10gb:56").gpus_per_node == 56
    refusal = refused(config, "--gres=gpu:1g.10gb:57")
    assert refusal.message == ("--gres=gpu:1g.10gb:57 asks for 57 MIG 1g.10gb instances per node, but the largest "
                               "node shape offering 1g.10gb in partition gpu (a100) has 56 (7 per GPU x 8 GPUs)")
    assert refused(config, "--gres=gpu:7g.80gb:9").message.endswith("has 8 (1 per GPU x 8 GPUs)")


def test_unoffered_mig_profile(config: BridgeConfig) -> None:
    refusal = refused(config, "--gres=gpu:2g.20gb:1")
    assert refusal.code == "ESLURM_INVALID_GRES_TYPE"
    assert refusal.message.startswith("--gres=gpu:2g.20gb:1 asks for GPU type 2g.20gb, but partition gpu has")


def test_mig_over_gpus_option(config: BridgeConfig) -> None:
    breq = bridged(config, "--gpus=3g.40gb:32")
    assert (breq.nodes, breq.gpus_per_node, breq.gpu_resource) == (2, 16, "nvidia.com/mig-3g.40gb")


# -- CPUs and memory --------------------------------------------------------------------

def test_cpus_per_node_over_a_node(config: BridgeConfig) -> None:
    refusal = refused(config, "-c", "96", "--ntasks-per-node=4", "-N", "1")
    assert refusal.message == ("-c 96 with 4 tasks per node asks for 384 CPUs per node, but the largest node shape "
                               "in partition gpu (h100) has 224")
    assert refusal.code == "ESLURM_INVALID_CPU_COUNT"


def test_cpus_narrow_the_shapes(config: BridgeConfig) -> None:
    breq = bridged(config, "--gres=gpu:4", "-c", "160")
    assert breq.shapes == ("h100",) and breq.cpus_per_node == 160


def test_cpus_per_gpu(config: BridgeConfig) -> None:
    breq = bridged(config, "--gpus-per-node=8", "--cpus-per-gpu=20")
    assert breq.cpus_per_node == 160 and breq.shapes == ("h100",)


def test_memory_per_node(config: BridgeConfig) -> None:
    breq = bridged(config, "--gres=gpu:2", "--mem=32G")
    assert breq.memory_mb_per_node == 32768


def test_memory_over_a_node(config: BridgeConfig) -> None:
    refusal = refused(config, "--mem=3000G")
    assert refusal.message == ("--mem=3000G asks for 3072000 MB per node, but the largest node shape in partition "
                               "gpu (h100) has 2048000 MB")
    assert refusal.code == "ESLURM_INVALID_TASK_MEMORY"


def test_memory_narrows_the_shapes(config: BridgeConfig) -> None:
    assert bridged(config, "--mem=1500G").shapes == ("h100",)


def test_mem_per_cpu(config: BridgeConfig) -> None:
    breq = bridged(config, "-c", "8", "--mem-per-cpu=4G")
    assert breq.memory_mb_per_node == 8 * 4096
    refusal = refused(config, "-c", "224", "--mem-per-cpu=16G")
    assert refusal.message == ("--mem-per-cpu=16G with 224 CPUs per node asks for 3670016 MB per node, but the "
                               "largest node shape in partition gpu (h100) has 2048000 MB")


def test_raw_mem_per_cpu_flag_from_job_desc(config: BridgeConfig) -> None:
    breq = normalize(SlurmJobRequest(cpus_per_task=2, pn_min_memory=(1 << 63) | 1000), config)
    assert breq is not None and breq.memory_mb_per_node == 2000


def test_mem_per_gpu(config: BridgeConfig) -> None:
    breq = bridged(config, "--gpus-per-node=2", "--mem-per-gpu=20G")
    assert breq.memory_mb_per_node == 40960


def test_default_memory_per_cpu(config: BridgeConfig) -> None:
    assert bridged(config, "-c", "4").memory_mb_per_node == 4 * 2048


def test_default_memory_is_capped_at_the_node() -> None:
    config = config_with(default_mem_per_cpu_mb=100000)
    breq = bridged(config, "-c", "128")
    assert breq.memory_mb_per_node == 1000 * 1024  # a100, the smaller of the two shapes


def test_mem_zero_takes_the_whole_node_of_one_shape(config: BridgeConfig) -> None:
    breq = bridged(config, "--gres=gpu:8", "--mem=0")
    assert breq.shapes == ("h100",) and breq.memory_mb_per_node == 2000 * 1024
    breq = bridged(config, "--gres=gpu:8", "--mem=0", "-C", "a100")
    assert breq.shapes == ("a100",) and breq.memory_mb_per_node == 1000 * 1024


# -- exclusive --------------------------------------------------------------------------

def test_exclusive_takes_the_whole_node(config: BridgeConfig) -> None:
    breq = bridged(config, "--exclusive", "-N", "2", "--ntasks-per-node=8")
    assert breq.exclusive
    assert breq.shapes == ("h100",)
    assert (breq.gpus_per_node, breq.cpus_per_node, breq.memory_mb_per_node) == (8, 224, 2000 * 1024)
    assert breq.gpu_resource == "nvidia.com/gpu"
    assert breq.node_gres == "gpu:h100:8"


def test_exclusive_with_constraint_pins_that_shape(config: BridgeConfig) -> None:
    breq = bridged(config, "--exclusive", "-C", "ampere", "--gres=gpu:2")
    assert breq.shapes == ("a100",)
    assert (breq.gpus_per_node, breq.cpus_per_node) == (8, 128)


def test_exclusive_still_checks_the_request(config: BridgeConfig) -> None:
    assert "asks for 16 GPUs" in refused(config, "--exclusive", "--gres=gpu:16").message


def test_exclusive_user_is_not_a_whole_node(config: BridgeConfig) -> None:
    breq = bridged(config, "--exclusive=user", "--gres=gpu:2")
    assert not breq.exclusive
    assert breq.gpus_per_node == 2 and breq.shapes == ("h100", "a100")


# -- tasks and nodes --------------------------------------------------------------------

def test_tasks_without_nodes_fill_cpus(config: BridgeConfig) -> None:
    breq = bridged(config, "-n", "384", "--gpus-per-node=8", "--exclusive")
    assert (breq.nodes, breq.tasks_per_node, breq.tasks) == (2, 192, 384)


def test_uneven_tasks_round_up_per_node(config: BridgeConfig) -> None:
    breq = bridged(config, "-N", "2", "-n", "5", "-c", "10")
    assert (breq.tasks, breq.tasks_per_node, breq.cpus_per_node) == (5, 3, 30)


def test_fewer_tasks_than_nodes_is_refused(config: BridgeConfig) -> None:
    refusal = refused(config, req=SlurmJobRequest(min_nodes=4, max_nodes=4, num_tasks=2))
    assert refusal.message == "-n 2 is fewer tasks than the 4 nodes -N asks for"
    assert refusal.code == "ESLURM_BAD_TASK_COUNT"


def test_tasks_that_do_not_fit_ntasks_per_node(config: BridgeConfig) -> None:
    refusal = refused(config, req=SlurmJobRequest(min_nodes=2, max_nodes=2, num_tasks=8, ntasks_per_node=2))
    assert refusal.message == "-n 8 with --ntasks-per-node=2 needs 4 nodes, more than -N allows"
    assert refusal.code == "ESLURM_BAD_TASK_COUNT"


def test_zero_nodes_is_refused(config: BridgeConfig) -> None:
    refusal = refused(config, "-N", "0")
    assert refusal.message == "-N 0 asks for no nodes"
    assert refusal.code == "ESLURM_INVALID_NODE_COUNT"


def test_no_val_fields_mean_not_set(config: BridgeConfig) -> None:
    req = SlurmJobRequest(min_nodes=0xFFFFFFFE, max_nodes=0xFFFFFFFE, num_tasks=0xFFFFFFFE,
                          ntasks_per_node=0xFFFE, cpus_per_task=0xFFFE, shared=0xFFFE,
                          time_limit=0xFFFFFFFE, tres_per_node="gres:gpu:2")
    breq = normalize(req, config)
    assert breq is not None
    assert (breq.nodes, breq.tasks, breq.cpus_per_node, breq.exclusive) == (1, 1, 1, False)
    assert breq.time_limit_minutes is None


# -- constraints ------------------------------------------------------------------------

def test_shape_feature_narrows_shapes(config: BridgeConfig) -> None:
    breq = bridged(config, "--gres=gpu:8", "-C", "hopper")
    assert breq.shapes == ("h100",)
    assert breq.node_affinity_terms == (NodeSelectorTerm((LabelRequirement(PRODUCT, (H100,)),)),)
    assert breq.node_features == ("h100", "hopper")


def test_or_constraint_allows_both_shapes(config: BridgeConfig) -> None:
    breq = bridged(config, "--gres=gpu:8", "-N", "2", "-C", "a100|h100")
    assert breq.shapes == ("h100", "a100")
    assert sorted(products(breq)) == [(A100,), (H100,)]
    assert breq.same_shape_topology_key is None
    assert breq.node_features == ("a100", "h100")


def test_matching_or_makes_all_nodes_alike(config: BridgeConfig) -> None:
    breq = bridged(config, "--gres=gpu:8", "-N", "2", "-C", "[a100|h100]")
    assert breq.same_shape_topology_key == PRODUCT
    assert bridged(config, "--gres=gpu:8", "-N", "1", "-C", "[a100|h100]").same_shape_topology_key is None


def test_node_feature_becomes_node_selector(config: BridgeConfig) -> None:
    breq = bridged(config, "--gres=gpu:8", "-C", "h100&ib")
    assert breq.node_selector == {"feature.node.kubernetes.io/rdma.capable": "true"}
    assert products(breq) == [(H100,)]
    assert breq.node_features == ("h100", "hopper", "ib")


def test_comma_is_and(config: BridgeConfig) -> None:
    assert bridged(config, "-C", "hopper,ib").node_selector == {"feature.node.kubernetes.io/rdma.capable": "true"}


def test_or_with_node_feature_goes_into_affinity_terms(config: BridgeConfig) -> None:
    breq = bridged(config, "--gres=gpu:8", "-C", "(a100|h100)&ib")
    assert breq.node_selector == {}
    rdma = LabelRequirement("feature.node.kubernetes.io/rdma.capable", ("true",))
    assert set(breq.node_affinity_terms) == {NodeSelectorTerm((LabelRequirement(PRODUCT, (A100,)), rdma)),
                                             NodeSelectorTerm((LabelRequirement(PRODUCT, (H100,)), rdma))}


def test_constraint_is_left_to_right(config: BridgeConfig) -> None:
    # Slurm has no precedence: a100|h100&ib is (a100|h100)&ib
    expr = parse_constraint("a100|h100&ib")
    assert set(expr.alternatives) == {frozenset({"a100", "ib"}), frozenset({"h100", "ib"})}


def test_unknown_feature_is_refused(config: BridgeConfig) -> None:
    refusal = refused(config, "-C", "v100")
    assert refusal.message == ("--constraint=v100 names feature v100, which no node of partition gpu has "
                               "(features: a100, ampere, h100, hopper, ib)")
    assert refusal.code == "ESLURM_INVALID_FEATURE"


def test_constraint_matching_no_shape(config: BridgeConfig) -> None:
    refusal = refused(config, "-C", "a100&hopper")
    assert refusal.message == "--constraint=a100&hopper matches no GPU node shape in partition gpu"
    assert refusal.code == "ESLURM_INVALID_FEATURE"


def test_constraint_against_gpu_type(config: BridgeConfig) -> None:
    refusal = refused(config, "--gres=gpu:h100:8", "-C", "a100")
    assert refusal.message == "--gres=gpu:h100:8 and --constraint=a100 together match no node shape in partition gpu"


@pytest.mark.parametrize("text", ["(a100", "a100)", "a100&", "|a100", "[a100|h100", "a100&&h100", "()"])
def test_malformed_constraints(config: BridgeConfig, text: str) -> None:
    refusal = refused(config, "-C", text)
    assert refusal.message == f"--constraint={text} is not a valid feature expression"
    assert refusal.code == "ESLURM_INVALID_FEATURE"


def test_feature_counts_are_not_supported(config: BridgeConfig) -> None:
    refusal = refused(config, "-C", "a100*2")
    assert refusal.code == "ESLURM_NOT_SUPPORTED"


def test_messages_never_contain_newlines(config: BridgeConfig) -> None:
    refusal = refused(config, req=SlurmJobRequest(features="a100\nrm -rf"))
    assert "\n" not in refusal.message


# -- time limits ------------------------------------------------------------------------

def test_time_limit_becomes_active_deadline(config: BridgeConfig) -> None:
    breq = bridged(config, "-t", "1-02:03:04")
    assert breq.time_limit_minutes == 1564
    assert breq.active_deadline_seconds == 1564 * 60 + 300


@pytest.mark.parametrize("option", ["--time=UNLIMITED", "-t", "0"])
def test_unlimited_time_has_no_deadline(config: BridgeConfig, option: str) -> None:
    argv = [option] if option.startswith("--") else [option, "0"]
    breq = bridged(config, *argv)
    assert breq.time_limit_minutes is None and breq.active_deadline_seconds is None


def test_infinite_from_job_desc(config: BridgeConfig) -> None:
    breq = normalize(SlurmJobRequest(time_limit=0xFFFFFFFF), config)
    assert breq is not None and breq.active_deadline_seconds is None


# -- arrays and names -------------------------------------------------------------------

@pytest.mark.parametrize("spec, ids, limit", [
    ("0-15:4%2", (0, 4, 8, 12), 2),
    ("1,3,5-7", (1, 3, 5, 6, 7), None),
    ("7", (7,), None),
    ("0-3,2-5", (0, 1, 2, 3, 4, 5), None),
    ("10-20:5", (10, 15, 20), None),
])
def test_array_expansion(spec: str, ids: tuple[int, ...], limit: int | None) -> None:
    assert expand_array(spec, 1001) == (ids, limit)


@pytest.mark.parametrize("spec", ["", "a-b", "5-1", "0-10:0", "1,,2", "0-3%0", "0-3%x", "-1"])
def test_malformed_arrays(spec: str) -> None:
    with pytest.raises(BridgeRefusal) as info:
        expand_array(spec, 1001)
    assert info.value.code == "ESLURM_INVALID_ARRAY"


def test_too_many_array_tasks(config: BridgeConfig) -> None:
    assert len(bridged(config, "--array=0-1000").array_task_ids or ()) == 1001
    refusal = refused(config, "--array=0-1001")
    assert refusal.message == ("--array=0-1001 asks for more than 1001 array tasks, the most slurm-k8s-bridge runs "
                               "for one job")


@pytest.mark.parametrize("name, label", [
    ("torchtitan_multi_node", "torchtitan_multi_node"),
    ("my job!", "my-job"),
    ("--weird--", "weird"),
    ("v1.5-mix-medium-mitch-ish", "v1.5-mix-medium-mitch-ish"),
    ("a" * 70, "a" * 63),
    ("x" * 62 + "!!", "x" * 62),
    ("!!!", None),
    ("", None),
    (None, None),
    ("ünïcode", "n-code"),
])
def test_label_values(name: str | None, label: str | None) -> None:
    assert label_value(name) == label


# -- queues, priorities, namespaces, SPANK ------------------------------------------------

def test_qos_picks_priority_class(config: BridgeConfig) -> None:
    assert bridged(config, "-q", "high").priority_class == "slurm-high"
    assert bridged(config, "-q", "unknown").priority_class is None


def test_account_overrides(config: BridgeConfig) -> None:
    breq = bridged(config, "-A", "physics")
    assert (breq.namespace, breq.queue, breq.account) == ("physics", "physics-gpu", "physics")
    assert bridged(config, "-A", "chemistry").namespace == "slurm-jobs"


def test_k8s_image_allowed_prefix(config: BridgeConfig) -> None:
    assert bridged(config, "--k8s-image=localhost/slurm-k8s-bridge/worker:dev").image == \
        "localhost/slurm-k8s-bridge/worker:dev"
    assert bridged(config).image == config.worker_image


@pytest.mark.parametrize("image, message", [
    ("docker.io/evil/root:latest", "--k8s-image=docker.io/evil/root:latest is not allowed; images must start with "
                                   "localhost/slurm-k8s-bridge/ or localhost/slurm-k8s-bridge-worker:"),
    ("Bad Image", "--k8s-image=Bad Image is not a container image reference (like "
                  "registry.example.com/team/image:tag)"),
    ("", "--k8s-image= is not a container image reference (like registry.example.com/team/image:tag)"),
])
def test_k8s_image_refusals(config: BridgeConfig, image: str, message: str) -> None:
    refusal = refused(config, req=SlurmJobRequest(spank_options={"k8s-image": image}))
    assert refusal.message == message
    assert refusal.code == "ESLURM_NOT_SUPPORTED"


def test_k8s_image_disabled_without_allowed_images() -> None:
    config = config_with(allowed_images=[])
    refusal = refused(config, req=SlurmJobRequest(spank_options={"k8s-image": "localhost/x:1"}))
    assert refusal.message == "--k8s-image is not enabled on this cluster (no allowed_images)"


def test_k8s_queue(config: BridgeConfig) -> None:
    refusal = refused(config, "--k8s-queue=team-a")
    assert refusal.message == "--k8s-queue has no effect in partition gpu, which uses neither Kueue nor Volcano"
    kueue = config_with(partitions__gpu={"gang": "kueue", "queue": "gpu-queue"})
    assert bridged(kueue, "--k8s-queue=team-a").queue == "team-a"
    assert bridged(kueue).queue == "gpu-queue"
    assert "not a valid queue name" in refused(kueue, "--k8s-queue=Team_A").message


def test_k8s_priority(config: BridgeConfig) -> None:
    assert bridged(config, "--k8s-priority=research", "-q", "high").priority_class == "research"
    refusal = refused(config, "--k8s-priority=system-node-critical")
    assert refusal.message == "--k8s-priority=system-node-critical is reserved for Kubernetes system components"
    assert "not a valid PriorityClass name" in refused(config, "--k8s-priority=UPPER").message
    limited = config_with(allowed_priority_classes=["slurm-low"])
    assert refused(limited, "--k8s-priority=research").message == \
        "--k8s-priority=research is not allowed; choose one of slurm-low"


def test_uid_gid_and_job_name(config: BridgeConfig) -> None:
    breq = bridged(config, "-J", "my job!")
    assert (breq.user_id, breq.group_id, breq.job_name) == (1000, 1000, "my-job")


@pytest.mark.parametrize("flag", ["-O", "--overcommit"])
def test_overcommit_allocates_one_cpu_per_node_and_lets_tasks_outnumber_cpus(config, flag):
    """Slurm's -O: one CPU per node is allocated; 400 tasks on one node are not refused for
    the 224 CPUs of the shape, and the pod asks for 1 CPU."""
    message = refused(config, "-p", "gpu", "-N1", "-n", "400", "--gres=gpu:1").message
    assert "asks for 400 CPUs per node" in message
    breq = bridged(config, "-p", "gpu", "-N1", "-n", "400", "--gres=gpu:1", flag)
    assert (breq.cpus_per_node, breq.tasks_per_node) == (1, 400)
    assert request("-O").overcommit and not request().overcommit
    assert "overcommit" not in request().to_dict()
