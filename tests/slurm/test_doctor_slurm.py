"""``slurm-k8s-bridge doctor`` on a real slurmctld host: the bridge cluster of the slurm tier
(slurmctld with job_submit/k8s, spank_k8s in plugstack.conf, munged), healthy, then broken
one thing at a time -- each broken setup is a copy of the cluster's slurm.conf (or
plugstack.conf, plugin, configuration) with one change, except munge, which is really
stopped. Every broken setup must make the doctor exit 1 and name the cause.

The doctor runs as the real command (``python -m slurm_k8s_bridge.cli doctor --json``),
with ``--no-kube``: the Kubernetes side is the k8s tier's (tests/k8s/test_doctor_kube.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from slurm_k8s_bridge.core import contract
from slurm_k8s_bridge.doctor.report import Finding, Report
from slurm_k8s_bridge.slurm.plugin_build import PluginBuildError, build_plugins
from slurm_k8s_devcluster.bridge import BridgeCluster

from .bridge_fixtures import started_bridge_cluster

pytestmark = pytest.mark.slurm

HEADERS_CACHE = Path.home() / ".cache" / "slurm-k8s-bridge" / "slurm-headers"


@pytest.fixture(scope="module")
def bridge() -> Iterator[BridgeCluster]:
    with started_bridge_cluster("doctor", "bridgeuser") as (made, _uid):
        yield made


def doctor(bridge: BridgeCluster, *args: str, slurm_conf: Path | None = None,
           config: Path | None = None) -> tuple[int, list[dict[str, str]], str]:
    """Run the doctor as an administrator would on this host; (exit code, findings, text)."""
    cmd = [sys.executable, "-m", "slurm_k8s_bridge.cli", "doctor", "--no-kube",
           "--slurm-conf", str(slurm_conf or bridge.cluster.conf_path),
           "--config", str(config or bridge.config_path), *args]
    proc = subprocess.run([*cmd, "--json"], capture_output=True, text=True,
                          env=bridge.cluster.env(), timeout=120, check=False)
    assert proc.stdout, proc.stderr
    findings = json.loads(proc.stdout)["findings"]
    text = Report([Finding(**f) for f in findings]).as_text()   # what the admin reads
    print(text)
    return proc.returncode, findings, text


def failed(findings: list[dict[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in findings:
        if f["status"] == "fail":
            out.setdefault(f["check"], []).append(f["message"])
            assert f.get("fix"), f
    return out


def doctor_fails(bridge: BridgeCluster, **kwargs: Path | None) -> list[dict[str, str]]:
    """Run the doctor on a broken setup: it must exit 1; its findings."""
    rc, findings, text = doctor(bridge, **kwargs)
    assert rc == 1, text
    return findings


def assert_names(findings: list[dict[str, str]], check: str, pattern: str) -> None:
    fails = failed(findings)
    assert check in fails, f"{check} did not fail; failures: {fails}"
    assert any(re.search(pattern, m) for m in fails[check]), fails[check]


def conf_copy(bridge: BridgeCluster, tmp_path: Path, edit: Callable[[str], str]) -> Path:
    """A copy of the cluster's slurm.conf with one change."""
    text = bridge.cluster.conf_path.read_text()
    changed = edit(text)
    assert changed != text, "the edit changed nothing"
    path = tmp_path / "slurm.conf"
    path.write_text(changed)
    return path


def set_option(key: str, value: str | None) -> Callable[[str], str]:
    def edit(text: str) -> str:
        pattern = re.compile(rf"^{key}=.*$", re.MULTILINE | re.IGNORECASE)
        line = f"{key}={value}" if value is not None else ""
        return pattern.sub(line, text) if pattern.search(text) else text + line + "\n"
    return edit


