"""The doctor's Slurm side: slurm.conf and plugstack.conf as the bridge needs them, the
installed plugins (built for the running Slurm release, carrying this Python's contract),
slurmctld answering, and munge.

Where it runs: on a slurmctld host every check applies. Inside the daemon pod there is
usually no slurm.conf (its clients run configless): the file checks are skipped, saying so,
and slurmctld and munge are still checked through ``scontrol`` and ``munge``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from slurm_k8s_bridge.core.config import BridgeConfig, NodeShape
from slurm_k8s_bridge.core.contract import (
    MIRROR_NODE_FEATURE,
    MIRROR_NODESET,
    POD_NODE_FEATURE,
    POD_NODESET,
    contract_fingerprint,
)
from slurm_k8s_bridge.doctor.report import Finding, fail, ok, skip, warn
from slurm_k8s_bridge.doctor.slurm_files import (
    NodeLine,
    SlurmConf,
    SlurmFileError,
    expand_hostlist,
    node_line,
    parse_plugstack,
    parse_slurm_conf,
    read_plugin,
    same_release,
    split_top_level,
    version_number,
    version_text,
)
from slurm_k8s_bridge.slurm.conf import inventory_lines
from slurm_k8s_bridge.slurm.plugin_build import DEBIAN_PLUGIN_DIR

DEFAULT_SLURM_CONF = "/etc/slurm/slurm.conf"
DEFAULT_MUNGE_SOCKET = "/run/munge/munge.socket.2"
JOB_SUBMIT_SO = "job_submit_k8s.so"
SPANK_SO = "spank_k8s.so"
SPANK_PY_SO = "spank_k8s_py.so"
SLURM_CONF_HINT = "`slurm-k8s-bridge slurm-conf` prints every line the bridge needs"
REBUILD = "rebuild and install them on this host: slurm-k8s-bridge plugins install"


@dataclass(frozen=True)
class SlurmConfChoice:
    """Which slurm.conf the doctor reads, and whether the user named it."""

    path: Path
    explicit: bool
    source: str


def choose_slurm_conf(arg: str | None, env: Mapping[str, str]) -> SlurmConfChoice:
    if arg:
        return SlurmConfChoice(Path(arg), True, "--slurm-conf")
    if env.get("SLURM_CONF"):
        return SlurmConfChoice(Path(env["SLURM_CONF"]), True, "$SLURM_CONF")
    return SlurmConfChoice(Path(DEFAULT_SLURM_CONF), False, "default")


@dataclass
class SlurmRun:
    """How the doctor runs Slurm's and munge's commands."""

    env: dict[str, str]
    timeout: float = 15.0

    def __call__(self, cmd: Sequence[str], input: bytes | None = None) -> tuple[int, str, str]:
        if not shutil.which(cmd[0], path=self.env.get("PATH")):
            return 127, "", f"{cmd[0]}: command not found"
        try:
            proc = subprocess.run(list(cmd), input=input, capture_output=True, env=self.env,
                                  timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            return 124, "", f"{' '.join(cmd)} did not finish within {self.timeout:.0f}s"
        except OSError as exc:
            return 126, "", f"{cmd[0]}: {exc.strerror}"
        return (proc.returncode, proc.stdout.decode("utf-8", "replace"),
                proc.stderr.decode("utf-8", "replace"))


# -- slurm.conf -----------------------------------------------------------------------

def read_slurm_conf(choice: SlurmConfChoice) -> tuple[list[Finding], SlurmConf | None]:
    if not choice.path.exists():
        if choice.explicit:
            return [fail("slurm.conf", f"{choice.path} ({choice.source}) does not exist",
                         "give the slurm.conf slurmctld reads (--slurm-conf PATH)")], None
        return [skip("slurm.conf", f"no {choice.path}: not a slurmctld host (the daemon pod "
                     "runs configless); the slurm.conf and plugin checks need one "
                     "(--slurm-conf PATH)")], None
    try:
        conf = parse_slurm_conf(choice.path)
    except SlurmFileError as exc:
        return [fail("slurm.conf", str(exc), "make slurm.conf readable by the doctor "
                     "(run it as root or SlurmUser)")], None
    return [ok("slurm.conf", f"{choice.path}: {len(conf.nodes)} node lines, "
               f"{len(conf.partitions)} partitions")], conf


def check_job_submit(conf: SlurmConf) -> Finding:
    plugins = conf.list_option("JobSubmitPlugins")
    if any(p in ("k8s", "job_submit/k8s") for p in plugins):
        return ok("slurm.job_submit", f"JobSubmitPlugins={','.join(plugins)} loads job_submit/k8s")
    now = f"JobSubmitPlugins={','.join(plugins)}" if plugins else "no JobSubmitPlugins line"
    want = ",".join([*plugins, "k8s"])
    return fail("slurm.job_submit", f"slurm.conf does not load the bridge's job_submit plugin "
                f"({now}): bridged jobs would run on Slurm's own nodes unchecked",
                f"set JobSubmitPlugins={want} in {conf.path}, then restart slurmctld")


def check_private_data(conf: SlurmConf) -> Finding:
    items = [p.lower() for p in conf.list_option("PrivateData")]
    if "cloud" in items:
        return ok("slurm.private_data", f"PrivateData={conf.get('PrivateData')} shows CLOUD nodes")
    want = ",".join([*conf.list_option("PrivateData"), "cloud"])
    return fail("slurm.private_data", "PrivateData lacks 'cloud': sinfo hides the Kubernetes GPU "
                f"nodes the daemon mirrors (now: {conf.get('PrivateData') or 'unset'})",
                f"set PrivateData={want} in {conf.path}, then scontrol reconfigure")


def check_dynamic_nodes(conf: SlurmConf, config: BridgeConfig | None) -> list[Finding]:
    """What the pods' dynamic slurmd and the mirrored nodes need in slurm.conf."""
    out: list[Finding] = []
    problems: list[tuple[str, str]] = []
    max_nodes = conf.get("MaxNodeCount") or ""
    if not (max_nodes.isdigit() and int(max_nodes) > 0):
        problems.append((("no MaxNodeCount: the pods' slurmd -Z and the mirrored nodes find "
                         "no room in the node table"),
                         "add MaxNodeCount=1024"))
    params = [p.lower() for p in conf.list_option("SlurmctldParameters")]
    if "enable_configless" not in params:
        problems.append((("SlurmctldParameters lacks enable_configless: the pods' slurmd cannot "
                         "fetch slurm.conf"),
                         f"set SlurmctldParameters={','.join([*conf.list_option('SlurmctldParameters'), 'enable_configless'])}"))
    for name, feature in ((POD_NODESET, POD_NODE_FEATURE), (MIRROR_NODESET, MIRROR_NODE_FEATURE)):
        found = [s for s in conf.nodesets if s.get("nodeset") == name]
        if not found:
            problems.append((f"no NodeSet {name}", f"add NodeSet={name} Feature={feature}"))
        elif found[0].get("feature") != feature:
            selects = found[0].get("feature") or "(none)"
            problems.append((f"NodeSet {name} selects Feature={selects}, not {feature}",
                             f"make it NodeSet={name} Feature={feature}"))
    if (config is not None and any(s.gpus for s in config.shapes.values())
            and "gpu" not in [g.lower() for g in conf.list_option("GresTypes")]):
        problems.append(("GresTypes lacks gpu: every --gres=gpu job is refused",
                         f"set GresTypes={','.join([*conf.list_option('GresTypes'), 'gpu'])}"))
    for problem, fix in problems:
        out.append(fail("slurm.dynamic_nodes", problem, f"{fix} in {conf.path} ({SLURM_CONF_HINT})"))
    if "enable_nss_slurm" not in [p.lower() for p in conf.list_option("LaunchParameters")]:
        out.append(warn("slurm.dynamic_nodes", "LaunchParameters lacks enable_nss_slurm: job "
                        "owners who exist only on the login side do not resolve inside the pods",
                        "add LaunchParameters=enable_nss_slurm (or give the pods the site's "
                        "directory service)"))
    if not problems:
        out.append(ok("slurm.dynamic_nodes", f"MaxNodeCount={max_nodes}, configless, NodeSets "
                      f"{POD_NODESET} and {MIRROR_NODESET}"))
    return out


