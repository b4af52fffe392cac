"""The bridge cluster the slurm tier runs against, with the test configuration."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from slurm_k8s_devcluster.bridge import (
    BridgeCluster,
    load_example_config,
    make_bridge_cluster as _make_bridge_cluster,
)
from slurm_k8s_devcluster.slurm import AccountingUnavailable

from .conftest import make_base_dir, remove_base_dir, require_root

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


@contextmanager
def started_bridge_cluster(name: str, user: str, *, accounting: bool = False,
                           **kwargs: Any) -> Iterator[tuple[BridgeCluster, int]]:
    """A bridge cluster of its own (root only), started, with ``user`` in it: yields the
    cluster and the user's uid; stopped and removed afterwards. With ``accounting`` it runs
    slurmdbd + MariaDB, and the test skips (saying why) where that cannot start."""
    require_root()
    bridge = make_bridge_cluster(make_base_dir(name), name, **kwargs)
    cluster = bridge.cluster
    if accounting:
        cluster.enable_accounting()
    uid, _ = cluster.ensure_user(user)
    started = time.monotonic()
    try:
        cluster.start()
    except AccountingUnavailable as exc:
        remove_base_dir(cluster)
        reason = f"accounting mode unavailable: {exc}"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    print(f"\ncluster {name} started in {time.monotonic() - started:.1f}s; "
          + ", ".join(f"{k} {v:.2f}s" for k, v in cluster.timings.items()))
    try:
        yield bridge, uid
    finally:
        cluster.stop()
        remove_base_dir(cluster)


def wait_for(pred: Any, timeout: float, what: str, interval: float = 0.3) -> Any:
    """Call ``pred`` until it returns something truthy (returned); fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")
