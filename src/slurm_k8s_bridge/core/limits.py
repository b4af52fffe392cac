"""Slurm's QOS and association limits, evaluated for held bridged jobs (pure, no I/O).

A bridged job sits held (priority 0, ``JobHeldUser``) until the bridge releases it, so
slurmctld never checks its limits: its Reason never turns into ``QOSMaxJobsPerUserLimit``
or ``AssocGrpGRES``. The bridge must not create pods for a job Slurm would not start, so it
checks the limits itself, from slurmctld's own limit and usage data, the way slurmctld
22.05 does (``src/slurmctld/acct_policy.c``, ``acct_policy_job_runnable_pre_select`` and
``_post_select``), and counts the gangs it is admitting (pods created, Slurm job not yet
running) as if they were running.

The data: ``scontrol -o show assoc_mgr flags=assoc,qos`` (``parse_assoc_mgr``). It is
slurmctld's in-memory association manager -- the same limits and usage slurmctld enforces
with, no slurmdbd round trip. Every limit prints as ``limit(used)``, ``N`` for none:
``GrpJobs=4(1)``, ``GrpTRES=cpu=N(3),mem=16384(700),...,gres/gpu=8(3)`` (memory in MB).
Per-user and per-account QOS limits (``MaxJobsPU``, ``MaxTRESPU``, ``MaxJobsPA``,
``MaxTRESPA``) print only inside a QOS's ``User Limits=`` / ``Account Limits=`` records,
which slurmctld creates when a user/account first submits a job in that QOS. A held
bridged job is such a submission, so its user's record is always there; the limit value
is a QOS attribute, the same in every record, so a user without a record gets the limit
from any other record, with usage 0.

Rules taken from 22.05's acct_policy.c (what ``check_limits`` does, in that order):

* QOS: the partition's QOS first, then the job's QOS (unless the job's QOS has the
  ``OverPartQOS`` flag, which assoc_mgr does not print: ``job_qos_first``). A limit set in
  the first QOS hides the same limit of the second.
* Job counts (pre-select): QOS ``GrpJobs`` (used >= limit: ``QOSGrpJobsLimit``),
  ``MaxJobsPA`` (``MaxJobsPerAccount``), ``MaxJobsPU`` (``QOSMaxJobsPerUserLimit``); then
  each association from the job's up to root: ``GrpJobs`` unless a QOS set GrpJobs
  (``AssocGrpJobsLimit``); on the job's own association only, ``MaxJobs`` unless a QOS set
  MaxJobsPA or MaxJobsPU (``AssocMaxJobsLimit``). Max* limits of parents need no walk:
  slurmctld propagates them down (assoc_mgr shows them on the child).
* TRES (post-select), per TRES: QOS ``GrpTRES`` (used + requested > limit:
  ``QOSGrpGRES``, ``QOSGrpCpuLimit``, ...), ``MaxTRESPJ`` (requested > limit),
  ``MaxTRESPN`` (per node), ``MaxTRESPA``, ``MaxTRESPU``; then each association up to root:
  ``GrpTRES`` for the TRES no QOS limits with GrpTRES (``AssocGrpGRES``, ...); on the
  job's own association ``MaxTRESPJ``/``MaxTRESPN`` not set by a QOS.
* Wall time: ``MaxWallPJ`` of the QOS, else of the association, when the job's time limit
  is known.

Not evaluated: TRES-minutes limits (``GrpTRESMins``, ``GrpTRESRunMins``, ``MaxTRESMinsPJ``),
``GrpWall``, ``MinTRESPJ``, QOS ``LimitFactor``/``UsageFactor``, licenses. A request that
alone exceeds a limit (``MaxTRESPJ``, or more than ``GrpTRES``) is reported like the
others, with "never fits" in the text: Slurm 22.05 keeps such a job pending with that
reason, unless a QOS of the job has ``DenyOnLimit``, in which case sbatch refused it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

#: The TRES the checks look at when a job asks for them (any TRES name works; these are
#: the ones a bridged job carries).
KNOWN_TRES = ("cpu", "mem", "node", "billing", "gres/gpu")

_MEM_UNITS = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024, "P": 1024 ** 3}


# ----------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Usage:
    """One limit with its current usage; ``limit`` None = no limit (``N``)."""

    limit: int | None
    used: int = 0


_NO_LIMIT = Usage(None, 0)


def _int(value: str) -> int:
    """``8`` / ``0.00`` / ``N`` (-> 0); what is not a finite number (``inf``, ``nan``) -> 0."""
    try:
        return int(float(value))
    except (ValueError, OverflowError):
        return 0


def parse_usage(value: str) -> Usage:
    """``4(1)`` -> Usage(4, 1); ``N(0)`` -> Usage(None, 0); ``5`` -> Usage(5); ``""`` -> none."""
    value = value.strip()
    m = re.fullmatch(r"([^()]*)(?:\(([^()]*)\))?", value)
    if not m:
        return _NO_LIMIT
    limit_s, used_s = m.group(1), m.group(2)
    limit = None if limit_s in ("", "N") else _int(limit_s)
    return Usage(limit, _int(used_s) if used_s else 0)


def _split_tres_items(value: str) -> Iterable[tuple[str, str]]:
    for item in value.split(","):
        name, sep, rest = item.strip().partition("=")
        if sep and name:
            yield name, rest


def parse_tres_usage(value: str) -> dict[str, Usage]:
    """``cpu=N(3),mem=16384(700),gres/gpu=8(3)`` -> {name: Usage}, limited TRES only."""
    out: dict[str, Usage] = {}
    for name, rest in _split_tres_items(value):
        usage = parse_usage(rest)
        out[name] = usage
    return out


def parse_tres_limits(value: str) -> dict[str, int]:
    """``gres/gpu=8,cpu=32`` (MaxTRESPJ=, MaxTRESPN=) -> {name: limit}; ``""`` -> {}."""
    out: dict[str, int] = {}
    for name, rest in _split_tres_items(value):
        usage = parse_usage(rest)
        if usage.limit is not None:
            out[name] = usage.limit
    return out


def parse_tres(value: str) -> dict[str, int]:
    """A job's TRES as squeue/scontrol print it -> counts; memory in MB.

    ``cpu=8,mem=8G,node=1,billing=8,gres/gpu=4`` -> {"cpu": 8, "mem": 8192, "node": 1,
    "billing": 8, "gres/gpu": 4}. ``(null)``/``N/A``/empty -> {}. Slurm prints memory with
    a unit (``500M``, ``8G``); other counts plain, or with a 1024-based suffix when large.
    """
    out: dict[str, int] = {}
    if value.strip() in ("", "(null)", "N/A"):
        return out
    for name, rest in _split_tres_items(value):
        m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGTP]?)", rest.strip())
        if not m:
            continue
        number, unit = float(m.group(1)), m.group(2)
        if name == "mem":
            number *= _MEM_UNITS[unit or "M"]
        elif unit:
            number *= 1024 ** ("KMGTP".index(unit) + 1)
        if number < 2**63:  # inf for a number too long for a float: not one Slurm prints
            out[name] = round(number)
    return out


def parse_time_limit(value: str) -> int | None:
    """squeue's TimeLimit -> minutes (``1-02:03:04``, ``1:00:00``, ``30:00``, ``5``);
    ``UNLIMITED``/``INVALID``/``N/A`` -> None (rounded up, as Slurm counts whole minutes)."""
    value = value.strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value)
    if not m:
        return None
    days = int(m.group(1) or 0)
    parts = [int(p) for p in m.group(2, 3, 4) if p is not None]
    if m.group(1) is not None:
        hours, minutes, seconds = (parts + [0, 0, 0])[:3]
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    elif len(parts) == 2:
        hours, (minutes, seconds) = 0, parts
    else:
        hours, minutes, seconds = 0, parts[0], 0
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    return (total + 59) // 60


@dataclass(frozen=True)
class QosShare:
    """A QOS's per-user or per-account record: ``MaxJobsPU``/``MaxTRESPU`` (or ``PA``)."""

    max_jobs: Usage = _NO_LIMIT
    max_tres: Mapping[str, Usage] = field(default_factory=dict)


