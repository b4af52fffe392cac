"""Build and install the Slurm plugins with cffi, against the installed Slurm headers.

``job_submit_k8s.so``  cffi embedding module: C entry points (csrc/job_submit_k8s.c) over
                       Python policy (slurm_k8s_bridge.slurm.job_submit).
``spank_k8s.so``       plain C SPANK plugin (csrc/spank_k8s.c): options and checks, no
                       Python in sbatch/srun/salloc.
``spank_k8s_py.so``    cffi embedding module loaded by spank_k8s.so inside bridged pods
                       (slurmstepd) for the task environment (slurm_k8s_bridge.slurm.spank).

The embedded interpreter is the one running this build: its executable and ``sys.path``
are compiled into the plugins, so slurmctld and slurmstepd import the package from the
environment it was installed into, whatever PYTHONHOME/PYTHONPATH the caller has.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

from slurm_k8s_bridge.core import contract

CSRC_DIR_ENV = "SLURM_K8S_BRIDGE_CSRC"
DEBIAN_PLUGIN_DIR = "/usr/lib/x86_64-linux-gnu/slurm-wlm"

#: ESLURM_* names the Python side may return; their numbers come from the header.
ESLURM_CODES = (
    "ESLURM_INVALID_PARTITION_NAME", "ESLURM_ACCESS_DENIED", "ESLURM_TOO_MANY_REQUESTED_CPUS",
    "ESLURM_INVALID_NODE_COUNT", "ESLURM_REQUESTED_NODE_CONFIG_UNAVAILABLE",
    "ESLURM_BAD_TASK_COUNT", "ESLURM_INVALID_FEATURE", "ESLURM_NOT_SUPPORTED",
    "ESLURM_INVALID_TASK_MEMORY", "ESLURM_INVALID_ACCOUNT", "ESLURM_INVALID_TIME_LIMIT",
    "ESLURM_INVALID_QOS", "ESLURM_INVALID_CPU_COUNT", "ESLURM_INVALID_GRES",
    "ESLURM_INVALID_ARRAY", "ESLURM_INVALID_GRES_TYPE",
)

#: generated into the build directory from ``core.contract`` (never a file of csrc/)
CONTRACT_HEADER = "k8sb_contract.h"
JOB_SUBMIT_MODULE = "_slurm_k8s_job_submit"
SPANK_PY_MODULE = "_slurm_k8s_spank"


class PluginBuildError(Exception):
    """The plugins cannot be built here; the message says what is missing."""


@dataclass(frozen=True)
class SlurmHeaders:
    include_dir: Path
    version_number: int

    @property
    def version(self) -> tuple[int, int, int]:
        v = self.version_number
        return (v >> 16) & 0xFF, (v >> 8) & 0xFF, v & 0xFF

    @property
    def version_text(self) -> str:
        return "%d.%02d.%d" % self.version


def find_slurm_headers(include_dir: str | os.PathLike[str] | None = None) -> SlurmHeaders:
    base = Path(include_dir) if include_dir else Path("/usr/include")
    version_h = base / "slurm" / "slurm_version.h"
    for needed in ("slurm.h", "spank.h", "slurm_errno.h", "slurm_version.h"):
        if not (base / "slurm" / needed).is_file():
            raise PluginBuildError(
                f"{base / 'slurm' / needed} not found: install Slurm's development headers "
                "(Debian: apt-get install libslurm-dev) or pass --slurm-include DIR")
    match = re.search(r"#define\s+SLURM_VERSION_NUMBER\s+(0x[0-9a-fA-F]+)", version_h.read_text())
    if not match:
        raise PluginBuildError(f"{version_h}: SLURM_VERSION_NUMBER not found")
    return SlurmHeaders(base, int(match.group(1), 16))


def find_csrc() -> Path:
    """The C sources: installed as package data, or the source checkout's csrc/."""
    candidates = [Path(os.environ[CSRC_DIR_ENV])] if os.environ.get(CSRC_DIR_ENV) else []
    here = Path(__file__).resolve().parents[1]  # the package: slurm_k8s_bridge/
    candidates += [here / "csrc", here.parent.parent / "csrc"]
    for cand in candidates:
        if (cand / "job_submit_k8s.c").is_file():
            return cand
    raise PluginBuildError("C sources (job_submit_k8s.c) not found; reinstall the package")


