"""The Python half of job_submit/k8s, running inside slurmctld.

Marshalling only: read ``job_desc_msg_t`` into a ``SlurmJobRequest``, ask the translation
core (``translate.normalize``) whether the job is bridged and valid, then either pass it
through untouched, refuse it with the user's message, or accept it held (priority 0) with
the request stamped into its AdminComment. No network I/O happens here: slurmctld calls
this under its locks.
"""

from __future__ import annotations

import os
import threading
import traceback
from typing import Any

from slurm_k8s_bridge.core import contract
from slurm_k8s_bridge.core.config import BridgeConfig, load_config
from slurm_k8s_bridge.core.errors import BridgeRefusal, ConfigError
from slurm_k8s_bridge.core.request import SlurmJobRequest, is_stamp, spank_options_from_env
from slurm_k8s_bridge.core.normalize import normalize

PING_MAGIC = contract.PING_MAGIC


class ConfigHolder:
    """The bridge configuration, reloaded when the file changes; the last good one is kept."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.config: BridgeConfig | None = None
        self.error: str | None = None
        self._seen: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def current(self) -> BridgeConfig:
        with self._lock:
            try:
                st = os.stat(self.path)
                key: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
            except OSError:
                key = None
            if key != self._seen or (self.config is None and key is None):
                self._seen = key
                try:
                    self.config = load_config(self.path)
                    self.error = None
                except ConfigError as exc:
                    self.error = str(exc)
                except OSError as exc:
                    self.error = f"{self.path}: {exc.strerror}"
            if self.config is None:
                raise BridgeRefusal(
                    f"the bridge configuration is unusable ({self.error}); "
                    "ask your administrator", "ESLURM_NOT_SUPPORTED")
            return self.config


def request_from_job_desc(ffi: Any, lib: Any, jd: Any) -> SlurmJobRequest:
    """Copy the fields the bridge uses out of a ``job_desc_msg_t``."""

    def text(ptr: Any) -> str | None:
        return None if ptr == ffi.NULL else ffi.string(ptr).decode("utf-8", "replace")

    def u32(value: int) -> int | None:
        return None if value == lib.NO_VAL else int(value)

    def u16(value: int) -> int | None:
        return None if value in (lib.NO_VAL16, lib.INFINITE16) else int(value)

    memory: int | None = None
    per_cpu = False
    raw_mem = int(jd.pn_min_memory)
    if raw_mem not in (lib.NO_VAL64, lib.INFINITE64):
        per_cpu = bool(raw_mem & lib.MEM_PER_CPU)
        memory = raw_mem & ~lib.MEM_PER_CPU

    time_limit: int | None
    if jd.time_limit == lib.INFINITE:
        time_limit = -1
    else:
        time_limit = u32(jd.time_limit)

    env: list[str] = []
    if jd.spank_job_env != ffi.NULL:
        for i in range(int(jd.spank_job_env_size)):
            entry = jd.spank_job_env[i]
            if entry != ffi.NULL:
                env.append(ffi.string(entry).decode("utf-8", "replace"))

    values: dict[str, Any] = {name: text(getattr(jd, name)) for name in _TEXT_FIELDS}
    values.update({name: u32(getattr(jd, name)) for name in _U32_FIELDS})
    values.update({name: u16(getattr(jd, name)) for name in _U16_FIELDS})
    warn = tuple(u16(getattr(jd, f"warn_{name}")) or 0 for name in ("signal", "time", "flags"))
    values["signal"] = warn if warn[0] else None   # no --signal: sbatch sends zeros
    values["overcommit"] = int(jd.overcommit) == 1   # NO_VAL8 (0xfe) when not given
    return SlurmJobRequest(**values, pn_min_memory=memory, mem_per_cpu=per_cpu,
                           time_limit=time_limit, spank_options=spank_options_from_env(env))


#: job_desc_msg_t fields read as they are, by their C type (the rest need conversion)
_TEXT_FIELDS = ("partition", "tres_per_node", "tres_per_job", "tres_per_task", "tres_per_socket",
                "cpus_per_tres", "mem_per_tres", "features", "account", "qos", "name",
                "array_inx", "work_dir", "submit_line")
_U32_FIELDS = ("min_nodes", "max_nodes", "num_tasks", "user_id", "group_id", "het_job_offset")
_U16_FIELDS = ("ntasks_per_node", "cpus_per_task", "ntasks_per_tres", "shared")


#: Fields an update may change; identity and submission context never change.
_MODIFIABLE = (
    "partition", "min_nodes", "max_nodes", "num_tasks", "ntasks_per_node", "cpus_per_task",
    "pn_min_memory", "tres_per_node", "tres_per_job", "tres_per_task", "tres_per_socket",
    "ntasks_per_tres",
    "cpus_per_tres", "mem_per_tres", "features", "time_limit", "shared", "account", "qos",
    "name", "array_inx",
)


def merge_update(current: SlurmJobRequest, update: SlurmJobRequest) -> SlurmJobRequest:
    """Apply the fields an ``scontrol update`` sets (everything else is NO_VAL/NULL)."""
    changes: dict[str, Any] = {}
    for name in _MODIFIABLE:
        value = getattr(update, name)
        if value is not None:
            changes[name] = value
    if update.pn_min_memory is not None:
        changes["mem_per_cpu"] = update.mem_per_cpu
    return current.replace(**changes) if changes else current


class JobSubmitPlugin:
    """What slurmctld's job_submit and job_modify calls do, given the cffi ffi/lib."""

    def __init__(self, ffi: Any, lib: Any) -> None:
        self.ffi = ffi
        self.lib = lib
        self.holder: ConfigHolder | None = None
        self.operator_uids = {0, os.getuid()}

    # -- logging through slurmctld's logger ----------------------------------------------
    def info(self, message: str) -> None:
        self.lib.slurm_info(b"job_submit/k8s: %s", self.ffi.new("char[]", message.encode()))

    def error(self, message: str) -> None:
        self.lib.slurm_error(b"job_submit/k8s: %s", self.ffi.new("char[]", message.encode()))

    def log_exception(self, exc_type: Any, exc_value: Any, tb: Any) -> None:
        text = "".join(traceback.format_exception(exc_type, exc_value, tb))
        for line in text.rstrip().splitlines():
            self.error(line)

    # -- entry points ----------------------------------------------------------------------
    def init(self, config_path: str) -> None:
        self.holder = ConfigHolder(config_path)
        try:
            config = self.holder.current()
            self.info(f"configuration {config_path} loaded "
                      f"({len(config.shapes)} node shapes)")
        except BridgeRefusal:
            self.error(f"configuration not usable yet: {self.holder.error}; "
                       "jobs are refused until it is fixed")

    def _refuse(self, err_msg: Any, refusal: BridgeRefusal) -> int:
        if err_msg != self.ffi.NULL:
            err_msg[0] = self.lib.slurm_xstrdup(refusal.user_message().encode())
        return int(getattr(self.lib, refusal.code))

    def _config(self) -> BridgeConfig:
        assert self.holder is not None, "init() not called"
        return self.holder.current()

    def submit(self, jd: Any, submit_uid: int, err_msg: Any) -> int:
        try:
            request = request_from_job_desc(self.ffi, self.lib, jd)
            bridged = normalize(request, self._config())
        except BridgeRefusal as refusal:
            self.info(f"uid {submit_uid}: refused: {refusal.message}")
            return self._refuse(err_msg, refusal)
        if bridged is None:
            return 0  # not a bridged partition: untouched
        if jd.priority == 0:
            # ``sbatch -H``: the owner's own hold, recorded like a later ``scontrol hold``
            request = request.replace(user_hold=True)
        self._set_admin_comment(jd, request.stamp())
        jd.priority = 0  # held until the bridge has the job's pods ready
        self.info(f"uid {submit_uid}: accepted for Kubernetes, held: partition "
                  f"{bridged.partition}, {bridged.nodes} pod(s)")
        return 0

    def modify(self, jd: Any, stamp: str | None, uid: int, err_msg: Any,
               new_stamp: Any) -> int:
        update = request_from_job_desc(self.ffi, self.lib, jd)
        try:
            config = self._config()
            if not is_stamp(stamp):
                if update.partition and any(
                        config.rule_for(p).bridged for p in update.partition.split(",")):
                    raise BridgeRefusal(
                        f"moving a job into bridged partition {update.partition} is not "
                        "supported; submit it there", "ESLURM_INVALID_PARTITION_NAME")
                return 0
            assert stamp is not None
            current = SlurmJobRequest.from_stamp(stamp)
            merged = self._owner_hold(jd, uid, merge_update(current, update))
            if merged == current:
                return 0
            if normalize(merged, config) is None:
                raise BridgeRefusal(
                    f"moving a bridged job to partition {merged.partition}, which is not "
                    "bridged, is not supported; cancel and resubmit",
                    "ESLURM_INVALID_PARTITION_NAME")
        except BridgeRefusal as refusal:
            self.info(f"uid {uid}: update refused: {refusal.message}")
            return self._refuse(err_msg, refusal)
        new_stamp[0] = self.lib.slurm_xstrdup(merged.stamp().encode())
        self.info(f"uid {uid}: update accepted, request re-validated")
        return 0

    def _owner_hold(self, jd: Any, uid: int, request: SlurmJobRequest) -> SlurmJobRequest:
        """Holds and releases of a bridged job by anyone but the bridge.

        job_submit holds every bridged job with priority 0, which Slurm records as a *user*
        hold: left alone, the owner could ``scontrol release`` it onto the inventory nodes
        before its pods exist. So the owner's own hold is recorded in the stamp
        (``user_hold``) and the job stays at priority 0 either way: ``scontrol hold`` sets
        the flag (the bridge then keeps or removes its pods), ``scontrol release`` clears it
        and is turned into "stay held for the bridge"; a release without a hold of the
        owner's is refused. The bridge itself runs as root or SlurmUser (slurmctld's uid).
        """
        if jd.priority == self.lib.NO_VAL or uid in self.operator_uids:
            return request
        if jd.priority == 0:
            return request.replace(user_hold=True)
        if request.user_hold:
            jd.priority = 0  # the owner's release ends their hold, not the bridge's
            return request.replace(user_hold=False)
        raise BridgeRefusal("this job is held until its Kubernetes pods are ready; "
                            "slurm-k8s-bridge releases it, not scontrol release",
                            "ESLURM_ACCESS_DENIED")

    def _set_admin_comment(self, jd: Any, text: str) -> None:
        if jd.admin_comment != self.ffi.NULL:
            holder = self.ffi.new("char **", jd.admin_comment)
            self.lib.slurm_xfree(self.ffi.cast("void **", holder))
        jd.admin_comment = self.lib.slurm_xstrdup(text.encode())


def bind(ffi: Any, lib: Any) -> None:
    """Attach the Python implementations of the plugin's embedding API."""
    plugin = JobSubmitPlugin(ffi, lib)

    @ffi.def_extern()  # type: ignore[misc]
    def k8sb_js_ping() -> int:
        return PING_MAGIC

    @ffi.def_extern(error=-1, onerror=plugin.log_exception)  # type: ignore[misc]
    def k8sb_js_init(config_path: Any, errbuf: Any, errlen: int) -> int:
        plugin.init(ffi.string(config_path).decode())
        return 0

    @ffi.def_extern(error=-1, onerror=plugin.log_exception)  # type: ignore[misc]
    def k8sb_js_submit(jd: Any, submit_uid: int, err_msg: Any) -> int:
        return plugin.submit(jd, submit_uid, err_msg)

    @ffi.def_extern(error=-1, onerror=plugin.log_exception)  # type: ignore[misc]
    def k8sb_js_modify(jd: Any, stamp: Any, uid: int, err_msg: Any, new_stamp: Any) -> int:
        text = None if stamp == ffi.NULL else ffi.string(stamp).decode("utf-8", "replace")
        return plugin.modify(jd, text, uid, err_msg, new_stamp)
