"""What sbatch 22.05 collects and how it reads it, before it sends a job: the options it keeps
(``_SbatchOptions``) and the job_desc it fills (``_JobDesc``), option values (integers, node
counts, memory sizes, time specifications) and the client-side GPU/GRES accounting
(``gres_job_state_validate``: the job_desc fields the GPU options derive). Errors carry
sbatch's own wording (``SbatchRefusal``). ``slurm.sbatch`` parses the script and options into
these.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from slurm_k8s_bridge.core.errors import SbatchRefusal as BridgeRefusal
from slurm_k8s_bridge.core.errors import shown
from slurm_k8s_bridge.core.request import UNLIMITED, SlurmJobRequest

BAD_OPTION = "ESLURM_NOT_SUPPORTED"


BAD_GRES = "ESLURM_INVALID_GRES"
#: C's INT_MAX and LONG_MAX on the platforms Slurm runs on
INT_MAX, LONG_MAX = 2**31 - 1, 2**63 - 1
#: sbatch keeps memory in MB in 64 bits whose top bit flags "per CPU"
MEMORY_MB_LIMIT = 2**63


@dataclass
class _GpuRecord:
    """One ``gpu[:type]`` record of sbatch's client-side gres list."""

    type: str | None
    per_job: int = 0
    per_node: int = 0
    per_socket: int = 0
    per_task: int = 0
    total: int = 0


def _gpu_derivations(desc: _JobDesc, opts: _SbatchOptions) -> None:
    """The job_desc changes of sbatch's client-side ``gres_job_state_validate`` (GPUs only)."""
    ntasks_per_tres = opts.ntasks_per_tres or opts.ntasks_per_gpu
    if not any((desc.cpus_per_tres, desc.tres_per_job, desc.tres_per_node, desc.tres_per_socket,
                desc.tres_per_task, desc.mem_per_tres, ntasks_per_tres)):
        return
    if ((desc.tres_per_task or ntasks_per_tres) and desc.num_tasks is None
            and desc.min_nodes is not None and desc.min_nodes == desc.max_nodes):
        if ntasks_per_tres:
            desc.num_tasks = desc.min_nodes * ntasks_per_tres
        elif desc.ntasks_per_node is not None:
            desc.num_tasks = desc.min_nodes * desc.ntasks_per_node
        elif desc.cpus_per_task is None:
            desc.num_tasks = desc.min_nodes
    records = _gpu_records(desc)
    if ntasks_per_tres:
        if records:
            desc.num_tasks = sum(r.total for r in records) * ntasks_per_tres
        elif desc.num_tasks is not None:
            # sbatch asks for num_tasks / ntasks_per_gpu GPUs without any tres_per_* field;
            # SlurmJobRequest has no field to carry that request.
            raise BridgeRefusal("--ntasks-per-gpu without --gpus, --gpus-per-node or --gres is not "
                                "supported by slurm-k8s-bridge: give the GPU count", BAD_GRES)
        else:
            raise BridgeRefusal("gres_job_state_validate: --ntasks-per-tres needs either a GRES GPU "
                                "specification or a node/ntask specification", BAD_GRES)
    if desc.mem_per_tres and not records:
        raise BridgeRefusal(f"Requested mem_per_tres={desc.mem_per_tres} but did not request any GPU.",
                            BAD_GRES)
    typed = {r.type is not None for r in records}
    if len(typed) > 1:
        raise BridgeRefusal("Invalid GRES specification (with and without type identification)",
                            "ESLURM_INVALID_GRES_TYPE")
    for record in records:
        _test_gres_cnt(record, desc, opts, ntasks_per_tres)


def _gpu_records(desc: _JobDesc) -> list[_GpuRecord]:
    records: dict[str | None, _GpuRecord] = {}

    def each(text: str | None) -> list[tuple[_GpuRecord, int]]:
        out = []
        for item in (text or "").split(","):
            parsed = _gres_item(item)
            if parsed is None:
                continue
            gpu_type, count = parsed
            record = records.setdefault(gpu_type, _GpuRecord(gpu_type))
            out.append((record, count))
        return out

    # (record field, descriptor value, multiplier giving the job-wide total or None)
    sources = (("per_job", desc.tres_per_job, None),
               ("per_node", desc.tres_per_node, desc.min_nodes),
               ("per_socket", desc.tres_per_socket, None),
               ("per_task", desc.tres_per_task, desc.num_tasks))
    for attr, value, times in sources:
        for record, count in each(value):
            setattr(record, attr, count)
            record.total = max(record.total, count * times if times is not None else count)
    return list(records.values())


