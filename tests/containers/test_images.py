"""The container images, checked by running them (podman or docker; see conftest.py).

Per suite (bookworm: Slurm 22.05, trixie: Slurm 24.11): the Slurm each image carries, the
bridge's plugins compiled into it and loadable, PMIx and OpenMPI in the worker, nss_slurm,
the worker entrypoint (munged from a mounted key, the slurmd command line the bridge's pods
need, clear refusals), and a real job: slurmctld in the controller image with
job_submit/k8s, a worker container registering as a dynamic node, running tasks as a user
that exists only on the controller, with the capabilities translate gives the pod.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from slurm_k8s_bridge.core.config import parse_config
from slurm_k8s_devcluster.podsim import pod_env, slurmd_conf_line
from slurm_k8s_bridge.slurm.sbatch import request_from_sbatch
from slurm_k8s_bridge.core.render import MUNGE_KEY_DIR, WORKER_CAPABILITIES, node_names, render
from slurm_k8s_bridge.core.normalize import normalize

from .conftest import REPO, Images

pytestmark = pytest.mark.containers

PLUGINS = ("job_submit_k8s.so", "spank_k8s.so", "spank_k8s_py.so")
EXAMPLE_CONFIG = REPO / "slurm_plugins" / "k8s-bridge.example.yaml"
#: how the bridge runs the worker: everything dropped but WORKER_CAPABILITIES, no privilege gain
WORKER_SECURITY = ["--cap-drop=ALL", *(f"--cap-add={c}" for c in WORKER_CAPABILITIES),
                   "--security-opt=no-new-privileges"]


def plugin_dir(images: Images, image: str) -> str:
    out = images.sh(image, "dirname \"$(dpkg -L slurm-wlm-basic-plugins | grep '/gres_gpu\\.so$')\"")
    return out.stdout.strip()


@pytest.fixture(scope="module")
def munge_key() -> Any:
    """A munge key laid out like a Kubernetes Secret volume: root-owned, mode 0400."""
    with tempfile.TemporaryDirectory(prefix="skb-munge-") as tmp:
        key = Path(tmp) / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        yield Path(tmp)


def rendered_pod_env(gres: str = "--gres=gpu:h100:2", conf_server: str | None = "slurmctld:6817",
                     munge_secret: str | None = "munge-key") -> tuple[str, dict[str, str]]:
    """(hostname, environment) of pod 0 of a job rendered by translate, as podsim reads it."""
    data = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    data["conf_server"] = conf_server
    data["munge_key_secret"] = munge_secret
    config = parse_config(data, str(EXAMPLE_CONFIG))
    req = request_from_sbatch("#!/bin/bash\nsrun hostname\n",
                              ["-p", "gpu", "-N", "1", gres, "-c", "2"], 1000, 1000, script_name="job.sh")
    breq = normalize(req, config)
    assert breq is not None
    job = [o for o in render(breq, config, 4242) if o["kind"] == "Job"][0]
    hostname = node_names(breq, config, 4242)[0]
    pod = {"metadata": {"name": f"{job['metadata']['name']}-0-abcde", "namespace": "slurm-jobs"},
           "spec": {**job["spec"]["template"]["spec"], "hostname": hostname, "nodeName": "gpu-node-1"},
           "status": {"podIP": "10.1.2.3"}}
    return hostname, pod_env(pod)


def env_args(env: dict[str, str]) -> list[str]:
    return [f"--env={k}={v}" for k, v in sorted(env.items())]


# -- what each image holds --------------------------------------------------------------

def test_slurm_version_matches_suite(images: Images) -> None:
    slurmd = images.run(images.worker, "-V", entrypoint="slurmd").stdout
    assert re.search(rf"\b{re.escape(images.slurm)}\.\d+", slurmd), slurmd
    slurmctld = images.run(images.controller, "-V", entrypoint="slurmctld").stdout
    assert slurmctld.split()[-1] == slurmd.split()[-1], (slurmctld, slurmd)
    version = slurmd.split()[-1]
    # Slurm 24.11's commands want a configuration even for --version: ask dpkg
    for image in (images.worker, images.controller, images.login):
        out = images.sh(image, "dpkg-query -W -f='${Version}' slurm-client && echo && "
                               "command -v sbatch srun squeue sinfo scancel sacct scontrol").stdout
        lines = out.strip().splitlines()
        assert lines[0].split("-")[0] == version, (image, out)
        assert [Path(x).name for x in lines[1:]] == ["sbatch", "srun", "squeue", "sinfo", "scancel",
                                                     "sacct", "scontrol"], (image, out)


@pytest.mark.parametrize("which", ["worker", "controller"])
def test_plugins_built_for_this_slurm_and_loadable(images: Images, which: str) -> None:
    image = getattr(images, which)
    pdir = plugin_dir(images, image)
    # dlopen each plugin with Slurm's own library loaded (as slurmctld/slurmstepd have it)
    # and read its plugin symbols; plugin_version must be this image's SLURM_VERSION_NUMBER.
    script = f"""
