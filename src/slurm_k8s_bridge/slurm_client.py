"""The bridge daemon's view of Slurm, through the Slurm CLI only (standard library only).

Slurm 22.05's ``scontrol``/``squeue``/``sinfo`` have no ``--json``, so this module parses
their text output, and every command runs with a timeout: a hung slurmctld raises
``SlurmCommandError`` instead of blocking the daemon.

Reading jobs (``bridged_jobs``) takes two bulk calls and never one per job:

* ``scontrol -a show job -o`` -- every job record on one line, parsed with
  ``devcluster.parse_key_values``;
* ``squeue -r -a -t all -O JobID:|,...,admin_comment:`` -- only columns that no user can
  put text into (numbers, states, times, partition/node/user names), the AdminComment last.

Why both: ``scontrol show job -o`` is not a safe format. A user controls several of its
fields (JobName, Comment, WorkDir, StdOut, ...), and Slurm prints them raw, newlines
included. Seen on 22.05: ``sbatch --comment '  AdminComment=k8sb1:...'`` on a job of a
non-bridged partition reads, to ``parse_key_values``, exactly like a stamped job, and a
JobName with a newline adds a line that starts ``JobId=<anything>``. A forged stamp could
carry any ``user_id``. So a job counts as bridged only when squeue -- whose columns carry
no user text -- shows the same stamp for the same job id, and every field the daemon
decides on (ids, user, state, reason, priority, dependency, times, partition, nodes, exit
code, requeue, restarts, the stamp) is taken from squeue. Only ``name`` and ``comment``,
free text by nature, come from the scontrol record (best effort).

Times are printed as ``YYYY-MM-DDTHH:MM:SS`` in the local time zone (``SLURM_TIME_FORMAT``
is forced to ``standard``).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Union

from .devcluster.slurm import parse_key_values
from .limits import (
    DEMAND_FORMAT,
    JobDemand,
    SlurmLimits,
    parse_accounting_config,
    parse_assoc_mgr,
    parse_job_demands,
    parse_partition_qos,
)
from .slurm_request import SlurmJobRequest, is_stamp

#: ``123`` (a job, or every remaining task of a pending array) or ``"123_4"`` (one task).
JobRef = Union[int, str]  # noqa: UP007 (python_requires >= 3.9)

#: Environment variables that change what the Slurm commands print; never inherited.
_OUTPUT_ENV_PREFIXES = ("SQUEUE_", "SINFO_", "SCONTROL_", "SLURM_")

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


class SlurmCommandError(RuntimeError):
    """A Slurm command failed, timed out, or did not do what it was asked."""

    def __init__(self, cmd: Sequence[str], rc: int, stderr: str) -> None:
        self.cmd = list(cmd)
        self.rc = rc
        self.stderr = stderr
        super().__init__(f"{' '.join(self.cmd)} failed (rc={rc}): {stderr.strip()}")


# ----------------------------------------------------------------------------- jobs


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


# ----------------------------------------------------------------------------- nodes


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


# ----------------------------------------------------------------------------- client


def _check_text(what: str, text: str, *, empty_ok: bool = True) -> str:
    if "\n" in text or "\r" in text or "\0" in text:
        raise ValueError(f"{what} must be one line: {text!r}")
    if not empty_ok and not text.strip():
        raise ValueError(f"{what} must not be empty")
    return text


def _job_ref(job: JobRef) -> str:
    ref = str(job)
    if not _JOB_REF_RE.match(ref):
        raise ValueError(f"not a job id: {job!r}")
    return ref


def _node_list(names: str | Iterable[str]) -> str:
    items = [names] if isinstance(names, str) else list(names)
    if not items:
        raise ValueError("no node names given")
    for name in items:
        if not _NODE_NAME_RE.match(name):
            raise ValueError(f"not a node name: {name!r}")
    return ",".join(items)


class SlurmClient:
    """Slurm CLI calls for the bridge daemon. Run it as root or SlurmUser.

    ``env`` is laid over the process environment (set ``SLURM_CONF`` there); variables that
    change the commands' output (``SQUEUE_*``, ``SINFO_*``, ``SLURM_*`` other than
    ``SLURM_CONF``) are not inherited. Every command is killed after ``timeout`` seconds.
    """

    def __init__(self, env: Mapping[str, str] | None = None, timeout: float = 15) -> None:
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(_OUTPUT_ENV_PREFIXES) or k == "SLURM_CONF"}
        base.update(env or {})
        base["SLURM_TIME_FORMAT"] = "standard"
        self.env: dict[str, str] = base
        self.timeout = float(timeout)
        self._accounting: tuple[str, frozenset[str]] | None = None
        self._partition_qos: tuple[float, dict[str, str]] | None = None

    # ------------------------------------------------------------------ plumbing

    def run(self, args: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run one Slurm command (no shell); raise ``SlurmCommandError`` on failure/timeout."""
        cmd = list(args)
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8",
                                 errors="replace", env=self.env, timeout=self.timeout,
                                 stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired as exc:
            raise SlurmCommandError(cmd, -1, f"timed out after {self.timeout:g}s") from exc
        except OSError as exc:
            raise SlurmCommandError(cmd, 127, str(exc)) from exc
        if check and res.returncode != 0:
            raise SlurmCommandError(cmd, res.returncode, res.stderr.strip() or res.stdout.strip())
        return res

    def scontrol(self, *args: str) -> str:
        return self.run(["scontrol", *args]).stdout

    # ------------------------------------------------------------------ jobs: read

    def bridged_jobs(self) -> list[SlurmJob]:
        """Every job (any state slurmctld still remembers) whose AdminComment is a stamp."""
        records = parse_scontrol_jobs(self.scontrol("-a", "show", "job", "-o"))
        rows = parse_squeue_rows(self.run(
            ["squeue", "-r", "-h", "-a", "-t", "all", "-O", SQUEUE_FORMAT]).stdout)
        return merge_jobs(records, rows)

    # ------------------------------------------------------------------ jobs: act

    def update_job(self, job: JobRef, **fields: str) -> None:
        """``scontrol update jobid=J Key=Value ...`` (values passed as argv: no quoting)."""
        args = [f"{k}={_check_text(k, v)}" for k, v in fields.items()]
        self.scontrol("update", f"jobid={_job_ref(job)}", *args)

    def set_comment(self, job: JobRef, text: str) -> None:
        """Set the job's Comment (shown by ``squeue -o %k``); spaces and quotes are fine."""
        self.update_job(job, Comment=text)

    def pin_and_release(self, job: JobRef, nodes: Sequence[str],
                        start_now: bool = False) -> None:
        """Pin the job to ``nodes`` (ReqNodeList) and release the bridge's hold.

        ``start_now`` also sets ``StartTime=now``, lifting the delay slurmctld puts on a
        requeued job (EligibleTime = requeue time + ~120 s, the credential lifetime). Use it
        only for a requeued job, never over a user's ``--begin``, and only onto nodes whose
        slurmd did not run the job in the same second: a slurmd refuses a credential created
        in the second it revoked the job's previous one ("Job credential revoked"), and the
        job then ends FAILED. Fresh pods run fresh slurmd, which have no such record.
        """
        fields = {"ReqNodeList": _node_list(nodes)}
        if start_now:
            fields["StartTime"] = "now"
        self.update_job(job, **fields)
        self.scontrol("release", _job_ref(job))

    def hold(self, job: JobRef) -> None:
        """Hold it the way job_submit/k8s does: priority 0, ``JobHeldUser`` (``uhold`` as
        root). A root ``scontrol hold`` would show as ``JobHeldAdmin``, which ``eligible``
        reads as an administrator's hold."""
        self.scontrol("uhold", _job_ref(job))

    def release(self, job: JobRef) -> None:
        self.scontrol("release", _job_ref(job))

    def requeue(self, job: JobRef) -> None:
        """``scontrol requeue``: back to PENDING, *not* held (it starts again, on its
        ReqNodeList, after slurmctld's requeue delay). The daemon normally wants
        ``requeue_hold``."""
        self.scontrol("requeue", _job_ref(job))

    def requeue_hold(self, job: JobRef, unpin: bool = True) -> None:
        """``scontrol requeuehold``: back to PENDING at priority 0 (reason "job requeued in
        held state"); with ``unpin`` the ReqNodeList of the old pods is cleared."""
        self.scontrol("requeuehold", _job_ref(job))
        if unpin:
            self.update_job(job, ReqNodeList="")

    def cancel(self, job: JobRef, reason: str | None = None) -> None:
        """``scancel``; with ``reason`` the Comment says why first (it stays on the record)."""
        if reason:
            self.set_comment(job, reason)
        self.run(["scancel", _job_ref(job)])

    def fail_job(self, job: JobRef, reason: str) -> None:
        """End a job the bridge cannot run, saying why.

        Slurm 22.05 gives a client no way to put a pending job into FAILED: scontrol
        cannot set a job's state, SystemComment is not updatable through scontrol, and a
        ``Deadline`` in the past is not enforced on a held job. What root can do is write
        the reason into the Comment and cancel: the job ends CANCELLED with the reason in
        ``squeue -o %k`` / ``scontrol show job`` (and in sacct where accounting stores
        comments).
        """
        self.cancel(job, f"k8s-bridge: failed: {_check_text('reason', reason, empty_ok=False)}")

    # ------------------------------------------------------------------ limits

    def accounting_config(self, refresh: bool = False) -> tuple[str, frozenset[str]]:
        """(AccountingStorageType, AccountingStorageEnforce words) from ``scontrol show
        config``, read once per client (both change only with a slurmctld restart)."""
        if self._accounting is None or refresh:
            self._accounting = parse_accounting_config(self.scontrol("show", "config"))
        return self._accounting

    def limits(self, partition_qos_ttl: float = 60.0) -> SlurmLimits:
        """Every QOS and association limit slurmctld enforces, with current usage.

        One ``scontrol -o show assoc_mgr flags=assoc,qos`` per call (slurmctld's memory,
        no slurmdbd round trip). Without accounting (``accounting_storage/none``) or when
        ``AccountingStorageEnforce`` does not include ``limits`` (or ``safe``/``all``),
        slurmctld enforces no limits: ``SlurmLimits.none()``, without running anything
        (after the first call's ``scontrol show config``). Partition QOS (``QoS=`` of
        ``scontrol show partition``) are re-read at most every ``partition_qos_ttl`` s.
        """
        kind, enforce = self.accounting_config()
        if kind in ("", "accounting_storage/none") or \
                not enforce & {"limits", "safe", "all"}:
            return SlurmLimits.none()
        text = self.scontrol("-o", "show", "assoc_mgr", "flags=assoc,qos")
        now = time.monotonic()
        if self._partition_qos is None or now - self._partition_qos[0] > partition_qos_ttl:
            self._partition_qos = (now, parse_partition_qos(
                self.scontrol("-a", "show", "partition", "-o")))
        return parse_assoc_mgr(text, enforce, self._partition_qos[1])

    def job_demands(self, states: Sequence[str] = ("PENDING",)
                    ) -> dict[str, tuple[str, JobDemand]]:
        """What each job counts against limits once it runs (user, account, QOS,
        partition, requested TRES, time limit), by scontrol id (``12``, ``4_1``; every
        task of a pending array), from squeue columns no user can write into."""
        res = self.run(["squeue", "-r", "-h", "-a", "-t", ",".join(states),
                        "-O", DEMAND_FORMAT])
        return parse_job_demands(res.stdout)

    # ------------------------------------------------------------------ nodes

    def list_nodes(self) -> dict[str, SlurmNode]:
        """Every node slurmctld shows. Powered-down CLOUD nodes are hidden -- from root
        too, by name too -- unless slurm.conf has ``PrivateData=cloud`` (22.05)."""
        res = self.run(["scontrol", "-a", "show", "node", "-o"])
        return parse_nodes(res.stdout)

    def node(self, name: str) -> SlurmNode | None:
        res = self.run(["scontrol", "show", "node", "-o", _node_list(name)], check=False)
        if res.returncode != 0:
            if "not found" in (res.stderr + res.stdout):
                return None
            raise SlurmCommandError(["scontrol", "show", "node", "-o", name], res.returncode,
                                    res.stderr.strip())
        return parse_nodes(res.stdout).get(name)

    def set_node_state(self, names: str | Iterable[str], state: str,
                       reason: str | None = None) -> None:
        """``drain``/``down`` (a reason is required), ``resume``, ``idle``, ``undrain``.

        On CLOUD nodes created at run time (22.05): drain and down keep the node powered
        down (``drain~``/``down~``) with the reason; ``idle`` clears either back to
        ``idle~``; ``resume`` does too but adds NOT_RESPONDING, and fails ("Invalid node
        state specified") on a node that is neither drained nor down -- treated here as
        already done.
        """
        state = state.lower()
        if state not in ("drain", "down", "resume", "idle", "undrain"):
            raise ValueError(f"unsupported node state {state!r}")
        nodes = _node_list(names)
        args = ["update", f"nodename={nodes}", f"state={state}"]
        if state in ("drain", "down") and not reason:
            raise ValueError(f"state={state} needs a reason")
        if reason:
            args.append(f"reason={_check_text('reason', reason, empty_ok=False)}")
        try:
            self.scontrol(*args)
        except SlurmCommandError as exc:
            if state != "resume" or "Invalid node state" not in exc.stderr:
                raise
            current = self.list_nodes()
            busy = [n for n in nodes.split(",")
                    if n not in current or current[n].drained or current[n].down]
            if busy:
                raise

    def node_down(self, names: str | Iterable[str], reason: str) -> None:
        self.set_node_state(names, "down", reason)

    def node_drain(self, names: str | Iterable[str], reason: str) -> None:
        self.set_node_state(names, "drain", reason)

    def node_resume(self, names: str | Iterable[str]) -> None:
        self.set_node_state(names, "resume")

    def set_node_comment(self, name: str, text: str) -> None:
        self.scontrol("update", f"nodename={_node_list(name)}",
                      f"comment={_check_text('comment', text)}")

    def delete_node(self, name: str) -> None:
        """``scontrol delete nodename=``: refused while a job runs on it."""
        self.scontrol("delete", f"nodename={_node_list(name)}")

    def create_cloud_node(self, name: str, cpus: int, real_memory_mb: int, gres: str,
                          features: Sequence[str], state: str = "CLOUD") -> SlurmNode:
        """``scontrol create NodeName=... State=CLOUD`` and return the new node.

        22.05 answers rc 0 even when it created nothing -- node table full (slurm.conf
        needs ``MaxNodeCount`` above the configured node count) or name already taken --
        so the node is checked before and after. It joins every partition holding a
        ``NodeSet`` whose ``Feature=`` it has (or ``Nodes=ALL``). Its GPU count cannot be
        changed later (``scontrol update gres=`` refuses anything but 0): delete and
        create it again (``recreate_cloud_node``).
        """
        if state.upper() not in ("CLOUD", "FUTURE"):
            raise ValueError("scontrol create accepts only State=CLOUD or State=FUTURE")
        for feature in features:
            if not re.match(r"^[A-Za-z0-9_.\-]+$", feature):
                raise ValueError(f"not a feature name: {feature!r}")
        if gres and not re.match(r"^[A-Za-z0-9_.:\-,]+$", gres):
            raise ValueError(f"not a gres specification: {gres!r}")
        if self.node(name) is not None:
            raise SlurmCommandError(["scontrol", "create", f"NodeName={name}"], 0,
                                    f"node {name} already exists")
        cmd = ["create", f"NodeName={_node_list(name)}", f"CPUs={int(cpus)}",
               f"RealMemory={int(real_memory_mb)}"]
        if gres:
            cmd.append(f"Gres={gres}")
        if features:
            cmd.append(f"Feature={','.join(features)}")
        cmd.append(f"State={state.upper()}")
        self.scontrol(*cmd)
        node = self.node(name)
        if node is None:
            raise SlurmCommandError(["scontrol", *cmd], 0,
                                    f"slurmctld shows no node {name} after the create: the "
                                    "node table is full (slurm.conf needs MaxNodeCount above "
                                    "the number of nodes) or powered-down CLOUD nodes are "
                                    "hidden (slurm.conf needs PrivateData=cloud)")
        return node

    def recreate_cloud_node(self, name: str, cpus: int, real_memory_mb: int, gres: str,
                            features: Sequence[str], state: str = "CLOUD") -> SlurmNode:
        """Delete (if present) and create again: how a GPU count changes on 22.05.
        The drain/down state and its reason do not carry over; set them again."""
        if self.node(name) is not None:
            self.delete_node(name)
        return self.create_cloud_node(name, cpus, real_memory_mb, gres, features, state)

    def sinfo_nodes(self) -> dict[str, tuple[str, str, str]]:
        """``sinfo -N -o '%N|%t|%G|%E'``: name -> (compact state, gres, reason), as users see it."""
        res = self.run(["sinfo", "-N", "-h", "-a", "-o", "%N|%t|%G|%E"])
        out: dict[str, tuple[str, str, str]] = {}
        for line in res.stdout.splitlines():
            parts = line.split("|", 3)
            if len(parts) == 4:
                out[parts[0]] = (parts[1], parts[2], parts[3])
        return out


__all__ = [
    "JobRef",
    "SlurmClient",
    "SlurmCommandError",
    "SlurmJob",
    "SlurmNode",
    "eligible",
    "expand_array_tasks",
    "format_exit_code",
    "merge_jobs",
    "parse_node_line",
    "parse_nodes",
    "parse_scontrol_jobs",
    "parse_squeue_rows",
    "pending_order",
]
