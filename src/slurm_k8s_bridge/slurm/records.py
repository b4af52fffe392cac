"""What Slurm's commands print, parsed: job and node records (pure, no I/O).

Slurm 22.05's ``scontrol``/``squeue`` have no ``--json``: ``parse_key_values`` reads one
``scontrol show ... -o`` line; ``parse_scontrol_jobs`` / ``parse_squeue_rows`` /
``merge_jobs`` turn the two bulk reads of ``client.SlurmClient.bridged_jobs`` into
``SlurmJob`` records (every field the daemon decides on from squeue, whose columns carry no
user text; see ``client``), and ``parse_nodes`` reads ``scontrol show node -o`` into
``SlurmNode``. ``eligible`` says whether Slurm would start a held job now.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from slurm_k8s_bridge.core.request import SlurmJobRequest, is_stamp


_FREE_TEXT_KEYS = ("AdminComment", "SystemComment", "Comment")


def parse_key_values(line: str, free_text_keys: Sequence[str] = _FREE_TEXT_KEYS
                     ) -> dict[str, str]:
    """Parse one ``Key=Value Key=Value`` line as printed by ``scontrol show ... -o``.

    scontrol prints free-text fields (Comment, AdminComment, SystemComment) followed by
    two spaces; those are cut out first, so their values may hold spaces and ``x=y``.
    For the rest a token only starts a new field when it looks like ``Key=`` and that key
    has not been seen yet; anything else continues the previous value (e.g. a Command
    with arguments). Values are stripped of trailing whitespace.
    """
    out: dict[str, str] = {}
    line = line.rstrip("\n")
    for fk in free_text_keys:
        m = re.search(r"(?:^| )" + re.escape(fk) + r"=(.*?)  (?=[A-Za-z][\w/:.\-]*=|$)", line)
        if m is None:
            m = re.search(r"(?:^| )" + re.escape(fk) + r"=(.*?)(?= [A-Za-z][\w/:.\-]*=|$)",
                          line)
        if m is not None:
            out[fk] = m.group(1)
            line = line[:m.start()] + " " + line[m.end():]
    key: str | None = None
    key_re = re.compile(r"^([A-Za-z][A-Za-z0-9_/:.\-]*)=(.*)$", re.DOTALL)
    for token in line.strip().split(" "):
        m = key_re.match(token)
        if m and m.group(1) not in out:
            key = m.group(1)
            out[key] = m.group(2)
        elif key is not None:
            out[key] += " " + token
    return {k: v.rstrip() for k, v in out.items()}


#: squeue columns read by ``bridged_jobs``: none of them can hold text a user chose.
#: The AdminComment comes last and is taken as the rest of the line.
SQUEUE_FIELDS = ("JobID", "ArrayJobID", "ArrayTaskID", "UserID", "UserName", "State",
                 "Reason", "PriorityLong", "Dependency", "EligibleTime", "SubmitTime",
                 "Partition", "TimeLimit", "exit_code", "Requeue", "RestartCnt", "ReqNodes",
                 "NodeList", "admin_comment")


SQUEUE_FORMAT = ",".join(f"{f}:|" for f in SQUEUE_FIELDS[:-1]) + f",{SQUEUE_FIELDS[-1]}:"


#: Reason Slurm 22.05 shows after ``scontrol requeuehold`` (squeue prints it with spaces,
#: scontrol with underscores).
REQUEUE_HELD_REASON = "job requeued in held state"


_TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")


_NODE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-\[\]]*$")


_JOB_REF_RE = re.compile(r"^\d+(_\d+)?$")


_REASON_STAMP_RE = re.compile(
    r" \[([^\s\[\]@]*)@(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d|Unknown|None)\](?= Comment=| Extra=|$)")


@dataclass(frozen=True)
class SlurmJob:
    """One bridged job record as slurmctld keeps it.

    A pending job array that was never split is one record (``JobId`` = the array's id):
    ``array_task_id`` is then ``None`` and ``pending_array_tasks`` lists the tasks it still
    stands for (``scontrol`` shows them as ``ArrayTaskId=0-2`` or ``0,2``). A task that was
    split out (it started, or was updated on its own, e.g. ``scontrol update jobid=4_1``)
    has its own record with its own ``job_id`` and ``array_task_id``.
    """

    job_id: int
    array_job_id: int | None
    array_task_id: int | None
    name: str
    user_id: int
    state: str                        # PENDING, RUNNING, COMPLETED, ...
    reason: str                       # JobHeldUser, None, BeginTime, ...
    priority: int
    dependency: str | None            # raw, e.g. "afterok:12(unfulfilled)"; None = none left
    begin_time: str | None            # EligibleTime when set (--begin, requeue delay), raw
    partition: str
    nodelist: str                     # allocated nodes ("" while pending)
    req_nodelist: str                 # ReqNodeList ("" when none)
    comment: str
    stamp: str                        # the AdminComment: k8sb1:...
    submit_time: str
    time_limit: str                   # raw, e.g. "10:00", "1-00:00:00", "UNLIMITED"
    exit_code: str                    # "code:signal", as scontrol prints it
    requeue: bool
    restarts: int
    user_name: str = ""
    pending_array_tasks: tuple[int, ...] = ()

    @property
    def is_array_meta(self) -> bool:
        """The not-yet-split record of a pending array (stands for several tasks)."""
        return bool(self.pending_array_tasks)

    @property
    def slurm_id(self) -> str:
        """How scontrol/scancel name this record: ``12``, ``4_1``, or ``4`` (a whole
        pending array: every task it still stands for)."""
        if self.array_task_id is not None and self.array_job_id is not None:
            return f"{self.array_job_id}_{self.array_task_id}"
        return str(self.job_id)

    def task_refs(self) -> list[str]:
        """One scontrol id per task: ``["4_0", "4_2"]`` for a pending array record."""
        if self.pending_array_tasks:
            return [f"{self.array_job_id}_{t}" for t in self.pending_array_tasks]
        return [self.slurm_id]

    def request(self) -> SlurmJobRequest:
        """The request stamped by job_submit/k8s (kept current by job_modify)."""
        return SlurmJobRequest.from_stamp(self.stamp)


def expand_array_tasks(spec: str) -> tuple[int, ...]:
    """``0-2`` / ``0,2`` / ``1-9:2`` / ``0-15%4`` -> task ids, sorted (``N/A`` -> ())."""
    spec = spec.strip().split("%", 1)[0]
    if not spec or spec in ("N/A", "(null)"):
        return ()
    out: set[int] = set()
    for part in spec.strip("[]").split(","):
        step = 1
        if ":" in part:
            part, step_s = part.split(":", 1)
            step = int(step_s)
        if "-" in part:
            lo, hi = (int(x) for x in part.split("-", 1))
            if hi - lo > 1_000_000:
                raise ValueError(f"array range too large: {spec}")
            out.update(range(lo, hi + 1, max(step, 1)))
        else:
            out.add(int(part))
    return tuple(sorted(out))


def format_exit_code(raw: str) -> str:
    """squeue's ``exit_code`` is the raw wait status (768, 9); scontrol prints ``3:0``, ``0:9``."""
    try:
        status = int(raw)
    except ValueError:
        return raw
    if os.WIFSIGNALED(status):
        return f"0:{os.WTERMSIG(status)}"
    if os.WIFEXITED(status):
        return f"{os.WEXITSTATUS(status)}:0"
    return f"{status >> 8}:{status & 0x7f}"


def _none_if_null(value: str | None) -> str | None:
    if value is None or value in ("", "(null)", "N/A", "Unknown", "None"):
        return None
    return value


def parse_scontrol_jobs(text: str) -> dict[int, list[dict[str, str]]]:
    """Records of ``scontrol show job -o`` by JobId, as parsed by ``parse_key_values``.

    A job id may map to several records when a user's field contains a newline that
    forges a line starting ``JobId=``: ``merge_jobs`` picks the one that agrees with squeue.
    """
    out: dict[int, list[dict[str, str]]] = {}
    for line in text.splitlines():
        if not line.startswith("JobId="):
            continue
        rec = parse_key_values(line)
        job_id = rec.get("JobId", "")
        if job_id.isdigit():
            out.setdefault(int(job_id), []).append(rec)
    return out


def parse_squeue_rows(text: str) -> dict[int, list[dict[str, str]]]:
    """Rows of ``squeue -r -O SQUEUE_FORMAT`` by JobID (a pending array: one row per task).

    Lines that do not have every column, or whose numeric columns are not numbers, are
    ignored (an AdminComment set by an administrator may contain a newline).
    """
    out: dict[int, list[dict[str, str]]] = {}
    n = len(SQUEUE_FIELDS)
    for line in text.splitlines():
        parts = line.split("|", n - 1)
        if len(parts) != n:
            continue
        row = dict(zip(SQUEUE_FIELDS, parts))
        row = {k: (v if k == "admin_comment" else v.strip()) for k, v in row.items()}
        row["admin_comment"] = row["admin_comment"].rstrip()
        if not (row["JobID"].isdigit() and row["UserID"].isdigit()
                and row["RestartCnt"].isdigit()
                and re.fullmatch(r"-?\d+", row["PriorityLong"] or "x")):
            continue
        out.setdefault(int(row["JobID"]), []).append(row)
    return out


def merge_jobs(records: Mapping[int, list[dict[str, str]]],
               rows: Mapping[int, list[dict[str, str]]]) -> list[SlurmJob]:
    """Bridged jobs: squeue's rows decide (ids, stamp, state, ...), scontrol's record adds
    ``name`` and ``comment``. A job not in both outputs (it came or went between the two
    calls) is left for the next round. When no single scontrol record of the job carries
    squeue's stamp (a user's own field forged one), name and comment stay empty."""
    jobs: list[SlurmJob] = []
    for job_id, job_rows in rows.items():
        first = job_rows[0]
        stamp = first["admin_comment"]
        if not is_stamp(stamp) or any(r["admin_comment"] != stamp for r in job_rows):
            continue
        if job_id not in records:
            continue
        candidates = [r for r in records[job_id] if r.get("AdminComment") == stamp]
        rec = candidates[0] if len(candidates) == 1 else {}
        tasks = sorted({int(r["ArrayTaskID"]) for r in job_rows if r["ArrayTaskID"].isdigit()})
        array_job = int(first["ArrayJobID"]) if first["ArrayJobID"].isdigit() \
            and first["ArrayTaskID"].isdigit() else None
        task_id = tasks[0] if array_job is not None and len(tasks) == 1 else None
        jobs.append(SlurmJob(
            job_id=job_id,
            array_job_id=array_job,
            array_task_id=task_id,
            name=rec.get("JobName", ""),
            user_id=int(first["UserID"]),
            state=first["State"],
            reason=first["Reason"],
            priority=int(first["PriorityLong"]),
            dependency=_none_if_null(first["Dependency"]),
            begin_time=_none_if_null(first["EligibleTime"]),
            partition=first["Partition"],
            nodelist=first["NodeList"],
            req_nodelist=first["ReqNodes"],
            comment=rec.get("Comment", ""),
            stamp=stamp,
            submit_time=first["SubmitTime"],
            time_limit=first["TimeLimit"],
            exit_code=format_exit_code(first["exit_code"]),
            requeue=first["Requeue"] == "1",
            restarts=int(first["RestartCnt"]),
            user_name=first["UserName"],
            pending_array_tasks=tuple(tasks) if array_job is not None and len(tasks) > 1
            else (),
        ))
    return jobs


def pending_order(jobs: Iterable[SlurmJob]) -> list[SlurmJob]:
    """The pending jobs in the order Slurm would start them, were they not held.

    Every bridged job sits at priority 0 until the bridge releases it, so the priority
    Slurm shows says nothing. The order is the one a priority Slurm would compute without
    site weights: first submitted, first started (``SubmitTime``, which slurmctld resets
    when a job is requeued), then the job id (the array's id for array tasks, so an
    array stays together), then the task id. A site using priority/multifactor with
    fair-share or QOS weights would order differently; that priority is not visible while
    the job is held.
    """
    def key(job: SlurmJob) -> tuple[str, int, int, int]:
        task = job.array_task_id if job.array_task_id is not None else \
            (job.pending_array_tasks[0] if job.pending_array_tasks else -1)
        return (job.submit_time, job.array_job_id if job.array_job_id is not None
                else job.job_id, task, job.job_id)

    return sorted((j for j in jobs if j.state == "PENDING"), key=key)


def _parse_time(value: str) -> datetime | None:
    if not _TIME_RE.match(value):
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S")


#: Slurm's requeue delay is the credential lifetime: 120 s by default, 1200 s at most.
REQUEUE_DELAY_MAX_S = 1300


def eligible(job: SlurmJob, now: datetime | None = None) -> tuple[bool, str]:
    """Would Slurm start this pending job, apart from the bridge's own hold?

    Returns ``(False, why)`` for: a job that is not pending; a dependency that can never
    be satisfied (22.05 shows ``afterok:N(failed)``; for a held job the reason then turns
    into ``JobHeldAdmin``, not ``DependencyNeverSatisfied``); a dependency not yet
    satisfied (slurmctld drops a satisfied dependency, ``Dependency=(null)``, within a
    scheduling cycle); a begin time in the future (``--begin``); the owner's own hold (``scontrol hold``, recorded by job_modify in the
    stamp as ``user_hold``); an administrator's hold (``JobHeldAdmin``); BadConstraints.

    Not distinguishable on 22.05: an administrator's ``scontrol uhold`` looks exactly like
    the bridge's hold (``JobHeldUser``, priority 0; root bypasses job_modify's
    bookkeeping), and the owner's ``scontrol requeuehold`` of a running job looks like the
    bridge's (the requeue RPC does not pass through job_modify). Both count as eligible.

    A requeued job (``restarts`` > 0) whose begin time is at most ``REQUEUE_DELAY_MAX_S``
    ahead is eligible: that is the delay slurmctld adds after a requeue (the credential
    lifetime), which only protects a slurmd that ran the previous run; the bridge starts
    it on fresh pods with ``StartTime=now``. (A ``--begin`` cannot be ahead after a run;
    an owner's later ``scontrol update StartTime=`` within that window is not honoured.)
    """
    if job.state != "PENDING":
        return False, f"not pending ({job.state})"
    dep = job.dependency
    if job.reason == "DependencyNeverSatisfied" or (dep is not None and "(failed)" in dep):
        return False, f"dependency can never be satisfied: {dep or job.reason}"
    if dep is not None:
        return False, f"waiting for dependency {dep}"
    if job.begin_time is not None:
        begin = _parse_time(job.begin_time)
        now = now or datetime.now()
        if begin is not None and begin > now and not (
                job.restarts > 0 and (begin - now).total_seconds() <= REQUEUE_DELAY_MAX_S):
            return False, f"begin time {job.begin_time} not reached"
    try:
        user_hold = job.request().user_hold
    except (ValueError, TypeError):
        return False, "the stamp cannot be read"
    if user_hold:
        return False, "held by its owner (scontrol hold; scontrol release ends it)"
    if job.reason == "JobHeldAdmin":
        return False, "held by an administrator (scontrol hold)"
    if job.reason == "BadConstraints":
        return False, "Slurm cannot satisfy its constraints (BadConstraints)"
    return True, "eligible"


@dataclass(frozen=True)
class SlurmNode:
    """One node record of ``scontrol show node -o``."""

    name: str
    state: str                        # raw, e.g. "IDLE+CLOUD+DRAIN+POWERED_DOWN"
    reason: str = ""
    reason_user: str = ""
    reason_time: str = ""
    gres: str = ""                    # "gpu:h100:8" ("" for none)
    features: tuple[str, ...] = ()    # AvailableFeatures
    active_features: tuple[str, ...] = ()
    partitions: tuple[str, ...] = ()
    cpus: int = 0
    real_memory_mb: int = 0
    node_addr: str = ""
    comment: str = ""
    extra: str = ""
    slurmd_start: str = ""            # SlurmdStartTime, local time, "" if none

    @property
    def base_state(self) -> str:
        """IDLE, ALLOCATED, MIXED, DOWN, FUTURE, ..."""
        return self.state.split("+", 1)[0]

    @property
    def flags(self) -> frozenset[str]:
        """CLOUD, DRAIN, POWERED_DOWN, DYNAMIC_NORM, NOT_RESPONDING, ..."""
        return frozenset(self.state.split("+")[1:])

    @property
    def drained(self) -> bool:
        return "DRAIN" in self.flags

    @property
    def down(self) -> bool:
        return self.base_state == "DOWN"


def _split_list(value: str | None) -> tuple[str, ...]:
    if not value or value in ("(null)", "N/A"):
        return ()
    return tuple(v for v in value.split(",") if v)


def parse_node_line(line: str) -> SlurmNode | None:
    """Parse one ``scontrol show node -o`` line.

    22.05 prints the admin-set free text last, in this order: ``Reason=<text>
    [<user>@<time>]``, ``Comment=<text>``, ``Extra=<text>``; everything before is
    ``Key=Value`` (OS= may hold spaces). The reason ends at its ``[user@time]``.
    """
    line = line.rstrip("\n")
    if not line.startswith("NodeName="):
        return None
    starts = [i for i in (line.find(" Reason="), line.find(" Comment="), line.find(" Extra="))
              if i >= 0]
    cut = min(starts) if starts else len(line)
    head = parse_key_values(line[:cut], free_text_keys=())
    tail = line[cut + 1:] if starts else ""
    reason = reason_user = reason_time = comment = extra = ""
    if tail.startswith("Reason="):
        m = _REASON_STAMP_RE.search(tail)
        if m:
            reason, reason_user, reason_time = tail[7:m.start()], m.group(1), m.group(2)
            tail = tail[m.end() + 1:]
        else:
            ends = [i for i in (tail.find(" Comment="), tail.find(" Extra=")) if i >= 0]
            end = min(ends) if ends else len(tail)
            reason, tail = tail[7:end], tail[end + 1:]
    if tail.startswith("Comment="):
        end = tail.rfind(" Extra=")
        end = end if end >= 0 else len(tail)
        comment, tail = tail[8:end], tail[end + 1:]
    if tail.startswith("Extra="):
        extra = tail[6:]

    def num(key: str) -> int:
        value = head.get(key, "")
        return int(value) if value.isdigit() else 0

    return SlurmNode(
        name=head["NodeName"],
        state=head.get("State", ""),
        reason=reason.rstrip(),
        reason_user=reason_user,
        reason_time=reason_time,
        gres="" if head.get("Gres") in (None, "(null)") else head["Gres"],
        slurmd_start="" if head.get("SlurmdStartTime") in (None, "None", "Unknown")
        else head["SlurmdStartTime"],
        features=_split_list(head.get("AvailableFeatures")),
        active_features=_split_list(head.get("ActiveFeatures")),
        partitions=_split_list(head.get("Partitions")),
        cpus=num("CPUTot"),
        real_memory_mb=num("RealMemory"),
        node_addr=head.get("NodeAddr", ""),
        comment=comment.rstrip(),
        extra=extra.rstrip(),
    )


def parse_nodes(text: str) -> dict[str, SlurmNode]:
    out: dict[str, SlurmNode] = {}
    for line in text.splitlines():
        node = parse_node_line(line)
        if node is not None:
            out[node.name] = node
    return out
