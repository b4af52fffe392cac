"""A local Slurm cluster with slurm-k8s-bridge's plugins built fresh and loaded.

- partition ``gpu`` (default, bridged): inventory CLOUD nodes for every shape of the bridge
  configuration (``slurmconf.inventory_lines``), powered down, never allocated;
- partition ``cpu`` (not bridged): real slurmd, each in its own network namespace;
- ``JobSubmitPlugins=k8s`` and ``required spank_k8s.so config=...`` in plugstack.conf.

Used by the demo, the slurm test tier and the benchmarks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from slurm_k8s_bridge.core.config import parse_config
from slurm_k8s_bridge.slurm.plugin_build import build_plugins
from slurm_k8s_bridge.slurm.conf import (
    inventory_lines,
    nodeset_lines,
    power_save_lines,
    resume_program,
)
from slurm_k8s_devcluster.slurm import LocalSlurmCluster

REPO = Path(__file__).resolve().parents[2]  # the source checkout: src/slurm_k8s_devcluster/ -> .


def _find_repo_file(relative: str) -> Path:
    """A file of the source checkout (slurm_plugins/...)."""
    for base in (REPO, Path.cwd()):
        if (base / relative).is_file():
            return base / relative
    raise FileNotFoundError(f"{relative} not found next to the package or in the cwd")


def example_config_path() -> Path:
    return _find_repo_file("slurm_plugins/k8s-bridge.example.yaml")


def load_example_config() -> dict[str, Any]:
    data = yaml.safe_load(example_config_path().read_text())
    assert isinstance(data, dict)
    return data


@dataclass
class BridgeCluster:
    cluster: LocalSlurmCluster
    config_path: Path
    plugin_dir: Path
    timings_path: Path

    def submit_id(self, proc: Any) -> int:
        """Job id from ``sbatch --parsable`` output, or fail with sbatch's stderr."""
        assert proc.returncode == 0, proc.stderr
        return int(proc.stdout.strip().split(";")[0])


def _plugstack(plugin_dir: Path, config_path: Path,
               image_spank: tuple[str, str] | None) -> list[str]:
    here = f"{plugin_dir / 'spank_k8s.so'} config={config_path}"
    if image_spank is None:
        return [f"required {here}"]
    return [f"optional {here}", f"optional {image_spank[0]} config={image_spank[1]}"]


def make_bridge_cluster(base_dir: Path, name: str = "bridge", *,
                        config_data: Mapping[str, Any] | None = None,
                        python_path: list[str] | None = None,
                        slurmd_env: dict[str, str] | None = None,
                        with_plugins: bool = True,
                        extra_conf: list[str] | None = None,
                        nodes_per_shape: int = 8,
                        subnet: int | None = None,
                        image_spank: tuple[str, str] | None = None,
                        extra_gres_lines: list[str] | None = None) -> BridgeCluster:
    """A not-yet-started cluster under ``base_dir`` (must be world-traversable).

    Partition gpu holds the inventory nodes and the NodeSets ``k8spods`` (the pods'
    dynamic slurmd, Feature=k8s-pod) and ``k8snodes`` (CLOUD nodes mirroring Kubernetes
    GPU nodes, Feature=k8s-node); ``extra_conf`` lines come last and override.

    ``image_spank`` = (plugin path, config path) of the SPANK plugin inside the worker
    image, for pods on a real node: their slurmd fetch this plugstack.conf (configless), in
    which both entries are then ``optional`` -- each side loads the one it has.
    """
    plugin_dir = base_dir / "plugins"
    config_path = base_dir / "k8s-bridge.yaml"
    timings_path = base_dir / "job_submit_timings.ns"
    data = dict(config_data) if config_data is not None else load_example_config()
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    os.chmod(config_path, 0o644)
    if with_plugins:
        build_plugins(plugin_dir, python_path=python_path, default_config=str(config_path))
    config = parse_config(data, str(config_path))
    inv = inventory_lines(config, nodes_per_shape=nodes_per_shape)
    real_partitions = sorted(n for n, r in config.partitions.items() if not r.bridged) or ["cpu"]
    conf = ["JobSubmitPlugins=k8s"] if with_plugins else []
    conf += ["PrivateData=cloud", *nodeset_lines(256),
             *power_save_lines(str(resume_program()), real_partitions),
             *inv.node_lines,
             *(extra_conf or [])]  # last: the caller's lines win
    cluster = LocalSlurmCluster(
        base_dir, cluster_name=name, node_count=2,
        partitions=[
            f"PartitionName=gpu Nodes={inv.partition_nodes()} Default=YES State=UP",
            "PartitionName=cpu Nodes=node1,node2 State=UP",
        ],
        extra_conf=conf,
        gres_conf_lines=[*inv.gres_lines, *(extra_gres_lines or [])],
        plugin_dirs=[plugin_dir] if with_plugins else [],
        plugstack_lines=_plugstack(plugin_dir, config_path, image_spank) if with_plugins else [],
        slurmctld_env={"SLURM_K8S_BRIDGE_CONFIG": str(config_path),
                       "SLURM_K8S_BRIDGE_TIMINGS": str(timings_path)},
        slurmd_env=slurmd_env or {},
        subnet=subnet,
    )
    return BridgeCluster(cluster, config_path, plugin_dir, timings_path)