import ctypes, os, re, sys
full = ctypes.CDLL("{pdir}/libslurmfull.so", mode=ctypes.RTLD_GLOBAL)
out = []
for name in {PLUGINS!r}:
    lib = ctypes.CDLL("{pdir}/" + name, mode=os.RTLD_NOW | os.RTLD_LOCAL)
    syms = []
    for sym in ("plugin_name", "plugin_type", "plugin_version", "init", "fini", "job_submit",
                "job_modify", "slurm_spank_init", "slurm_spank_init_post_opt",
                "k8sb_spank_task_env", "k8sb_js_init"):
        try:
            getattr(lib, sym)
            syms.append(sym)
        except AttributeError:
            pass
    ptype = (ctypes.c_char * 64).in_dll(lib, "plugin_type").value.decode() if "plugin_type" in syms else ""
    version = ctypes.c_uint32.in_dll(lib, "plugin_version").value if "plugin_version" in syms else 0
    print(name, ptype or "-", hex(version), ",".join(syms))
"""
    out = images.run(image, "-c", script, entrypoint="/opt/slurm-k8s-bridge/venv/bin/python").stdout
    rows = {line.split()[0]: line.split()[1:] for line in out.strip().splitlines()}
    assert set(rows) == set(PLUGINS), out
    daemon = "slurmd" if which == "worker" else "slurmctld"
    srun = images.sh(image, f"{daemon} -V").stdout  # Slurm 24.11's srun wants a configuration
    major, minor, micro = (int(x) for x in re.search(r"(\d+)\.(\d+)\.(\d+)", srun).groups())
    want_version = hex((major << 16) | (minor << 8) | micro)
    js_type, js_version, js_syms = rows["job_submit_k8s.so"]
    assert js_type == "job_submit/k8s" and js_version == want_version, rows
    assert {"init", "fini", "job_submit", "job_modify", "plugin_name"} <= set(js_syms.split(",")), rows
    assert "k8sb_js_init" not in js_syms, "the version script must hide the C internals"
    sp_type, _sp_version, sp_syms = rows["spank_k8s.so"]
    assert sp_type == "spank", rows
    assert {"slurm_spank_init", "slurm_spank_init_post_opt"} <= set(sp_syms.split(",")), rows
    assert "k8sb_spank_task_env" in rows["spank_k8s_py.so"][2], rows


def test_plugins_symbols_with_nm(images: Images, tmp_path: Path) -> None:
    """The same, from outside: ``nm -D`` on the files copied out of the worker image."""
    if subprocess.run(["which", "nm"], capture_output=True).returncode != 0:
        pytest.skip("nm (binutils) not installed on this host")
    pdir = plugin_dir(images, images.worker)
    tmp_path.chmod(0o777)
    images.run(images.worker, "-c", f"cp {' '.join(f'{pdir}/{p}' for p in PLUGINS)} /out/",
               entrypoint="bash", engine_args=[f"--volume={tmp_path}:/out"])
    exported = {}
    for name in PLUGINS:
        res = subprocess.run(["nm", "-D", "--defined-only", str(tmp_path / name)],
                             capture_output=True, text=True, check=True)
        exported[name] = {line.split()[-1] for line in res.stdout.splitlines() if line.strip()}
    assert {"plugin_name", "plugin_type", "plugin_version", "job_submit", "job_modify"} \
        <= exported["job_submit_k8s.so"]
    assert {"slurm_spank_init", "slurm_spank_init_post_opt"} <= exported["spank_k8s.so"]
    assert "k8sb_spank_task_env" in exported["spank_k8s_py.so"]


def test_worker_has_pmix_and_openmpi_built_against_it(images: Images) -> None:
    ompi = images.sh(images.worker, "ompi_info").stdout
    # OpenMPI 4.1 (bookworm) lists its PMIx component (ext3x: the external libpmix);
    # OpenMPI 5 (trixie) has no pmix framework any more and says how it was configured
    assert re.search(r"MCA pmix: ext\d+x|'--with-pmix=(external|/[^']+)'", ompi), \
        [line for line in ompi.splitlines() if "pmix" in line.lower()]
    # srun needs a configuration to list its MPI plugins
    out = images.sh(images.worker, "printf 'ClusterName=t\\nSlurmctldHost=localhost\\n"
                    "NodeName=n1\\nPartitionName=p Nodes=n1\\n' >/tmp/s.conf; "
                    "SLURM_CONF=/tmp/s.conf srun --mpi=list 2>&1").stdout
    assert re.search(r"^\s*pmix\s*$", out, re.M), out


def test_worker_resolves_users_through_nss_slurm(images: Images) -> None:
    out = images.sh(images.worker, "grep -E '^(passwd|group):' /etc/nsswitch.conf").stdout
    assert re.search(r"^passwd:\s+files slurm\s*$", out, re.M), out
    assert re.search(r"^group:\s+files slurm\s*$", out, re.M), out
    # glibc loads and initialises libnss_slurm for a name that is not in /etc/passwd
    debug = images.sh(images.worker, "LD_DEBUG=libs getent passwd nosuchuser 2>&1; true").stdout
    assert re.search(r"calling init: \S*libnss_slurm\.so\.2", debug), debug[-2000:]
    assert images.sh(images.worker, "getent passwd root").stdout.startswith("root:x:0:0:")


def test_login_loads_spank_options(images: Images) -> None:
    """sbatch in the login image loads spank_k8s.so from plugstack.conf: --k8s-image shows."""
    out = images.sh(images.login,
                    "mkdir -p /tmp/c; printf 'ClusterName=t\\nSlurmctldHost=localhost\\n"
                    "PlugStackConfig=/tmp/c/plugstack.conf\\nNodeName=n1\\nPartitionName=p Nodes=n1\\n'"
                    " >/tmp/c/slurm.conf; echo 'required spank_k8s.so' >/tmp/c/plugstack.conf; "
                    "SLURM_CONF=/tmp/c/slurm.conf sbatch --help").stdout
    assert "--k8s-image" in out and "--k8s-queue" in out, out[-1500:]
    out = images.sh(images.login, "command -v mpicc && mpicc --showme:version 2>&1; "
                    "slurm-k8s-bridge --version").stdout
    assert "mpicc" in out and "Open MPI" in out and "slurm-k8s-bridge" in out, out


# -- the worker entrypoint --------------------------------------------------------------

def test_worker_starts_munged_from_the_mounted_key(images: Images, munge_key: Path) -> None:
    res = images.run(images.worker, "bash", "-c", "munge -n | unmunge; ps -o user=,comm= -C munged",
                     engine_args=[*WORKER_SECURITY, f"--volume={munge_key}:{MUNGE_KEY_DIR}:ro",
                                  f"--env=SLURM_K8S_MUNGE_KEY_FILE={MUNGE_KEY_DIR}/munge.key"])
    assert "STATUS:          Success (0)" in res.stdout, res.stdout + res.stderr
    assert re.search(r"^munge\s+munged$", res.stdout, re.M), res.stdout
    assert "munged running with key" in res.stderr


def test_worker_refuses_without_munge_key(images: Images) -> None:
    hostname, env = rendered_pod_env()
    res = images.run(images.worker, engine_args=[*WORKER_SECURITY, f"--hostname={hostname}",
                                                 "--network=none", *env_args(env)], check=False)
    assert res.returncode != 0
    assert "worker-entrypoint: error: munge key /etc/slurm-k8s-bridge/munge/munge.key does not exist" \
        in res.stderr, res.stderr
    # without SLURM_K8S_MUNGE_KEY_FILE and without a key in the image
    env.pop("SLURM_K8S_MUNGE_KEY_FILE")
    res = images.run(images.worker, engine_args=[*WORKER_SECURITY, "--network=none", *env_args(env)],
                     check=False)
    assert res.returncode != 0 and "worker-entrypoint: error: no munge key" in res.stderr, res.stderr


def test_worker_refuses_without_conf_server(images: Images, munge_key: Path) -> None:
    hostname, env = rendered_pod_env(conf_server=None)
    assert "SLURM_K8S_CONF_SERVER" not in env
    res = images.run(images.worker, engine_args=[*WORKER_SECURITY, f"--hostname={hostname}",
                                                 "--network=none", *env_args(env),
                                                 f"--volume={munge_key}:{MUNGE_KEY_DIR}:ro"],
                     check=False)
    assert res.returncode != 0
    assert "worker-entrypoint: error: no conf server: set SLURM_K8S_CONF_SERVER" in res.stderr, res.stderr
    assert "munged running" not in res.stderr, "it must refuse before starting anything"


def test_worker_refuses_a_bad_pod_share(images: Images, munge_key: Path) -> None:
    hostname, env = rendered_pod_env()
    for key, value, words in (("SLURM_K8S_NODE_CPUS", "zero", "SLURM_K8S_NODE_CPUS=zero must be a positive"),
                              ("SLURM_K8S_NODE_FEATURES", "h100", "does not start with k8s-pod")):
        bad = {**env, key: value}
        res = images.run(images.worker, "--dry-run", engine_args=[f"--hostname={hostname}", "--network=none",
                                                                 *env_args(bad),
                                                                 f"--volume={munge_key}:{MUNGE_KEY_DIR}:ro"],
                         check=False)
        assert res.returncode != 0 and words in res.stderr, res.stderr


def test_worker_slurmd_command_is_what_the_bridge_renders(images: Images, munge_key: Path) -> None:
    """The entrypoint's slurmd arguments for a pod rendered by translate are the ones
    podsim gives its stand-in slurmd (node name = hostname, --conf from SLURM_K8S_NODE_*)."""
    hostname, env = rendered_pod_env()
    res = images.run(images.worker, "--dry-run",
                     engine_args=[*WORKER_SECURITY, f"--hostname={hostname}", "--network=none",
                                  *env_args(env), f"--volume={munge_key}:{MUNGE_KEY_DIR}:ro",
                                  "--device=/dev/null:/dev/nvidia0", "--device=/dev/null:/dev/nvidia1"])
    lines = res.stdout.strip().splitlines()
    argv = shlex.split(lines[0])
    assert argv == ["slurmd", "-D", "-Z", "-N", hostname, "--conf-server", env["SLURM_K8S_CONF_SERVER"],
                    "--conf", slurmd_conf_line(env)], (argv, env)
    assert "Gres=gpu:h100:2" in slurmd_conf_line(env) and "Feature=k8s-pod" in slurmd_conf_line(env)
    assert lines[1] == "/etc/slurm-k8s-bridge/pod-gres.conf: Name=gpu Type=h100 File=/dev/nvidia0,/dev/nvidia1"


def test_worker_refuses_when_gpu_devices_do_not_match_gres(images: Images, munge_key: Path) -> None:
    hostname, env = rendered_pod_env(gres="--gres=gpu:h100:4")
    res = images.run(images.worker, "--dry-run",
                     engine_args=[f"--hostname={hostname}", "--network=none", *env_args(env),
                                  f"--volume={munge_key}:{MUNGE_KEY_DIR}:ro",
                                  "--device=/dev/null:/dev/nvidia0", "--device=/dev/null:/dev/nvidia1"],
                     check=False)
    assert res.returncode != 0
    assert "the pod has 2 GPU device files (/dev/nvidia0 /dev/nvidia1) but SLURM_K8S_NODE_GRES=" \
           "gpu:h100:4 asks for 4" in res.stderr, res.stderr


# -- a real job: controller image + worker image ----------------------------------------

ALLREDUCE_C = r"""
#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
    int rank, size, sum = 0;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int one = rank + 1;
    MPI_Allreduce(&one, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) printf("allreduce size=%d sum=%d\n", size, sum);
    MPI_Finalize();
    return 0;
}
"""


def cluster_files(directory: Path, controller: str) -> None:
    """slurm.conf & co. for slurmctld in the controller image, pods joining configless."""
    (directory / "slurm.conf").write_text("\n".join([
        "ClusterName=skb",
        f"SlurmctldHost={controller}",
        "SlurmctldParameters=enable_configless",
        "AuthType=auth/munge", "CredType=cred/munge",
        "SlurmUser=root", "SlurmdUser=root",
        "StateSaveLocation=/var/spool/slurmctld", "SlurmdSpoolDir=/var/spool/slurmd",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none", "MpiDefault=none",
        "SelectType=select/cons_tres",  # MaxNodeCount needs it on 22.05
        "ReturnToService=2", "MaxNodeCount=16", "TreeWidth=65533", "GresTypes=gpu",
        "LaunchParameters=enable_nss_slurm",
        "JobSubmitPlugins=k8s",
        "NodeSet=k8spods Feature=k8s-pod",
        "PartitionName=pods Nodes=k8spods Default=YES State=UP",
        "PartitionName=gpu Nodes=k8spods State=UP",
        "",
    ]))
    # the pods' GPU device files, written by each worker into its own copy
    (directory / "gres.conf").write_text("Include /etc/slurm-k8s-bridge/pod-gres.conf\n")
    (directory / "plugstack.conf").write_text("required spank_k8s.so\n")
    data = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    data["partitions"]["pods"] = {"bridged": False}
    (directory / "k8s-bridge.yaml").write_text(yaml.safe_dump(data))
    for path in directory.iterdir():
        path.chmod(0o644)
    directory.chmod(0o755)


def wait_for(images: Images, container: str, script: str, want: str, timeout: float = 90,
             also: tuple[str, ...] = ()) -> str:
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        res = images.engine_cmd("exec", container, "bash", "-c", script, check=False)
        out = res.stdout + res.stderr
        if want in out:
            return out
        time.sleep(1)
    logs = ""
    for name in (container, *also):
        res = images.engine_cmd("logs", name, check=False)
        logs += f"\n--- logs of {name}:\n{(res.stdout + res.stderr)[-4000:]}"
    raise AssertionError(f"{script!r} never showed {want!r}: {out}{logs}")


def test_job_runs_in_worker_for_a_user_only_login_and_controller_know(images: Images, munge_key: Path,
                                                      tmp_path: Path) -> None:
    net = images.name("net")
    images.engine_cmd("network", "create", net)
    ctl = images.name("ctl")
    etc = tmp_path / "etc"
    etc.mkdir()
    cluster_files(etc, ctl)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    (shared / "allreduce.c").write_text(ALLREDUCE_C)
    (shared / "allreduce.c").chmod(0o644)
    images.run(images.login, "-c", "mpicc -O2 -o /shared/allreduce /shared/allreduce.c",
               entrypoint="bash", engine_args=[f"--volume={shared}:/shared"], timeout=300)
    key = [f"--volume={munge_key}:{MUNGE_KEY_DIR}:ro", f"--env=SLURM_K8S_MUNGE_KEY_FILE={MUNGE_KEY_DIR}/munge.key"]

    images.engine_cmd("run", "-d", "--name", ctl, "--hostname", ctl, "--network", net,
                      f"--volume={etc}:/etc/slurm:ro", f"--volume={shared}:/shared:ro", *key,
                      images.controller, "slurmctld", "-D", "-v")
    wait_for(images, ctl, "scontrol ping", "is UP")
    # podman's CNI networks have no DNS by container name unless a DNS plugin is installed:
    # the worker gets the controller's address in /etc/hosts instead
    ctl_ip = images.engine_cmd("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                               ctl).stdout.strip()
    assert re.match(r"^[0-9a-f.:]+$", ctl_ip), ctl_ip
    # a login node: alice exists there and on the controller only; the worker learns her
    # through nss_slurm
    login = images.name("login")
    images.engine_cmd("run", "-d", "--name", login, "--hostname", login, "--network", net,
                      f"--add-host={ctl}:{ctl_ip}", f"--volume={etc}:/etc/slurm:ro",
                      f"--volume={shared}:/shared:ro", *key, images.login, "sleep", "infinity")
    for container in (ctl, login):
        images.engine_cmd("exec", container, "useradd", "--uid", "5000", "--create-home", "alice")

    hostname, env = rendered_pod_env(conf_server=f"{ctl}:6817")
    worker = images.name("worker")
    images.engine_cmd("run", "-d", "--name", worker, "--hostname", hostname, "--network", net,
                      f"--add-host={ctl}:{ctl_ip}",
                      *WORKER_SECURITY, *env_args(env), *key, f"--volume={shared}:/shared:ro",
                      "--device=/dev/null:/dev/nvidia0", "--device=/dev/null:/dev/nvidia1",
                      images.worker)
    wait_for(images, ctl, "sinfo -h -N -o '%N %t %G %f'", f"{hostname} idle", also=(worker,))
    node = images.engine_cmd("exec", ctl, "scontrol", "show", "node", hostname).stdout
    assert re.search(r"Gres=gpu:h100:2\b", node) and "k8s-pod" in node, node

    def as_alice(command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return images.engine_cmd("exec", "--workdir", "/tmp", login, "su", "-s", "/bin/bash", "alice", "-c",
                                 command, timeout=timeout, check=False)

    res = as_alice("srun -p pods -N1 --gres=gpu:h100:1 --chdir=/tmp bash -c "
                   "'id -un; id -u; getent passwd alice; echo CUDA=$CUDA_VISIBLE_DEVICES; "
                   "echo HOST=$(hostname); env | grep ^SLURM_K8S_ | sort'")
    out = res.stdout
    assert res.returncode == 0, res.stdout + res.stderr
    assert out.splitlines()[:2] == ["alice", "5000"], out
    assert re.search(r"^alice:[^:]*:5000:5000:", out, re.M), out   # nss_slurm in the task
    assert "CUDA=0" in out, out                                   # the pod's GPU, from pod-gres.conf
    assert f"HOST={hostname}" in out, out
    assert "SLURM_K8S_CLUSTER=slurm" in out, out                  # spank_k8s_py.so ran in the pod
    assert re.search(r"^SLURM_K8S_JOB_ID=\d+$", out, re.M), out

    res = as_alice("srun -p pods -N1 -n2 --mpi=pmix --chdir=/tmp bash -c 'echo rank=$PMIX_RANK'")
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(res.stdout.split()) == ["rank=0", "rank=1"], res.stdout + res.stderr
    res = as_alice("srun -p pods -N1 -n2 --mpi=pmix --chdir=/tmp /shared/allreduce")
    assert res.returncode == 0 and "allreduce size=2 sum=3" in res.stdout, res.stdout + res.stderr

    # a batch job: its script runs in the pod and starts a step with the pod's own srun;
    # scancel ends the owner's tasks there (slurmstepd, root, signals uid 5000: CAP_KILL)
    res = as_alice("sbatch -p pods -N1 --chdir=/tmp -o /dev/null --wrap 'srun sleep 600'")
    match = re.search(r"Submitted batch job (\d+)", res.stdout)
    assert match, res.stdout + res.stderr
    wait_for(images, worker, "pgrep -u 5000 -x sleep >/dev/null && echo running", "running", timeout=60)
    res = as_alice(f"scancel {match.group(1)}")
    assert res.returncode == 0, res.stderr
    wait_for(images, worker, "pgrep -u 5000 >/dev/null || echo gone", "gone", timeout=60)

    # job_submit/k8s runs in the controller image: a bridged request no shape can hold,
    # with --k8s-image checked by spank_k8s.so in the login image's sbatch
    res = as_alice("sbatch -p gpu --gres=gpu:h100:1 --k8s-image='bad image' --wrap true")
    assert res.returncode != 0 and "k8s-image" in res.stderr, res.stderr
    res = as_alice("sbatch -p gpu --gres=gpu:h100:16 --wrap true")
    assert res.returncode != 0
    assert "sbatch: error: k8s-bridge: --gres=gpu:h100:16 asks for 16 GPUs per node" in res.stderr, res.stderr


# -- the files themselves (no engine needed) ----------------------------------------------

def _stages() -> dict[str, str]:
    """containers/Containerfile's stages by name: the text from its FROM to the next."""
    text = (REPO / "containers" / "Containerfile").read_text()
    stages: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        if line.startswith("FROM "):
            name = line.split(" AS ")[-1].strip() if " AS " in line else line
            stages[name] = ""
        if name is not None:
            stages[name] += line + "\n"
    return stages


