"""The rendered worker pod against Kubernetes' Pod Security Standards ("baseline" and
"restricted", as defined at kubernetes.io/docs/concepts/security/pod-security-standards and
enforced by the API server's PodSecurity admission), with every departure named.

``pss_violations`` is this module's own reading of the standard: one check per control, each
named by the reason the API server gives for it (``"runAsNonRoot != true"``, ...), so that the
k8s tier (tests/k8s/test_pod_security_admission.py) can hold the real API server's warnings
against the same list. ``EXCEPTIONS`` names every departure the worker pod is allowed, with
why; any other violation fails the tests. ``test_the_checks_catch_*`` show that each check
can fail.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from slurm_k8s_bridge.core.config import BridgeConfig, parse_config
from slurm_k8s_bridge.core.render import (
    KEY_WRITABLE_PATHS,
    WORKER_CAPABILITIES,
    WRITABLE_PATHS,
    render,
)

from .conftest import EXAMPLE_CONFIG, REPO
from .helpers import bridged, kind, pod_spec

pytestmark = pytest.mark.unit

SECURITY_DOC = REPO / "docs" / "security.md"

# -- the standard ---------------------------------------------------------------------------
#: capabilities "baseline" lets a container add (the container runtimes' default set)
BASELINE_CAPABILITIES = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"})
#: the one capability "restricted" lets a container add (after dropping ALL)
RESTRICTED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
#: volume types "restricted" allows
RESTRICTED_VOLUME_TYPES = frozenset({
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret"})
SAFE_SYSCTLS = frozenset({
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports", "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"})
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t"})
SECCOMP_CONFINED = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"
#: fields of a volume that are not its type
VOLUME_META = frozenset({"name"})


@dataclass(frozen=True, order=True)
class Violation:
    level: str      # "baseline" or "restricted": the lowest profile that forbids it
    check: str      # the control, worded as the API server's PodSecurity warning words it
    subject: str    # what breaks it: 'container "slurmd": CHOWN', 'volume "shared-0": hostPath'

    def __str__(self) -> str:
        return f"{self.level:10s} {self.check}: {self.subject}"


def _containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from spec.get(key) or []


def _sc(obj: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = obj.get("securityContext") or {}
    return found


def _baseline(spec: dict[str, Any], annotations: dict[str, str]) -> Iterator[tuple[str, str]]:
    pod_sc = _sc(spec)
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            yield "host namespaces", f"{field}=true"
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        yield "hostProcess", "pod"
    for volume in spec.get("volumes") or []:
        if "hostPath" in volume:
            yield "hostPath volumes", f'volume "{volume["name"]}"'
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            yield "forbidden sysctls", str(sysctl.get("name"))
    if (pod_sc.get("seccompProfile") or {}).get("type") == "Unconfined":
        yield "seccompProfile", "pod: Unconfined"
    for where, sc in (("pod", pod_sc), *((f'container "{c["name"]}"', _sc(c)) for c in _containers(spec))):
        selinux = sc.get("seLinuxOptions") or {}
        if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
            yield "seLinuxOptions", where
        apparmor = (sc.get("appArmorProfile") or {}).get("type")
        if apparmor is not None and apparmor not in SECCOMP_CONFINED:
            yield "forbidden AppArmor profile", f"{where}: {apparmor}"
    for key, value in annotations.items():
        if key.startswith(APPARMOR_ANNOTATION) and value != "runtime/default" \
                and not value.startswith("localhost/"):
            yield "forbidden AppArmor profile", f"{key}={value}"
    for c in _containers(spec):
        name, sc = f'container "{c["name"]}"', _sc(c)
        if sc.get("privileged"):
            yield "privileged", name
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            yield "hostProcess", name
        for cap in (sc.get("capabilities") or {}).get("add") or []:
            if cap not in BASELINE_CAPABILITIES:
                yield "non-default capabilities", f"{name}: {cap}"
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                yield "hostPort", f"{name}: {port['hostPort']}"
        if sc.get("procMount", "Default") != "Default":
            yield "procMount", f"{name}: {sc['procMount']}"
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
            yield "seccompProfile", f"{name}: Unconfined"
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            for handler in ("httpGet", "tcpSocket"):
                if ((c.get(probe) or {}).get(handler) or {}).get("host"):
                    yield "probe or lifecycle host", f"{name}: {probe}"
        for hook in ("postStart", "preStop"):
            for handler in ("httpGet", "tcpSocket"):
                if (((c.get("lifecycle") or {}).get(hook) or {}).get(handler) or {}).get("host"):
                    yield "probe or lifecycle host", f"{name}: {hook}"


def _restricted(spec: dict[str, Any]) -> Iterator[tuple[str, str]]:
    pod_sc = _sc(spec)
    for volume in spec.get("volumes") or []:
        types = set(volume) - VOLUME_META
        if not types <= RESTRICTED_VOLUME_TYPES:
            yield "restricted volume types", f'volume "{volume["name"]}": {",".join(sorted(types))}'
    if pod_sc.get("runAsUser") == 0:
        yield "runAsUser=0", "pod"
    for c in _containers(spec):
        name, sc = f'container "{c["name"]}"', _sc(c)
        if sc.get("allowPrivilegeEscalation") is not False:
            yield "allowPrivilegeEscalation != false", name
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            yield "unrestricted capabilities", f"{name}: drop ALL missing"
        for cap in caps.get("add") or []:
            if cap not in RESTRICTED_CAPABILITIES:
                yield "unrestricted capabilities", f"{name}: {cap}"
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if non_root is not True:
            yield "runAsNonRoot != true", name
        if sc.get("runAsUser") == 0:
            yield "runAsUser=0", name
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in SECCOMP_CONFINED:
            yield "seccompProfile", f"{name}: {seccomp or 'not set'}"


def pss_violations(spec: dict[str, Any], annotations: dict[str, str] | None = None) -> list[Violation]:
    """Every control of the baseline and restricted profiles that the pod spec breaks."""
    found = {Violation("baseline", check, subject) for check, subject in _baseline(spec, annotations or {})}
    found |= {Violation("restricted", check, subject) for check, subject in _restricted(spec)}
    return sorted(found)


# -- the worker pod's named exceptions ----------------------------------------------------
_ROOT = ("slurmd runs as root: slurmstepd must setuid/setgid to each job's owner, whose uid "
         "is known only at submit time; the tasks themselves run as the owner")
_CAPABILITY_REASONS = {
    "SETUID": "slurmstepd setuid()s to the job owner before exec'ing each task; munged is "
              "started as the munge user",
    "SETGID": "slurmstepd takes the owner's primary and supplementary groups (initgroups)",
    "CHOWN": "the job's spool directory goes to the owner; the munge key and munged's "
             "directories to the munge user",
    "DAC_OVERRIDE": "root writes where it is not the owner: the munge key into munge's 0700 "
                    "/etc/munge, the removal of the owner's 0700 spool directory, the owner's "
                    "working directory and output files",
    "FOWNER": "chmod of what root does not own (/run/munge and the key after their chown)",
    "KILL": "slurmstepd signals the owner's tasks (scancel, time limit, srun -K)",
}
_HOST_PATH = ("shared_mounts: the site's user filesystem (homes, submit directories) at the "
              "same path as on the login nodes, which the configuration gives as a host path "
              "of the Kubernetes node; a namespace enforcing baseline admits no such pod")


@dataclass(frozen=True)
class NamedException:
    level: str
    check: str
    subject: str      # a regular expression over Violation.subject
    reason: str
    #: only when the configuration asks for it (shared_mounts); else always expected
    configured: bool = False

    def matches(self, v: Violation) -> bool:
        return (v.level, v.check) == (self.level, self.check) and re.fullmatch(self.subject, v.subject) is not None


EXCEPTIONS: tuple[NamedException, ...] = (
    NamedException("restricted", "runAsNonRoot != true", 'container "slurmd"', _ROOT),
    NamedException("restricted", "runAsUser=0", 'container "slurmd"', _ROOT),
    *(NamedException("restricted", "unrestricted capabilities", f'container "slurmd": {cap}', why)
      for cap, why in _CAPABILITY_REASONS.items()),
    NamedException("baseline", "hostPath volumes", r'volume "shared-\d+"', _HOST_PATH, configured=True),
    NamedException("restricted", "restricted volume types", r'volume "shared-\d+": hostPath', _HOST_PATH,
               configured=True),
)


def exception_for(v: Violation) -> NamedException | None:
    return next((e for e in EXCEPTIONS if e.matches(v)), None)


def unlisted(violations: list[Violation]) -> list[Violation]:
    return [v for v in violations if exception_for(v) is None]


def _table(violations: list[Violation]) -> str:
    rows = [f"  {v}\n      -> {(e.reason if (e := exception_for(v)) else 'NOT A NAMED EXCEPTION')}"
            for v in violations]
    return "\n".join(rows) or "  (none)"


# -- the pods -------------------------------------------------------------------------------
def config_with(**top: Any) -> BridgeConfig:
    """The example configuration with top-level keys replaced (``gpu_KEY``: partition gpu's)."""
    data = copy.deepcopy(yaml.safe_load(EXAMPLE_CONFIG.read_text()))
    for key, value in top.items():
        if key.startswith("gpu_"):
            data["partitions"].setdefault("gpu", {})[key[4:]] = value
        else:
            data[key] = value
    return parse_config(data)


#: the configuration the docs recommend: key from a Secret, no host paths
HARDENED = {"munge_key_secret": "slurm-munge", "conf_server": "slurmctld.slurm:6817", "shared_mounts": []}
CONFIGS = {"example (shared /home hostPath, image's key)": {},
           "hardened (Secret key, no hostPath)": HARDENED,
           "hardened, Kueue": {**HARDENED, "gpu_gang": "kueue", "gpu_queue": "gpu-queue"},
           "hardened, Volcano": {**HARDENED, "gpu_gang": "volcano", "gpu_queue": "research"}}
JOBS = {"1 node, 4 GPUs": ("--gres=gpu:h100:4", "-c", "8", "--mem=64G"),
        "2 nodes, 1 GPU each": ("-N", "2", "--gres=gpu:1"),
        "array, no GPU": ("--array=0-1", "-c", "2")}


def worker_pod(config: BridgeConfig, *argv: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(pod spec, pod annotations) of the first Job the request renders."""
    breq = bridged(config, *argv)
    task = breq.array_task_ids[0] if breq.array_task_ids else None
    job = kind(render(breq, config, 7, task), "Job")[0]
    return pod_spec(job), job["spec"]["template"]["metadata"].get("annotations", {})


@pytest.mark.parametrize("job", sorted(JOBS))
@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_worker_pod_meets_restricted_but_for_the_named_exceptions(config_name: str, job: str) -> None:
    config = config_with(**CONFIGS[config_name])
    violations = pss_violations(*worker_pod(config, *JOBS[job]))
    print(f"\n{config_name}, {job}: restricted profile departures\n{_table(violations)}")
    assert not unlisted(violations), f"violations that are not named exceptions:\n{_table(unlisted(violations))}"
    # every exception that does not depend on the configuration is really needed
    for e in EXCEPTIONS:
        if not e.configured:
            assert any(e.matches(v) for v in violations), f"stale exception: {e}"


def test_without_host_paths_the_pod_meets_baseline() -> None:
    violations = pss_violations(*worker_pod(config_with(**HARDENED), "-N", "2", "--gres=gpu:2"))
    assert [v for v in violations if v.level == "baseline"] == []
    assert {v.check for v in violations} == {"runAsNonRoot != true", "runAsUser=0", "unrestricted capabilities"}


def test_shared_mounts_are_the_only_baseline_departure() -> None:
    violations = pss_violations(*worker_pod(config_with(), "--gres=gpu:1"))
    baseline = [v for v in violations if v.level == "baseline"]
    assert baseline == [Violation("baseline", "hostPath volumes", 'volume "shared-0"')]


def test_every_capability_is_a_named_and_documented_exception() -> None:
    doc = SECURITY_DOC.read_text()
    assert set(WORKER_CAPABILITIES) == set(_CAPABILITY_REASONS)
    for cap in WORKER_CAPABILITIES:
        assert cap in BASELINE_CAPABILITIES, f"{cap} is beyond the baseline profile"
        assert re.search(rf"^\| `{cap}` \|", doc, re.MULTILINE), f"docs/security.md has no row for {cap}"


# -- hardening beyond the standard ----------------------------------------------------------
def test_read_only_root_with_an_empty_dir_for_every_written_path() -> None:
    spec, _ = worker_pod(config_with(**HARDENED), "--gres=gpu:1")
    worker = spec["containers"][0]
    assert worker["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in worker["volumeMounts"]}
    for name, path, why in WRITABLE_PATHS + KEY_WRITABLE_PATHS:
        assert why and mounts.get(path) == name, f"{path} ({why}) is not mounted"
        assert volumes[name] == {"name": name, "emptyDir": {}}
    # the Secret is mounted below its emptyDir parent, read-only
    assert mounts["/etc/slurm-k8s-bridge/munge"] == "munge-key"
    assert spec["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    assert spec["automountServiceAccountToken"] is False


def test_the_image_key_keeps_the_root_filesystem_writable() -> None:
    """The one exception to a read-only root: no munge_key_secret, the image's own key."""
    spec, _ = worker_pod(config_with(), "--gres=gpu:1")
    worker = spec["containers"][0]
    assert worker["securityContext"]["readOnlyRootFilesystem"] is False
    paths = {m["mountPath"] for m in worker["volumeMounts"]}
    assert not paths & {path for _, path, _ in KEY_WRITABLE_PATHS}


@pytest.mark.parametrize("argv, expected", [
    (("--mem=4G", "-c", "2", "--gres=gpu:1"), {"cpu": "2", "memory": "4096Mi", "nvidia.com/gpu": "1"}),
    (("--mem=64M", "-c", "1"), {"cpu": "1", "memory": "64Mi"}),
    (("-N", "2", "--mem-per-cpu=1G", "-c", "3", "--gres=gpu:h100:2"),
     {"cpu": "3", "memory": "3072Mi", "nvidia.com/gpu": "2"}),
])
def test_limits_equal_requests_so_the_pod_is_guaranteed(argv: tuple[str, ...], expected: dict[str, str]) -> None:
    """Guaranteed QoS: every container limits cpu and memory at its request, so the kernel
    kills the job's processes at exactly its --mem."""
    config = config_with(**HARDENED)
    job = kind(render(bridged(config, *argv), config, 7), "Job")[0]
    for c in pod_spec(job)["containers"]:
        assert c["resources"]["requests"] == c["resources"]["limits"] == expected
    assert "initContainers" not in pod_spec(job)


# -- the checks can fail --------------------------------------------------------------------
def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = spec["containers"][0]
    return found


def _no_seccomp(spec: dict[str, Any]) -> None:
    spec["securityContext"].pop("seccompProfile")
    _worker(spec)["securityContext"].pop("seccompProfile")


MUTATIONS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "privileged": (lambda s: _worker(s)["securityContext"].update(privileged=True), "privileged"),
    "hostNetwork": (lambda s: s.update(hostNetwork=True), "host namespaces"),
    "hostPID": (lambda s: s.update(hostPID=True), "host namespaces"),
    "SYS_ADMIN": (lambda s: _worker(s)["securityContext"]["capabilities"]["add"].append("SYS_ADMIN"),
                  "non-default capabilities"),
    "NET_RAW": (lambda s: _worker(s)["securityContext"]["capabilities"]["add"].append("NET_RAW"),
                "non-default capabilities"),
    "SETPCAP (baseline, not restricted)": (
        lambda s: _worker(s)["securityContext"]["capabilities"]["add"].append("SETPCAP"),
        "unrestricted capabilities"),
    "no drop ALL": (lambda s: _worker(s)["securityContext"]["capabilities"].update(drop=[]),
                    "unrestricted capabilities"),
    "escalation allowed": (lambda s: _worker(s)["securityContext"].pop("allowPrivilegeEscalation"),
                           "allowPrivilegeEscalation != false"),
    "seccomp Unconfined": (lambda s: s["securityContext"].update(seccompProfile={"type": "Unconfined"}),
                           "seccompProfile"),
    "no seccomp": (lambda s: _no_seccomp(s), "seccompProfile"),
    "hostPort": (lambda s: _worker(s)["ports"][0].update(hostPort=6818), "hostPort"),
    "procMount": (lambda s: _worker(s)["securityContext"].update(procMount="Unmasked"), "procMount"),
    "sysctl": (lambda s: s["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]),
               "forbidden sysctls"),
    "SELinux spc_t": (lambda s: _worker(s)["securityContext"].update(seLinuxOptions={"type": "spc_t"}),
                      "seLinuxOptions"),
    "AppArmor Unconfined": (lambda s: _worker(s)["securityContext"].update(
        appArmorProfile={"type": "Unconfined"}), "forbidden AppArmor profile"),
    "nfs volume": (lambda s: s["volumes"].append({"name": "data", "nfs": {"server": "n", "path": "/"}}),
                   "restricted volume types"),
    "hostPath beyond shared_mounts": (
        lambda s: s["volumes"].append({"name": "dev", "hostPath": {"path": "/dev"}}), "hostPath volumes"),
    "a root init container": (lambda s: s.update(initContainers=[{"name": "init", "securityContext": {
        "runAsUser": 0, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]),
        "runAsNonRoot != true"),
    "probe host": (lambda s: _worker(s).update(livenessProbe={"tcpSocket": {"host": "10.0.0.1", "port": 1}}),
                   "probe or lifecycle host"),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_the_checks_catch_a_pod_that_breaks_the_standard(mutation: str) -> None:
    spec, annotations = worker_pod(config_with(**HARDENED), "--gres=gpu:1")
    assert unlisted(pss_violations(spec, annotations)) == []
    change, check = MUTATIONS[mutation]
    broken = copy.deepcopy(spec)
    change(broken)
    new = unlisted(pss_violations(broken, annotations))
    assert new and {v.check for v in new} >= {check}, _table(pss_violations(broken, annotations))


def test_the_checks_catch_an_apparmor_annotation() -> None:
    spec, annotations = worker_pod(config_with(**HARDENED), "--gres=gpu:1")
    bad = {**annotations, APPARMOR_ANNOTATION + "slurmd": "unconfined"}
    assert [v.check for v in unlisted(pss_violations(spec, bad))] == ["forbidden AppArmor profile"]


def test_doc_names_every_writable_path() -> None:
    doc = SECURITY_DOC.read_text()
    for _, path, _ in WRITABLE_PATHS + KEY_WRITABLE_PATHS:
        assert f"`{path}`" in doc, f"docs/security.md does not name {path}"
    assert Path(REPO / "deploy" / "networkpolicy.yaml").is_file()
