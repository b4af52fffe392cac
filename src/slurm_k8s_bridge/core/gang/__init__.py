"""Gang backends behind one interface (``base.GangBackend``), one module each.

The rest of the bridge asks ``backend(name)`` -- never compares a backend's name. A new
backend is one new module beside these and one line in ``BACKENDS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from slurm_k8s_bridge.core.gang.base import (
    NOTHING_RELATED,
    GangBackend,
    ObjectKind,
    Related,
)
from slurm_k8s_bridge.core.gang.builtin import BuiltinGang
from slurm_k8s_bridge.core.gang.kueue import KueueGang
from slurm_k8s_bridge.core.gang.volcano import VolcanoGang

#: every backend, by the ``gang:`` value that selects it (the first is the default)
BACKENDS: Mapping[str, GangBackend] = {b.name: b for b in (BuiltinGang(), KueueGang(), VolcanoGang())}
DEFAULT = "builtin"


def backend(name: str) -> GangBackend:
    """The backend a partition's ``gang:`` names (validated when the config is loaded)."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown gang backend {name!r} (known: {', '.join(BACKENDS)})") from None


def waiting_reason(job: Mapping[str, Any], related: Related = NOTHING_RELATED) -> str:
    """Why a gang's Job is not admitted yet ("" once admitted), asking the backends (the
    default one last): the Job itself says which backend holds it (Kueue's queue label,
    ...); ``related``: what the daemon saw of the kinds the backends read."""
    others = [b for name, b in BACKENDS.items() if name != DEFAULT]
    for b in others:
        why = b.waiting(job, related)
        if why:
            return why
    return BACKENDS[DEFAULT].waiting(job, related)


def extra_kinds() -> tuple[ObjectKind, ...]:
    """The kinds, besides Service and Job, that some backend creates."""
    return tuple(kind for b in BACKENDS.values() for kind in b.kinds)


def read_kinds() -> tuple[tuple[ObjectKind, bool], ...]:
    """The kinds some backend reads, each with True when it is found by the Job that
    controls it (``reads_owned``), False when by name (``reads_named``)."""
    return tuple([(k, True) for b in BACKENDS.values() for k in b.reads_owned]
                 + [(k, False) for b in BACKENDS.values() for k in b.reads_named])


__all__ = ["BACKENDS", "DEFAULT", "NOTHING_RELATED", "GangBackend", "ObjectKind", "Related", "backend",
           "extra_kinds", "read_kinds", "waiting_reason"]