def _gres_item(item: str) -> tuple[str | None, int] | None:
    """``gres:gpu[:type][:count]`` -> (type, count); None for other GRES or empty items."""
    parts = item.split(":")
    if parts and parts[0] == "gres":
        parts = parts[1:]
    if not parts or parts[0] != "gpu":
        return None
    rest = parts[1:]
    count = 1
    if rest and re.fullmatch(r"[0-9]+", rest[-1]):
        count = int(rest.pop())
    if len(rest) > 1:
        raise BridgeRefusal("Invalid generic resource (gres) specification", BAD_GRES)
    return (rest[0] if rest else None), count


def _test_gres_cnt(r: _GpuRecord, desc: _JobDesc, opts: _SbatchOptions, ntasks_per_tres: int | None) -> None:
    """sbatch's ``_test_gres_cnt``: consistency of the GPU options, and what they imply."""
    def fail(message: str) -> None:
        raise BridgeRefusal(message, BAD_GRES)

    if r.per_job and ((r.per_node and r.per_node > r.per_job) or (r.per_task and r.per_task > r.per_job)
                      or (r.per_socket and r.per_socket > r.per_job)):
        fail("Failed to ensure --gpus >= --gres=gpu/--gpus-per-node >= --gpus-per-socket")
    if r.per_node and ((r.per_task and r.per_task > r.per_node)
                       or (r.per_socket and r.per_socket > r.per_node)):
        fail("Failed to ensure --gpus >= --gpus-per-task")
    if r.per_socket and opts.sockets_per_node is None:
        fail("--gpus-per-socket option requires --sockets-per-node specification")
    if opts.cpus_per_gpu and desc.cpus_per_task is not None:
        fail("--cpus-per-gpu is mutually exclusive with --cpus-per-task")
    if r.per_job and r.per_node:
        if r.per_job % r.per_node:
            fail("Failed to validate job spec, --gpus is not multiple of --gres=gpu/--gpus-per-node")
        req_nodes = r.per_job // r.per_node
        max_nodes = desc.max_nodes
        if ((desc.min_nodes is not None and req_nodes < desc.min_nodes)
                or (max_nodes is not None and req_nodes > max_nodes)):
            fail(f"Failed to validate job spec. Based on --gpu and --gres=gpu/--gpus-per-node required "
                 f"nodes ({req_nodes}) doesn't fall between min_nodes ({_c(desc.min_nodes)}) and "
                 f"max_nodes ({_c(max_nodes)}) boundaries.")
        desc.min_nodes = desc.max_nodes = req_nodes
    if r.per_node and r.per_socket and r.per_node % r.per_socket:
        fail("Failed to validate job spec, --gres=gpu/--gpus-per-node not multiple of --gpus-per-socket.")
    if ntasks_per_tres and desc.num_tasks is not None and desc.num_tasks % ntasks_per_tres:
        fail("Failed to validate job spec, -n/--ntasks has to be a multiple of --ntasks-per-gpu.")
    if r.per_task:
        if r.per_job:
            if r.per_job % r.per_task:
                fail("Failed to validate job spec, --gpus not multiple of --gpus-per-task")
            req_tasks = r.per_job // r.per_task
            if desc.num_tasks is None:
                desc.num_tasks = req_tasks
            elif desc.num_tasks != req_tasks:
                fail("Failed to validate job spec. Based on --gpus and --gpus-per-task number of "
                     "requested tasks differ from -n/--ntasks.")
        elif desc.num_tasks is None:
            fail("Failed to validate job spec. --gpus-per-task used without either --gpus or "
                 "-n/--ntasks is not allowed.")
    if r.per_node and r.per_task:
        if r.per_node % r.per_task:
            fail("Failed to validate job spec, --gres=gpu/--gpus-per-node not multiple of --gpus-per-task.")
        per_node_tasks = r.per_node // r.per_task
        if not desc.ntasks_per_node:
            desc.ntasks_per_node = per_node_tasks
        elif desc.ntasks_per_node != per_node_tasks:
            fail("Failed to validate job spec. Based on --gres=gpu/--gpus-per-node and --gpus-per-task "
                 "requested number of tasks per node differ from --ntasks-per-node.")
    if opts.cpus_per_gpu and r.per_task:
        want = opts.cpus_per_gpu * r.per_task
        if desc.cpus_per_task is None:
            desc.cpus_per_task = want
    if r.per_job:
        if desc.min_nodes is not None and r.per_job < desc.min_nodes:
            fail("Failed to validate job spec, --gpus < -N")
        if desc.max_nodes is not None and r.per_job < desc.max_nodes:
            desc.max_nodes = r.per_job


