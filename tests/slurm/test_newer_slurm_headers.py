"""The plugins compile against newer Slurm releases than the host's (Debian's libslurm-dev).

For each suite, scripts/fetch-slurm-headers.py downloads (or reuses from its cache) that
suite's real Slurm headers; the plugins are then built against them exactly as
``slurm-k8s-bridge plugins install --slurm-include DIR`` does, and the results checked:

* job_submit_k8s.so exports what slurmctld's plugin loader looks up, and plugin_version
  (read from the ELF file) equals the headers' SLURM_VERSION_NUMBER;
* job_modify has the arity that release calls it with (4 from 23.02: ``char **err_msg``),
  read from the library's DWARF when it has debug info, and from the preprocessed source
  otherwise;
* the only Slurm symbols the library needs are the ones slurmctld provides
  (slurm_info, slurm_error, slurm_xstrdup, slurm_xfree);
* cffi accepts the per-version job_desc_msg_t cdef when the type is realised (a field whose
  size differs from the header fails only then, i.e. inside slurmctld, not at build time).

Nothing here needs root or a running Slurm. Skips, with the error printed, only when the
Debian mirror cannot be reached and the headers are not cached yet.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
import sys
import sysconfig
from pathlib import Path

import pytest

from slurm_k8s_bridge.core import contract
from slurm_k8s_bridge.slurm import plugin_build
from slurm_k8s_bridge.slurm.plugin_build import build_plugins

from ..paths import REPO

pytestmark = pytest.mark.slurm

FETCH = REPO / "scripts" / "fetch-slurm-headers.py"
NETWORK_EXIT = 3  # fetch-slurm-headers.py: the mirror could not be reached

JOB_SUBMIT_EXPORTS = {"job_submit", "job_modify", "init", "fini",
                      "plugin_name", "plugin_type", "plugin_version"}
SLURM_PROVIDED = {"slurm_info", "slurm_error", "slurm_xstrdup", "slurm_xfree"}


def _num(major: int, minor: int, micro: int) -> int:
    return (major << 16) + (minor << 8) + micro


def fetch_headers(suite: str) -> Path:
    try:
        proc = subprocess.run([sys.executable, str(FETCH), suite], capture_output=True,
                              text=True, timeout=1200)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"fetch-slurm-headers.py {suite} hung past its own deadlines: {exc}")
    if proc.returncode == NETWORK_EXIT:
        reason = f"Debian mirror unreachable: {proc.stderr.strip().splitlines()[-1]}"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    assert proc.returncode == 0, f"fetch-slurm-headers.py {suite} failed:\n{proc.stderr}"
    include = Path(proc.stdout.strip().splitlines()[-1])
    assert (include / "slurm" / "slurm.h").is_file(), proc.stdout
    return include


def header_version(include: Path) -> int:
    text = (include / "slurm" / "slurm_version.h").read_text()
    return int(re.search(r"#define\s+SLURM_VERSION_NUMBER\s+(0x[0-9a-fA-F]+)", text)[1], 16)


def nm_dynamic(path: Path, *flags: str) -> set[str]:
    out = subprocess.run(["nm", "-D", *flags, str(path)], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()}


def elf_symbol_bytes(path: Path, name: str) -> tuple[str, bytes]:
    """(section name, contents) of a defined dynamic symbol of an ELF64 little-endian file."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not ELF64 LE"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
                for i in range(shnum)]

    def cstr(offset: int) -> str:
        return data[offset:data.index(b"\0", offset)].decode()

    def sec_name(sec) -> str:
        return cstr(sections[shstrndx][4] + sec[0])

    dynsym = next(s for s in sections if s[1] == 11)  # SHT_DYNSYM
    dynstr = sections[dynsym[6]]
    for off in range(dynsym[4], dynsym[4] + dynsym[5], 24):
        st_name, _info, _other, shndx, value, size = struct.unpack_from("<IBBHQQ", data, off)
        if shndx and cstr(dynstr[4] + st_name) == name:
            sec = sections[shndx]
            start = sec[4] + value - sec[3]
            return sec_name(sec), data[start:start + size]
    raise AssertionError(f"{path.name}: {name} not in .dynsym")


def dwarf_params(path: Path, func: str) -> list[str] | None:
    """Formal parameter names of ``func``'s definition from DWARF, None without debug info."""
    if not shutil.which("readelf"):
        return None
    out = subprocess.run(["readelf", "--debug-dump=info", "--wide", str(path)],
                         capture_output=True, text=True).stdout
    die = re.compile(r"^\s*<(\d+)><[0-9a-f]+>: Abbrev Number: \d+ \((DW_TAG_\w+)\)")
    attr_name = re.compile(r"^\s*<[0-9a-f]+>\s+DW_AT_name\s*:.*?(\w+)\s*$")
    dies: list[list] = []
    for line in out.splitlines():
        if m := die.match(line):
            dies.append([int(m[1]), m[2], None])
        elif (m := attr_name.match(line)) and dies and dies[-1][2] is None:
            dies[-1][2] = m[1]
    for i, (level, tag, name) in enumerate(dies):
        if tag == "DW_TAG_subprogram" and name == func:
            params = []
            for level2, tag2, name2 in dies[i + 1:]:
                if level2 <= level:
                    break
                if level2 == level + 1 and tag2 == "DW_TAG_formal_parameter":
                    params.append(name2)
            return params
    return None