@dataclass(frozen=True)
class QosLimits:
    name: str
    id: int
    grp_jobs: Usage = _NO_LIMIT
    grp_tres: Mapping[str, Usage] = field(default_factory=dict)
    max_wall_pj: int | None = None                  # minutes
    max_tres_pj: Mapping[str, int] = field(default_factory=dict)
    max_tres_pn: Mapping[str, int] = field(default_factory=dict)
    accounts: Mapping[str, QosShare] = field(default_factory=dict)
    users: Mapping[int, QosShare] = field(default_factory=dict)

    def user_share(self, uid: int) -> QosShare:
        """The user's record; without one (no job of theirs in this QOS yet), the QOS's
        per-user limits (from any user's record) with no usage."""
        return self.users.get(uid) or _unused(self.users.values())

    def account_share(self, account: str) -> QosShare:
        return self.accounts.get(account) or _unused(self.accounts.values())


def _unused(shares: Iterable[QosShare]) -> QosShare:
    for share in shares:
        return QosShare(Usage(share.max_jobs.limit, 0),
                        {k: Usage(v.limit, 0) for k, v in share.max_tres.items()})
    return QosShare()


@dataclass(frozen=True)
class Association:
    """One association record; ``user`` is "" for an account's own association."""

    id: int
    account: str
    user: str = ""
    uid: int | None = None
    partition: str = ""
    parent_id: int | None = None                    # account associations only (see parent)
    grp_jobs: Usage = _NO_LIMIT
    grp_tres: Mapping[str, Usage] = field(default_factory=dict)
    max_jobs: Usage = _NO_LIMIT                     # propagated from parents by slurmctld
    max_wall_pj: int | None = None
    max_tres_pj: Mapping[str, int] = field(default_factory=dict)
    max_tres_pn: Mapping[str, int] = field(default_factory=dict)

    @property
    def label(self) -> str:
        who = f"user {self.user} in account {self.account}" if self.user \
            else f"account {self.account}"
        return who + (f" (partition {self.partition})" if self.partition else "")


