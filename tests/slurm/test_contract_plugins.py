"""Built plugins carry the contract of the Python they were built with."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from slurm_k8s_bridge.core import contract
from slurm_k8s_bridge.slurm.plugin_build import PluginBuildError, build_plugins

pytestmark = pytest.mark.slurm


def test_built_plugins_agree_with_the_python(tmp_path: Path) -> None:
    try:
        built = build_plugins(tmp_path)
    except PluginBuildError as exc:
        pytest.skip(f"plugins cannot be built here: {exc}")
    assert {p.name for p in built} == {"job_submit_k8s.so", "spank_k8s.so", "spank_k8s_py.so"}
    want = "k8sb-contract:" + contract.contract_fingerprint()
    for so in built:
        found = re.findall(rb"k8sb-contract:\{[^}]*\}", so.read_bytes())
        assert found == [want.encode()], f"{so.name} was built with another contract: {found}"
    # the SPANK plugin's name, which names the option variables job_submit reads
    symbols = subprocess.run(["strings", str(tmp_path / "spank_k8s.so")], capture_output=True,
                             text=True, check=True).stdout.split()
    assert contract.SPANK_PLUGIN_NAME in symbols