def preprocessed_params(include: Path, func: str) -> list[str]:
    """Parameters of ``func``'s definition in csrc/job_submit_k8s.c once preprocessed with
    these headers (the #if branch the build took)."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()
    with tempfile.TemporaryDirectory() as generated:   # the build generates the contract header
        (Path(generated) / plugin_build.CONTRACT_HEADER).write_text(contract.c_header())
        proc = subprocess.run(cc + ["-E", "-P", f"-I{include}", f"-I{REPO / 'csrc'}", f"-I{generated}",
                                    str(REPO / "csrc" / "job_submit_k8s.c")],
                              capture_output=True, text=True, check=True)
    m = re.search(rf"^int {func}\(([^)]*)\)\s*\{{", proc.stdout, re.M)
    assert m, f"no definition of {func} after preprocessing"
    return [p.split()[-1].lstrip("*") for p in m[1].split(",")]


def realise_job_desc(so: Path, tmp: Path) -> dict:
    """Import the built module (Slurm's four functions stubbed) and realise job_desc_msg_t."""
    return plugin_build.realise_job_desc(so, tmp)


@pytest.mark.parametrize("suite", ["trixie", "sid"])
def test_plugins_build_against_newer_slurm(suite, tmp_path):
    include = fetch_headers(suite)
    version = header_version(include)
    major, minor, micro = (version >> 16) & 0xFF, (version >> 8) & 0xFF, version & 0xFF
    print(f"{suite}: Slurm {major}.{minor:02d}.{micro} headers in {include}")
    assert version >= _num(23, 2, 0), f"{suite} is not newer than 23.02: nothing new tested"
    # the cache entry is named after the Debian version: it must be this upstream release
    assert include.parent.name.startswith(f"{suite}-{major}.{minor:02d}.{micro}"), include

    built = build_plugins(tmp_path / "plugins", slurm_include=str(include))
    libs = {p.name: p for p in built}
    assert set(libs) == {"job_submit_k8s.so", "spank_k8s.so", "spank_k8s_py.so"}

    js = libs["job_submit_k8s.so"]
    exported = nm_dynamic(js, "--defined-only")
    assert JOB_SUBMIT_EXPORTS <= exported, JOB_SUBMIT_EXPORTS - exported
    needed = {s for s in nm_dynamic(js, "--undefined-only") if s.startswith("slurm")}
    assert needed <= SLURM_PROVIDED, needed - SLURM_PROVIDED

    section, raw = elf_symbol_bytes(js, "plugin_version")
    assert section == ".rodata" and len(raw) == 4, (section, raw)
    plugin_version = struct.unpack("<I", raw)[0]
    assert plugin_version == version, f"plugin_version {plugin_version:#x} != {version:#x}"

    arity = 4 if version >= _num(23, 2, 0) else 3
    params = preprocessed_params(include, "job_modify")
    assert len(params) == arity and params[-1] == ("err_msg" if arity == 4 else "submit_uid")
    from_binary = dwarf_params(js, "job_modify")
    if from_binary is not None:  # the library has debug info: check the compiled function
        assert from_binary == params, from_binary
    else:
        print(f"{js.name}: no DWARF; job_modify arity checked on the preprocessed source")

    layout = realise_job_desc(js, tmp_path)
    assert layout["version"] == version
    assert ("job_id" in layout["fields"]) == (version < _num(25, 11, 0)), layout["fields"]

    spank_exports = nm_dynamic(libs["spank_k8s.so"], "--defined-only")
    assert {"slurm_spank_init", "slurm_spank_init_post_opt", "plugin_name", "plugin_type",
            "plugin_version"} <= spank_exports, spank_exports
    assert "k8sb_spank_task_env" in nm_dynamic(libs["spank_k8s_py.so"], "--defined-only")


def test_install_refuses_a_job_desc_declaration_that_does_not_match_the_header(
        tmp_path, monkeypatch):
    """A wrong field type in the cffi declaration is a build error, not a slurmctld that
    refuses every job."""
    real = plugin_build._job_desc_cdef
    monkeypatch.setattr(plugin_build, "_job_desc_cdef",
                        lambda headers: real(headers).replace("uint16_t shared;",
                                                              "uint32_t shared;"))
    with pytest.raises(plugin_build.PluginBuildError, match="wrong size for field 'shared'"):
        build_plugins(tmp_path / "plugins")
    assert not (tmp_path / "plugins" / "job_submit_k8s.so").exists()
