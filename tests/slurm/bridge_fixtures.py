"""The bridge cluster the slurm tier runs against, with the test configuration."""

from __future__ import annotations

import copy
from typing import Any

from slurm_k8s_devcluster.bridge import (
    BridgeCluster,
    load_example_config,
    make_bridge_cluster as _make_bridge_cluster,
)

#: What the simulated pods' tasks must see (set through the SPANK plugin's Python half).
TASK_ENV = {"NCCL_SOCKET_IFNAME": "eth0", "SKB_TEST_MARKER": "from-task-env"}


def bridge_config_data() -> dict[str, Any]:
    """The example configuration, plus what the tests exercise."""
    data = copy.deepcopy(load_example_config())
    data["task_env"] = dict(TASK_ENV)
    # Kueue gang admission, so that --k8s-queue means something
    data["partitions"]["default"].update({"gang": "kueue", "queue": "gpu-jobs"})
    data["allowed_images"] = list(data.get("allowed_images") or []) + ["registry.local/"]
    return data


def make_bridge_cluster(base_dir, name="bridge", **kwargs) -> BridgeCluster:  # type: ignore[no-untyped-def]
    kwargs.setdefault("config_data", bridge_config_data())
    return _make_bridge_cluster(base_dir, name, **kwargs)
