"""Runs every check of the doctor in order -- the bridge configuration first (the others
read it), then the Slurm side, then the Kubernetes side -- into one ``Report``.

What applies where is decided from what is there: with no slurm.conf (the daemon pod) the
Slurm file checks are skipped; with no kubeconfig and no ServiceAccount (a slurmctld host)
the Kubernetes checks are; ``slurm=False`` / ``kube=False`` skip a side on purpose.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from slurm_k8s_bridge.core import contract
from slurm_k8s_bridge.core.config import BridgeConfig, job_namespaces, load_config
from slurm_k8s_bridge.core.errors import ConfigError
from slurm_k8s_bridge.doctor.report import Finding, Report, fail, ok, skip


@dataclass(frozen=True)
class DoctorOptions:
    config: str | None = None
    slurm_conf: str | None = None
    kubeconfig: str | None = None
    munge_socket: str | None = None
    slurm: bool = True
    kube: bool = True
    #: seconds one command or API request may take
    timeout: float = 15.0


def config_path(arg: str | None, env: Mapping[str, str]) -> tuple[str, str]:
    if arg:
        return arg, "--config"
    if env.get(contract.CONFIG_ENV):
        return env[contract.CONFIG_ENV], f"${contract.CONFIG_ENV}"
    return contract.DEFAULT_CONFIG_PATH, "default"


def check_config(path: str, source: str) -> tuple[Finding, BridgeConfig | None]:
    try:
        config = load_config(path)
    except ConfigError as exc:
        if exc.key == "(file)" and exc.problem == "no such file":
            fix = f"give the bridge configuration (--config PATH or ${contract.CONFIG_ENV})"
        elif exc.key in ("(file)", "(top level)"):
            fix = f"correct the file where the message points; re-check: slurm-k8s-bridge config check {path}"
        else:
            fix = (f"correct {exc.key} (every key: slurm_plugins/k8s-bridge.example.yaml); "
                   f"re-check: slurm-k8s-bridge config check {path}")
        return fail("config", f"{exc} ({source})", fix), None
    bridged = sorted(n for n, r in config.partitions.items() if r.bridged)
    return ok("config", f"{path}: {len(config.shapes)} shapes, bridged rules "
              f"{','.join(bridged) or 'none'}, job namespaces {','.join(job_namespaces(config))}"), config


def run_doctor(options: DoctorOptions, env: Mapping[str, str] | None = None) -> Report:
    env = dict(os.environ if env is None else env)
    report = Report()
    path, source = config_path(options.config, env)
    finding, config = check_config(path, source)
    report.add(finding)
    if options.slurm:
        from slurm_k8s_bridge.doctor.slurm_checks import slurm_findings
        report.add(slurm_findings(slurm_conf=options.slurm_conf, config=config, config_path=path,
                                  munge_socket_arg=options.munge_socket, env=env,
                                  timeout=options.timeout))
    else:
        report.add(skip("slurm", "skipped on request (--no-slurm)"))
    if options.kube:
        from slurm_k8s_bridge.doctor.kube_checks import kube_findings
        report.add(kube_findings(kubeconfig=options.kubeconfig, config=config, env=env,
                                 timeout=options.timeout))
    else:
        report.add(skip("kube", "skipped on request (--no-kube)"))
    return report
