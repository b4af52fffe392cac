"""Configuration loading and validation: every error names its key."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from slurm_k8s_bridge.core.config import BridgeConfig, load_config, parse_config, parse_memory_mb
from slurm_k8s_bridge.core.errors import ConfigError

from .conftest import EXAMPLE_CONFIG

pytestmark = pytest.mark.unit


def example_data() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    return data


def test_example_describes_h100_and_a100(config: BridgeConfig) -> None:
    h100, a100 = config.shapes["h100"], config.shapes["a100"]
    assert (h100.gres_type, h100.gpus, h100.cpus, h100.memory_mb) == ("h100", 8, 224, 2000 * 1024)
    assert h100.features == ("h100", "hopper")
    assert h100.gpu_product == "NVIDIA-H100-80GB-HBM3"
    assert h100.gpu_product_label == "nvidia.com/gpu.product"
    assert (a100.gres_type, a100.gpus, a100.cpus, a100.memory_mb) == ("a100", 8, 128, 1000 * 1024)
    assert a100.features == ("a100", "ampere")
    assert dict(a100.mig) == {"1g.10gb": 7, "3g.40gb": 2, "7g.80gb": 1}
    assert a100.mig_per_node("1g.10gb") == 56
    assert h100.mig_per_node("1g.10gb") == 0


def test_example_partitions(config: BridgeConfig) -> None:
    assert config.default_partition == "gpu"
    assert config.rule_for(None).name == "gpu"
    assert config.rule_for(None).bridged
    assert not config.rule_for("cpu").bridged
    unlisted = config.rule_for("hopper-prod")
    assert unlisted.name == "hopper-prod" and unlisted.bridged
    assert unlisted.namespace == "slurm-jobs" and unlisted.gang == "builtin"
    assert config.qos_priority_classes == {"high": "slurm-high", "normal": "slurm-normal"}
    assert config.accounts["physics"].namespace == "physics"
    assert config.accounts["physics"].queue == "physics-gpu"
    assert config.node_features["ib"] == {"feature.node.kubernetes.io/rdma.capable": "true"}
    assert config.shared_mounts[0].path == "/home"


def test_listed_partition_inherits_unset_keys_from_default() -> None:
    data = example_data()
    data["partitions"]["default"].update(namespace="batch", priority_class="slurm-low",
                                         tolerations=[{"key": "pool", "operator": "Equal",
                                                       "value": "gpu", "effect": "NoSchedule"}])
    data["partitions"]["gpu"] = {"shapes": ["a100"], "namespace": "gpu-jobs"}
    config = parse_config(data)
    gpu = config.rule_for("gpu")
    assert gpu.namespace == "gpu-jobs"
    assert gpu.shapes == ("a100",)
    assert gpu.priority_class == "slurm-low"
    assert gpu.tolerations[0]["key"] == "pool"
    assert config.rule_for("other").namespace == "batch"
    assert [s.name for s in config.shapes_of(gpu)] == ["a100"]


def test_minimal_config_gets_documented_defaults() -> None:
    config = parse_config({"shapes": {"h100": {"gres_type": "h100", "gpu_product": "H100", "gpus": 8,
                                               "cpus": 64, "memory": 512000}}})
    assert config.cluster_name == "slurm"
    assert config.time_limit_grace_seconds == 300
    assert config.default_mem_per_cpu_mb == 2048
    assert config.max_array_tasks == 1001
    assert config.rule_for(None).bridged and config.rule_for(None).name == "default"
    assert config.shapes["h100"].memory_mb == 512000


@pytest.mark.parametrize("text, mb", [
    ("2000Gi", 2048000), ("512Mi", 512), ("1Ti", 1048576), ("1G", 953), ("2T", 1907348),
    ("1024Ki", 1), (4096, 4096),
])
def test_memory_quantities(text: Any, mb: int) -> None:
    assert parse_memory_mb(text) == mb


@pytest.mark.parametrize("text", ["lots", "2048", "1.5Gi", "-1Gi", 0, True, "1Ki"])
def test_bad_memory_quantities(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_memory_mb(text)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return change


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[key]
        del node[last]
    return change


BAD_CONFIGS = [
    (_set("shapes.h100.gpus", -1), "shapes.h100.gpus", "must be a positive integer"),
    (_set("shapes.h100.gpus", "8"), "shapes.h100.gpus", "must be a positive integer"),
    (_set("shapes.h100.gpus", 0), "shapes.h100.gpus", "must be a positive integer"),
    (_set("shapes.a100.cpus", 0), "shapes.a100.cpus", "must be a positive integer"),
    (_set("shapes.a100.memory", "lots"), "shapes.a100.memory", "memory size"),
    (_set("shapes.a100.gpu", 8), "shapes.a100.gpu", "unknown key"),
    (_delete("shapes.a100.gres_type"), "shapes.a100.gres_type", "is required"),
    (_set("shapes.a100.mig", {"2g": 3}), "shapes.a100.mig.2g", "MIG profile"),
    (_set("shapes.a100.mig", {"1g.10gb": 9}), "shapes.a100.mig.1g.10gb", "instances per GPU"),
    (_set("shapes.a100.features", ["a100", "a|b"]), "shapes.a100.features[1]", "letters"),
    (_set("shapes.a100.gpu_product_label", "not a label/"), "shapes.a100.gpu_product_label", "label key"),
    (_delete("shapes"), "shapes", "is required"),
    (_set("colour", "blue"), "colour", "unknown key"),
    (_set("cluster_name", "a-very-long-cluster-name"), "cluster_name", "at most 20"),
    (_set("cluster_name", "Slurm"), "cluster_name", "DNS label"),
    (_set("cluster_name", "1slurm"), "cluster_name", "starting with a letter"),
    (_set("time_limit_grace_seconds", -5), "time_limit_grace_seconds", ">= 0"),
    (_set("max_array_tasks", 0), "max_array_tasks", "positive"),
    (_set("default_partition", "a,b"), "default_partition", "partition name"),
    (_set("partitions.gpu.gang", "slurm"), "partitions.gpu.gang", "builtin, kueue, volcano"),
    (_set("partitions.gpu.shapes", ["v100"]), "partitions.gpu.shapes[0]", "no shape named 'v100'"),
    (_set("partitions.gpu.namespace", "Slurm_Jobs"), "partitions.gpu.namespace", "DNS label"),
    (_set("partitions.gpu.bridged", "yes"), "partitions.gpu.bridged", "true or false"),
    (_set("partitions.gpu.priority", "high"), "partitions.gpu.priority", "unknown key"),
    (_set("partitions.default.gang", "kueue"), "partitions.default.queue", "required when gang is kueue"),
    (_set("partitions.gpu.tolerations", [{"key": "a", "operator": "Maybe"}]),
     "partitions.gpu.tolerations[0].operator", "Exists, Equal"),
    (_set("partitions.gpu.tolerations", [{"operator": "Equal"}]),
     "partitions.gpu.tolerations[0].key", "required unless operator is Exists"),
    (_set("partitions.gpu.node_selector", {"pool": 3}), "partitions.gpu.node_selector.pool", "label value"),
    (_set("node_features.ib", {"feature.node.kubernetes.io/rdma.capable": True}),
     "node_features.ib.feature.node.kubernetes.io/rdma.capable", "quote it"),
    (_set("node_features.h100", {"x": "y"}), "node_features.h100", "also a feature of shape h100"),
    (_set("shared_mounts", [{"host_path": "home"}]), "shared_mounts[0].host_path", "absolute path"),
    (_set("shared_mounts", [{"host_path": "/home", "mode": "rw"}]), "shared_mounts[0].mode", "unknown key"),
    (_set("shared_mounts", [{"host_path": "/a", "path": "/x"}, {"host_path": "/b", "path": "/x"}]),
     "shared_mounts[1].path", "mounted twice"),
    (_set("qos_priority_classes.high", "Slurm_High"), "qos_priority_classes.high", "DNS subdomain"),
    (_set("accounts.physics.namespace", "Physics"), "accounts.physics.namespace", "DNS label"),
    (_set("accounts.physics.budget", 3), "accounts.physics.budget", "unknown key"),
    (_set("allowed_images", "localhost/"), "allowed_images", "must be a list"),
    (_set("slurmd_port", 70000), "slurmd_port", "TCP port"),
    (_set("conf_server", "ctl host"), "conf_server", "HOST:PORT"),
    (_set("worker_command", []), "worker_command", "must not be empty"),
]


@pytest.mark.parametrize("change, key, problem", BAD_CONFIGS,
                         ids=[case[1] + ":" + case[2][:12] for case in BAD_CONFIGS])
def test_each_error_names_its_key(change: Callable[[dict[str, Any]], None], key: str, problem: str) -> None:
    data = copy.deepcopy(example_data())
    change(data)
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="site.yaml")
    assert info.value.key == key
    assert problem in info.value.problem
    assert str(info.value).startswith(f"site.yaml: {key}: ")


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(missing) in str(info.value)
    assert info.value.source == str(missing)


def test_invalid_yaml_is_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("shapes: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "not valid YAML" in str(info.value)
    assert "\n" not in str(info.value)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(path)


def test_config_is_frozen(config: BridgeConfig) -> None:
    with pytest.raises(AttributeError):
        config.cluster_name = "other"  # type: ignore[misc]