def test_one_build_stage_serves_the_three_images() -> None:
    """One build and one runtime stage from the suite's base; each image is a target on top."""
    text = (REPO / "containers" / "Containerfile").read_text()
    first = [line for line in text.splitlines() if line and not line.startswith("#")][0]
    assert first == "ARG SUITE=bookworm", first
    stages = _stages()
    assert list(stages) == ["build", "runtime", "worker", "controller", "login"], list(stages)
    assert text.count("FROM localhost/slurm-k8s-bridge-base:${SUITE}") == 2
    for target in ("worker", "controller", "login"):
        body = stages[target]
        assert body.startswith(f"FROM runtime AS {target}\n"), body
        assert f"COPY containers/{target}/entrypoint.sh" in body, target
        assert "image-setup plugins" in body, target
        assert "apt-get" not in body, f"{target}: packages go through image-setup (pinned Slurm)"
    assert "slurm-k8s-bridge.core" in stages["worker"], "the worker gets the venv without the daemon"
    assert "COPY --from=build /opt/slurm-k8s-bridge /opt" in stages["controller"]


def test_build_images_builds_each_target_of_the_one_containerfile() -> None:
    script = (REPO / "scripts" / "build-images.sh").read_text()
    assert '-f containers/Containerfile --target "$name"' in script
    assert not list((REPO / "containers").glob("*/Containerfile"))