#: ``AccountingStorageEnforce`` words that make slurmctld enforce limits (22.05:
#: ``limits`` and ``safe`` set ACCOUNTING_ENFORCE_LIMITS; ``all`` sets everything).
_LIMIT_WORDS = frozenset({"limits", "safe", "all"})


@dataclass(frozen=True)
class SlurmLimits:
    """Every QOS and association slurmctld enforces, with usage, at one moment."""

    enforce: frozenset[str] = frozenset()         # AccountingStorageEnforce words
    qos: Mapping[str, QosLimits] = field(default_factory=dict)
    associations: Mapping[int, Association] = field(default_factory=dict)
    partition_qos: Mapping[str, str] = field(default_factory=dict)   # partition -> QOS

    @classmethod
    def none(cls) -> SlurmLimits:
        """No limits: accounting off, or limits not enforced."""
        return cls()

    @property
    def enforced(self) -> bool:
        return bool(self.enforce & _LIMIT_WORDS)

    def association_for(self, uid: int, account: str, partition: str) -> Association | None:
        """The association slurmctld charges: (user, account, partition) if it exists,
        else (user, account)."""
        fallback = None
        for assoc in self.associations.values():
            if assoc.uid != uid or assoc.account != account:
                continue
            if assoc.partition == partition and partition:
                return assoc
            if not assoc.partition:
                fallback = assoc
        return fallback

    def parent(self, assoc: Association) -> Association | None:
        """A user association's parent is its account's association (assoc_mgr prints
        no ParentAccount for it); an account's is the one named in ParentAccount."""
        if assoc.user:
            for other in self.associations.values():
                if not other.user and other.account == assoc.account:
                    return other
            return None
        return self.associations.get(assoc.parent_id) if assoc.parent_id is not None \
            else None

    def lineage(self, assoc: Association) -> list[Association]:
        """The association, its parent, ..., root."""
        chain: list[Association] = []
        current: Association | None = assoc
        while current is not None and current not in chain and len(chain) < 64:
            chain.append(current)
            current = self.parent(current)
        return chain

    def qos_order(self, job: JobDemand) -> list[QosLimits]:
        """The QOS whose limits apply, first one first: the partition's QOS, then the
        job's (the other way round with ``job.job_qos_first``, i.e. OverPartQOS)."""
        names: list[str] = []
        part_qos = self.partition_qos.get(job.partition, "")
        if job.job_qos_first:
            names = [job.qos, part_qos]
        else:
            names = [part_qos, job.qos]
        out: list[QosLimits] = []
        for name in names:
            qos = self.qos.get(name)
            if qos is not None and qos not in out:
                out.append(qos)
        return out


def _owner(value: str) -> tuple[str, int | None]:
    """``bridgeuser(1001)`` -> ("bridgeuser", 1001); ``research(3)`` -> ("research", 3)."""
    m = re.fullmatch(r"(.*)\((\d+)\)", value)
    if m:
        return m.group(1), int(m.group(2))
    return value, None


