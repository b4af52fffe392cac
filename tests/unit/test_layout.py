"""The house: the product apart from its harness, imports pointing one way, small modules."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ..paths import REPO

pytestmark = pytest.mark.unit

PRODUCT = REPO / "src" / "slurm_k8s_bridge"
#: which side may import which (sides -> core, never core -> sides; daemon and cli on top)
MAY_IMPORT = {
    "core": {"core"},
    "slurm": {"core", "slurm"},
    "kube": {"core", "kube"},
    "daemon": {"core", "slurm", "kube", "daemon"},
    "doctor": {"core", "slurm", "kube", "doctor"},
    "cli": {"core", "slurm", "kube", "daemon", "doctor", "cli"},
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _side(path: Path) -> str:
    rel = path.relative_to(PRODUCT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_product_never_imports_the_harness_and_sides_point_to_the_core() -> None:
    wrong = []
    for path in sorted(PRODUCT.rglob("*.py")):
        side = _side(path)
        for name in _imports(path):
            if name.startswith("slurm_k8s_devcluster"):
                wrong.append(f"{path.relative_to(REPO)} imports the harness ({name})")
            elif name.startswith("slurm_k8s_bridge."):
                target = name.split(".")[1]
                if side in MAY_IMPORT and target not in MAY_IMPORT[side]:
                    wrong.append(f"{path.relative_to(REPO)} ({side}) imports {name}")
    assert not wrong, "\n".join(wrong)


def test_every_product_module_is_small_and_says_what_it_is_for() -> None:
    for path in sorted(PRODUCT.rglob("*.py")):
        lines = path.read_text().count("\n")
        assert lines <= 800, f"{path.relative_to(REPO)} has {lines} lines"
        if path.name != "__init__.py" or lines > 1:
            assert ast.get_docstring(ast.parse(path.read_text())), f"{path.relative_to(REPO)}: no docstring"


def test_a_wheel_carries_the_bridge_and_not_its_harness(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(tmp_path), str(REPO)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"the wheel does not build: {proc.stderr.strip()[-600:]}")
    (wheel,) = tmp_path.glob("slurm_k8s_bridge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if "devcluster" in n]
    assert "slurm_k8s_bridge/core/contract.py" in names
    assert "slurm_k8s_bridge/csrc/spank_k8s.c" in names
    assert not [n for n in names if n.endswith("k8sb_contract.h")]


def test_the_plugins_venv_needs_only_cffi_and_pyyaml() -> None:
    """The worker image's venv has cffi and PyYAML only: the CLI's parser (``plugins
    install`` runs in the image build) and the plugins' Python halves must import there."""
    guard = (
        "import builtins\n"
        "real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    if name.split('.')[0] in ('urllib3', 'kubernetes', 'tenacity'):\n"
        "        raise ImportError('the plugins venv has no ' + name)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        "from slurm_k8s_bridge import cli\n"
        "cli.build_parser()\n"
        "import slurm_k8s_bridge.slurm.spank, slurm_k8s_bridge.slurm.job_submit\n"
    )
    res = subprocess.run([sys.executable, "-c", guard], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
