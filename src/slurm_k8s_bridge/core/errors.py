"""Errors that reach users.

A ``BridgeRefusal`` is a request the bridge will not run; its ``message`` is shown to the
user verbatim (``sbatch: error: <message>``) and ``code`` names the ``ESLURM_*`` error the
plugin returns to slurmctld. A ``ConfigError`` is a bad configuration file; its message
names the offending key.
"""

from __future__ import annotations

import re

from slurm_k8s_bridge.core.contract import MESSAGE_PREFIX


class BridgeRefusal(Exception):
    """A job request the bridge refuses, with the message the user sees."""

    def __init__(self, message: str, code: str = "ESLURM_INVALID_GRES") -> None:
        if not code.startswith("ESLURM_"):
            raise ValueError(f"not an ESLURM code name: {code}")
        super().__init__(message)
        self.message = message
        self.code = code

    def user_message(self) -> str:
        """The one line sbatch prints after ``sbatch: error: ``."""
        return MESSAGE_PREFIX + self.message


def refusal(message: str, code: str) -> BridgeRefusal:
    """A refusal whose message is one line whatever the user typed."""
    return BridgeRefusal(re.sub(r"[\x00-\x1f\x7f]", "?", message), code)


#: longest piece of the user's own text a message repeats
SHOWN_MAX = 80


def shown(text: str | None) -> str:
    """A value as the user typed it, or nothing: on one line, and cut after ``SHOWN_MAX``
    characters, so that a message that repeats it stays one readable line."""
    text = re.sub(r"[\x00-\x1f\x7f]", "?", text if text is not None else "")
    return text if len(text) <= SHOWN_MAX else text[:SHOWN_MAX] + "..."


class SbatchRefusal(BridgeRefusal):
    """A request sbatch itself refuses before it reaches slurmctld (bad option, no ``#!``):
    shown with sbatch's own wording, without the bridge's prefix."""

    def user_message(self) -> str:
        return self.message


class ConfigError(Exception):
    """A configuration file that does not validate; every message names its key."""

    def __init__(self, key: str, problem: str, source: str | None = None) -> None:
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {problem}")
        self.key = key
        self.problem = problem
        self.source = source