# -- partitions -----------------------------------------------------------------------

def partition_nodes(conf: SlurmConf, part: Mapping[str, str], lines: Sequence[NodeLine]
                    ) -> tuple[list[NodeLine], set[str]]:
    """The node lines a partition's ``Nodes=`` reaches, and the NodeSet names it names."""
    wanted: set[str] = set()
    everything = False
    nodesets = {s.get("nodeset", ""): s for s in conf.nodesets}
    named_sets: set[str] = set()
    for item in split_top_level(part.get("nodes", "")):
        if item.upper() == "ALL":
            everything = True
        elif item in nodesets:
            named_sets.add(item)
            members = nodesets[item]
            if members.get("nodes"):
                wanted.update(expand_hostlist(members["nodes"]))
            if members.get("feature"):
                wanted.update(n for line in lines if members["feature"] in line.features
                              for n in line.names)
        else:
            wanted.update(expand_hostlist(item))
    reached = [line for line in lines if everything or wanted.intersection(line.names)]
    return reached, named_sets


def shape_problem(shape: NodeShape, lines: Sequence[NodeLine]) -> str:
    """Why no node line can hold a whole node of ``shape`` ("" when one can)."""
    if not lines:
        return "the partition has no node lines"
    best = ""
    for line in lines:
        missing = []
        if line.cpus < shape.cpus:
            missing.append(f"CPUs={line.cpus} < {shape.cpus}")
        if line.memory_mb < shape.memory_mb:
            missing.append(f"RealMemory={line.memory_mb} < {shape.memory_mb}")
        if shape.gpus and line.gres_count("gpu", shape.gres_type) < shape.gpus:
            missing.append(f"gpu:{shape.gres_type}:{line.gres_count('gpu', shape.gres_type)} "
                           f"< {shape.gpus}")
        for profile in sorted(shape.mig):
            if line.gres_count("gpu", profile) < shape.mig_per_node(profile):
                missing.append(f"no gpu:{profile}:{shape.mig_per_node(profile)}")
        lacking = sorted(set(shape.features) - line.features)
        if lacking:
            missing.append(f"Feature lacks {','.join(lacking)}")
        if not missing:
            return ""
        if not best or len(", ".join(missing)) < len(best):
            best = f"best line {line.names[0] if line.names else '?'}: {', '.join(missing)}"
    return best


