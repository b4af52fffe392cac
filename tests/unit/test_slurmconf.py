"""slurm.conf lines for the bridged partition's inventory nodes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from slurm_k8s_bridge.core.config import load_config
from slurm_k8s_bridge.slurm.conf import (
    inventory_lines,
    render_conf_snippet,
    resume_program,
    shape_gres,
)

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "slurm_plugins" / "k8s-bridge.example.yaml"


def test_each_shape_becomes_a_powered_down_cloud_node_group():
    config = load_config(EXAMPLE)
    inv = inventory_lines(config, nodes_per_shape=4)
    h100 = [l for l in inv.node_lines if "-h100-" in l][0]
    assert h100.startswith("NodeName=slurm-inv-h100-[0-3] ")
    assert " CPUs=224 " in h100 and " RealMemory=2048000 " in h100
    assert " Gres=gpu:h100:8 " in h100 and h100.endswith(" State=CLOUD")
    assert "Feature=h100,hopper" in h100
    assert inv.partition_nodes() == "slurm-inv-h100-[0-3],slurm-inv-a100-[0-3],k8spods,k8snodes"


def test_mig_profiles_are_gres_types_counted_per_node():
    a100 = load_config(EXAMPLE).shapes["a100"]
    assert shape_gres(a100) == "gpu:a100:8,gpu:1g.10gb:56,gpu:3g.40gb:16,gpu:7g.80gb:8"
    gres = inventory_lines(load_config(EXAMPLE), nodes_per_shape=1).gres_lines
    assert "NodeName=slurm-inv-a100-0 Name=gpu Type=1g.10gb Count=56" in gres


def test_snippet_keeps_real_partitions_out_of_power_saving():
    text = render_conf_snippet(load_config(EXAMPLE), nodes_per_shape=2)
    assert "SuspendExcParts=cpu\n" in text
    assert f"ResumeProgram={resume_program()}\n" in text
    assert "JobSubmitPlugins=k8s\n" in text
    assert os.access(resume_program(), os.X_OK)