def test_the_healthy_slurmctld_host_passes(bridge: BridgeCluster) -> None:
    rc, findings, text = doctor(bridge)
    assert rc == 0, text
    status = {f["check"]: f["status"] for f in findings}
    for check in ("config", "slurm.conf", "slurm.job_submit", "slurm.private_data",
                  "slurm.dynamic_nodes", "slurm.partition.gpu", "slurm.plugstack",
                  "plugin.job_submit_k8s.so", "plugin.spank_k8s.so", "plugin.spank_k8s_py.so",
                  "slurmctld", "munge"):
        assert status.get(check) == "ok", f"{check}: {status.get(check)}\n{text}"
    # the non-bridged partition cpu is not judged by the bridge's rules
    assert "slurm.partition.cpu" not in status
    assert "built for Slurm" in text
    # the plain command prints exactly that for a person
    plain = subprocess.run([sys.executable, "-m", "slurm_k8s_bridge.cli", "doctor", "--no-kube",
                            "--slurm-conf", str(bridge.cluster.conf_path),
                            "--config", str(bridge.config_path)], capture_output=True, text=True,
                           env=bridge.cluster.env(), timeout=120, check=False)
    assert plain.returncode == 0 and plain.stdout == text, plain.stdout + plain.stderr


def test_missing_job_submit_plugin(bridge: BridgeCluster, tmp_path: Path) -> None:
    conf = conf_copy(bridge, tmp_path, set_option("JobSubmitPlugins", None))
    findings = doctor_fails(bridge, slurm_conf=conf)
    assert_names(findings, "slurm.job_submit", r"does not load the bridge's job_submit plugin")


def test_plugstack_without_the_spank_line(bridge: BridgeCluster, tmp_path: Path) -> None:
    plugstack = tmp_path / "plugstack.conf"
    plugstack.write_text("# the site's other SPANK plugins only\n")
    conf = conf_copy(bridge, tmp_path, set_option("PlugStackConfig", str(plugstack)))
    findings = doctor_fails(bridge, slurm_conf=conf)
    assert_names(findings, "slurm.plugstack", r"does not load spank_k8s\.so")


def test_private_data_without_cloud(bridge: BridgeCluster, tmp_path: Path) -> None:
    conf = conf_copy(bridge, tmp_path, set_option("PrivateData", "jobs"))
    findings = doctor_fails(bridge, slurm_conf=conf)
    assert_names(findings, "slurm.private_data", r"lacks 'cloud'")


def test_partition_without_the_pods_nodeset_and_an_inventory_shape(bridge: BridgeCluster,
                                                                    tmp_path: Path) -> None:
    def edit(text: str) -> str:
        text = re.sub(r"^(PartitionName=gpu Nodes=\S*?),?k8spods", r"\1", text, flags=re.MULTILINE)
        return re.sub(r"^NodeName=\S*-inv-h100-.*$", "", text, flags=re.MULTILINE)
    conf = conf_copy(bridge, tmp_path, edit)
    findings = doctor_fails(bridge, slurm_conf=conf)
    assert_names(findings, "slurm.partition.gpu", r"does not list NodeSet k8spods")
    assert_names(findings, "slurm.partition.gpu", r"can hold a whole h100 node")


def test_cloud_nodes_without_power_saving(bridge: BridgeCluster, tmp_path: Path) -> None:
    conf = conf_copy(bridge, tmp_path, set_option("ResumeProgram", None))
    findings = doctor_fails(bridge, slurm_conf=conf)
    assert_names(findings, "slurm.power_save", r"no ResumeProgram")


def _with_plugin_dir(bridge: BridgeCluster, tmp_path: Path, plugin_dir: Path) -> Path:
    """slurm.conf and plugstack.conf copies that load the plugins of ``plugin_dir``."""
    plugstack = tmp_path / "plugstack.conf"
    plugstack.write_text(f"required {plugin_dir / 'spank_k8s.so'} config={bridge.config_path}\n")
    conf = conf_copy(bridge, tmp_path, set_option("PluginDir", f"{plugin_dir}:/usr/lib/x86_64-linux-gnu/slurm-wlm"))
    conf.write_text(set_option("PlugStackConfig", str(plugstack))(conf.read_text()))
    return conf