def _wall(value: str) -> int | None:
    value = value.strip()
    return int(value) if value.isdigit() else None


def _fields(text: str) -> dict[str, str]:
    """``Key=Value`` tokens of one ``scontrol -o show assoc_mgr`` record (values hold no
    spaces, except the QOS's trailing ``Account Limits=``/``User Limits=`` parts, which
    the caller cuts off first)."""
    out: dict[str, str] = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep and key not in out:
            out[key] = value
    return out


def _shares(text: str) -> dict[str, QosShare]:
    """``team-a={MaxJobsPA=3(1) ... MaxTRESPA=cpu=N(2),...} 1001={...}`` -> by name/uid."""
    out: dict[str, QosShare] = {}
    for m in re.finditer(r"(\S+)=\{([^{}]*)\}", text):
        rec = _fields(m.group(2))
        jobs = rec.get("MaxJobsPU", rec.get("MaxJobsPA", ""))
        tres = rec.get("MaxTRESPU", rec.get("MaxTRESPA", ""))
        out[m.group(1)] = QosShare(parse_usage(jobs), parse_tres_usage(tres))
    return out


def _parse_qos_line(line: str) -> QosLimits:
    users_text = accounts_text = ""
    cut = line.find(" Account Limits=")
    if cut >= 0:
        tail = line[cut:]
        line = line[:cut]
        ucut = tail.find(" User Limits=")
        accounts_text = tail[len(" Account Limits="):ucut if ucut >= 0 else len(tail)]
        users_text = tail[ucut + len(" User Limits="):] if ucut >= 0 else ""
    rec = _fields(line)
    name, qid = _owner(rec["QOS"])
    users = {int(k): v for k, v in _shares(users_text).items() if k.isdigit()}
    return QosLimits(
        name=name, id=qid if qid is not None else 0,
        grp_jobs=parse_usage(rec.get("GrpJobs", "")),
        grp_tres={k: v for k, v in parse_tres_usage(rec.get("GrpTRES", "")).items()},
        max_wall_pj=_wall(rec.get("MaxWallPJ", "")),
        max_tres_pj=parse_tres_limits(rec.get("MaxTRESPJ", "")),
        max_tres_pn=parse_tres_limits(rec.get("MaxTRESPN", "")),
        accounts=_shares(accounts_text),
        users=users,
    )


def _parse_assoc_line(line: str) -> Association:
    rec = _fields(line)
    user, uid = _owner(rec.get("UserName", ""))
    _parent_name, parent_id = _owner(rec.get("ParentAccount", ""))
    return Association(
        id=_int(rec.get("ID", "0")),
        account=rec.get("Account", ""),
        user=user, uid=uid,
        partition=rec.get("Partition", ""),
        parent_id=parent_id,
        grp_jobs=parse_usage(rec.get("GrpJobs", "")),
        grp_tres=parse_tres_usage(rec.get("GrpTRES", "")),
        max_jobs=parse_usage(rec.get("MaxJobs", "")),
        max_wall_pj=_wall(rec.get("MaxWallPJ", "")),
        max_tres_pj=parse_tres_limits(rec.get("MaxTRESPJ", "")),
        max_tres_pn=parse_tres_limits(rec.get("MaxTRESPN", "")),
    )


def parse_assoc_mgr(text: str, enforce: Iterable[str] = ("associations", "limits", "qos"),
                    partition_qos: Mapping[str, str] | None = None) -> SlurmLimits:
    """Parse ``scontrol -o show assoc_mgr flags=assoc,qos`` (one record per line).

    ``enforce``: the words of ``AccountingStorageEnforce`` (``parse_accounting_config``);
    ``partition_qos``: partition -> its ``QOS=`` (``parse_partition_qos``).
    """
    qos: dict[str, QosLimits] = {}
    assocs: dict[int, Association] = {}
    for line in text.splitlines():
        line = line.rstrip()
        if line.startswith("QOS="):
            q = _parse_qos_line(line)
            qos[q.name] = q
        elif line.startswith("ClusterName="):
            a = _parse_assoc_line(line)
            assocs[a.id] = a
    return SlurmLimits(enforce=frozenset(w.strip().lower() for w in enforce if w.strip()),
                       qos=qos, associations=assocs,
                       partition_qos=dict(partition_qos or {}))


