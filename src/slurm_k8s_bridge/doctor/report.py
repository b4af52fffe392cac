"""What ``slurm-k8s-bridge doctor`` found: one ``Finding`` per check, printed for a person or
as JSON for tools, and the exit status (non-zero when anything failed).

A finding is one line saying what is right or wrong, plus, for a failure or a warning, one
line saying how to fix it. A check that cannot run where the doctor runs (no slurm.conf
inside the daemon pod, no kubeconfig on a slurmctld host) is *skipped*, with the reason:
skipped checks and warnings never fail the run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

OK = "ok"
FAIL = "fail"
WARN = "warn"
SKIP = "skip"
STATUSES = (OK, FAIL, WARN, SKIP)
_LABELS = {OK: "OK", FAIL: "FAIL", WARN: "WARN", SKIP: "SKIP"}


@dataclass(frozen=True)
class Finding:
    """One check's result: ``check`` is a stable dotted name (``slurm.private_data``)."""

    check: str
    status: str
    message: str
    fix: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r} (known: {', '.join(STATUSES)})")
        if self.status == FAIL and not self.fix:
            raise ValueError(f"{self.check}: a failure must say how to fix it")

    def as_dict(self) -> dict[str, str]:
        out = {"check": self.check, "status": self.status, "message": self.message}
        if self.fix:
            out["fix"] = self.fix
        return out


def ok(check: str, message: str) -> Finding:
    return Finding(check, OK, message)


def fail(check: str, message: str, fix: str) -> Finding:
    return Finding(check, FAIL, message, fix)


def warn(check: str, message: str, fix: str = "") -> Finding:
    return Finding(check, WARN, message, fix)


def skip(check: str, why: str) -> Finding:
    return Finding(check, SKIP, why)


@dataclass
class Report:
    """Every finding, in the order the checks ran."""

    findings: list[Finding] = field(default_factory=list)

    def add(self, findings: Finding | Iterable[Finding]) -> None:
        if isinstance(findings, Finding):
            self.findings.append(findings)
        else:
            self.findings.extend(findings)

    def __iter__(self) -> Iterator[Finding]:
        return iter(self.findings)

    def count(self, status: str) -> int:
        return sum(1 for f in self.findings if f.status == status)

    @property
    def failed(self) -> bool:
        return self.count(FAIL) > 0

    def exit_code(self) -> int:
        """1 when any check failed, else 0 (warnings and skips do not fail)."""
        return 1 if self.failed else 0

    def summary(self) -> dict[str, int]:
        return {status: self.count(status) for status in STATUSES}

    def as_json(self) -> str:
        return json.dumps({"ok": not self.failed, "summary": self.summary(),
                           "findings": [f.as_dict() for f in self.findings]}, indent=2) + "\n"

    def as_text(self) -> str:
        width = max([len(f.check) for f in self.findings] + [10])
        lines = []
        for f in self.findings:
            lines.append(f"{_LABELS[f.status]:<5} {f.check:<{width}}  {_one_line(f.message)}")
            if f.fix and f.status in (FAIL, WARN):
                lines.append(f"{'':<5} {'':<{width}}  fix: {_one_line(f.fix)}")
        s = self.summary()
        lines.append(f"{s[OK]} ok, {s[FAIL]} failed, {s[WARN]} warnings, {s[SKIP]} skipped"
                     + (": FAILED" if self.failed else ""))
        return "\n".join(lines) + "\n"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