def check_partitions(conf: SlurmConf, config: BridgeConfig) -> list[Finding]:
    out: list[Finding] = []
    try:
        lines = [node_line(r) for r in conf.nodes]
    except SlurmFileError as exc:
        return [fail("slurm.partitions", f"{conf.path}: {exc}", "correct the NodeName line")]
    inventory = inventory_lines(config, 1)
    bridged = []
    for part in conf.partitions:
        name = part.get("partitionname", "")
        rule = config.rule_for(name)
        if not rule.bridged:
            continue
        bridged.append(name)
        check = f"slurm.partition.{name}"
        try:
            reached, sets = partition_nodes(conf, part, lines)
        except SlurmFileError as exc:
            out.append(fail(check, f"partition {name}: {exc}", "correct its Nodes= value"))
            continue
        bad = False
        for nodeset in (POD_NODESET, MIRROR_NODESET):
            if nodeset not in sets:
                bad = True
                what = "the pods' dynamic nodes" if nodeset == POD_NODESET else "the mirrored GPU nodes"
                out.append(fail(check, f"bridged partition {name} does not list NodeSet {nodeset} "
                                f"in Nodes=: {what} never join it",
                                f"add {nodeset} to its Nodes= ({SLURM_CONF_HINT})"))
        for shape in config.shapes_of(rule):
            why = shape_problem(shape, reached)
            if why:
                bad = True
                index = list(config.shapes).index(shape.name)
                out.append(fail(check, f"no node of bridged partition {name} can hold a whole "
                                f"{shape.name} node ({why}): slurmctld refuses such jobs "
                                "(Requested node configuration is not available)",
                                f"add {inventory.node_lines[index]} (with its gres.conf line) "
                                f"and list it in partition {name}'s Nodes= ({SLURM_CONF_HINT})"))
        if not bad:
            out.append(ok(check, f"bridged partition {name}: NodeSets {POD_NODESET},{MIRROR_NODESET}; "
                          f"nodes for shapes {','.join(s.name for s in config.shapes_of(rule))}"))
    if not bridged:
        out.append(fail("slurm.partitions", f"no partition of {conf.path} is bridged by the "
                        f"configuration (partitions: {', '.join(p.get('partitionname', '?') for p in conf.partitions) or 'none'})",
                        "add a PartitionName line for a bridged partition "
                        f"({SLURM_CONF_HINT}) or mark one bridged in the bridge configuration"))
    default = next((p.get("partitionname", "") for p in conf.partitions
                    if p.get("default", "").upper() == "YES"), None)
    if config.default_partition and default and default != config.default_partition:
        out.append(fail("slurm.partitions", f"the bridge's default_partition is "
                        f"{config.default_partition} but slurm.conf's Default=YES partition is "
                        f"{default}: jobs without -p are judged by the wrong rule",
                        f"set default_partition: {default} in the bridge configuration"))
    out.extend(_check_power_save(conf, config, lines))
    return out