def local_plugin_dir() -> Path:
    """PluginDir of the local Slurm (``scontrol show config``), else Debian's default."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                             timeout=10).stdout
        match = re.search(r"^PluginDir\s*=\s*(\S+)", out, re.M)
        if match:
            return Path(match.group(1).split(":")[0])
    except (OSError, subprocess.SubprocessError):
        pass
    return Path(DEBIAN_PLUGIN_DIR)


def _c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _python_defines(default_config: str,
                    python_path: list[str] | None = None) -> list[tuple[str, str]]:
    source = sys.path if python_path is None else python_path
    paths = [p for p in source if p and os.path.isabs(p) and os.path.exists(p)]
    libpython = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        raise PluginBuildError(
            f"{sys.executable} was built without a shared libpython; the plugins embed "
            "Python and need one (use Debian's python3, or a build with --enable-shared)")
    return [
        ("K8SB_PYTHON_EXECUTABLE", _c_string(sys.executable)),
        ("K8SB_PYTHON_PATH", _c_string(":".join(dict.fromkeys(paths)))),
        ("K8SB_LIBPYTHON", _c_string(str(libpython))),
        ("K8SB_DEFAULT_CONFIG", _c_string(default_config)),
    ]


def _link_args(version_script: Path) -> list[str]:
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    return [
        # DT_RPATH (not RUNPATH): a user's LD_LIBRARY_PATH must not swap libpython
        "-Wl,--disable-new-dtags", f"-Wl,-rpath,{libdir}",
        # Python cannot be unloaded safely: keep the library mapped after dlclose
        "-Wl,-z,nodelete", "-Wl,-z,relro", "-Wl,-z,now",
        f"-Wl,--version-script={version_script}",
    ]


def _job_desc_cdef(headers: SlurmHeaders) -> str:
    fields = [
        "char *account;", "char *admin_comment;", "char *array_inx;", "char *comment;",
        "char *cpus_per_tres;", "char *features;", "uint32_t group_id;",
        "uint32_t het_job_offset;", "char *mem_per_tres;", "char *name;",
        "uint32_t num_tasks;", "char *partition;", "uint32_t priority;", "char *qos;",
        "uint16_t shared;", "char **spank_job_env;", "uint32_t spank_job_env_size;",
        "char *submit_line;", "uint32_t time_limit;", "char *tres_per_job;",
        "char *tres_per_node;", "char *tres_per_socket;", "char *tres_per_task;",
        "uint32_t user_id;", "char *work_dir;", "uint16_t cpus_per_task;",
        "uint32_t min_nodes;", "uint32_t max_nodes;", "uint16_t ntasks_per_node;",
        "uint16_t ntasks_per_tres;",
        "uint64_t pn_min_memory;",
        "uint16_t warn_flags;", "uint16_t warn_signal;", "uint16_t warn_time;",
        "uint8_t overcommit;",
    ]
    if headers.version < (25, 11, 0):
        fields.append("uint32_t job_id;")
    return "typedef struct {\n    " + "\n    ".join(fields) + "\n    ...;\n} job_desc_msg_t;\n"


LOG_CDEF = """
void slurm_info(const char *format, ...);
void slurm_error(const char *format, ...);
"""

JOB_DESC_CDEF = """
#define NO_VAL ...
#define NO_VAL16 ...
#define NO_VAL64 ...
#define INFINITE64 ...
#define INFINITE ...
#define INFINITE16 ...
#define MEM_PER_CPU ...
#define SLURM_VERSION_NUMBER ...
char *slurm_xstrdup(const char *str);
void slurm_xfree(void **item);
"""

JOB_SUBMIT_API = """
int k8sb_js_ping(void);
int k8sb_js_init(const char *config_path, char *errbuf, size_t errlen);
int k8sb_js_submit(job_desc_msg_t *job_desc, uint32_t submit_uid, char **err_msg);
int k8sb_js_modify(job_desc_msg_t *job_desc, const char *stamp, uint32_t uid,
                   char **err_msg, char **new_stamp);