def parse_accounting_config(text: str) -> tuple[str, frozenset[str]]:
    """``scontrol show config`` -> (AccountingStorageType, AccountingStorageEnforce words).

    ``accounting_storage/none`` (no slurmdbd) or an Enforce without ``limits``/``safe``/
    ``all`` means slurmctld enforces no limits (``SlurmLimits.none()``).
    """
    kind, enforce = "", ""
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "AccountingStorageType":
            kind = value
        elif key == "AccountingStorageEnforce":
            enforce = value
    words = frozenset(w.strip().lower() for w in enforce.split(",")
                      if w.strip() and w.strip().lower() not in ("none", "(null)"))
    return kind, words


def parse_partition_qos(text: str) -> dict[str, str]:
    """``scontrol show partition -o`` -> {partition: its QOS} (partitions with one)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        name = re.search(r"(?:^| )PartitionName=(\S+)", line)
        qos = re.search(r" QoS=(\S+)", line)
        if name and qos and qos.group(1) not in ("N/A", "(null)", ""):
            out[name.group(1)] = qos.group(1)
    return out


# ----------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class JobDemand:
    """What one job counts against limits once it runs."""

    user_id: int
    account: str
    qos: str
    partition: str
    tres: Mapping[str, int]           # cpu, mem (MB), node, billing, gres/gpu, ...
    time_limit_min: int | None = None
    job_qos_first: bool = False       # the job's QOS has OverPartQOS (not visible in assoc_mgr)
    user_name: str = ""

    @property
    def nodes(self) -> int:
        return max(1, self.tres.get("node", 1))


#: squeue columns ``job_demands`` reads (none can hold user text; TRES last).
DEMAND_FIELDS = ("JobID", "ArrayJobID", "ArrayTaskID", "UserID", "UserName", "State",
                 "Account", "QOS", "Partition", "TimeLimit", "tres-alloc")
DEMAND_FORMAT = ",".join(f"{f}:|" for f in DEMAND_FIELDS[:-1]) + f",{DEMAND_FIELDS[-1]}:"


def parse_job_demands(text: str) -> dict[str, tuple[str, JobDemand]]:
    """Rows of ``squeue -r -h -a -t all -O DEMAND_FORMAT`` -> {slurm id: (state, demand)}.

    The slurm id is how scontrol names the job: ``12``, or ``4_1`` for an array task (also
    for each task of a pending array record), the same as ``GangKey.slurm_id``. For a
    pending job, squeue's ``tres-alloc`` column holds the requested TRES (what slurmctld
    will count when it starts, except that ``--exclusive`` then takes every CPU of the
    node: the request shows ``cpu=1``).
    """
    out: dict[str, tuple[str, JobDemand]] = {}
    n = len(DEMAND_FIELDS)
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("|", n - 1)]
        if len(parts) != n:
            continue
        row = dict(zip(DEMAND_FIELDS, parts))
        if not (row["JobID"].isdigit() and row["UserID"].isdigit()):
            continue
        if row["ArrayTaskID"].isdigit() and row["ArrayJobID"].isdigit():
            key = f"{row['ArrayJobID']}_{row['ArrayTaskID']}"
        else:
            key = row["JobID"]
        out[key] = (row["State"], JobDemand(
            user_id=int(row["UserID"]), user_name=row["UserName"],
            account=row["Account"], qos=row["QOS"],
            partition=row["Partition"].split(",")[0],
            tres=parse_tres(row["tres-alloc"]),
            time_limit_min=parse_time_limit(row["TimeLimit"])))
    return out


# ----------------------------------------------------------------------------- decision


# Slurm 22.05's reason names (slurm_protocol_defs.c job_reason_string), by kind of limit
# and TRES; other TRES get the "Unknown" name, as in acct_policy.c _get_tres_state_reason.
#: one row per kind of limit, one column per TRES ("-": Slurm has no name for it, the
#: "(other)" one applies)
_REASON_TABLE = """
kind      cpu                    mem                 node                    billing                gres                (other)
qos_grp   QOSGrpCpuLimit         QOSGrpMemLimit      QOSGrpNodeLimit         QOSGrpBilling          QOSGrpGRES          QOSGrpUnknown
qos_pj    QOSMaxCpuPerJobLimit   QOSMaxMemoryPerJob  QOSMaxNodePerJobLimit   QOSMaxBillingPerJob    QOSMaxGRESPerJob    QOSMaxUnknownPerJob
qos_pn    QOSMaxCpuPerNode       QOSMaxMemoryPerNode -                       QOSMaxBillingPerNode   QOSMaxGRESPerNode   QOSMaxUnknownPerNode
qos_pa    MaxCpuPerAccount       MaxMemoryPerAccount MaxNodePerAccount       MaxBillingPerAccount   MaxGRESPerAccount   MaxUnknownPerAccount
qos_pu    QOSMaxCpuPerUserLimit  QOSMaxMemoryPerUser QOSMaxNodePerUserLimit  QOSMaxBillingPerUser   QOSMaxGRESPerUser   QOSMaxUnknownPerUser
assoc_grp AssocGrpCpuLimit       AssocGrpMemLimit    AssocGrpNodeLimit       AssocGrpBilling        AssocGrpGRES        AssocGrpUnknown
assoc_pj  AssocMaxCpuPerJobLimit AssocMaxMemPerJob   AssocMaxNodePerJobLimit AssocMaxBillingPerJob  AssocMaxGRESPerJob  AssocMaxUnknownPerJob
assoc_pn  AssocMaxCpuPerNode     AssocMaxMemPerNode  -                       AssocMaxBillingPerNode AssocMaxGRESPerNode AssocMaxUnknownPerNode
"""


def _reason_table(text: str) -> dict[str, dict[str, str]]:
    header, *rows = (line.split() for line in text.strip().splitlines())
    tres = [("" if name == "(other)" else name) for name in header[1:]]
    return {row[0]: {t: n for t, n in zip(tres, row[1:]) if n != "-"} for row in rows}


_REASONS: dict[str, dict[str, str]] = _reason_table(_REASON_TABLE)

#: The options a limit comes from, for the explanation.
_OPTION = {"qos_grp": "GrpTRES", "qos_pj": "MaxTRESPerJob", "qos_pn": "MaxTRESPerNode",
           "qos_pa": "MaxTRESPerAccount", "qos_pu": "MaxTRESPerUser",
           "assoc_grp": "GrpTRES", "assoc_pj": "MaxTRESPerJob", "assoc_pn": "MaxTRESPerNode"}


def reason_name(kind: str, tres: str) -> str:
    """Slurm's reason for a TRES limit: ``reason_name("qos_pu", "gres/gpu")`` ->
    ``QOSMaxGRESPerUser``."""
    names = _REASONS[kind]
    key = "gres" if tres.startswith("gres/") else tres
    return names.get(key, names[""])


class _Admitting:
    """Usage the bridge adds on top of slurmctld's: the gangs it is admitting, counted
    where slurmctld will count them once they run (both QOS, the QOS's per-user and
    per-account records, the association and every parent)."""

    def __init__(self, jobs: Iterable[JobDemand], limits: SlurmLimits) -> None:
        self.counts: Counter[tuple[object, ...]] = Counter()
        for job in jobs:
            self._add(job, limits)

    def _add(self, job: JobDemand, limits: SlurmLimits) -> None:
        items = [("job", 1), *((f"tres:{t}", n) for t, n in job.tres.items())]
        for qos in limits.qos_order(job):
            for what, n in items:
                self.counts[("qos", qos.name, what)] += n
                self.counts[("qos_user", qos.name, job.user_id, what)] += n
                self.counts[("qos_acct", qos.name, job.account, what)] += n
        assoc = limits.association_for(job.user_id, job.account, job.partition)
        if assoc is not None:
            for level in limits.lineage(assoc):
                for what, n in items:
                    self.counts[("assoc", level.id, what)] += n

    def __call__(self, *key: object) -> int:
        return self.counts.get(key, 0)


def _tres_text(tres: str, n: int) -> str:
    return f"{tres}={n}"


def check_limits(job: JobDemand, limits: SlurmLimits,
                 admitting: Iterable[JobDemand] = ()) -> tuple[bool, str]:
    """Would slurmctld's QOS and association limits let ``job`` start now?

    ``admitting``: the other jobs whose pods the bridge created but which do not run yet
    (slurmctld does not count them; they count here as running). Pass every such job of
    the cluster: only those sharing a QOS, account (or parent account) or user with
    ``job`` change the answer. A job that is already running must not be in it (it would
    count twice).

    Returns ``(True, "")`` or ``(False, reason)``; ``reason`` starts with Slurm's own
    reason name (the one squeue would show were the job not held), then what limit and
    usage made it: ``"QOSMaxJobsPerUserLimit (QOS gpu1: MaxJobsPerUser=1, user 1001 has
    1 running or being admitted)"``. ``reason.split(" ", 1)[0]`` is the name alone.
    """
    if not limits.enforced:
        return True, ""
    extra = _Admitting(admitting, limits)
    qos_chain = limits.qos_order(job)
    assoc = limits.association_for(job.user_id, job.account, job.partition)
    chain = limits.lineage(assoc) if assoc is not None else []
    who = job.user_name or f"user {job.user_id}"
    if not who.startswith("user "):
        who = f"user {who}"

    # -- pre-select: job counts, wall time -------------------------------------------
    done: set[str] = set()   # the job-count limits a QOS earlier in the chain set
    set_wall = False
    for qos in qos_chain:
        share_a, share_u = qos.account_share(job.account), qos.user_share(job.user_id)
        # (limit, its count, the extra key of gangs being admitted, the refusal's words)
        counts = (("grp_jobs", qos.grp_jobs, ("qos", qos.name, "job"),
                   "QOSGrpJobsLimit (QOS {qos}: GrpJobs={limit}, {used} running or being admitted)"),
                  ("jobs_pa", share_a.max_jobs, ("qos_acct", qos.name, job.account, "job"),
                   "MaxJobsPerAccount (QOS {qos}: MaxJobsPerAccount={limit}, account {account} "
                   "has {used} running or being admitted)"),
                  ("jobs_pu", share_u.max_jobs, ("qos_user", qos.name, job.user_id, "job"),
                   "QOSMaxJobsPerUserLimit (QOS {qos}: MaxJobsPerUser={limit}, {who} has {used} "
                   "running or being admitted)"))
        for name, count, key, words in counts:
            if name in done or count.limit is None:
                continue
            done.add(name)
            used = count.used + extra(*key)
            if used >= count.limit:
                return False, words.format(qos=qos.name, limit=count.limit, used=used,
                                           account=job.account, who=who)
        if job.time_limit_min is not None and not set_wall and qos.max_wall_pj is not None:
            set_wall = True
            if job.time_limit_min > qos.max_wall_pj:
                return False, (f"QOSMaxWallDurationPerJobLimit (QOS {qos.name}: MaxWall="
                               f"{qos.max_wall_pj} min, job asks {job.time_limit_min}; "
                               "never fits)")
    for depth, level in enumerate(chain):
        if "grp_jobs" not in done and level.grp_jobs.limit is not None:
            used = level.grp_jobs.used + extra("assoc", level.id, "job")
            if used >= level.grp_jobs.limit:
                return False, (f"AssocGrpJobsLimit ({level.label}: GrpJobs="
                               f"{level.grp_jobs.limit}, {used} running or being admitted)")
        if depth > 0:
            continue
        if not done & {"jobs_pa", "jobs_pu"} and level.max_jobs.limit is not None:
            used = level.max_jobs.used + extra("assoc", level.id, "job")
            if used >= level.max_jobs.limit:
                return False, (f"AssocMaxJobsLimit ({level.label}: MaxJobs="
                               f"{level.max_jobs.limit}, {used} running or being admitted)")
        if job.time_limit_min is not None and not set_wall and level.max_wall_pj is not None \
                and job.time_limit_min > level.max_wall_pj:
            return False, (f"AssocMaxWallDurationPerJobLimit ({level.label}: MaxWall="
                           f"{level.max_wall_pj} min, job asks {job.time_limit_min}; "
                           "never fits)")

    # -- post-select: TRES -----------------------------------------------------------
    set_grp: set[str] = set()
    set_pj: set[str] = set()
    set_pn: set[str] = set()
    set_pa: set[str] = set()
    set_pu: set[str] = set()
    for qos in qos_chain:
        for tres, usage in qos.grp_tres.items():
            if usage.limit is None or tres in set_grp:
                continue
            set_grp.add(tres)
            req = job.tres.get(tres, 0)
            used = usage.used + extra("qos", qos.name, f"tres:{tres}")
            if req > usage.limit:
                return False, (f"{reason_name('qos_grp', tres)} (QOS {qos.name}: GrpTRES="
                               f"{_tres_text(tres, usage.limit)}, job asks {req}; never fits)")
            if req and used + req > usage.limit:
                return False, (f"{reason_name('qos_grp', tres)} (QOS {qos.name}: GrpTRES="
                               f"{_tres_text(tres, usage.limit)}, {used} in use or being "
                               f"admitted, job asks {req})")
        for kind, table, seen in (("qos_pj", qos.max_tres_pj, set_pj),
                                  ("qos_pn", qos.max_tres_pn, set_pn)):
            why = _max_tres_refusal(kind, table, seen, job, f"QOS {qos.name}", claim=True)
            if why:
                return False, why
        for kind, share, seen, key, what in (
                ("qos_pa", qos.account_share(job.account), set_pa, job.account,
                 f"account {job.account}"),
                ("qos_pu", qos.user_share(job.user_id), set_pu, job.user_id, who)):
            for tres, usage in share.max_tres.items():
                if usage.limit is None or tres in seen:
                    continue
                seen.add(tres)
                req = job.tres.get(tres, 0)
                used = usage.used + extra("qos_acct" if kind == "qos_pa" else "qos_user",
                                          qos.name, key, f"tres:{tres}")
                if req and used + req > usage.limit:
                    return False, (f"{reason_name(kind, tres)} (QOS {qos.name}: "
                                   f"{_OPTION[kind]}={_tres_text(tres, usage.limit)}, {what} "
                                   f"has {used} in use or being admitted, job asks {req}"
                                   f"{'; never fits' if req > usage.limit else ''})")
    for depth, level in enumerate(chain):
        for tres, usage in level.grp_tres.items():
            if usage.limit is None or tres in set_grp:
                continue
            req = job.tres.get(tres, 0)
            used = usage.used + extra("assoc", level.id, f"tres:{tres}")
            if req and used + req > usage.limit:
                return False, (f"{reason_name('assoc_grp', tres)} ({level.label}: GrpTRES="
                               f"{_tres_text(tres, usage.limit)}, {used} in use or being "
                               f"admitted, job asks {req}"
                               f"{'; never fits' if req > usage.limit else ''})")
        if depth > 0:
            continue
        for kind, table, seen in (("assoc_pj", level.max_tres_pj, set_pj),
                                  ("assoc_pn", level.max_tres_pn, set_pn)):
            why = _max_tres_refusal(kind, table, seen, job, level.label, claim=False)
            if why:
                return False, why
    return True, ""


def _max_tres_refusal(kind: str, table: Mapping[str, int], seen: set[str], job: JobDemand,
                      label: str, claim: bool) -> str:
    """The refusal by a QOS's or an association's MaxTRESPerJob (``kind`` ``*_pj``) or
    MaxTRESPerNode (``*_pn``) limits, or ""; the TRES in ``seen`` were set by a QOS earlier
    in the chain (with ``claim``, a QOS takes the TRES it limits, hiding later ones)."""
    per_node = kind.endswith("_pn")
    for tres, limit in table.items():
        if tres in seen:
            continue
        if claim:
            seen.add(tres)
        req = job.tres.get(tres, 0)
        if per_node:
            req = -(-req // job.nodes)
        if req > limit:
            return (f"{reason_name(kind, tres)} ({label}: {_OPTION[kind]}={_tres_text(tres, limit)}, "
                    f"job asks {req}{' per node' if per_node else ''}; never fits)")
    return ""


K = TypeVar("K")


def admit_in_order(jobs: Sequence[tuple[K, JobDemand]], limits: SlurmLimits,
                   admitting: Iterable[JobDemand] = ()) -> list[tuple[K, bool, str]]:
    """``check_limits`` for pending jobs in start order, each admitted one counting for
    the next: ``[(key, ok, reason), ...]``. ``admitting`` as for ``check_limits``."""
    taken = list(admitting)
    out: list[tuple[K, bool, str]] = []
    for key, demand in jobs:
        ok, why = check_limits(demand, limits, taken)
        if ok:
            taken.append(demand)
        out.append((key, ok, why))
    return out


__all__ = [
    "DEMAND_FIELDS",
    "DEMAND_FORMAT",
    "Association",
    "JobDemand",
    "QosLimits",
    "QosShare",
    "SlurmLimits",
    "Usage",
    "admit_in_order",
    "check_limits",
    "parse_accounting_config",
    "parse_assoc_mgr",
    "parse_job_demands",
    "parse_partition_qos",
    "parse_time_limit",
    "parse_tres",
    "parse_tres_limits",
    "parse_tres_usage",
    "parse_usage",
    "reason_name",
]
