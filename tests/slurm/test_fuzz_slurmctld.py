"""Fuzzed submissions against real slurmctld with job_submit/k8s (and spank_k8s) loaded.

A seeded stream of random sbatch invocations (``tests/fuzz_requests.py``: every option the
bridge reads, in every form getopt takes, good values, malformed neighbours and hostile
text, on the command line and in ``#SBATCH`` lines) is run as the real ``sbatch`` CLI
against the bridge cluster. Each is submitted held (``-H``: job_submit runs for held jobs
too, and a job in a non-bridged partition then never starts), so nothing runs, and every
accepted job is cancelled at the end.

Properties:

* slurmctld is alive (same pid, ``scontrol ping`` UP) every ``PING_EVERY`` submissions and
  at the end: a crash in job_submit stops the whole cluster;
* a refusal by the bridge (``k8s-bridge:`` from job_submit/k8s in slurmctld, ``spank_k8s:``
  from the SPANK plugin inside sbatch) is exactly one ``sbatch: error:`` line whose message
  is readable (UTF-8, no control characters, at most ``fz.MESSAGE_MAX`` characters) and does
  not spill onto the next line; Slurm's own lines around it ("Batch job submission failed",
  "Invalid --k8s-queue argument: <the raw value>", warnings) are Slurm's and not checked;
* no traceback anywhere in sbatch's output;
* every accepted job is cancelled, and none is left.

``SKB_FUZZ_SBATCH=N`` sets the number of submissions (default 300), ``SKB_FUZZ_SEED`` the
seed (default 20261207). A summary table is printed (``pytest -s``).
"""

from __future__ import annotations

import os
import random
import re
import resource
import signal
import subprocess
import tempfile
import time
from collections import Counter
from typing import Any

import pytest

from slurm_k8s_devcluster.slurm import ClusterError

from .. import fuzz_requests as fz
from .bridge_fixtures import make_bridge_cluster
from .conftest import make_base_dir, remove_base_dir, require_root

pytestmark = pytest.mark.slurm

SUBMISSIONS = int(os.environ.get("SKB_FUZZ_SBATCH", "300"))
SEED = int(os.environ.get("SKB_FUZZ_SEED", "20261207"))
PING_EVERY = 50
#: one sbatch never takes this long; past it the submission counts as hung (a failure)
SBATCH_TIMEOUT = 30.0
#: the whole run's time box: 2 s per submission on average is far above what is seen
TIME_BOX = 60.0 + 2.0 * SUBMISSIONS
#: how each half of the bridge marks its refusals: job_submit/k8s in slurmctld, spank_k8s in sbatch
BRIDGE_MARKS = {"job_submit": "k8s-bridge:", "spank": "spank_k8s:"}
SLURM_FAILED = "sbatch: error: Batch job submission failed: "
NOT_UTF8 = "[not UTF-8] "
#: at most this many bytes of sbatch output are kept (sbatch is killed past it)
OUTPUT_LIMIT = 1 << 20
#: the kind of an sbatch that ran away by itself, before it reached slurmctld: killed at
#: OUTPUT_LIMIT. Seen with Slurm 22.05.8: -N 70000 --ntasks-per-node 34313 overflows the
#: task count (-n -1893057296) and sbatch loops on "hostlist_pop: no hostlist given".
RUNAWAY = "runaway"


@pytest.fixture(scope="module")
def bc() -> Any:
    require_root()
    base = make_base_dir("fuzz-sbatch")
    bridge = make_bridge_cluster(base, "fuzzbridge")
    bridge.cluster.start()
    try:
        yield bridge
    finally:
        bridge.cluster.stop()
        remove_base_dir(bridge.cluster)


def alive(bc: Any, pid: int) -> str | None:
    """Why slurmctld is not alive and answering (None when it is)."""
    try:
        now = bc.cluster.slurmctld_pid()
    except ClusterError as exc:  # the process has exited
        return f"slurmctld is not running: {exc}"
    if now != pid:
        return f"slurmctld pid changed from {pid} to {now}"
    ping = bc.cluster.run(["scontrol", "ping"], timeout=20)
    if ping.returncode != 0 or "UP" not in ping.stdout:
        return f"scontrol ping: {ping.stdout.strip()} {ping.stderr.strip()}"
    return None


