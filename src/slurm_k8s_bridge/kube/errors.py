"""What can go wrong in Kubernetes, as the daemon reports it (messages are for the user)."""

from __future__ import annotations


class KubeAccessError(Exception):
    """Something the bridge could not do in Kubernetes; the message is for the user."""


class KubeApiError(KubeAccessError):
    """A request the API server refused (``status``) or never answered (``status`` None)."""

    def __init__(self, verb: str, resource: str, what: str, status: int | None, reason: str,
                 retry_after: float | None = None) -> None:
        code = f"{status} {reason}" if status is not None else reason
        super().__init__(f"{verb} {resource} {what}: {code}")
        self.verb = verb
        self.resource = resource
        self.what = what
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


class ObjectOwnedElsewhere(KubeAccessError):
    """The deterministic name is taken by an object of another Slurm job, or not the bridge's."""


class GangStillTerminating(KubeAccessError):
    """An object of the same job is still being deleted (a requeued job); try again later."""


class GangBackendMissing(KubeAccessError):
    """The gang scheduler a job asks for (Volcano's PodGroup CRD) is not installed."""