"""

SPANK_API = """
int k8sb_sp_ping(void);
int k8sb_sp_task_env(const char *config, unsigned int job_id, unsigned int uid,
                     char *out, size_t outlen, char *err, size_t errlen);
"""


def _init_code(module: str, binder: str, who: str) -> str:
    return f"""
from {module} import ffi, lib
try:
    from slurm_k8s_bridge.{binder} import bind
    bind(ffi, lib)
except BaseException as exc:  # logged through Slurm; the C side refuses jobs
    import traceback
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    lib.slurm_error(b"{who}: cannot load slurm_k8s_bridge: %s",
                    ffi.new("char[]", text.encode("utf-8", "replace")))
"""


def _compile_embedding(module: str, cdef: str, api: str, source: Path, init_code: str,
                       headers: SlurmHeaders, csrc: Path, defines: list[tuple[str, str]],
                       exports: list[str], workdir: Path, target: str) -> Path:
    import cffi  # imported here: the rest of the package works without a compiler

    script = workdir / f"{module}.map"
    script.write_text("{\n  global:\n    " + ";\n    ".join(exports) + ";\n  local: *;\n};\n")
    ffi = cffi.FFI()
    ffi.cdef(cdef)
    ffi.embedding_api(api)
    ffi.set_source(
        module,
        f'#include "{source.name}"\n',
        sources=[str(csrc / "k8s_pyembed.c")],
        include_dirs=[str(csrc), str(headers.include_dir)],
        define_macros=defines,
        extra_compile_args=["-O2", "-Wall", "-fstack-protector-strong", "-D_FORTIFY_SOURCE=2",
                            "-Wno-unused-parameter"],
        extra_link_args=_link_args(script),
    )
    ffi.embedding_init_code(init_code)
    built = ffi.compile(tmpdir=str(workdir), target=target, verbose=bool(os.environ.get("SLURM_K8S_BRIDGE_BUILD_VERBOSE")))
    return Path(built)


def _compile_plain(source: Path, headers: SlurmHeaders, exports: list[str], workdir: Path,
                   target: str, defines: list[tuple[str, str]]) -> Path:
    cc = sysconfig.get_config_var("CC") or "cc"
    script = workdir / "spank_k8s.map"
    script.write_text("{\n  global:\n    " + ";\n    ".join(exports) + ";\n  local: *;\n};\n")
    out = workdir / target
    cmd = cc.split() + [
        "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-fstack-protector-strong",
        "-D_FORTIFY_SOURCE=2", "-Wno-unused-parameter", f"-I{workdir}", f"-I{headers.include_dir}",
        *(f"-D{name}={value}" for name, value in defines if name == "K8SB_DEFAULT_CONFIG"),
        str(source), "-o", str(out), "-Wl,-z,relro", "-Wl,-z,now",
        f"-Wl,--version-script={script}", "-ldl",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PluginBuildError(f"compiling {source.name} failed:\n{proc.stderr}")
    return out


_SLURM_STUBS_C = """
#include <stdlib.h>
#include <string.h>
void slurm_info(const char *f, ...) {}
void slurm_error(const char *f, ...) {}
char *slurm_xstrdup(const char *s) { return s ? strdup(s) : NULL; }
void slurm_xfree(void **p) { if (p) { free(*p); *p = NULL; } }
"""

_REALISE_CODE = """
import importlib.machinery, importlib.util, json, sys
name = sys.argv[2]
loader = importlib.machinery.ExtensionFileLoader(name, sys.argv[1])
mod = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
loader.exec_module(mod)
t = mod.ffi.typeof("job_desc_msg_t")
print(json.dumps({"fields": [f for f, _ in t.fields], "sizeof": mod.ffi.sizeof(t),
                  "version": mod.lib.SLURM_VERSION_NUMBER}))
