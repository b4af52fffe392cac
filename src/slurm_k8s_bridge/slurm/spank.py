"""The Python half of spank_k8s, running in slurmstepd inside a bridged pod.

``spank_k8s.so`` loads this (through ``spank_k8s_py.so``) only in the remote context of a
bridged pod, once per step, before the tasks are forked. It answers one question: which
environment variables the job's tasks get, as ``NAME=value`` lines.
"""

from __future__ import annotations

import os
import re
import traceback
from typing import Any, Mapping

from slurm_k8s_bridge.core import contract
from slurm_k8s_bridge.core.config import load_config

PING_MAGIC = contract.PING_MAGIC
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Variables the pod's slurmd was started with that tasks should see too.
POD_IDENTITY = ("SLURM_K8S_CLUSTER", "SLURM_K8S_NAMESPACE", "POD_NAME", "POD_IP")


def task_environment(site_env: Mapping[str, str], pod_env: Mapping[str, str],
                     job_id: int) -> dict[str, str]:
    """The environment every task of a bridged job gets inside its pod."""
    env: dict[str, str] = {}
    for key, value in site_env.items():
        if not _NAME.match(key) or "\n" in value:
            raise ValueError(f"task_env.{key}: not a valid environment variable")
        env[key] = value
    for key in POD_IDENTITY:
        if pod_env.get(key):
            env[key if key.startswith("SLURM_K8S_") else f"SLURM_K8S_{key}"] = pod_env[key]
    env["SLURM_K8S_JOB_ID"] = str(job_id)
    return env


def bind(ffi: Any, lib: Any) -> None:
    def log_exception(exc_type: Any, exc_value: Any, tb: Any) -> None:
        for line in "".join(traceback.format_exception(exc_type, exc_value, tb)).splitlines():
            lib.slurm_error(b"spank_k8s: %s", ffi.new("char[]", line.encode()))

    @ffi.def_extern()  # type: ignore[misc]
    def k8sb_sp_ping() -> int:
        return PING_MAGIC

    @ffi.def_extern(error=-1, onerror=log_exception)  # type: ignore[misc]
    def k8sb_sp_task_env(config: Any, job_id: int, uid: int, out: Any, outlen: int,
                         err: Any, errlen: int) -> int:
        def fail(message: str) -> int:
            data = message.encode()[: max(errlen - 1, 0)] + b"\0"
            ffi.memmove(err, data, len(data))
            return -1

        try:
            site = load_config(ffi.string(config).decode())
            env = task_environment(getattr(site, "task_env", {}) or {}, os.environ, job_id)
        except Exception as exc:  # the message goes to slurmd's log via the C side
            return fail(str(exc))
        data = "".join(f"{k}={v}\n" for k, v in env.items()).encode() + b"\0"
        if len(data) > outlen:
            return fail(f"task environment too large ({len(data)} bytes)")
        ffi.memmove(out, data, len(data))
        return 0