def test_plugins_built_for_another_slurm_release(bridge: BridgeCluster, tmp_path: Path) -> None:
    headers = sorted(HEADERS_CACHE.glob("trixie-24.11*/include"))
    if not headers:
        pytest.skip(f"no Slurm 24.11 headers cached under {HEADERS_CACHE} "
                    "(scripts/fetch-slurm-headers.py trixie)")
    plugin_dir = tmp_path / "plugins-24.11"
    try:
        build_plugins(plugin_dir, slurm_include=str(headers[0]), default_config=str(bridge.config_path))
    except PluginBuildError as exc:
        pytest.fail(f"the plugins do not build against {headers[0]}: {exc}")
    conf = _with_plugin_dir(bridge, tmp_path, plugin_dir)
    findings = doctor_fails(bridge, slurm_conf=conf)
    assert_names(findings, "plugin.job_submit_k8s.so", r"built for Slurm 24\.11\.\d+, but Slurm 22\.05")
    assert_names(findings, "plugin.spank_k8s.so", r"built for Slurm 24\.11")


def test_plugin_with_another_contract(bridge: BridgeCluster, tmp_path: Path) -> None:
    plugin_dir = tmp_path / "plugins-patched"
    shutil.copytree(bridge.plugin_dir, plugin_dir)
    so = plugin_dir / "job_submit_k8s.so"
    data = so.read_bytes()
    ours = f'"K8SB_IMAGE_MAX":{contract.IMAGE_MAX}'.encode()
    other = f'"K8SB_IMAGE_MAX":{contract.IMAGE_MAX + 1}'.encode()
    assert len(ours) == len(other) and data.count(ours) == 1
    so.write_bytes(data.replace(ours, other))
    conf = _with_plugin_dir(bridge, tmp_path, plugin_dir)
    findings = doctor_fails(bridge, slurm_conf=conf)
    assert_names(findings, "plugin.job_submit_k8s.so", r"another contract.*K8SB_IMAGE_MAX")
    # the untouched SPANK plugin still agrees
    assert "plugin.spank_k8s.so" not in failed(findings)


def test_a_stub_in_place_of_the_plugin(bridge: BridgeCluster, tmp_path: Path) -> None:
    plugin_dir = tmp_path / "plugins-stub"
    shutil.copytree(bridge.plugin_dir, plugin_dir)
    (plugin_dir / "job_submit_k8s.so").write_text("not a shared object\n")
    conf = _with_plugin_dir(bridge, tmp_path, plugin_dir)
    findings = doctor_fails(bridge, slurm_conf=conf)
    assert_names(findings, "plugin.job_submit_k8s.so", r"not an ELF file")


def test_bad_yaml(bridge: BridgeCluster, tmp_path: Path) -> None:
    config = tmp_path / "k8s-bridge.yaml"
    config.write_text("cluster_name: slurm\nshapes: [h100\n")
    findings = doctor_fails(bridge, config=config)
    assert_names(findings, "config", r"is not valid YAML")


def test_a_bad_value_is_named_by_its_key(bridge: BridgeCluster, tmp_path: Path) -> None:
    text = bridge.config_path.read_text()
    config = tmp_path / "k8s-bridge.yaml"
    config.write_text(re.sub(r"(?m)^(\s+gpus:) 8\b", r"\1 -8", text, count=1))
    findings = doctor_fails(bridge, config=config)
    assert_names(findings, "config", r"shapes\.\w+\.gpus")


def test_an_absent_slurm_conf_named_explicitly_fails(bridge: BridgeCluster, tmp_path: Path) -> None:
    findings = doctor_fails(bridge, slurm_conf=tmp_path / "nowhere.conf")
    assert_names(findings, "slurm.conf", r"does not exist")


def test_munge_down(bridge: BridgeCluster) -> None:
    """Last: it really stops this module's munged."""
    pid_file = bridge.cluster.munge_dir / "munged.pid"
    pid = int(pid_file.read_text().split()[0])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    assert not _alive(pid), f"munged {pid} did not stop"
    findings = doctor_fails(bridge)
    assert_names(findings, "munge", r"munge cannot get a credential from munged at "
                 + re.escape(str(bridge.cluster.munge_socket)))



def _alive(pid: int) -> bool:
    """Running (a zombie waiting for the harness to reap it is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
