"""``slurm-k8s-bridge``: the command-line front door.

    slurm-k8s-bridge plugins install [--plugin-dir DIR] [--slurm-include DIR] [--config PATH]
    slurm-k8s-bridge translate [--config FILE] [--job-id N] SCRIPT [SBATCH-OPTIONS...]
    slurm-k8s-bridge manifests [--config FILE] JOBID      (from a submitted job's stamp)
    slurm-k8s-bridge run --config FILE [--kubeconfig PATH] [--metrics-port N]
    slurm-k8s-bridge dev-cluster up|status|down [--dir DIR] [--kwok-nodes N] [--real-node]
    slurm-k8s-bridge slurm-conf [--config FILE] [--nodes-per-shape N]
    slurm-k8s-bridge config check [FILE]
    slurm-k8s-bridge rbac [--config FILE]            (the daemon's RBAC for it, as YAML)
    slurm-k8s-bridge doctor [--config FILE] [--slurm-conf FILE] [--kubeconfig PATH] [--json]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from slurm_k8s_bridge import __version__
from slurm_k8s_bridge.core import contract

DEFAULT_CONFIG = contract.DEFAULT_CONFIG_PATH


def _config_path(arg: str | None) -> str:
    return arg or os.environ.get(contract.CONFIG_ENV) or DEFAULT_CONFIG


def _load_config_or_exit(path: str):  # type: ignore[no-untyped-def]
    from slurm_k8s_bridge.core.config import load_config
    from slurm_k8s_bridge.core.errors import ConfigError

    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"slurm-k8s-bridge: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _print_manifests(objects: list[dict]) -> None:  # type: ignore[type-arg]
    import yaml

    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False))


# -- plugins -----------------------------------------------------------------------------
def cmd_plugins_install(args: argparse.Namespace) -> int:
    from slurm_k8s_bridge.slurm.plugin_build import (
        PluginBuildError,
        build_plugins,
        local_plugin_dir,
    )

    plugin_dir = Path(args.plugin_dir) if args.plugin_dir else local_plugin_dir()
    try:
        built = build_plugins(plugin_dir, slurm_include=args.slurm_include,
                              default_config=args.config or DEFAULT_CONFIG)
    except PluginBuildError as exc:
        print(f"slurm-k8s-bridge: error: {exc}", file=sys.stderr)
        return 1
    for path in built:
        print(f"installed {path}")
    print("enable with:  JobSubmitPlugins=k8s  (slurm.conf)\n"
          f"              required {plugin_dir / 'spank_k8s.so'} "
          f"config={args.config or DEFAULT_CONFIG}  (plugstack.conf)")
    return 0


# -- translate ---------------------------------------------------------------------------
def cmd_translate(args: argparse.Namespace) -> int:
    from slurm_k8s_bridge.core.errors import BridgeRefusal
    from slurm_k8s_bridge.slurm.sbatch import request_from_sbatch
    from slurm_k8s_bridge.core.normalize import normalize
    from slurm_k8s_bridge.core.render import render_all

    config = _load_config_or_exit(_config_path(args.config))
    try:
        with open(args.script, encoding="utf-8", errors="replace", newline="") as fh:
            script = fh.read()  # keep \r\n: sbatch refuses DOS line breaks
    except OSError as exc:
        print(f"sbatch: error: Unable to open file {args.script}: {exc.strerror}",
              file=sys.stderr)
        return 1
    uid = args.uid if args.uid is not None else os.getuid()
    gid = args.gid if args.gid is not None else os.getgid()
    try:
        request = request_from_sbatch(script, args.options, uid, gid,
                                      script_name=os.path.basename(args.script))
        bridged = normalize(request, config)
    except BridgeRefusal as refusal:
        print(f"sbatch: error: {refusal.user_message()}", file=sys.stderr)
        return 1
    if bridged is None:
        print(f"slurm-k8s-bridge: partition {request.partition or config.default_partition} "
              "is not bridged; sbatch would pass this job to Slurm unchanged", file=sys.stderr)
        return 0
    _print_manifests(render_all(bridged, config, args.job_id))
    return 0


# -- manifests from a submitted job --------------------------------------------------------
def read_job_stamp(job_id: int) -> str | None:
    """The bridge stamp of a Slurm job (its AdminComment), via scontrol."""
    proc = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip() or f"scontrol failed for job {job_id}")
    match = re.search(r"(?:^|\s)AdminComment=(k8sb1:\S+)", proc.stdout)
    return match.group(1) if match else None


def cmd_manifests(args: argparse.Namespace) -> int:
    from slurm_k8s_bridge.core.request import SlurmJobRequest
    from slurm_k8s_bridge.core.normalize import normalize
    from slurm_k8s_bridge.core.render import render_all
    from slurm_k8s_bridge.core.errors import BridgeRefusal

    config = _load_config_or_exit(_config_path(args.config))
    try:
        stamp = read_job_stamp(args.job_id)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"slurm-k8s-bridge: error: {exc}", file=sys.stderr)
        return 1
    if stamp is None:
        print(f"slurm-k8s-bridge: error: job {args.job_id} is not a bridged job",
              file=sys.stderr)
        return 1
    request = SlurmJobRequest.from_stamp(stamp)
    try:
        bridged = normalize(request, config)
    except BridgeRefusal as refusal:
        print(f"slurm-k8s-bridge: error: {refusal.user_message()}", file=sys.stderr)
        return 1
    assert bridged is not None
    _print_manifests(render_all(bridged, config, args.job_id))
    return 0


def cmd_slurm_conf(args: argparse.Namespace) -> int:
    from slurm_k8s_bridge.slurm.conf import render_conf_snippet

    config = _load_config_or_exit(_config_path(args.config))
    sys.stdout.write(render_conf_snippet(config, args.nodes_per_shape))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from kubernetes import config as kube_config

    from slurm_k8s_bridge.core.config import job_namespaces
    from slurm_k8s_bridge.daemon.daemon import BridgeDaemon
    from slurm_k8s_bridge.daemon.leader import elector_for, settings_from_args
    from slurm_k8s_bridge.daemon.metrics import serve_metrics, setup_logging
    from slurm_k8s_bridge.kube.access import KubeAccess
    from slurm_k8s_bridge.slurm.client import SlurmClient

    setup_logging(args.log_level)
    config = _load_config_or_exit(_config_path(args.config))
    if args.kubeconfig:
        api = kube_config.new_client_from_config(config_file=args.kubeconfig)
    else:
        kube_config.load_incluster_config()
        from kubernetes import client as kube_client
        api = kube_client.ApiClient()
    try:
        leader = elector_for(settings_from_args(args, config.leader_election), api)
    except ValueError as exc:
        print(f"slurm-k8s-bridge: error: {exc}", file=sys.stderr)
        return 2
    namespaces = job_namespaces(config)
    kube = KubeAccess(api, cluster_name=config.cluster_name, namespaces=namespaces,
                      qps=args.qps, burst=args.burst).start()
    daemon = BridgeDaemon(config, SlurmClient(), kube, max_admitting=args.max_admitting,
                          poll_interval=args.poll_interval, leader=leader,
                          reserve_after=args.reserve_after)
    if args.metrics_port:
        serve_metrics(args.metrics_port, [daemon.metrics.render, kube.metrics.render_prometheus],
                      host=args.metrics_host)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if leader is not None:
        leader.start(stop)
    try:
        daemon.run(stop)
    finally:
        if leader is not None:
            leader.release()
        kube.stop()
    return 0


def cmd_dev_cluster(argv: Sequence[str]) -> int:
    """``dev-cluster``: the development harness's own command (``python -m
    slurm_k8s_devcluster``), found, not imported: the bridge never imports its harness."""
    if importlib.util.find_spec("slurm_k8s_devcluster") is None:
        print("slurm-k8s-bridge: error: dev-cluster needs the development harness "
              "(slurm_k8s_devcluster), which a plain install of the bridge does not ship: "
              "run it from a source checkout ('pip install -e .' there)", file=sys.stderr)
        return 2
    os.execv(sys.executable, [sys.executable, "-m", "slurm_k8s_devcluster", *argv])
    return 2  # not reached


def cmd_rbac(args: argparse.Namespace) -> int:
    from slurm_k8s_bridge.kube.rbac import render_rbac_for_config

    path = _config_path(args.config)
    sys.stdout.write(render_rbac_for_config(_load_config_or_exit(path), args.as_source or path))
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    path = _config_path(args.file)
    config = _load_config_or_exit(path)
    print(f"{path}: OK ({len(config.shapes)} node shapes)")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from slurm_k8s_bridge.doctor.run import DoctorOptions, run_doctor

    report = run_doctor(DoctorOptions(
        config=args.config, slurm_conf=args.slurm_conf, kubeconfig=args.kubeconfig,
        munge_socket=args.munge_socket, slurm=not args.no_slurm, kube=not args.no_kube,
        timeout=args.timeout))
    sys.stdout.write(report.as_json() if args.json else report.as_text())
    return report.exit_code()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slurm-k8s-bridge",
        description="Run unchanged Slurm jobs as Kubernetes Jobs on shared GPU nodes.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    plugins = sub.add_parser("plugins", help="build and install the Slurm plugins")
    psub = plugins.add_subparsers(dest="plugins_command", required=True)
    install = psub.add_parser("install", help="compile job_submit_k8s.so and spank_k8s.so")
    install.add_argument("--plugin-dir", help="where to install (default: the local "
                         "Slurm's PluginDir)")
    install.add_argument("--slurm-include", help="directory holding slurm/slurm.h "
                         "(default /usr/include)")
    install.add_argument("--config", help=f"configuration path compiled in as the default "
                         f"(default {DEFAULT_CONFIG})")
    install.set_defaults(func=cmd_plugins_install)

    tr = sub.add_parser("translate", help="print the Kubernetes objects for a batch script")
    tr.add_argument("--config", help=f"bridge configuration (default {DEFAULT_CONFIG})")
    tr.add_argument("--job-id", type=int, default=1,
                    help="Slurm job id to name the objects by (default 1; sbatch assigns the real one)")
    tr.add_argument("--uid", type=int, help="submitting uid (default: yours)")
    tr.add_argument("--gid", type=int, help="submitting gid (default: yours)")
    tr.add_argument("script", help="batch script, as given to sbatch")
    tr.add_argument("options", nargs=argparse.REMAINDER, help="sbatch options")
    tr.set_defaults(func=cmd_translate)

    mf = sub.add_parser("manifests", help="print the Kubernetes objects of a submitted job")
    mf.add_argument("--config", help=f"bridge configuration (default {DEFAULT_CONFIG})")
    mf.add_argument("job_id", type=int)
    mf.set_defaults(func=cmd_manifests)

    run = sub.add_parser("run", help="the bridge daemon: keep Slurm and Kubernetes in sync")
    run.add_argument("--config", help=f"bridge configuration (default {DEFAULT_CONFIG})")
    run.add_argument("--kubeconfig", help="kubeconfig of the daemon's identity "
                     "(default: in-cluster ServiceAccount)")
    run.add_argument("--max-admitting", type=int, default=8,
                     help="gangs created but not yet running, at most (default 8); gangs "
                     "whose pods all wait for room, none placed, do not count")
    run.add_argument("--reserve-after", type=float, default=300.0,
                     help="seconds after which a gang still waiting for room keeps its turn: "
                     "no later job gets pods until it is placed (default 300; 0: never)")
    run.add_argument("--poll-interval", type=float, default=2.0,
                     help="seconds between Slurm polls when Kubernetes is quiet (default 2)")
    run.add_argument("--qps", type=float, default=20, help="Kubernetes API requests/s")
    run.add_argument("--burst", type=int, default=40, help="Kubernetes API burst")
    run.add_argument("--metrics-port", type=int, default=0,
                     help="serve Prometheus metrics on this port (0: off)")
    run.add_argument("--metrics-host", default="127.0.0.1")
    run.add_argument("--log-level", default="info")
    from slurm_k8s_bridge.daemon.leader import add_arguments as add_leader_arguments
    add_leader_arguments(run)
    run.set_defaults(func=cmd_run)

    # handled before parsing (main): the harness parses its own arguments
    sub.add_parser("dev-cluster", add_help=False,
                   help="a whole local cluster: Slurm, Kubernetes (KWOK GPU nodes or a real "
                   "kubelet) and the bridge daemon (source checkout only; "
                   "'dev-cluster --help')")

    sc = sub.add_parser("slurm-conf", help="print the slurm.conf/gres.conf/plugstack.conf "
                        "lines a bridged partition needs")
    sc.add_argument("--config", help=f"bridge configuration (default {DEFAULT_CONFIG})")
    sc.add_argument("--nodes-per-shape", type=int, default=16,
                    help="inventory nodes per shape: the largest -N a job may ask (default 16)")
    sc.set_defaults(func=cmd_slurm_conf)

    rb = sub.add_parser("rbac", help="print the daemon's least-privilege RBAC for a configuration")
    rb.add_argument("--config", help=f"bridge configuration (default {DEFAULT_CONFIG})")
    rb.add_argument("--as-source", help="the configuration's name in the header")
    rb.set_defaults(func=cmd_rbac)

    cfg = sub.add_parser("config", help="configuration tools")
    csub = cfg.add_subparsers(dest="config_command", required=True)
    check = csub.add_parser("check", help="validate a configuration file")
    check.add_argument("file", nargs="?")
    check.set_defaults(func=cmd_config_check)

    doc = sub.add_parser("doctor", help="check this host's and the cluster's setup; say what is "
                         "wrong and how to fix it (exit 1 on any failure)")
    doc.add_argument("--config", help=f"bridge configuration (default ${contract.CONFIG_ENV}, "
                     f"else {DEFAULT_CONFIG})")
    doc.add_argument("--slurm-conf", help="slurm.conf (default $SLURM_CONF, else /etc/slurm/slurm.conf;"
                     " absent: the slurm.conf checks are skipped)")
    doc.add_argument("--kubeconfig", help="the daemon's kubeconfig (default: in-cluster "
                     "ServiceAccount, else $KUBECONFIG; none: the Kubernetes checks are skipped)")
    doc.add_argument("--munge-socket", help="munged's socket (default: AuthInfo=socket= of "
                     "slurm.conf, else /run/munge/munge.socket.2)")
    doc.add_argument("--no-slurm", action="store_true", help="skip the Slurm and munge checks")
    doc.add_argument("--no-kube", action="store_true", help="skip the Kubernetes checks")
    doc.add_argument("--timeout", type=float, default=15.0,
                     help="seconds one command or API request may take (default 15)")
    doc.add_argument("--json", action="store_true", help="findings as JSON, for tools")
    doc.set_defaults(func=cmd_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["dev-cluster"]:
        return cmd_dev_cluster(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
