"""slurm.conf and gres.conf lines that let slurmctld accept what the Kubernetes shapes can run.

slurmctld checks every job against the nodes of its partition *after* job_submit. A bridged
partition therefore needs node definitions at least as large as the Kubernetes GPU node
shapes: one group of CLOUD "inventory" nodes per shape, carrying the shape's CPUs, memory,
features and GPUs (plain, typed, and every MIG profile as its own gres type). They are
never allocated: every bridged job is held by job_submit/k8s and, when its pods are up,
pinned to the pods' own dynamic nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slurm_k8s_bridge.core.config import BridgeConfig, NodeShape
from slurm_k8s_bridge.core.contract import (
    DEFAULT_CONFIG_PATH,
    MIRROR_NODE_FEATURE,
    MIRROR_NODESET,
    POD_NODE_FEATURE,
    POD_NODESET,
)

#: NodeSets of the bridged partitions: the pods' dynamic slurmd (``slurmd -Z`` with
#: Feature=k8s-pod) and the CLOUD nodes mirroring Kubernetes GPU nodes for sinfo.


def nodeset_lines(max_node_count: int = 1024) -> list[str]:
    """Nodes that appear at run time need room in the node table (``MaxNodeCount``; without
    it ``scontrol create`` silently creates nothing) and a NodeSet to join partitions. The
    pods' slurmd run configless (``slurmd -Z --conf-server``), which slurmctld must allow, and
    resolve job owners who exist only on the login side through nss_slurm (the worker's
    nsswitch.conf), which slurmstepd serves only with ``enable_nss_slurm``."""
    return ["SlurmctldParameters=enable_configless",
            "LaunchParameters=enable_nss_slurm",
            f"MaxNodeCount={max_node_count}",
            f"NodeSet={POD_NODESET} Feature={POD_NODE_FEATURE}",
            f"NodeSet={MIRROR_NODESET} Feature={MIRROR_NODE_FEATURE}"]


def resume_program() -> Path:
    """``inventory-resume.sh``: shipped in the package, or the source checkout's copy."""
    here = Path(__file__).resolve().parents[1]  # the package: slurm_k8s_bridge/
    for cand in (here / "slurm_plugins" / "inventory-resume.sh",
                 here.parent.parent / "slurm_plugins" / "inventory-resume.sh"):
        if cand.is_file():
            return cand
    raise FileNotFoundError("inventory-resume.sh not found; reinstall slurm-k8s-bridge")


#: Power saving keeps the inventory nodes powered down (``idle~`` in sinfo): slurmctld never
#: contacts or allocates them. ``SuspendExcParts`` must list the partitions of real nodes.
def power_save_lines(resume_program: str, real_partitions: list[str]) -> list[str]:
    return ["SuspendProgram=/bin/true",
            f"ResumeProgram={resume_program}",
            "SuspendTime=3600",
            "SuspendTimeout=30",
            "ResumeTimeout=60",
            *([f"SuspendExcParts={','.join(real_partitions)}"] if real_partitions else [])]


@dataclass(frozen=True)
class InventoryLines:
    node_lines: list[str]
    gres_lines: list[str]
    node_names: dict[str, str]  # shape -> hostlist expression

    def partition_nodes(self, shapes: list[str] | None = None) -> str:
        """The ``Nodes=`` value for a bridged partition serving ``shapes`` (default all):
        the inventory nodes plus the pods' and the mirrored nodes' NodeSets."""
        names = [self.node_names[s] for s in (shapes or list(self.node_names))]
        return ",".join([*names, POD_NODESET, MIRROR_NODESET])


def shape_gres(shape: NodeShape) -> str:
    """Slurm ``Gres=`` of a shape: typed GPUs plus each MIG profile as a gres type."""
    parts = [f"gpu:{shape.gres_type}:{shape.gpus}"] if shape.gpus else []
    for profile, per_gpu in sorted(shape.mig.items()):
        parts.append(f"gpu:{profile}:{per_gpu * shape.gpus}")
    return ",".join(parts)


def inventory_lines(config: BridgeConfig, nodes_per_shape: int = 16,
                    prefix: str | None = None) -> InventoryLines:
    """Node and gres definitions for every shape in ``config``."""
    if nodes_per_shape < 1:
        raise ValueError("nodes_per_shape must be at least 1")
    base = prefix or f"{config.cluster_name}-inv"
    node_lines: list[str] = []
    gres_lines: list[str] = []
    names: dict[str, str] = {}
    for name, shape in config.shapes.items():
        hostlist = f"{base}-{name}-[0-{nodes_per_shape - 1}]" if nodes_per_shape > 1 \
            else f"{base}-{name}-0"
        names[name] = hostlist
        features = ",".join(list(shape.features) + sorted(config.node_features))
        gres = shape_gres(shape)
        line = (f"NodeName={hostlist} CPUs={shape.cpus} RealMemory={shape.memory_mb}"
                + (f" Gres={gres}" if gres else "")
                + (f" Feature={features}" if features else "")
                + " State=CLOUD")
        node_lines.append(line)
        for part in gres.split(",") if gres else []:
            _, gtype, count = part.split(":")
            gres_lines.append(f"NodeName={hostlist} Name=gpu Type={gtype} Count={count}")
    return InventoryLines(node_lines, gres_lines, names)


def render_conf_snippet(config: BridgeConfig, nodes_per_shape: int = 16) -> str:
    """What ``slurm-k8s-bridge slurm-conf`` prints for an administrator."""
    inv = inventory_lines(config, nodes_per_shape)
    out = ["# --- slurm.conf (slurm-k8s-bridge) ---",
           "JobSubmitPlugins=k8s",
           "GresTypes=gpu",
           "PrivateData=cloud",
           *nodeset_lines(),
           "# Inventory nodes: the Kubernetes GPU node shapes, never allocated (jobs are",
           "# held by job_submit/k8s and run on their pods' dynamic nodes). Power saving",
           "# keeps them powered down; list your non-bridged partitions in SuspendExcParts.",
           *power_save_lines(str(resume_program()),
                             sorted(n for n, r in config.partitions.items() if not r.bridged)),
           *inv.node_lines,
           f"# e.g. PartitionName=gpu Nodes={inv.partition_nodes()} Default=YES State=UP",
           "",
           "# --- gres.conf ---",
           *inv.gres_lines,
           "",
           "# --- plugstack.conf ---",
           f"required spank_k8s.so config={DEFAULT_CONFIG_PATH}"]
    return "\n".join(out) + "\n"