def _check_power_save(conf: SlurmConf, config: BridgeConfig,
                      lines: Sequence[NodeLine]) -> list[Finding]:
    """CLOUD inventory nodes must stay powered down: without a ResumeProgram slurmctld
    allocates a CLOUD node at once (CONFIGURING) to any runnable job of its partition."""
    if not any(line.state == "CLOUD" for line in lines):
        return []
    missing = [key for key in ("ResumeProgram", "SuspendProgram", "SuspendTime") if not conf.get(key)]
    out: list[Finding] = []
    if missing:
        out.append(fail("slurm.power_save", f"CLOUD nodes but no {', '.join(missing)}: slurmctld "
                        "allocates the inventory nodes to jobs instead of keeping them powered down",
                        f"add the power-saving lines ({SLURM_CONF_HINT})"))
    else:
        out.append(ok("slurm.power_save", f"CLOUD nodes stay powered down (ResumeProgram={conf.get('ResumeProgram')})"))
    excluded = set(conf.list_option("SuspendExcParts"))
    real = [p.get("partitionname", "") for p in conf.partitions
            if not config.rule_for(p.get("partitionname", "")).bridged]
    left = [p for p in real if p not in excluded]
    if left and not conf.get("SuspendExcNodes"):
        out.append(warn("slurm.power_save", f"power saving also applies to the real nodes of "
                        f"{', '.join(left)} (not in SuspendExcParts)",
                        f"set SuspendExcParts={','.join(sorted(excluded | set(left)))}"))
    return out


# -- plugstack.conf and the plugins ---------------------------------------------------

def check_plugstack(conf: SlurmConf, config_path: str) -> tuple[list[Finding], Path | None]:
    path = conf.plugstack_path()
    if not path.exists():
        return [fail("slurm.plugstack", f"no {path} (PlugStackConfig): sbatch has no --k8s-* "
                     "options and the pods get no task environment",
                     f"create it with: required {SPANK_SO} config={config_path}")], None
    try:
        entries = parse_plugstack(path)
    except SlurmFileError as exc:
        return [fail("slurm.plugstack", str(exc), "make it readable")], None
    ours = [e for e in entries if Path(e.path).name == SPANK_SO]
    if not ours:
        return [fail("slurm.plugstack", f"{path} does not load {SPANK_SO}",
                     f"add the line: required {SPANK_SO} config={config_path}")], None
    entry = ours[0]
    plugin_dirs = conf.plugin_dirs() or [Path(DEBIAN_PLUGIN_DIR)]
    so = entry.resolve(plugin_dirs)
    out: list[Finding] = []
    if not so.exists():
        out.append(fail("slurm.plugstack", f"{entry.source} loads {entry.path}, which is not "
                        f"there ({so})", f"install the plugins ({REBUILD}) or correct the path"))
        return out, None
    named = entry.arg("config")
    if named and not Path(named).exists():
        out.append(fail("slurm.plugstack", f"{SPANK_SO} reads config={named}, which does not exist",
                        f"point config= at the bridge configuration ({config_path})"))
    elif named and os.path.realpath(named) != os.path.realpath(config_path):
        out.append(warn("slurm.plugstack", f"{SPANK_SO} reads config={named}; the doctor checked "
                        f"{config_path}", f"run the doctor with --config {named}"))
    else:
        out.append(ok("slurm.plugstack", f"{entry.source}: {entry.kind} {so}"
                      + (f" config={named}" if named else "")))
    return out, so