def _limit_output() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_LIMIT, OUTPUT_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGXFSZ would dump core


def run_sbatch(bc: Any, cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """Run sbatch as the cluster's clients run, its output bounded and decoded here.

    Bounded: stdout and stderr go to files, and RLIMIT_FSIZE kills sbatch with SIGXFSZ past
    ``OUTPUT_LIMIT`` bytes (Slurm 22.05's sbatch can print "hostlist_pop: no hostlist given"
    without end, see ``RUNAWAY``). Decoded line by line: sbatch itself echoes values cut
    mid-character ("Invalid numeric value ..."), so its output need not be UTF-8; lines that
    are not are marked ``NOT_UTF8`` (a problem only in a bridge line)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        raw = subprocess.run(cmd, stdout=out, stderr=err, timeout=SBATCH_TIMEOUT, check=False,
                             env=bc.cluster.env(), cwd=str(bc.cluster.jobs_dir),
                             stdin=subprocess.DEVNULL, preexec_fn=_limit_output)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(OUTPUT_LIMIT), err.read(OUTPUT_LIMIT)

    def decode(data: bytes) -> str:
        lines = []
        for line in data.split(b"\n"):
            try:
                lines.append(line.decode())
            except UnicodeDecodeError:
                lines.append(NOT_UTF8 + line.decode(errors="backslashreplace"))
        return "\n".join(lines)
    return subprocess.CompletedProcess(cmd, raw.returncode, decode(stdout), decode(stderr))


def first_words(message: str, n: int = 4) -> str:
    words = re.sub(r"[^A-Za-z0-9_ -]+", " ", message).split()
    return " ".join(w if len(w) <= 24 else w[:21] + "..." for w in words[:n]) or "(empty)"


def verdict(proc: subprocess.CompletedProcess[str]) -> tuple[str, str, list[str]]:
    """(kind, detail, problems) of one sbatch: kind is accepted, job_submit (refused by
    job_submit/k8s), spank (refused by spank_k8s inside sbatch) or slurm (by Slurm or sbatch
    themselves, before or after the bridge had its say)."""
    out = proc.stdout + proc.stderr
    problems: list[str] = []
    if proc.returncode == -signal.SIGXFSZ:
        lines = proc.stderr.splitlines()
        return RUNAWAY, " | ".join(lines[:3])[:300], problems
    if "Traceback" in out:
        problems.append("a Python traceback in sbatch's output")
    errors = [line for line in proc.stderr.splitlines()
              if line.removeprefix(NOT_UTF8).startswith("sbatch: error:")]
    bridge = [line for line in errors if any(mark in line for mark in BRIDGE_MARKS.values())]
    if proc.returncode == 0:
        if not re.fullmatch(r"\d+(;\S+)?\s*", proc.stdout):
            # e.g. --gres=help: sbatch prints the valid forms and submits nothing
            return "slurm", "no job: " + first_words(proc.stdout[:200]), problems
        if bridge:
            problems.append(f"accepted with a bridge error line: {bridge}")
        return "accepted", "", problems
    if bridge:
        if len(bridge) != 1:
            problems.append(f"{len(bridge)} bridge error lines: {bridge}")
        half, mark = next((h, m) for h, m in BRIDGE_MARKS.items() if m in bridge[0])
        if bridge[0].startswith(NOT_UTF8):
            problems.append(f"the bridge's refusal is not UTF-8: {bridge[0]!r}")
        message = bridge[0].split(mark, 1)[1].strip()
        problems += fz.message_problems(message)
        # Slurm's own lines around it (a "#SLURM" warning, "Invalid --k8s-queue argument: "
        # echoing the raw value) are Slurm's; the bridge's line must end where it ends
        lines = proc.stderr.splitlines()
        after = lines[lines.index(bridge[0]) + 1:][:1]
        if after and not after[0].removeprefix(NOT_UTF8).startswith("sbatch: "):
            problems.append(f"the bridge's refusal spills onto the next line: {proc.stderr[:400]!r}")
        return half, first_words(message), problems
    first = errors[0] if errors else (proc.stderr.strip().splitlines() or [""])[0]
    detail = first.removeprefix(NOT_UTF8).removeprefix("sbatch: error:")
    return "slurm", first_words(detail[:200]), problems


def test_random_sbatch_invocations_never_crash_slurmctld(bc: Any) -> None:
    rnd = random.Random(SEED)
    pid = bc.cluster.slurmctld_pid()
    counts: Counter[str] = Counter()
    bridge_reasons: Counter[str] = Counter()
    slurm_reasons: Counter[str] = Counter()
    accepted: list[int] = []
    failures: list[str] = []
    runaways: list[str] = []
    crashes = 0
    started = time.monotonic()
    done = 0
    for i in range(SUBMISSIONS):  # bounded by count and by TIME_BOX
        if time.monotonic() - started > TIME_BOX:
            failures.append(f"time box of {TIME_BOX:.0f}s spent after {i} submissions")
            break
        argv, directives = fz.sbatch_invocation(rnd, nul=False)
        script = bc.cluster.write_script(fz.batch_script(directives))
        cmd = ["sbatch", "--parsable", "-H", *argv, str(script)]
        try:
            proc = run_sbatch(bc, cmd)
        except subprocess.TimeoutExpired:
            failures.append(f"#{i} sbatch hung for {SBATCH_TIMEOUT}s: {cmd!r} directives {directives!r}")
            break
        finally:
            script.unlink(missing_ok=True)
        done += 1
        kind, detail, problems = verdict(proc)
        counts[kind] += 1
        if kind == RUNAWAY:
            runaways.append(f"{argv!r} directives {directives!r}: ...{detail}")
        if kind == "accepted":
            accepted.append(int(proc.stdout.split(";")[0]))
        elif kind in BRIDGE_MARKS:
            bridge_reasons[f"{kind}: {detail}"] += 1
        else:
            slurm_reasons[detail] += 1
        if problems:
            failures.append(f"#{i} {cmd!r} directives {directives!r}: {problems}; "
                            f"stderr {proc.stderr[:600]!r}")
        if (i + 1) % PING_EVERY == 0 or i == SUBMISSIONS - 1:
            why = alive(bc, pid)
            if why:
                crashes += 1
                failures.append(f"after #{i} ({cmd!r}, directives {directives!r}): {why}")
                break
    why = alive(bc, pid)
    if why and not crashes:
        crashes += 1
        failures.append(f"at the end: {why}")
    left = -1
    if not crashes:
        for start in range(0, len(accepted), 200):  # bounded: one scancel per 200 jobs
            chunk = accepted[start:start + 200]
            bc.cluster.run(["scancel", *map(str, chunk)], timeout=60)
        queue = bc.cluster.run(["squeue", "-h", "-t", "PD,R,CG", "-o", "%i"], timeout=30).stdout.split()
        left = len(set(map(int, queue)) & set(accepted))
    wall = time.monotonic() - started

    rows = [("submissions", done), ("accepted (held, then cancelled)", counts["accepted"]),
            ("refused by the bridge's job_submit", counts["job_submit"]),
            ("refused by the bridge's SPANK plugin (in sbatch)", counts["spank"]), ("refused by Slurm/sbatch itself", counts["slurm"]),
            (f"sbatch ran away by itself (killed at {OUTPUT_LIMIT >> 20} MiB output)", counts[RUNAWAY]),
            ("slurmctld crashes", crashes), ("accepted jobs left after scancel", left),
            ("wall time (s)", f"{wall:.1f}"), ("submissions per second", f"{done / wall:.1f}")]
    print(f"\nfuzzed sbatch against slurmctld, seed {SEED}, {SUBMISSIONS} asked")
    print(f"{'':-<60}")
    for label, value in rows:
        print(f"{label:<58} {value:>12}")
    for title, reasons in (("bridge refusals by first words", bridge_reasons),
                           ("Slurm/sbatch refusals by first words", slurm_reasons)):
        print(f"\n{title}:")
        for reason, n in reasons.most_common(25):
            print(f"  {n:>6}  {reason}")
        if len(reasons) > 25:
            print(f"  ... and {len(reasons) - 25} more kinds")
    for runaway in runaways[:5]:
        print(f"runaway sbatch (Slurm's own, never reached slurmctld): {runaway[:300]}")
    assert crashes == 0, failures
    assert left == 0, f"{left} accepted jobs were not cancelled"
    assert not failures, "\n".join(failures[:20])
    assert done == SUBMISSIONS
