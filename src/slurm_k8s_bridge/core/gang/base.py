"""What every gang backend answers: the one interface the rest of the bridge asks.

A gang backend is how a job's pods are admitted all or nothing: the bridge's own (the
daemon creates the Indexed Job and releases the Slurm job once every pod runs), Kueue
(the Job is created suspended in a LocalQueue; Kueue unsuspends it when the quota allows)
or Volcano (a PodGroup with ``minMember``; Volcano's scheduler binds all pods or none).
Each backend is one module beside this one, registered in ``core.gang``; it says:

* how it renders a gang: ``decorate`` changes the Job the core renders, ``extra_objects``
  adds objects of its own (created before the Job, deleted with it);
* how the bridge tells admitted from waiting, and why: ``waiting(job, related)``, where
  ``related`` holds what the daemon saw of the kinds the backend reads (``reads_owned``:
  objects the Job controls, such as Kueue's Workload; ``reads_named``: objects of the
  Job's namespace looked up by name, such as its LocalQueue);
* which extra kinds it creates (``kinds``: the API the daemon must find before creating
  them) and which RBAC rules the daemon needs for them and for what it reads
  (``rbac_rules``);
* whether ``--k8s-queue`` / ``queue`` mean anything (``uses_queue``) and whether a
  partition must name a queue (``needs_queue``).

Pure: dicts in, dicts out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slurm_k8s_bridge.core.request import BridgeRequest


@dataclass(frozen=True)
class ObjectKind:
    """A kind a backend creates besides the Service and the Job."""

    kind: str
    group: str
    version: str
    resource: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


@dataclass(frozen=True)
class Related:
    """What the daemon has seen, around one Job, of the kinds a backend reads: by kind, the
    objects the Job controls (``owned``), and the others of the Job's namespace by
    (kind, name) (``named``). Empty where the kinds are not served or not watched."""

    owned: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    named: Mapping[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)


NOTHING_RELATED = Related()


class GangBackend:
    """The defaults: nothing added, nothing waited for, no extra rights."""

    #: the ``gang:`` value of a partition in the bridge configuration
    name: str = ""
    uses_queue: bool = False
    needs_queue: bool = False
    kinds: Sequence[ObjectKind] = ()
    #: kinds it reads (never creates) to say why a Job waits: objects the Job controls...
    reads_owned: Sequence[ObjectKind] = ()
    #: ... and objects of the Job's namespace it names
    reads_named: Sequence[ObjectKind] = ()
    #: what the user is told when the backend is not installed
    install_hint: str = ""

    def decorate(self, job: dict[str, Any], breq: BridgeRequest, name: str) -> None:
        """Change the rendered Job (``job["spec"]["template"]`` holds the pod template)."""

    def extra_objects(self, breq: BridgeRequest, name: str,
                      metadata: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Objects of the backend's own for this gang; ``metadata`` is the gang's."""
        return []

    def waiting(self, job: Mapping[str, Any], related: Related = NOTHING_RELATED) -> str:
        """Why the backend has not admitted this Job yet; "" once admitted."""
        return "suspended" if (job.get("spec") or {}).get("suspend") else ""

    def rbac_rules(self) -> list[dict[str, Any]]:
        """The Role rules the daemon needs in a job namespace for ``kinds`` and ``reads_*``."""
        return []