def find_job_submit_so(conf: SlurmConf) -> Path | None:
    for directory in conf.plugin_dirs() or [Path(DEBIAN_PLUGIN_DIR)]:
        if (directory / JOB_SUBMIT_SO).exists():
            return directory / JOB_SUBMIT_SO
    return None


def check_plugin(path: Path, running: int | None, running_from: str,
                 needs_version: bool = True) -> list[Finding]:
    """One built plugin: the Slurm release it was compiled for, and its contract."""
    check = f"plugin.{path.name}"
    try:
        facts = read_plugin(path)
    except SlurmFileError as exc:
        return [fail(check, str(exc), REBUILD)]
    out: list[Finding] = []
    if needs_version:
        if facts.slurm_version is None:
            out.append(fail(check, f"{path} has no plugin_version: not a Slurm plugin", REBUILD))
        elif running is None:
            out.append(skip(check, f"{path} was built for Slurm {version_text(facts.slurm_version)}; "
                            f"the running Slurm version is unknown ({running_from})"))
        elif not same_release(facts.slurm_version, running):
            out.append(fail(check, f"{path} was built for Slurm {version_text(facts.slurm_version)}, "
                            f"but Slurm {version_text(running)} runs here ({running_from}): Slurm "
                            "refuses to load it (Incompatible Slurm plugin version)",
                            f"{REBUILD} (against this Slurm's headers, libslurm-dev)"))
        else:
            out.append(ok(check, f"{path}: built for Slurm {version_text(facts.slurm_version)} "
                          f"(running {version_text(running)})"))
    want = contract_fingerprint()
    if not facts.contracts:
        out.append(fail(check, f"{path} carries no k8sb-contract: not built by this "
                        "slurm-k8s-bridge (or by one too old to carry it)", REBUILD))
    elif any(c != want for c in facts.contracts):
        other = next(c for c in facts.contracts if c != want)
        differ = _contract_diff(other, want)
        out.append(fail(check, f"{path} was built with another contract than this Python's "
                        f"({differ}): the C shim and the Python disagree", REBUILD))
    else:
        out.append(ok(check, f"{path}: contract matches this Python"))
    return out


def _contract_diff(theirs: str, ours: str) -> str:
    import json
    try:
        a, b = json.loads(theirs), json.loads(ours)
    except ValueError:
        return "unreadable contract"
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return "differs in " + ", ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys[:3]) if keys \
        else "same values, other spelling"


def running_slurm_version(run: SlurmRun) -> tuple[int | None, str]:
    """The Slurm release the plugins will be loaded by: slurmctld's own binary here, else
    the controller's (``scontrol show config``), else the local clients'."""
    tried = []
    for cmd, source in ((["slurmctld", "-V"], "slurmctld -V"),
                        (["scontrol", "show", "config"], "scontrol show config"),
                        (["scontrol", "--version"], "scontrol --version")):
        rc, out, err = run(cmd)
        number = version_number(out) if rc == 0 else None
        if cmd[1] == "show" and rc == 0:
            line = next((ln for ln in out.splitlines() if ln.startswith("SLURM_VERSION")), "")
            number = version_number(line)
        if number is not None:
            return number, source
        tried.append(f"{source}: {(err.strip().splitlines() or ['no version'])[-1]}")
    return None, "; ".join(tried)


def check_slurmctld(run: SlurmRun) -> Finding:
    rc, out, err = run(["scontrol", "ping"])
    if rc == 127:
        return skip("slurmctld", "scontrol is not installed here")
    text = (out + err).strip()
    if rc == 0 and "UP" in out:
        return ok("slurmctld", text.splitlines()[0])
    last = (text.splitlines() or ["no answer"])[-1]
    if "Munge encode failed" in text or "munge" in last.lower():
        return fail("slurmctld", "scontrol cannot authenticate to slurmctld: munge does not work "
                    "here (see munge)", "get munge working first (below)")
    if "configuration source" in text:
        return fail("slurmctld", f"Slurm's clients here find no configuration ({last})",
                    "give slurm.conf ($SLURM_CONF) or the configless DNS SRV record _slurmctld._tcp")
    return fail("slurmctld", f"slurmctld does not answer: {' '.join(text.split())[:300]}",
                "start slurmctld, or check SlurmctldHost/SlurmctldPort (and $SLURM_CONF) here")


# -- munge ----------------------------------------------------------------------------

