"""The bridge daemon's view of Slurm, through the Slurm CLI only (standard library only).

Slurm 22.05's ``scontrol``/``squeue``/``sinfo`` have no ``--json``, so this module parses
their text output, and every command runs with a timeout: a hung slurmctld raises
``SlurmCommandError`` instead of blocking the daemon.

Reading jobs (``bridged_jobs``) takes two bulk calls and never one per job:

* ``scontrol -a show job -o`` -- every job record on one line, parsed with
  ``records.parse_key_values``;
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
from typing import Union

from slurm_k8s_bridge.core.limits import (
    DEMAND_FORMAT,
    JobDemand,
    SlurmLimits,
    parse_accounting_config,
    parse_assoc_mgr,
    parse_job_demands,
    parse_partition_qos,
)
from slurm_k8s_bridge.slurm.records import (
    _JOB_REF_RE,
    _NODE_NAME_RE,
    SQUEUE_FORMAT,
    SlurmJob,
    SlurmNode,
    merge_jobs,
    parse_nodes,
    parse_scontrol_jobs,
    parse_squeue_rows,
)

#: ``123`` (a job, or every remaining task of a pending array) or ``"123_4"`` (one task).
JobRef = Union[int, str]  # noqa: UP007 (python_requires >= 3.9)

#: Environment variables that change what the Slurm commands print; never inherited.
_OUTPUT_ENV_PREFIXES = ("SQUEUE_", "SINFO_", "SCONTROL_", "SLURM_")


class SlurmCommandError(RuntimeError):
    """A Slurm command failed, timed out, or did not do what it was asked."""

    def __init__(self, cmd: Sequence[str], rc: int, stderr: str) -> None:
        self.cmd = list(cmd)
        self.rc = rc
        self.stderr = stderr
        super().__init__(f"{' '.join(self.cmd)} failed (rc={rc}): {stderr.strip()}")


# ----------------------------------------------------------------------------- jobs


# ----------------------------------------------------------------------------- nodes


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

    def signal_job(self, job: JobRef, signal: int, batch: bool = False) -> None:
        """``scancel --signal``: to the job's steps (Slurm's ``--signal`` without ``B:``), or
        with ``batch`` to the batch shell only (``B:``)."""
        self.run(["scancel", f"--signal={int(signal)}", *(["--batch"] if batch else []),
                  _job_ref(job)])

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


__all__ = ["JobRef", "SlurmClient", "SlurmCommandError"]
