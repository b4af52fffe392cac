"""Checks over the whole test suite.

Tiers are folders: every test under ``tests/<tier>/`` carries that tier's marker (pytest.ini),
set once for the module (``pytestmark = pytest.mark.<tier>`` at module level), and no other
tier's marker; a test outside the tier folders belongs to no tier. Collection fails, naming
the modules, when one does not -- so that ``-m unit``, ``-m "not k8s"`` and the like select
exactly the folders they name.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent
#: the tier folders under tests/, each with the marker of the same name (pytest.ini)
TIERS = ("unit", "slurm", "k8s", "e2e", "containers")


def _tier_of(path: Path) -> str | None:
    """The tier folder ``path`` is in; "" when it is under tests/ but in no tier folder;
    None when it is not under tests/ at all."""
    try:
        parts = path.resolve().relative_to(TESTS).parts
    except ValueError:
        return None
    return parts[0] if len(parts) > 1 and parts[0] in TIERS else ""


def _module_marks(module: Any) -> set[str]:
    """The names of the marks in a module's ``pytestmark`` (one mark or a list of them)."""
    marks = getattr(module, "pytestmark", [])
    if not isinstance(marks, (list, tuple)):
        marks = [marks]
    return {name for name in (getattr(m, "name", None) for m in marks) if name}


def tier_marker_problems(items: Iterable[pytest.Item]) -> dict[str, list[str]]:
    """module path -> what is wrong with its tier marker (empty when all is well)."""
    problems: dict[str, list[str]] = {}

    def report(item: pytest.Item, message: str) -> None:
        where = item.nodeid.split("::", 1)[0]
        if message not in problems.setdefault(where, []):
            problems[where].append(message)

    for item in items:
        tier = _tier_of(Path(str(item.path)))
        if tier is None:
            continue
        if tier == "":
            report(item, f"is in no tier folder (tests/{{{','.join(TIERS)}}}/)")
            continue
        module = getattr(item, "module", None)
        if module is not None:
            if tier not in _module_marks(module):
                report(item, f"lacks the module-level `pytestmark = pytest.mark.{tier}`")
        elif item.get_closest_marker(tier) is None:
            report(item, f"lacks the marker {tier!r}")
        others = sorted({m.name for m in item.iter_markers() if m.name in TIERS and m.name != tier})
        if others:
            report(item, f"carries another tier's marker ({', '.join(others)}) in tests/{tier}/; "
                         f"a test of that tier belongs in its folder")
    return problems


@pytest.hookimpl(tryfirst=True)   # before -m/-k deselect anything: every collected test is checked
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    registered = {line.split(":", 1)[0].strip() for line in config.getini("markers")}
    missing = [tier for tier in TIERS if tier not in registered]
    if missing:
        raise pytest.UsageError(f"pytest.ini does not declare the tier markers {missing}")
    problems = tier_marker_problems(items)
    if problems:
        lines = [f"  {where}: {'; '.join(messages)}" for where, messages in sorted(problems.items())]
        raise pytest.UsageError("tier markers: every test module under tests/<tier>/ sets "
                                "`pytestmark = pytest.mark.<tier>` (tests/conftest.py):\n"
                                + "\n".join(lines))
