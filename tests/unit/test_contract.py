"""The contract between the halves (core/contract.py): defined once, pinned, and the only
source of what the C shims use."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from slurm_k8s_bridge.core import contract

from ..paths import REPO

pytestmark = pytest.mark.unit



def test_wire_values_are_pinned() -> None:
    """Objects and stamps already in clusters carry these: changing one orphans them."""
    assert contract.LABEL_PREFIX == "slurm-k8s-bridge.io/"
    assert contract.JOB_ID_LABEL == "slurm-k8s-bridge.io/job-id"
    assert contract.CLUSTER_LABEL == "slurm-k8s-bridge.io/cluster"
    assert contract.ARRAY_TASK_LABEL == "slurm-k8s-bridge.io/array-task-id"
    assert contract.STAMP_PREFIX == "k8sb1:" and contract.STAMP_PREFIX.startswith(contract.STAMP_FAMILY)
    assert contract.SPANK_PLUGIN_NAME == "k8s_bridge"
    assert contract.DEFAULT_CONFIG_PATH == "/etc/slurm/k8s-bridge.yaml"


def test_queue_names_follow_the_label_value_rule() -> None:
    """A queue name ends up as the value of kueue.x-k8s.io/queue-name: 63 characters."""
    assert contract.valid_queue_name("a" * 63)
    assert not contract.valid_queue_name("a" * 64)
    assert not contract.valid_queue_name("Team-A")
    assert contract.valid_priority_class("p" * 253)
    assert not contract.valid_priority_class("p" * 254)


def test_the_prefix_is_spelled_in_one_product_module() -> None:
    hits = [p.relative_to(REPO) for p in (REPO / "src").rglob("*.py")
            if "slurm-k8s-bridge.io" in p.read_text()]
    assert hits == [Path("src/slurm_k8s_bridge/core/contract.py")]


def test_the_c_shims_spell_no_contract_value() -> None:
    """Every shared value reaches csrc/ through the generated header only."""
    literals = [f'"{v}"' for v in contract.c_values().values() if isinstance(v, str)]
    literals += ['"k8sb"', '"/etc/slurm/k8s-bridge.yaml"', "0x6b38", "SPANK_PLUGIN(k8s_bridge"]
    for source in sorted((REPO / "csrc").glob("*.[ch]")):
        code = re.sub(r"/\*.*?\*/", "", source.read_text(), flags=re.S)
        found = [lit for lit in literals if lit in code]
        assert not found, f"{source.name} spells {found}: take them from k8sb_contract.h"
    assert not (REPO / "csrc" / "k8sb_contract.h").exists(), "the header is generated, not kept"


def test_generated_header_compiles_and_matches(tmp_path: Path) -> None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    (tmp_path / "k8sb_contract.h").write_text(contract.c_header())
    probe = tmp_path / "probe.c"
    probe.write_text('#include <stdio.h>\n#include "k8sb_contract.h"\n#define S(x) #x\n#define X(x) S(x)\n'
                     'int main(void) { printf("%s|%d|%d|%d|%s|%s\\n", K8SB_CONTRACT_FINGERPRINT,'
                     " K8SB_QUEUE_NAME_MAX, K8SB_PRIORITY_CLASS_MAX, K8SB_PY_MAGIC, X(K8SB_SPANK_NAME),"
                     " K8SB_DEFAULT_CONFIG); return 0; }\n")
    subprocess.run([cc, "-Wall", "-Werror", "-o", str(tmp_path / "probe"), str(probe)], check=True,
                   cwd=tmp_path)
    out = subprocess.run([str(tmp_path / "probe")], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "|".join([
        "k8sb-contract:" + contract.contract_fingerprint(), str(contract.QUEUE_NAME_MAX),
        str(contract.PRIORITY_CLASS_MAX), str(contract.PING_MAGIC), contract.SPANK_PLUGIN_NAME,
        contract.DEFAULT_CONFIG_PATH])