def _c(value: int | None) -> str:
    return str(value) if value is not None else "4294967294"


def parse_int(option: str, text: str, positive: bool) -> int:
    """Slurm's ``parse_int``: a whole number, > 0 when ``positive``, that fits a C ``int``
    (``strtol`` stops at ``LONG_MAX``)."""
    match = re.fullmatch(r"\s*([+-]?[0-9]+)", text)
    number = int(match.group(1)) if match else -1
    if number < 0 or (positive and number <= 0):
        raise BridgeRefusal(f'Invalid numeric value "{shown(text)}" for {option}.', BAD_OPTION)
    if number > INT_MAX:
        raise BridgeRefusal(f"Numeric argument ({min(number, LONG_MAX)}) to big for {option}.", BAD_OPTION)
    return number


def parse_node_count(text: str) -> tuple[int, int]:
    """Slurm's ``verify_node_count``: ``N`` or ``MIN-MAX`` (``k``/``m`` multiply by 1024)."""
    if "-" in text:
        low, high = text.split("-", 1)
        minimum = _nodes(low)
        if minimum < 0:
            minimum = 1
        maximum = _nodes(high)
        if maximum != 0 and maximum < minimum:
            raise BridgeRefusal(f"Maximum node count {maximum} is less than minimum node count "
                                f"{minimum}", "ESLURM_INVALID_NODE_COUNT")
        return minimum, maximum
    count = _nodes(text)
    if count < 0:
        raise BridgeRefusal(f'"{shown(text)}" is not a valid node count', "ESLURM_INVALID_NODE_COUNT")
    return count, count


def _nodes(text: str) -> int:
    match = re.match(r"^\s*([+-]?[0-9]+)([kK])?([mM])?(.*)$", text)
    if not match:
        if text.strip():
            raise BridgeRefusal(f'"{shown(text)}" is not a valid node count', "ESLURM_INVALID_NODE_COUNT")
        return -1
    number = int(match.group(1))
    if match.group(2):
        number *= 1024
    if match.group(3):
        number *= 1024 * 1024
    if match.group(4).strip():
        raise BridgeRefusal(f'"{shown(text)}" is not a valid node count', "ESLURM_INVALID_NODE_COUNT")
    return number


def str_to_mbytes(text: str) -> int | None:
    """Slurm's ``str_to_mbytes``: MB by default, K/M/G/T suffixes (optionally ``B``); K rounds up."""
    match = re.fullmatch(r"\s*([+-]?[0-9]+)([kKmMgGtT][bB]?)?", text)
    if not match:
        return None
    number = int(match.group(1))
    if number < 0:
        return None
    unit = (match.group(2) or "m")[0].lower()
    if unit == "k":
        mbytes = (number + 1023) // 1024
    else:
        mbytes = number * {"m": 1, "g": 1024, "t": 1024 * 1024}[unit]
    return mbytes if mbytes < MEMORY_MB_LIMIT else None


def _mbytes(option: str, text: str) -> int:
    value = str_to_mbytes(text)
    if value is None:
        raise BridgeRefusal(f"Invalid {option} specification", "ESLURM_INVALID_TASK_MEMORY")
    return value


def time_str2mins(text: str) -> int | None:
    """Slurm's ``time_str2mins``: minutes (seconds round up), ``UNLIMITED`` for no limit.

    Formats: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``; ``-1``, ``INFINITE``,
    ``UNLIMITED`` (any case). ``None`` when the text is not a time. ``0`` stays 0 here; sbatch
    turns a zero ``--time`` into UNLIMITED.
    """
    if text.lower() in ("-1", "infinite", "unlimited"):
        return UNLIMITED
    if not _is_valid_timespec(text):
        return None
    days = hours = minutes = seconds = 0
    if "-" in text:
        fields = _scan_ints(text, "-::") + [0, 0, 0, 0]
        days, hours, minutes, seconds = fields[:4]
    else:
        fields = _scan_ints(text, "::")
        if len(fields) == 3:
            hours, minutes, seconds = fields
        else:
            fields += [0, 0]
            minutes, seconds = fields[:2]
    total = days * 86400 + hours * 3600 + minutes * 60 + seconds
    if total < 0:
        return None
    return (total + 59) // 60


