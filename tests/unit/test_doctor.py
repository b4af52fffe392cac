"""The doctor's pure parts: reading slurm.conf / plugstack.conf / hostlists / a plugin's ELF
facts, judging a slurm.conf against the bridge configuration, the RBAC rights and GPU node
findings, what is skipped where, and the report (text, JSON, exit code)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from slurm_k8s_bridge.core import contract
from slurm_k8s_bridge.core.config import BridgeConfig, parse_config
from slurm_k8s_bridge.doctor import kube_checks as kc
from slurm_k8s_bridge.doctor import slurm_checks as sc
from slurm_k8s_bridge.doctor.report import (
    FAIL,
    OK,
    SKIP,
    WARN,
    Finding,
    Report,
    fail,
    ok,
    skip,
    warn,
)
from slurm_k8s_bridge.doctor.run import (
    DoctorOptions,
    check_config,
    config_path,
    run_doctor,
)
from slurm_k8s_bridge.doctor.slurm_files import (
    SlurmFileError,
    elf_symbol_bytes,
    expand_hostlist,
    node_line,
    parse_gres,
    parse_plugstack,
    parse_slurm_conf,
    read_plugin,
    same_release,
    version_number,
    version_text,
)
from slurm_k8s_bridge.kube.rbac import rbac_for_config
from slurm_k8s_bridge.slurm.conf import render_conf_snippet

pytestmark = pytest.mark.unit


def statuses(findings: list[Finding], check: str) -> list[str]:
    return [f.status for f in findings if f.check == check]


def messages(findings: list[Finding], status: str = FAIL) -> str:
    return "\n".join(f"{f.check}: {f.message}" for f in findings if f.status == status)


# -- the report -----------------------------------------------------------------------

def test_a_failure_must_say_how_to_fix_it() -> None:
    with pytest.raises(ValueError, match="must say how to fix"):
        Finding("x", FAIL, "broken")
    with pytest.raises(ValueError, match="unknown status"):
        Finding("x", "bad", "?")


def test_report_exit_code_text_and_json() -> None:
    report = Report()
    report.add(ok("config", "fine"))
    report.add([warn("slurm.x", "meh", "do y"), skip("kube", "no kubeconfig")])
    assert report.exit_code() == 0
    report.add(fail("munge", "munged\nis down", "start munged"))
    assert report.exit_code() == 1
    text = report.as_text()
    assert re.search(r"^FAIL\s+munge\s+munged is down$", text, re.MULTILINE), text
    assert re.search(r"^\s+fix: start munged$", text, re.MULTILINE), text
    assert "fix: do y" in text
    assert text.rstrip().endswith("1 ok, 1 failed, 1 warnings, 1 skipped: FAILED")
    data = json.loads(report.as_json())
    assert data["ok"] is False
    assert data["summary"] == {OK: 1, FAIL: 1, WARN: 1, SKIP: 1}
    assert data["findings"][-1] == {"check": "munge", "status": "fail",
                                    "message": "munged\nis down", "fix": "start munged"}


# -- files ------------------------------------------------------------------------------

def test_hostlists() -> None:
    assert expand_hostlist("n[0-2],login") == ["n0", "n1", "n2", "login"]
    assert expand_hostlist("gpu-[08-10,15]") == ["gpu-08", "gpu-09", "gpu-10", "gpu-15"]
    assert expand_hostlist("r[1-2]n[0-1]") == ["r1n0", "r1n1", "r2n0", "r2n1"]
    with pytest.raises(SlurmFileError, match="more than"):
        expand_hostlist("n[0-99999999]")
    with pytest.raises(SlurmFileError, match="bad range"):
        expand_hostlist("n[5-1]")


def test_gres_and_node_lines() -> None:
    assert parse_gres("gpu:h100:8,gpu:1g.10gb:56") == {("gpu", "h100"): 8, ("gpu", "1g.10gb"): 56}
    assert parse_gres("gpu:4") == {("gpu", None): 4}
    assert parse_gres("gpu:a100:2(S:0-1)") == {("gpu", "a100"): 2}
    line = node_line({"nodename": "a[0-1]", "sockets": "2", "corespersocket": "4",
                      "threadspercore": "2", "realmemory": "1000", "feature": "x,y",
                      "state": "cloud"})
    assert (line.names, line.cpus, line.memory_mb, line.features, line.state) == (
        ("a0", "a1"), 16, 1000, frozenset({"x", "y"}), "CLOUD")


def test_slurm_conf_with_includes_defaults_comments_and_continuations(tmp_path: Path) -> None:
    (tmp_path / "nodes.conf").write_text("NodeName=DEFAULT CPUs=8 RealMemory=9000\n"
                                         "NodeName=n[0-1] Feature=a  # comment\n")
    (tmp_path / "slurm.conf").write_text(
        "ClusterName=x\n# JobSubmitPlugins=lua\njobsubmitplugins=lua,k8s\n"
        "Include nodes.conf\n"
        "PartitionName=gpu Nodes=n[0-1],k8spods \\\n   Default=YES\n"
        'NodeSet=k8spods Feature=k8s-pod\n')
    conf = parse_slurm_conf(tmp_path / "slurm.conf")
    assert conf.list_option("JobSubmitPlugins") == ["lua", "k8s"]
    assert conf.nodes == [{"nodename": "n[0-1]", "cpus": "8", "realmemory": "9000", "feature": "a"}]
    assert conf.partition("gpu") == {"partitionname": "gpu", "nodes": "n[0-1],k8spods", "default": "YES"}
    assert conf.nodesets[0]["feature"] == "k8s-pod"
    assert conf.plugstack_path() == tmp_path / "plugstack.conf"
    assert conf.files == [tmp_path / "slurm.conf", tmp_path / "nodes.conf"]


def test_plugstack_with_includes(tmp_path: Path) -> None:
    (tmp_path / "plugstack.conf.d").mkdir()
    (tmp_path / "plugstack.conf.d" / "k8s.conf").write_text(
        "required spank_k8s.so config=/etc/slurm/k8s-bridge.yaml\n")
    (tmp_path / "plugstack.conf").write_text(
        f"optional /usr/lib/pyxis.so\ninclude {tmp_path}/plugstack.conf.d/*.conf\n")
    entries = parse_plugstack(tmp_path / "plugstack.conf")
    assert [(e.kind, e.path) for e in entries] == [("optional", "/usr/lib/pyxis.so"),
                                                  ("required", "spank_k8s.so")]
    assert entries[1].arg("config") == "/etc/slurm/k8s-bridge.yaml"
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "spank_k8s.so").write_text("")
    assert entries[1].resolve([tmp_path / "nope", tmp_path / "lib"]) == tmp_path / "lib" / "spank_k8s.so"


def test_versions() -> None:
    assert version_number("slurm-wlm 22.05.8") == 0x160508
    assert version_number("SLURM_VERSION           = 24.11.5") == 0x180B05
    assert version_number("no version") is None
    assert version_text(0x180B05) == "24.11.5"
    assert same_release(0x160508, 0x160501)
    assert not same_release(0x160508, 0x180B05)


@pytest.fixture(scope="module")
def built_so(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny shared object laid out as the bridge's plugins are: a ``plugin_version`` data
    symbol and the contract string."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("so")
    fingerprint = ("k8sb-contract:" + contract.contract_fingerprint()).replace('"', '\\"')
    (d / "p.c").write_text("const unsigned int plugin_version = 0x180b05;\n"
                           f'static const char c[] __attribute__((used)) = "{fingerprint}";\n')
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(d / "p.so"), str(d / "p.c")], check=True)
    return d / "p.so"


def test_plugin_facts_from_the_elf_file(built_so: Path, tmp_path: Path) -> None:
    facts = read_plugin(built_so)
    assert facts.slurm_version == 0x180B05
    assert facts.contracts == (contract.contract_fingerprint(),)
    assert elf_symbol_bytes(built_so.read_bytes(), "no_such_symbol") is None
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"MZ not elf")
    with pytest.raises(SlurmFileError, match="not an ELF file"):
        read_plugin(junk)


def test_plugin_checks(built_so: Path) -> None:
    found = sc.check_plugin(built_so, 0x160508, "slurmctld -V")
    assert re.search(r"built for Slurm 24\.11\.5, but Slurm 22\.05\.8 runs here", messages(found))
    assert statuses(sc.check_plugin(built_so, 0x180B01, "x"), f"plugin.{built_so.name}") == [OK, OK]
    unknown = sc.check_plugin(built_so, None, "nothing answered")
    assert [f.status for f in unknown] == [SKIP, OK]


# -- slurm.conf against the configuration ---------------------------------------------

def bridge_slurm_conf(config: BridgeConfig) -> str:
    """What ``slurm-k8s-bridge slurm-conf`` prints, made into a slurm.conf."""
    snippet = render_conf_snippet(config, 2).split("# --- gres.conf ---")[0]
    match = re.search(r"^# e\.g\. (PartitionName=.*)$", snippet, re.MULTILINE)
    assert match
    return snippet + match.group(1) + "\nPartitionName=cpu Nodes=c1 State=UP\n" \
        "NodeName=c1 CPUs=4 RealMemory=4000\nLaunchParameters=enable_nss_slurm\n"


def conf_of(tmp_path: Path, text: str) -> sc.SlurmConf:
    path = tmp_path / "slurm.conf"
    path.write_text(text)
    return parse_slurm_conf(path)


def all_slurm_conf_findings(conf: sc.SlurmConf, config: BridgeConfig) -> list[Finding]:
    return [sc.check_job_submit(conf), sc.check_private_data(conf),
            *sc.check_dynamic_nodes(conf, config), *sc.check_partitions(conf, config)]


def test_what_slurm_conf_prints_passes_the_doctor(tmp_path: Path, config: BridgeConfig) -> None:
    conf = conf_of(tmp_path, bridge_slurm_conf(config))
    found = all_slurm_conf_findings(conf, config)
    assert not messages(found) and not messages(found, WARN), messages(found) + messages(found, WARN)
    assert statuses(found, "slurm.partition.gpu") == [OK]


@pytest.mark.parametrize("edit, check, pattern", [
    (lambda t: t.replace("JobSubmitPlugins=k8s", "JobSubmitPlugins=lua"), "slurm.job_submit",
     r"JobSubmitPlugins=lua"),
    (lambda t: t.replace("PrivateData=cloud", "PrivateData=jobs"), "slurm.private_data", "lacks 'cloud'"),
    (lambda t: re.sub(r"MaxNodeCount=\d+", "", t), "slurm.dynamic_nodes", "no MaxNodeCount"),
    (lambda t: t.replace("SlurmctldParameters=enable_configless", ""), "slurm.dynamic_nodes",
     "enable_configless"),
    (lambda t: t.replace("NodeSet=k8snodes Feature=k8s-node", "NodeSet=k8snodes Feature=other"),
     "slurm.dynamic_nodes", "selects Feature=other"),
    (lambda t: t.replace("GresTypes=gpu", ""), "slurm.dynamic_nodes", "GresTypes lacks gpu"),
    (lambda t: re.sub(r",k8snodes Default", " Default", t), "slurm.partition.gpu",
     "does not list NodeSet k8snodes"),
    (lambda t: re.sub(r"(-a100-\S* CPUs=)128", r"\g<1>64", t), "slurm.partition.gpu",
     r"whole a100 node \(best line .*CPUs=64 < 128"),
    (lambda t: re.sub(r",gpu:1g\.10gb:\d+", "", t), "slurm.partition.gpu", r"no gpu:1g\.10gb:56"),
    (lambda t: re.sub(r"Feature=h100,hopper", "Feature=h100", t), "slurm.partition.gpu",
     r"Feature lacks hopper"),
    (lambda t: t.replace("ResumeProgram=", "#"), "slurm.power_save", "no ResumeProgram"),
    (lambda t: t.replace("Default=YES", "").replace("PartitionName=cpu", "PartitionName=cpu Default=YES"),
     "slurm.partitions", "Default=YES partition is cpu"),
])
def test_each_missing_slurm_conf_line_is_named(tmp_path: Path, config: BridgeConfig, edit: Any,
                                               check: str, pattern: str) -> None:
    text = bridge_slurm_conf(config)
    conf = conf_of(tmp_path, edit(text))
    found = all_slurm_conf_findings(conf, config)
    fails = [f for f in found if f.status == FAIL and f.check == check]
    assert fails and any(re.search(pattern, f.message) for f in fails), messages(found)
    assert all(f.fix for f in fails)


def test_a_partition_the_configuration_does_not_bridge_is_not_judged(tmp_path: Path,
                                                                     config: BridgeConfig) -> None:
    conf = conf_of(tmp_path, bridge_slurm_conf(config))
    found = sc.check_partitions(conf, config)
    assert "slurm.partition.cpu" not in {f.check for f in found}
    unbridged = parse_config({**_example_data(), "partitions": {"default": {"bridged": False}}})
    assert re.search("no partition .* is bridged", messages(sc.check_partitions(conf, unbridged)))


def _example_data() -> dict[str, Any]:
    import yaml
    data: dict[str, Any] = yaml.safe_load((Path(__file__).resolve().parents[2] / "slurm_plugins"
                                           / "k8s-bridge.example.yaml").read_text())
    return data


def test_real_partitions_left_to_power_saving_are_a_warning(tmp_path: Path, config: BridgeConfig) -> None:
    text = re.sub(r"SuspendExcParts=\S+\n", "", bridge_slurm_conf(config))
    found = sc.check_partitions(conf_of(tmp_path, text), config)
    assert re.search(r"real nodes of cpu", messages(found, WARN))


def test_plugstack_checks(tmp_path: Path, config: BridgeConfig) -> None:
    conf = conf_of(tmp_path, f"PluginDir={tmp_path}\n")
    found, so = sc.check_plugstack(conf, "/etc/slurm/k8s-bridge.yaml")
    assert so is None and re.search("no .*plugstack.conf", messages(found))
    (tmp_path / "plugstack.conf").write_text("required spank_k8s.so config=/nope.yaml\n")
    found, so = sc.check_plugstack(conf, "/etc/slurm/k8s-bridge.yaml")
    assert so is None and re.search("which is not there", messages(found))
    (tmp_path / "spank_k8s.so").write_text("")
    found, so = sc.check_plugstack(conf, "/etc/slurm/k8s-bridge.yaml")
    assert so == tmp_path / "spank_k8s.so" and re.search(r"config=/nope\.yaml, which does not exist",
                                                         messages(found))


def test_where_munge_and_slurm_conf_are_looked_for(tmp_path: Path) -> None:
    conf = conf_of(tmp_path, "AuthInfo=ttl=60,socket=/x/munge.sock\n")
    assert sc.munge_socket(conf, None) == ("/x/munge.sock", "AuthInfo")
    assert sc.munge_socket(conf, "/y") == ("/y", "--munge-socket")
    assert sc.munge_socket(None, None) == (sc.DEFAULT_MUNGE_SOCKET, "default")
    assert sc.choose_slurm_conf(None, {"SLURM_CONF": "/a"}) == sc.SlurmConfChoice(Path("/a"), True, "$SLURM_CONF")
    assert not sc.choose_slurm_conf(None, {}).explicit


def test_no_slurm_conf_and_no_slurm_commands_is_a_daemon_pod_without_slurm(tmp_path: Path) -> None:
    """Nothing to check is skipped with the reason, never failed."""
    env = {"PATH": str(tmp_path)}   # no scontrol, no munge here
    found = sc.slurm_findings(slurm_conf=None, config=None, config_path="/c.yaml",
                              munge_socket_arg=None, env=env)
    if Path(sc.DEFAULT_SLURM_CONF).exists():
        pytest.skip(f"{sc.DEFAULT_SLURM_CONF} exists on this machine")
    assert {f.status for f in found} == {SKIP}, [f.as_dict() for f in found]
    assert re.search("not a slurmctld host", found[0].message)


def test_a_configured_host_without_munge_fails(tmp_path: Path) -> None:
    (tmp_path / "slurm.conf").write_text("ClusterName=x\n")
    found = sc.slurm_findings(slurm_conf=str(tmp_path / "slurm.conf"), config=None, config_path="/c",
                              munge_socket_arg=None, env={"PATH": str(tmp_path)})
    assert statuses(found, "munge") == [FAIL]
    assert re.search("munge is not installed", messages(found))


# -- the configuration ------------------------------------------------------------------

def test_config_findings(tmp_path: Path) -> None:
    assert config_path(None, {contract.CONFIG_ENV: "/e.yaml"}) == ("/e.yaml", f"${contract.CONFIG_ENV}")
    finding, config = check_config(str(tmp_path / "none.yaml"), "--config")
    assert config is None and "no such file" in finding.message and "--config PATH" in finding.fix
    (tmp_path / "bad.yaml").write_text("shapes:\n  h100: {gpus: 0}\n")
    finding, config = check_config(str(tmp_path / "bad.yaml"), "--config")
    assert config is None and "shapes.h100" in finding.message


def test_run_doctor_with_both_sides_off_checks_the_configuration_only(tmp_path: Path) -> None:
    report = run_doctor(DoctorOptions(config=str(tmp_path / "x.yaml"), slurm=False, kube=False), env={})
    assert [f.check for f in report] == ["config", "slurm", "kube"]
    assert report.exit_code() == 1


# -- Kubernetes ---------------------------------------------------------------------------

def test_rights_come_from_the_daemons_rbac(config: BridgeConfig) -> None:
    rights = kc.required_rights(kc.daemon_rbac(config, "bridge-ns"))
    assert kc.Right("delete", "batch", "jobs", "slurm-jobs") in rights
    assert kc.Right("delete", "batch", "jobs", "physics") in rights
    assert kc.Right("list", "", "nodes", "") in rights
    # native_gpu_usage: true in the example: the pods of every namespace
    assert kc.Right("watch", "", "pods", "") in rights
    # exactly what `slurm-k8s-bridge rbac` grants, every verb of every rule
    granted = {(g, res, v) for obj in rbac_for_config(config) if obj["kind"] == "Role"
               for r in obj["rules"] for g in r["apiGroups"] for res in r["resources"]
               for v in r["verbs"]}
    assert {(r.group, r.resource, r.verb) for r in rights if r.namespace == "slurm-jobs"} == granted
    assert not [r for r in rights if r.group == "coordination.k8s.io"]
    assert kc.Right("create", "batch", "jobs", "slurm-jobs").describe() == \
        "create jobs.batch in namespace slurm-jobs"


def test_leader_election_adds_the_lease_rights() -> None:
    data = _example_data()
    data["leader_election"] = {"enabled": True, "namespace": "bridge-ns", "lease_name": "l"}
    rights = kc.required_rights(kc.daemon_rbac(parse_config(data), "bridge-ns"))
    assert kc.Right("update", "coordination.k8s.io", "leases", "bridge-ns", "l") in rights
    assert kc.Right("update", "coordination.k8s.io", "leases", "bridge-ns", "l").describe() == \
        "update leases.coordination.k8s.io l in namespace bridge-ns"


def test_connection_problems_are_told_by_cause() -> None:
    target = kc.KubeTarget("/k.conf", False, "--kubeconfig")
    tls = kc.connection_problem("https://h:6443", "no answer (MaxRetryError: ... SSLError(SSLCertVerificationError(1, "
                                "'[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get "
                                "local issuer certificate (_ssl.c:992)')))", target)
    assert tls.check == "kube.tls" and "unable to get local issuer certificate" in tls.message
    assert "certificate-authority" in tls.fix
    refused = kc.connection_problem("https://h:1", "no answer (MaxRetryError: ... NewConnectionError("
                                    "'...: Failed to establish a new connection: [Errno 111] Connection "
                                    "refused'))", target)
    assert refused.check == "kube.api" and "cannot be reached" in refused.message
    assert "Errno 111" in refused.message


def test_where_the_kubernetes_identity_comes_from(tmp_path: Path) -> None:
    assert kc.choose_target(None, {}, tmp_path) is None
    assert kc.choose_target(None, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, tmp_path) is None
    (tmp_path / "token").write_text("t")
    assert kc.choose_target(None, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, tmp_path).in_cluster  # type: ignore[union-attr]
    assert kc.choose_target("/k", {"KUBECONFIG": "/e"}, tmp_path) == kc.KubeTarget("/k", False, "--kubeconfig")
    found = kc.kube_findings(kubeconfig=None, config=None, env={}, sa_dir=tmp_path / "none")
    assert [f.status for f in found] == [SKIP]


def test_quantities() -> None:
    assert kc.parse_quantity("8") == 8
    assert kc.parse_quantity("500m") == 0.5
    assert kc.parse_quantity("2000Gi") == 2000 * 2**30
    assert kc.parse_quantity("1k") == 1000
    assert kc.parse_quantity(None) == 0


def node(name: str, gpus: int | None = 8, product: str | None = "NVIDIA-H100-80GB-HBM3",
         cpu: str = "224", memory: str = "2000Gi") -> dict[str, Any]:
    labels = {"nvidia.com/gpu.product": product} if product else {}
    capacity = {"cpu": cpu, "memory": memory, **({"nvidia.com/gpu": str(gpus)} if gpus else {})}
    return {"metadata": {"name": name, "labels": labels},
            "status": {"capacity": capacity, "allocatable": dict(capacity)}}


def test_gpu_nodes(config: BridgeConfig) -> None:
    healthy = kc.gpu_node_findings([node("g0"), node("cpu0", gpus=None, product=None),
                                    node("a0", product="NVIDIA-A100-SXM4-80GB", cpu="128", memory="1000Gi")],
                                   config)
    assert [f.status for f in healthy] == [OK] and "h100 x1, a100 x1" in healthy[0].message
    none = kc.gpu_node_findings([node("cpu0", gpus=None, product=None)], config)
    assert re.search(r"no node has nvidia.com/gpu", messages(none))
    unlabelled = kc.gpu_node_findings([node("g0"), node("g1", product=None)], config)
    assert re.search(r"node g1 has 8 nvidia.com/gpu but no nvidia.com/gpu.product label",
                     messages(unlabelled))
    assert "kubectl label node g1" in next(f.fix for f in unlabelled if f.status == FAIL)
    small = kc.gpu_node_findings([node("g0", gpus=4)], config)
    assert re.search(r"node g0 has 4 nvidia.com/gpu; shape h100 says 8", messages(small))
    other = kc.gpu_node_findings([node("g0"), node("l4", product="NVIDIA-L4")], config)
    assert re.search("matches no configured shape", messages(other, WARN)) and not messages(other)
    # the example's a100 shape has no node here: a warning, not a failure
    assert re.search("no node of shape a100", messages(other, WARN))


def test_kueue_queues_of_the_configuration() -> None:
    data = _example_data()
    data["partitions"]["default"].update({"gang": "kueue", "queue": "gpu-jobs"})
    queues = [(ns, q) for _, ns, q in kc.kueue_queues(parse_config(data))]
    # once each, though rules default and gpu both name it; and the account override
    assert queues == [("slurm-jobs", "gpu-jobs"), ("physics", "physics-gpu")]
    assert kc.kueue_queues(parse_config(_example_data())) == []