def munge_socket(conf: SlurmConf | None, arg: str | None) -> tuple[str, str]:
    """The munged socket Slurm uses: --munge-socket, AuthInfo=socket=..., the default."""
    if arg:
        return arg, "--munge-socket"
    for item in (conf.get("AuthInfo") or "").split(",") if conf else []:
        key, _, value = item.partition("=")
        if key.strip().lower() == "socket" and value:
            return value.strip(), "AuthInfo"
    return DEFAULT_MUNGE_SOCKET, "default"


def check_munge(run: SlurmRun, socket: str, source: str, needed: bool) -> Finding:
    rc, cred, err = run(["munge", "-n", f"--socket={socket}"])
    if rc == 127:
        if needed:
            return fail("munge", "munge is not installed: Slurm's clients cannot authenticate",
                        "install munge (Debian: apt-get install munge) and the cluster's munge.key")
        return skip("munge", "munge is not installed and no Slurm is configured here")
    if rc != 0:
        return fail("munge", f"munge cannot get a credential from munged at {socket} ({source}): "
                    f"{' '.join(err.split())[:300]}",
                    "start munged (systemctl start munge), or give its socket: AuthInfo=socket=PATH "
                    "in slurm.conf / --munge-socket")
    rc, out, err = run(["unmunge", f"--socket={socket}"], input=cred.encode())
    if rc != 0 or "Success" not in out:
        return fail("munge", f"unmunge refuses a fresh credential at {socket}: "
                    f"{' '.join((err or out).split())[:300]}",
                    "check munged's key (/etc/munge/munge.key, the same on every host) and clock")
    return ok("munge", f"munge -n | unmunge: Success ({socket})")


# -- all of it ------------------------------------------------------------------------

def slurm_findings(*, slurm_conf: str | None, config: BridgeConfig | None, config_path: str,
                   munge_socket_arg: str | None, env: Mapping[str, str],
                   timeout: float = 15.0) -> list[Finding]:
    choice = choose_slurm_conf(slurm_conf, env)
    out, conf = read_slurm_conf(choice)
    run_env = {k: v for k, v in env.items()}
    if conf is not None:
        run_env["SLURM_CONF"] = str(choice.path)
    run = SlurmRun(run_env, timeout)
    if conf is None:
        why = "needs slurm.conf (see slurm.conf above)"
        out += [skip(c, why) for c in ("slurm.job_submit", "slurm.private_data",
                                       "slurm.dynamic_nodes", "slurm.partitions", "slurm.plugstack",
                                       "plugin")]
    else:
        out.append(check_job_submit(conf))
        out.append(check_private_data(conf))
        out += check_dynamic_nodes(conf, config)
        if config is None:
            out.append(skip("slurm.partitions", "needs a valid bridge configuration"))
        else:
            out += check_partitions(conf, config)
        found, spank = check_plugstack(conf, config_path)
        out += found
        running, running_from = running_slurm_version(run)
        job_submit = find_job_submit_so(conf)
        if job_submit is None:
            dirs = ":".join(str(d) for d in conf.plugin_dirs() or [Path(DEBIAN_PLUGIN_DIR)])
            out.append(fail(f"plugin.{JOB_SUBMIT_SO}", f"no {JOB_SUBMIT_SO} in PluginDir ({dirs})",
                            f"{REBUILD} --plugin-dir DIR (a directory of PluginDir)"))
        else:
            out += check_plugin(job_submit, running, running_from)
        if spank is not None:
            out += check_plugin(spank, running, running_from)
            py_half = spank.parent / SPANK_PY_SO
            if py_half.exists():
                out += check_plugin(py_half, running, running_from, needs_version=False)
            else:
                out.append(skip(f"plugin.{SPANK_PY_SO}", f"no {py_half}: needed only where "
                                "bridged pods run slurmstepd (the worker image has its own)"))
    socket, source = munge_socket(conf, munge_socket_arg)
    munge = check_munge(run, socket, source, needed=conf is not None
                        or bool(shutil.which("scontrol", path=run_env.get("PATH"))))
    out.append(munge)
    if munge.status == "fail":   # scontrol would spend ~20 s retrying munge, then say so
        out.append(skip("slurmctld", "scontrol cannot authenticate to slurmctld without munge "
                        "(see munge)"))
    else:
        out.append(check_slurmctld(run))
    return out