def _is_valid_timespec(text: str) -> bool:
    """Slurm's ``_is_valid_timespec`` (parse_time.c), character for character."""
    digits = dashes = colons = 0
    in_number = False
    for c in text:
        if c.isdigit() and c.isascii():
            if not in_number:
                digits += 1
                in_number = True
        elif c == "-":
            in_number = False
            dashes += 1
            if colons:
                return False
        elif c == ":":
            in_number = False
            colons += 1
        else:
            return False
    if not digits or dashes > 1 or colons > 2:
        return False
    least = {1: 3, 2: 4} if dashes else {1: 2, 2: 3}
    return digits >= least.get(colons, 0)


def _scan_ints(text: str, separators: str) -> list[int]:
    """``sscanf(text, "%d<s1>%d<s2>%d...")``: the integers read before the first mismatch."""
    values: list[int] = []
    pos = 0
    for index in range(len(separators) + 1):
        match = re.match(r"\s*([+-]?[0-9]+)", text[pos:])
        if not match:
            break
        values.append(int(match.group(1)))
        pos += match.end()
        if index == len(separators) or not text[pos:].startswith(separators[index]):
            break
        pos += 1
    return values


def gres_prepend_tres_type(text: str) -> str:
    """Slurm's ``gres_prepend_tres_type``: ``gpu:2,shard:1`` -> ``gres:gpu:2,gres:shard:1``."""
    return ("gres:" + text).replace(",", ",gres:").replace("gres:gres:", "gres:")


def xfmt_tres(current: str | None, prefix: str, text: str | None) -> str | None:
    """Slurm's ``xfmt_tres``: ``h100:4,2`` with ``gres:gpu`` -> ``gres:gpu:h100:4,gres:gpu:2``."""
    if not text:
        return current
    items = [f"{prefix}:{token}" for token in text.split(",") if token]
    joined = ",".join(items)
    return f"{current},{joined}" if current else (joined or None)


@dataclass
class _SbatchOptions:
    """sbatch's ``slurm_opt_t``, only the fields that reach the bridge (private, per call)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    job_name: str | None = None
    constraint: str | None = None
    array_inx: str | None = None
    chdir: str | None = None
    nodes_set: bool = False
    min_nodes: int = 1
    max_nodes: int = 0
    ntasks: int = 1
    ntasks_set: bool = False
    ntasks_per_node: int | None = None
    ntasks_per_gpu: int | None = None
    ntasks_per_tres: int | None = None
    cpus_per_task: int | None = None
    cpus_per_gpu: int | None = None
    pn_min_memory: int | None = None
    mem_per_cpu: int | None = None
    mem_per_gpu: int | None = None
    gpus: str | None = None
    gpus_per_node: str | None = None
    gpus_per_socket: str | None = None
    gpus_per_task: str | None = None
    gres: str | None = None
    shared: int | None = None
    time_limit: int | None = None
    signal: tuple[int, int, int] | None = None
    overcommit: bool = False
    sockets_per_node: int | None = None
    cores_per_socket: int | None = None
    threads_per_core: int | None = None
    hint: str | None = None
    wrap: bool = False
    spank: dict[str, str] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)


class _JobDesc:
    """The job_desc fields sbatch sends -- exactly ``SlurmJobRequest``'s -- kept mutable while
    the client-side GRES checks derive some of them from others."""

    def __init__(self, **given: Any) -> None:
        for f in dataclasses.fields(SlurmJobRequest):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            setattr(self, f.name, default)
        for name, value in given.items():
            if not hasattr(self, name):
                raise TypeError(f"job_desc has no field {name}")
            setattr(self, name, value)

    def request(self, uid: int, gid: int, submit_line: str) -> SlurmJobRequest:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(SlurmJobRequest)}
        values.update(spank_options=dict(values["spank_options"]), user_id=uid, group_id=gid,
                      submit_line=submit_line)
        return SlurmJobRequest(**values)
