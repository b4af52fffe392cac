"""The network side of a LocalSlurmCluster: its names, addresses and network namespaces.

Subnet ``N`` (a ``subnets.SubnetLock``) names everything: the Linux bridge ``skbrN``
holding the controller's address ``10.77.N.1``, and per node ``i`` a network namespace
``skbN-ni`` joined to the bridge by a veth pair, address ``10.77.N.(10+i)``.
``_slurmd_cmd`` runs a slurmd inside its node's namespace, with its own UTS and mount
namespace and a private ``/tmp``. ``SlurmNetwork`` is a base of ``LocalSlurmCluster``
(slurm.py), which sets the attributes declared here.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from slurm_k8s_devcluster.errors import ClusterError
from slurm_k8s_devcluster.supervisor import pid_alive


def _tmp_tops(paths: Iterable[Path]) -> list[Path]:
    """The distinct /tmp/<entry> directories holding ``paths`` (at most 7: fds 3-9)."""
    tops: list[Path] = []
    for path in paths:
        parts = Path(os.path.abspath(path)).parts
        if len(parts) > 2 and parts[1] == "tmp":
            top = Path("/tmp", parts[2])
            if top.is_dir() and top not in tops:
                tops.append(top)
    if len(tops) > 7:
        raise ClusterError(f"too many directories under /tmp to keep visible: {tops}")
    return tops


def _sh(cmd: Sequence[str], check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
    res = subprocess.run(list(cmd), check=False, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise ClusterError(f"{shlex.join(cmd)} failed (rc={res.returncode}): "
                           f"{res.stderr.strip() or res.stdout.strip()}")
    return res


class SlurmNetwork:
    """Names, addresses and network namespaces of one cluster (a base of LocalSlurmCluster)."""

    # set by LocalSlurmCluster.__init__
    subnet: int | None
    base_dir: Path
    _requested_ctld_port: int | None
    _netns: dict[int, str]          # index -> netns name
    _bridge_created: bool

    # ------------------------------------------------------------------ naming

    @property
    def bridge(self) -> str:
        return f"skbr{self.subnet}"

    @property
    def controller_addr(self) -> str:
        return f"10.77.{self.subnet}.1"

    @property
    def slurmctld_port(self) -> int:
        if self._requested_ctld_port:
            return self._requested_ctld_port
        return 17000 + int(self.subnet or 0)

    def node_addr(self, index: int) -> str:
        return f"10.77.{self.subnet}.{10 + index}"

    def netns_name(self, index: int) -> str:
        return f"skb{self.subnet}-n{index}"

    def _veth(self, index: int) -> str:
        return f"skbv{self.subnet}x{index}"

    @property
    def controller_host(self) -> str:
        return socket.gethostname().split(".")[0]

    def netns_names(self) -> list[str]:
        return list(self._netns.values())

    # ------------------------------------------------------------------ network

    def _create_bridge(self) -> None:
        _sh(["ip", "link", "add", self.bridge, "type", "bridge"])
        self._bridge_created = True
        _sh(["ip", "addr", "add", f"{self.controller_addr}/24", "dev", self.bridge])
        _sh(["ip", "link", "set", self.bridge, "up"])

    def _create_netns(self, index: int) -> str:
        if not 1 <= index <= 240:
            raise ValueError("netns index must be in 1..240")
        if index in self._netns:
            raise ClusterError(f"netns index {index} already in use ({self._netns[index]})")
        ns, veth, peer = self.netns_name(index), self._veth(index), f"skbp{self.subnet}x{index}"
        _sh(["ip", "netns", "add", ns])
        self._netns[index] = ns
        _sh(["ip", "link", "add", veth, "type", "veth", "peer", "name", peer])
        _sh(["ip", "link", "set", peer, "netns", ns])
        _sh(["ip", "link", "set", veth, "master", self.bridge])
        _sh(["ip", "link", "set", veth, "up"])
        _sh(["ip", "-n", ns, "link", "set", peer, "name", "eth0"])
        _sh(["ip", "-n", ns, "addr", "add", f"{self.node_addr(index)}/24", "dev", "eth0"])
        _sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
        _sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        _sh(["ip", "-n", ns, "route", "add", "default", "via", self.controller_addr])
        return ns

    def _netns_pids(self, ns: str) -> list[int]:
        res = _sh(["ip", "netns", "pids", ns], check=False)
        return [int(x) for x in res.stdout.split() if x.isdigit()]

    def _delete_netns(self, ns: str) -> None:
        # Processes in a namespace named by us were started by our slurmd (slurmstepd,
        # job tasks): they are ours to end.
        for _ in range(3):
            pids = self._netns_pids(ns)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
                time.sleep(0.05)
        _sh(["ip", "netns", "del", ns], check=False)

    def _remove_netns_index(self, index: int) -> None:
        ns = self._netns.pop(index, None)
        if ns is not None:
            self._delete_netns(ns)
        _sh(["ip", "link", "del", self._veth(index)], check=False)

    def _remove_stale_network(self) -> None:
        """Namespaces, veths and the bridge under this subnet's names (a dead harness's)."""
        prefix = f"skb{self.subnet}-n"
        res = _sh(["ip", "netns", "list"], check=False)
        for line in res.stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(prefix):
                self._delete_netns(name)
        for veth in Path("/sys/class/net").glob(f"skbv{self.subnet}x*"):
            _sh(["ip", "link", "del", veth.name], check=False)
        if Path(f"/sys/class/net/{self.bridge}").exists():
            _sh(["ip", "link", "del", self.bridge], check=False)

    def _slurmd_cmd(self, index: int, node_name: str, slurmd_args: list[str]) -> list[str]:
        ns_path = f"/var/run/netns/{self.netns_name(index)}"
        # Own UTS namespace too: `hostname` in a job prints the node name, as on a cluster.
        # A private /tmp per node (PMIx needs it); what lives under /tmp and the node must
        # still see (base_dir, and the Python environment the plugins embed, e.g. a clone
        # in /tmp) is bind-mounted back at the same path: a directory fd opened before the
        # tmpfs mount keeps the original, and /proc/self/fd/N is bound without
        # canonicalising (mount(8) would otherwise resolve it to the new empty directory).
        keep = _tmp_tops([self.base_dir, Path(sys.prefix), *map(Path, sys.path)])
        opens = "".join(f"exec {3 + i}<{shlex.quote(str(p))}; " for i, p in enumerate(keep))
        binds = "".join(f"mkdir -p {shlex.quote(str(p))}; "
                        f"mount --no-canonicalize --bind /proc/self/fd/{3 + i} "
                        f"{shlex.quote(str(p))}; " for i, p in enumerate(keep))
        script = (
            "set -e; echo " + shlex.quote(node_name) + " > /proc/sys/kernel/hostname; "
            + opens + "mount -t tmpfs -o mode=1777 tmpfs /tmp; " + binds +
            "cd /; exec " + shlex.join(slurmd_args))
        return ["nsenter", f"--net={ns_path}", "unshare", "--mount", "--uts", "--propagation",
                "private", "--", "/bin/sh", "-c", script]
