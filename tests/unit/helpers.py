"""Small helpers shared by the unit tests."""

from __future__ import annotations

from typing import Any

import pytest

from slurm_k8s_bridge.core.config import BridgeConfig
from slurm_k8s_bridge.core.errors import BridgeRefusal
from slurm_k8s_bridge.slurm.sbatch import request_from_sbatch
from slurm_k8s_bridge.core.request import SlurmJobRequest
from slurm_k8s_bridge.core.request import BridgeRequest
from slurm_k8s_bridge.core.normalize import normalize

UID, GID = 1000, 1000


def script(*directives: str, body: str = "srun hostname\n") -> str:
    """A batch script with one ``#SBATCH`` line per directive."""
    return "#!/bin/bash\n" + "".join(f"#SBATCH {d}\n" for d in directives) + body


def request(*argv: str, directives: tuple[str, ...] = ()) -> SlurmJobRequest:
    return request_from_sbatch(script(*directives), list(argv), UID, GID, script_name="job.sh")


def bridged(config: BridgeConfig, *argv: str, directives: tuple[str, ...] = ()) -> BridgeRequest:
    breq = normalize(request(*argv, directives=directives), config)
    assert breq is not None, "expected a bridged job"
    return breq


def refused(config: BridgeConfig, *argv: str, req: SlurmJobRequest | None = None) -> BridgeRefusal:
    with pytest.raises(BridgeRefusal) as info:
        normalize(req if req is not None else request(*argv), config)
    assert "\n" not in info.value.message
    return info.value


def kind(objects: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == name]


def pod_spec(job: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = job["spec"]["template"]["spec"]
    return spec


def container(job: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = pod_spec(job)["containers"][0]
    return found


def env(job: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(job)["env"]}