"""


def realise_job_desc(job_submit_so: Path, workdir: Path) -> dict[str, object]:
    """Load a built job_submit_k8s.so outside slurmctld (Slurm's four functions stubbed)
    and make cffi lay out ``job_desc_msg_t``.

    cffi checks a partial struct's declared field types against the real header only when
    the type is first used -- inside slurmctld, where a mismatch would refuse every job.
    Doing it here turns that into a build error.
    """
    cc = (sysconfig.get_config_var("CC") or "cc").split()
    stub_c = workdir / "slurm_stub.c"
    stub_c.write_text(_SLURM_STUBS_C)
    stub = workdir / "libslurm_stub.so"
    proc = subprocess.run(cc + ["-shared", "-fPIC", "-o", str(stub), str(stub_c)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise PluginBuildError(f"cannot build the Slurm stubs for the layout check:\n{proc.stderr}")
    proc = subprocess.run([sys.executable, "-c", _REALISE_CODE, str(job_submit_so),
                           JOB_SUBMIT_MODULE], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, LD_PRELOAD=str(stub)))
    if proc.returncode != 0:
        raise PluginBuildError("job_desc_msg_t as declared for cffi does not match "
                               f"slurm/slurm.h:\n{proc.stderr.strip()}")
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def build_plugins(out_dir: str | os.PathLike[str], *, slurm_include: str | None = None,
                  default_config: str = contract.DEFAULT_CONFIG_PATH,
                  python_path: list[str] | None = None) -> list[Path]:
    """Compile the three plugin libraries into ``out_dir``; return their paths.

    ``python_path`` replaces the ``sys.path`` compiled into the plugins (tests use it to
    build plugins whose Python cannot import the bridge).
    """
    headers = find_slurm_headers(slurm_include)
    csrc = find_csrc()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    defines = _python_defines(default_config, python_path)
    constants = "".join(f"#define {name} ...\n" for name in ESLURM_CODES)
    results: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="k8sb-build-") as tmp:
        work = Path(tmp)
        for name in ("job_submit_k8s.c", "spank_k8s_py.c", "spank_k8s.c", "k8s_pyembed.c",
                     "k8s_pyembed.h"):
            shutil.copy(csrc / name, work / name)
        # the contract the C shims share with the Python (core/contract.py)
        (work / CONTRACT_HEADER).write_text(contract.c_header())
        js = _compile_embedding(
            JOB_SUBMIT_MODULE,
            _job_desc_cdef(headers) + JOB_DESC_CDEF + LOG_CDEF + constants,
            JOB_SUBMIT_API, work / "job_submit_k8s.c",
            _init_code(JOB_SUBMIT_MODULE, "slurm.job_submit", "job_submit/k8s"),
            headers, work, defines,
            ["plugin_name", "plugin_type", "plugin_version", "init", "fini", "job_submit",
             "job_modify", f"PyInit_{JOB_SUBMIT_MODULE}"],
            work, "job_submit_k8s.so")
        layout = realise_job_desc(js, work)
        if layout["version"] != headers.version_number:
            raise PluginBuildError(f"built for Slurm {layout['version']:#x}, headers say "
                                   f"{headers.version_number:#x}")
        sp_py = _compile_embedding(
            SPANK_PY_MODULE, LOG_CDEF, SPANK_API, work / "spank_k8s_py.c",
            _init_code(SPANK_PY_MODULE, "slurm.spank", "spank_k8s"),
            headers, work, defines,
            ["k8sb_spank_task_env", f"PyInit_{SPANK_PY_MODULE}"], work, "spank_k8s_py.so")
        sp = _compile_plain(work / "spank_k8s.c", headers,
                            ["plugin_name", "plugin_type", "plugin_version", "spank_*",
                             "slurm_spank_*"], work, "spank_k8s.so", defines)
        for built in (js, sp, sp_py):
            dest = out / built.name
            tmp_dest = dest.with_suffix(".so.new")
            shutil.copy(built, tmp_dest)
            os.chmod(tmp_dest, 0o755)
            os.replace(tmp_dest, dest)  # atomic: a running daemon keeps its mapped copy
            results.append(dest)
    return results
