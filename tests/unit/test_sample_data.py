"""The 20 real multi-node GPU batch scripts of data/sbatch-directives-sample.json, end to end:
script -> request_from_sbatch -> normalize -> render_all, against the example configuration.

Partitions those scripts name (train, hopper-prod, ...) are not in the example configuration,
so they fall under its ``default`` rule. Expected values are worked out from the directives
and the example shapes (h100: 8 GPUs, 224 CPUs, 2000Gi; a100: 8 GPUs, 128 CPUs, 1000Gi).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from slurm_k8s_bridge.core.config import BridgeConfig
from slurm_k8s_bridge.slurm.sbatch import request_from_sbatch
from slurm_k8s_bridge.core.normalize import normalize
from slurm_k8s_bridge.core.render import render_all

from .helpers import container, env, kind, pod_spec, script

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent / "data" / "sbatch-directives-sample.json"
CASES: list[dict[str, Any]] = json.loads(DATA.read_text())
GiB = 1024
BOTH = ("h100", "a100")
PRODUCTS = {"h100": "NVIDIA-H100-80GB-HBM3", "a100": "NVIDIA-A100-SXM4-80GB"}

# id: (nodes, tasks per node, GPUs per pod, CPUs per pod, memory MB per pod, shapes, time limit minutes)
EXPECTED: dict[str, tuple[int, int, int, int, int, tuple[str, ...], int | None]] = {
    "004": (4, 1, 8, 96, 96 * 2048, BOTH, None),                # --gpus-per-task=8, 1 task per node
    "005": (2, 1, 8, 224, 2000 * GiB, ("h100",), 2),            # --exclusive: whole h100
    "009": (2, 1, 8, 1, 2048, BOTH, 60),
    "010": (2, 1, 8, 224, 2000 * GiB, ("h100",), 30),           # gpu:h100:8 --exclusive
    "011": (4, 1, 4, 160, 160 * 2048, ("h100",), 119),          # -c 160 > a100's 128 CPUs
    "013": (1, 1, 8, 224, 2000 * GiB, ("h100",), 4320),         # no -N: one node
    "014": (5, 1, 8, 16, 16 * 2048, BOTH, 240),
    "016": (4, 1, 1, 4, 4 * 2048, BOTH, None),
    "019": (8, 8, 8, 56, 480 * GiB, BOTH, 30),
    "021": (4, 8, 8, 8, 2000 * GiB, ("h100",), 120),            # --mem=0 pins the first shape
    "022": (24, 1, 8, 64, 64 * 2048, ("a100",), 6000),          # --constraint=a100
    "026": (2, 1, 8, 224, 2000 * GiB, ("h100",), 10080),
    "027": (2, 8, 8, 224, 2000 * GiB, ("h100",), None),         # --exclusive without GPUs: whole node
    "031": (2, 192, 8, 224, 2000 * GiB, ("h100",), None),       # -n 384 spread by CPUs
    "032": (2, 2, 2, 16, 32 * GiB, BOTH, 5),
    "036": (1, 4, 4, 24, 24 * 2048, BOTH, None),
    "037": (4, 1, 8, 56, 480 * GiB, BOTH, 60),
    "041": (128, 8, 8, 48, 2000 * GiB, ("h100",), 2880),
    "044": (16, 8, 8, 224, 2000 * GiB, ("h100",), 240),
    "047": (2, 1, 4, 64, 200 * GiB, BOTH, 60),
}


def test_every_case_has_an_expectation() -> None:
    assert sorted(EXPECTED) == sorted(c["id"] for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_sample_script(config: BridgeConfig, case: dict[str, Any]) -> None:
    assert case["first_line_is_shebang"]
    text = script(*case["directive_lines"])
    req = request_from_sbatch(text, [], 1000, 1000, script_name="job.sbatch")
    breq = normalize(req, config)
    assert breq is not None
    nodes, tasks_per_node, gpus, cpus, memory, shapes, minutes = EXPECTED[case["id"]]
    assert (breq.nodes, breq.tasks_per_node, breq.gpus_per_node) == (nodes, tasks_per_node, gpus)
    assert (breq.cpus_per_node, breq.memory_mb_per_node) == (cpus, memory)
    assert breq.shapes == shapes
    assert breq.time_limit_minutes == minutes
    assert breq.partition == (req.partition or "gpu")

    objects = render_all(breq, config, 1234)
    assert [o["kind"] for o in objects] == ["Service", "Job"]
    job = kind(objects, "Job")[0]
    assert job["metadata"]["name"] == "slurm-1234"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == nodes
    limits = container(job)["resources"]["limits"]
    assert limits == container(job)["resources"]["requests"]
    assert limits["nvidia.com/gpu"] == str(gpus)
    assert limits["cpu"] == str(cpus)
    assert limits["memory"] == f"{memory}Mi"
    terms = pod_spec(job)["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    allowed = {v for t in terms["nodeSelectorTerms"] for e in t["matchExpressions"] for v in e["values"]}
    assert allowed == {PRODUCTS[s] for s in shapes}
    assert env(job)["SLURM_K8S_NODE_GRES"].endswith(f":{gpus}")
    if minutes is None:
        assert "activeDeadlineSeconds" not in job["spec"]
    else:
        assert job["spec"]["activeDeadlineSeconds"] == minutes * 60 + 300
    name = job["metadata"]["labels"].get("slurm-k8s-bridge.io/job-name")
    assert name == req.name


def test_qos_from_sample_picks_priority_class(config: BridgeConfig) -> None:
    case = next(c for c in CASES if c["id"] == "005")
    breq = normalize(request_from_sbatch(script(*case["directive_lines"]), [], 1, 1), config)
    assert breq is not None and breq.priority_class == "slurm-high"
