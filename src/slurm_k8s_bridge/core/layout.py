"""How many pods a request becomes and what each asks for: the node count chosen in the
range the user gave, and each pod's share of tasks, CPUs, memory and GPUs, checked against
the node shapes (every refusal names the limit). Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from slurm_k8s_bridge.core.config import BridgeConfig, NodeShape, PartitionRule
from slurm_k8s_bridge.core.errors import BridgeRefusal, refusal, shown
from slurm_k8s_bridge.core.gpus import GpuAsk
from slurm_k8s_bridge.core.request import SlurmJobRequest, given


#: Largest node count the bridge considers for one job.
MAX_NODES = 65536


@dataclass(frozen=True)
class _Layout:
    nodes: int
    node_range: tuple[int, int]
    tasks: int
    tasks_per_node: int
    cpus_per_task: int
    cpus: int
    memory_mb: int
    gpus: int
    exclusive: bool
    shapes: tuple[NodeShape, ...]


@dataclass(frozen=True)
class _Share:
    """What one pod asks for at a given node count, with the words that explain each number."""

    nodes: int
    tasks_per_node: int
    gpus: int
    gpus_why: str
    cpus: int
    cpus_why: str
    #: None: the whole node (--mem=0)
    memory_mb: int | None
    memory_why: str
    memory_is_default: bool


class _NoFit(Exception):
    """This node count does not work; ``spread`` when --gpus cannot be split evenly."""

    def __init__(self, refusal: BridgeRefusal, spread: bool = False) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal
        self.spread = spread


def _layout(req: SlurmJobRequest, gpu: GpuAsk, shapes: tuple[NodeShape, ...], config: BridgeConfig,
            rule: PartitionRule) -> _Layout:
    low, high, explicit = _node_range(req, gpu)
    exclusive = given(req.shared) == 0
    counts, most_tried = _counts_to_try(req, gpu, shapes, low, high)
    last: _NoFit | None = None
    tried = 0
    for nodes in counts:
        if _uneven(gpu, nodes):
            continue
        try:
            share = _share(req, gpu, nodes, config)
            fitting = _fitting_shapes(share, gpu, shapes, rule, exclusive)
        except _NoFit as no:
            last = no if not no.spread else last
            tried += 1
            if tried >= most_tried:
                break
            continue
        return _finish(req, share, fitting, (low, high), exclusive, gpu, config)
    if last is None and gpu.per_job:
        raise refusal(f"{gpu.words['per_job']} cannot be spread evenly over {_nodes_text(low, high, explicit)}",
                       "ESLURM_INVALID_GRES")
    assert last is not None, "a node count range without candidates"
    raise last.refusal


#: Most node counts the search evaluates for one request. Counts too small for the largest
#: shape are skipped without evaluating them, so a request that fits stops at the first or
#: one of the next few; a request that fits nowhere (``-n 100000 --mem=5000G``) must not
#: keep slurmctld, which calls job_submit under its locks, busy with 65536 of them.
MOST_COUNTS_TRIED = 256


def _counts_to_try(req: SlurmJobRequest, gpu: GpuAsk, shapes: Sequence[NodeShape], low: int,
                   high: int) -> tuple[range, int]:
    """The node counts to evaluate, smallest first, and how many of them at most. When no
    count up to ``high`` can fit, the highest one alone, for its message."""
    tasks = given(req.num_tasks)
    if tasks is not None and not given(req.ntasks_per_node):
        high = max(low, min(high, tasks))  # more nodes than tasks never fit
    start = max(low, _fewest_nodes(req, gpu, shapes))
    if start > high:
        return range(high, low - 1, -1), 1
    return range(start, high + 1), MOST_COUNTS_TRIED


def _fewest_nodes(req: SlurmJobRequest, gpu: GpuAsk, shapes: Sequence[NodeShape]) -> int:
    """A node count below which no pod's share fits even the largest shape's CPUs or GPUs."""
    if not shapes:
        return 1
    most_cpus = max(s.cpus for s in shapes)
    most_gpus = max(_gpu_capacity(s, gpu) for s in shapes)
    fewest = 1
    if gpu.per_job and gpu.per_node is None and most_gpus > 0:
        fewest = _ceil(gpu.per_job, most_gpus)
    tasks = given(req.num_tasks)
    if tasks is None or tasks <= 0:
        return fewest
    per_pod = most_cpus // (given(req.cpus_per_task) or 1)  # tasks the largest pod holds
    if gpu.per_task:
        per_pod = min(per_pod, most_gpus // gpu.per_task)
    per_node = given(req.ntasks_per_node)
    if per_node:
        fewest = max(fewest, _ceil(tasks, per_node))
        if per_node <= per_pod:
            return fewest
    if per_pod <= 0:
        return MAX_NODES + 1
    return max(fewest, _ceil(tasks, per_pod))


def _uneven(gpu: GpuAsk, nodes: int) -> bool:
    """--gpus cannot be split over ``nodes`` (with --gpus-per-node: not that count)."""
    if gpu.per_job is None:
        return False
    if gpu.per_node is not None:
        return gpu.per_node * nodes != gpu.per_job
    return gpu.per_job % nodes != 0


def _ceil(a: int, b: int) -> int:
    """``ceil(a / b)`` in integers (floats lose counts this large)."""
    return -(-a // b)


def _node_range(req: SlurmJobRequest, gpu: GpuAsk) -> tuple[int, int, bool]:
    min_nodes, max_nodes = given(req.min_nodes), given(req.max_nodes)
    tasks = given(req.num_tasks)
    if min_nodes is not None:
        if min_nodes <= 0:
            raise refusal(f"-N {min_nodes} asks for no nodes", "ESLURM_INVALID_NODE_COUNT")
        high = max_nodes if max_nodes is not None else min_nodes
        if high < min_nodes:
            raise refusal(f"-N {min_nodes}-{high}: the maximum is below the minimum", "ESLURM_INVALID_NODE_COUNT")
        if min_nodes > MAX_NODES:
            raise refusal(f"-N {min_nodes} asks for more than the {MAX_NODES} nodes slurm-k8s-bridge "
                           "runs one job on", "ESLURM_INVALID_NODE_COUNT")
        if tasks is not None and tasks < min_nodes:
            raise refusal(f"-n {tasks} is fewer tasks than the {min_nodes} nodes -N asks for",
                           "ESLURM_BAD_TASK_COUNT")
        return min_nodes, min(high, MAX_NODES), True
    if tasks is not None and tasks <= 0:
        raise refusal(f"-n {tasks} asks for no tasks", "ESLURM_BAD_TASK_COUNT")
    high = max(tasks or 1, gpu.per_job or 1)
    return 1, min(high, MAX_NODES), False


def _nodes_text(low: int, high: int, explicit: bool) -> str:
    if low == high:
        count = f"{low} node" if low == 1 else f"{low} nodes"
        return f"{count} (-N {low})" if explicit else count
    return f"{low} to {high} nodes (-N {low}-{high})" if explicit else f"1 to {high} nodes"


def _share(req: SlurmJobRequest, gpu: GpuAsk, nodes: int, config: BridgeConfig) -> _Share:
    tasks_per_node, tasks_why = _tasks_per_node(req, nodes)
    gpus, gpus_why = _gpus_per_node(gpu, nodes, tasks_per_node)
    cpus_per_task = given(req.cpus_per_task) or 1
    cpus = cpus_per_task * tasks_per_node
    if given(req.cpus_per_task):
        cpus_why = f"-c {cpus_per_task} with {_count(tasks_per_node, 'task')} per node"
    else:
        cpus_why = tasks_why
    if gpu.cpus_per_gpu and gpus and gpu.cpus_per_gpu * gpus > cpus:
        cpus = gpu.cpus_per_gpu * gpus
        cpus_why = f"--cpus-per-gpu={gpu.cpus_per_gpu} with {_count(gpus, 'GPU')} per node"
    if req.overcommit:
        # Slurm: "only one CPU is allocated to the job per node"; the tasks share it
        cpus, cpus_why = 1, "-O (--overcommit)"
    memory, memory_why, default = _memory_per_node(req, gpu, cpus, gpus, config)
    return _Share(nodes, tasks_per_node, gpus, gpus_why, cpus, cpus_why, memory, memory_why, default)


def _tasks_per_node(req: SlurmJobRequest, nodes: int) -> tuple[int, str]:
    tasks = given(req.num_tasks)
    per_node = given(req.ntasks_per_node)
    if per_node:
        if tasks is not None and per_node * nodes < tasks:
            raise _NoFit(refusal(f"-n {tasks} with --ntasks-per-node={per_node} needs "
                                  f"{_ceil(tasks, per_node)} nodes, more than -N allows",
                                  "ESLURM_BAD_TASK_COUNT"))
        count = min(per_node, _ceil(tasks, nodes)) if tasks is not None else per_node
        return count, f"--ntasks-per-node={per_node}"
    if tasks is not None:
        if tasks < nodes:
            raise _NoFit(refusal(f"-n {tasks} is fewer tasks than {nodes} nodes", "ESLURM_BAD_TASK_COUNT"))
        count = _ceil(tasks, nodes)
        return count, f"-n {tasks} over {_count(nodes, 'node')} ({count} per node)"
    return 1, "1 task per node"


def _gpus_per_node(gpu: GpuAsk, nodes: int, tasks_per_node: int) -> tuple[int, str]:
    if gpu.per_node is not None:
        if gpu.per_job is not None and gpu.per_node * nodes != gpu.per_job:
            raise _NoFit(refusal(f"{gpu.words['per_job']} with {gpu.words['per_node']} needs "
                                  f"{_count(gpu.per_job // max(gpu.per_node, 1), 'node')}, not {nodes}",
                                  "ESLURM_INVALID_GRES"), spread=True)
        return gpu.per_node, gpu.words["per_node"]
    if gpu.per_job is not None:
        if gpu.per_job % nodes:
            raise _NoFit(refusal(f"{gpu.words['per_job']} cannot be spread evenly over "
                                  f"{_count(nodes, 'node')}", "ESLURM_INVALID_GRES"), spread=True)
        return gpu.per_job // nodes, f"{gpu.words['per_job']} over {_count(nodes, 'node')}"
    if gpu.per_task is not None:
        return (gpu.per_task * tasks_per_node,
                f"{gpu.words['per_task']} with {_count(tasks_per_node, 'task')} per node")
    return 0, "no GPUs"


def _memory_per_node(req: SlurmJobRequest, gpu: GpuAsk, cpus: int, gpus: int,
                     config: BridgeConfig) -> tuple[int | None, str, bool]:
    memory = given(req.pn_min_memory)
    if memory is not None and memory & (1 << 63):  # raw MEM_PER_CPU flag from job_desc
        memory, per_cpu = memory & ~(1 << 63), True
    else:
        per_cpu = req.mem_per_cpu
    if memory is not None and per_cpu:
        return memory * cpus, f"--mem-per-cpu={mem_text(memory)} with {_count(cpus, 'CPU')} per node", False
    if memory is not None:
        if memory == 0:
            return None, "--mem=0", False
        return memory, f"--mem={mem_text(memory)}", False
    if gpu.mem_per_gpu is not None and gpus:
        return (gpu.mem_per_gpu * gpus,
                f"--mem-per-gpu={mem_text(gpu.mem_per_gpu)} with {_count(gpus, 'GPU')} per node", False)
    return config.default_mem_per_cpu_mb * cpus, "the default memory per CPU", True


def _fitting_shapes(share: _Share, gpu: GpuAsk, shapes: Sequence[NodeShape], rule: PartitionRule,
                    exclusive: bool) -> tuple[NodeShape, ...]:
    """The shapes one pod's share fits on, or the limit it exceeds in the user's words."""
    by_gpu = [s for s in shapes if share.gpus <= _gpu_capacity(s, gpu)]
    if not by_gpu:
        raise _NoFit(_gpu_refusal(share, gpu, shapes, rule))
    by_cpu = [s for s in by_gpu if share.cpus <= s.cpus]
    if not by_cpu:
        largest = _largest(by_gpu, lambda s: s.cpus)
        raise _NoFit(refusal(f"{share.cpus_why} asks for {share.cpus} CPUs per node, but the largest "
                              f"node shape in partition {shown(rule.name)} ({largest.name}) has {largest.cpus}",
                              "ESLURM_INVALID_CPU_COUNT"))
    by_memory = [s for s in by_cpu if share.memory_is_default or share.memory_mb is None
                 or share.memory_mb <= s.memory_mb]
    if not by_memory:
        largest = _largest(by_cpu, lambda s: s.memory_mb)
        raise _NoFit(refusal(f"{share.memory_why} asks for {share.memory_mb} MB per node, but the largest "
                              f"node shape in partition {shown(rule.name)} ({largest.name}) has {largest.memory_mb} MB",
                              "ESLURM_INVALID_TASK_MEMORY"))
    return tuple(by_memory)


def _gpu_capacity(shape: NodeShape, gpu: GpuAsk) -> int:
    if gpu.mig and gpu.type:
        return shape.mig_per_node(gpu.type)
    return shape.gpus


def _gpu_refusal(share: _Share, gpu: GpuAsk, shapes: Sequence[NodeShape], rule: PartitionRule) -> BridgeRefusal:
    largest = _largest(shapes, lambda s: _gpu_capacity(s, gpu))
    if gpu.mig and gpu.type:
        per_gpu = largest.mig.get(gpu.type, 0)
        return refusal(f"{share.gpus_why} asks for {share.gpus} MIG {gpu.type} instances per node, but the "
                        f"largest node shape offering {gpu.type} in partition {shown(rule.name)} ({largest.name}) "
                        f"has {largest.mig_per_node(gpu.type)} ({per_gpu} per GPU x {largest.gpus} GPUs)",
                        "ESLURM_INVALID_GRES")
    return refusal(f"{share.gpus_why} asks for {share.gpus} GPUs per node, but the largest GPU node shape "
                    f"in partition {shown(rule.name)} ({largest.name}) has {largest.gpus}", "ESLURM_INVALID_GRES")


def _largest(shapes: Sequence[NodeShape], size: Callable[[NodeShape], int]) -> NodeShape:
    best = shapes[0]
    for shape in shapes[1:]:
        if size(shape) > size(best):
            best = shape
    return best


def _finish(req: SlurmJobRequest, share: _Share, fitting: tuple[NodeShape, ...], node_range: tuple[int, int],
            exclusive: bool, gpu: GpuAsk, config: BridgeConfig) -> _Layout:
    whole_node = exclusive or share.memory_mb is None
    chosen = fitting[:1] if whole_node else fitting
    pinned = chosen[0]
    gpus, cpus, memory = share.gpus, share.cpus, share.memory_mb
    if exclusive:
        cpus, memory = pinned.cpus, pinned.memory_mb
        if not gpu.mig:
            gpus = pinned.gpus
    if memory is None:
        memory = pinned.memory_mb
    elif share.memory_is_default:
        memory = min([memory] + [s.memory_mb for s in chosen])
    tasks = given(req.num_tasks)
    return _Layout(
        nodes=share.nodes,
        node_range=node_range,
        tasks=tasks if tasks is not None else share.tasks_per_node * share.nodes,
        tasks_per_node=share.tasks_per_node,
        cpus_per_task=given(req.cpus_per_task) or 1,
        cpus=cpus,
        memory_mb=memory,
        gpus=gpus,
        exclusive=exclusive,
        shapes=chosen,
    )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def mem_text(mb: int) -> str:
    """MB as sbatch users write it: ``3000G``, ``1T``, ``1536M``."""
    if mb and mb % (1024 * 1024) == 0:
        return f"{mb // (1024 * 1024)}T"
    if mb and mb % 1024 == 0:
        return f"{mb // 1024}G"
    return f"{mb}M"
