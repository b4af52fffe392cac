"""A real Kubernetes control plane on loopback, with KWOK-simulated GPU nodes.

``LocalKubeCluster`` runs etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
kwok as plain processes (binaries from ``scripts/build-k8s-binaries.sh``, built from the Go
module proxy). Nothing is mocked except the kubelets: Node objects are created through the
API and KWOK plays their kubelet (Ready conditions, leases, pod status). Scheduling, RBAC,
admission, Jobs, garbage collection and ServiceAccount tokens are the real thing.

Everything the cluster owns lives under ``base_dir`` (PKI, etcd data, kubeconfigs, logs,
pid record). Every port is a free loopback port, every wait is bounded and every process is
tracked by pid, so ``stop()`` removes exactly what ``start()`` created.

Pod lifecycle on KWOK nodes (``pod_lifecycle``):

* ``"annotated"`` (default): pods go Running and stay Running until deleted. A pod
  annotated ``pod-complete.stage.kwok.x-k8s.io/delay: "5s"`` (Go duration or RFC 3339
  time) turns Succeeded after that delay; ``pod-fail.stage.kwok.x-k8s.io/delay`` turns it
  Failed (exit code from ``pod-fail.stage.kwok.x-k8s.io/exit-code``, default 1).
* ``"fast"``: upstream's ``stage/fast`` set as shipped: Job-owned pods Succeed at once.

Identities: ``admin.kubeconfig`` is a client certificate with ``O=system:masters``
(plus a static bearer token in ``pki/admin.token`` with ``token_auth``); the controller
manager and scheduler run as ``system:kube-controller-manager`` / ``system:kube-scheduler``
under RBAC, the controller manager with ``--use-service-account-credentials``.
``controller_manager_qps`` (default 200, upstream default 20) keeps the node lifecycle
and Job controllers from being client-throttled when hundreds of nodes or pods appear.

``start()`` after ``stop()`` on the same ``base_dir`` resumes: PKI and etcd data are
kept, new free ports are chosen.

The pieces: k8s_binaries.py (building the binaries), k8s_pki.py (certificates and
kubeconfigs), k8s_nodes.py (GPU node labels, KWOK's stages); processes go through
supervisor.py. Real kubelet nodes join with kubelet.py.

Requires the ``openssl`` CLI and the ``kubernetes`` Python client.
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from slurm_k8s_devcluster.errors import KubeClusterError
from slurm_k8s_devcluster.k8s_binaries import (
    BIN_ENV,
    K8S_VERSION,
    _missing_binaries,
    ensure_k8s_binaries,
)
from slurm_k8s_devcluster.k8s_nodes import (
    GPU_PRODUCTS,
    KWOK_NODE_ANNOTATION,
    _node_names,
    _node_schedulable,
    _parse_taint,
    _quantity,
    gpu_node_labels,
    write_kwok_stages,
)
from slurm_k8s_devcluster.k8s_pki import _kubeconfig_text, _write_private, ensure_cluster_pki
from slurm_k8s_devcluster.subnets import free_ports
from slurm_k8s_devcluster.supervisor import Supervised, Supervisor, kill_recorded, wait_until

# Moved to k8s_binaries.py; still importable from here.
from slurm_k8s_devcluster.k8s_binaries import (  # noqa: F401
    COMPONENTS,
    ETCD_VERSION,
    KWOK_VERSION,
    TOOLS,
)

T = TypeVar("T")


# ----------------------------------------------------------------------------- helpers


def wait_for(predicate: Callable[[], T], timeout: float, what: str, *, interval: float = 0.2,
             check: Callable[[], None] | None = None) -> T:
    """Poll ``predicate`` until it returns something truthy and return that value.

    Exceptions raised by ``predicate`` count as "not yet" (the last one is quoted in the
    timeout error). ``check`` runs before every poll and may raise to abort early (e.g.
    when a daemon died). Raises ``KubeClusterError`` after ``timeout`` seconds.
    """
    def timed_out(last_exc: BaseException | None) -> KubeClusterError:
        detail = f" (last error: {last_exc!r})" if last_exc is not None else ""
        return KubeClusterError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")

    # polling: errors mean "not yet"
    return wait_until(predicate, timeout, interval=interval, check=check, retry_on=Exception,
                      timed_out=timed_out)


def _core(api_client: Any) -> Any:
    """``CoreV1Api`` typed loosely: it happily takes plain dict bodies."""
    from kubernetes import client
    return client.CoreV1Api(api_client)


# ----------------------------------------------------------------------------- cluster


class LocalKubeCluster(Supervised):
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok on loopback.

    ``kwok_nodes``/``node_shape``: ``start()`` ensures that many ``add_gpu_nodes`` nodes
    exist (``node_shape`` = its keyword arguments) and are schedulable. ``bin_dir``
    defaults to ``ensure_k8s_binaries()``. ``extra_args`` maps a component name
    (``"kube-apiserver"``, ...) to flags appended to its command line.
    """

    _ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

    def __init__(
        self,
        base_dir: Path,
        *,
        bin_dir: Path | None = None,
        kwok_nodes: int = 0,
        node_shape: Mapping[str, Any] | None = None,
        pod_lifecycle: str = "annotated",
        stages_file: Path | None = None,
        service_cidr: str = "10.96.0.0/16",
        pod_cidr: str = "10.244.0.0/16",
        token_auth: bool = True,
        controller_manager_qps: float | None = 200.0,
        extra_args: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        if pod_lifecycle not in ("annotated", "fast"):
            raise ValueError("pod_lifecycle must be 'annotated' or 'fast'")
        self.base_dir = Path(base_dir).absolute()
        self.bin_dir = Path(bin_dir).absolute() if bin_dir is not None else None
        self.kwok_nodes = kwok_nodes
        self.node_shape = dict(node_shape or {})
        self.pod_lifecycle = pod_lifecycle
        self.stages_file = Path(stages_file).absolute() if stages_file else None
        self.service_cidr = service_cidr
        self.pod_cidr = pod_cidr
        self.token_auth = token_auth
        self.controller_manager_qps = controller_manager_qps
        self.extra_args = {k: list(v) for k, v in (extra_args or {}).items()}

        self.pki_dir = self.base_dir / "pki"
        self.etcd_dir = self.base_dir / "etcd"
        self.log_dir = self.base_dir / "log"
        self.run_dir = self.base_dir / "run"
        self.kubeconfig = self.base_dir / "admin.kubeconfig"
        self.admin_token: str | None = None
        self.ports: dict[str, int] = {}
        self.start_seconds: float | None = None
        self._sup = Supervisor(self.log_dir, self._pid_record, header=True)
        self._cmds: dict[str, list[str]] = {}   # name -> command, for restart()

    # ------------------------------------------------------------------ naming

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['kube-apiserver']}"

    @property
    def ca_file(self) -> Path:
        return self.pki_dir / "ca.crt"

    @property
    def ca_key_file(self) -> Path:
        """The cluster CA's private key: signs node (kubelet) client and serving certificates."""
        return self.pki_dir / "ca.key"

    def _pid_record(self) -> Path:
        return self.run_dir / "pids.json"

    def recorded_pids(self) -> dict[str, tuple[int, bool]]:
        """name -> (pid, still running), as recorded by a harness on this base_dir."""
        return self._sup.recorded()

    def stop_recorded(self) -> None:
        """Stop what a harness in another process started on this base_dir."""
        self._cleanup_stale()

    # ------------------------------------------------------------------ PKI

    def _service_ip(self) -> str:
        net, _ = self.service_cidr.split("/")
        parts = net.split(".")
        parts[-1] = str(int(parts[-1]) + 1)
        return ".".join(parts)

    def _ensure_pki(self) -> None:
        """CA, apiserver serving cert, client certs, SA key pair (kept across restarts)."""
        self.admin_token = ensure_cluster_pki(self.pki_dir, self._service_ip(), self.token_auth)

    def _write_kubeconfigs(self) -> None:
        p = self.pki_dir
        _write_private(self.kubeconfig, _kubeconfig_text(
            self.server, self.ca_file, "kubernetes-admin",
            cert=p / "admin.crt", key=p / "admin.key"))
        for name in ("kwok", "controller-manager", "scheduler"):
            _write_private(self.run_dir / f"{name}.kubeconfig", _kubeconfig_text(
                self.server, self.ca_file, name, cert=p / f"{name}.crt", key=p / f"{name}.key"))

    def _write_stages(self) -> Path:
        if self.stages_file is not None:
            return self.stages_file
        assert self.bin_dir is not None
        return write_kwok_stages(self.bin_dir, self.run_dir / "kwok-stages.yaml",
                                 self.pod_lifecycle)

    # ------------------------------------------------------------------ processes

    def _cleanup_stale(self) -> None:
        """Kill daemons a crashed earlier harness left running on this base_dir."""
        rec_path = self._pid_record()
        if not rec_path.exists():
            return
        kill_recorded(rec_path, owner=self.base_dir)
        rec_path.unlink(missing_ok=True)

    def _popen(self, name: str, cmd: list[str]) -> subprocess.Popen:
        self._cmds[name] = list(cmd)
        return self._sup.start(name, [*cmd, *self.extra_args.get(name, [])], cwd=self.run_dir,
                               env=dict(os.environ, HOME=str(self.run_dir)))

    def restart(self, name: str, down_s: float = 0.0, timeout: float = 60.0) -> int:
        """Kill one component with SIGKILL (a crash), keep it down ``down_s`` seconds, start
        it again with the same command line and wait until it serves. Returns its new pid."""
        if name not in self._cmds:
            raise KubeClusterError(f"{name} was not started by this harness")
        self._sup.crash(name)
        time.sleep(down_s)
        new = self._popen(name, self._cmds[name])
        if name == "kube-apiserver":
            wait_for(lambda: self._https_ok(f"{self.server}/readyz", client_cert=True), timeout,
                     "kube-apiserver /readyz after restart", check=self._check_alive,
                     interval=0.25)
        return new.pid

    def _check_alive(self) -> None:
        self._sup.check_alive(KubeClusterError, lines=30)

    def _https_ok(self, url: str, *, client_cert: bool) -> bool:
        if client_cert:
            ctx = ssl.create_default_context(cafile=str(self.ca_file))
            ctx.load_cert_chain(str(self.pki_dir / "admin.crt"), str(self.pki_dir / "admin.key"))
        else:
            ctx = ssl._create_unverified_context()
        with urllib.request.urlopen(url, context=ctx, timeout=3) as resp:
            return resp.status == 200

    @staticmethod
    def _http_ok(url: str) -> bool:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status == 200

    def _start_daemons(self, deadline: float, stages: Path) -> None:
        b, r, p = self.bin_dir, self.run_dir, self.pki_dir
        assert b is not None
        names = ("etcd", "etcd-peer", "kube-apiserver", "kube-controller-manager",
                 "kube-scheduler", "kwok")
        self.ports = dict(zip(names, free_ports(len(names))))
        ports = self.ports

        def left() -> float:
            return max(1.0, deadline - time.monotonic())

        etcd_url = f"http://127.0.0.1:{ports['etcd']}"
        peer_url = f"http://127.0.0.1:{ports['etcd-peer']}"
        self._popen("etcd", [
            str(b / "etcd"), "--name", "local", "--data-dir", str(self.etcd_dir),
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"local={peer_url}",
            "--unsafe-no-fsync", "--log-level", "warn",
            "--quota-backend-bytes", str(8 * 1024**3)])
        wait_for(lambda: self._http_ok(f"{etcd_url}/health"), left(), "etcd /health",
                 check=self._check_alive)

        self._write_kubeconfigs()
        api = [
            str(b / "kube-apiserver"),
            "--etcd-servers", etcd_url,
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            "--secure-port", str(ports["kube-apiserver"]),
            "--cert-dir", str(r / "apiserver"),
            "--tls-cert-file", str(p / "apiserver.crt"),
            "--tls-private-key-file", str(p / "apiserver.key"),
            "--client-ca-file", str(p / "ca.crt"),
            "--authorization-mode", "Node,RBAC",
            "--service-cluster-ip-range", self.service_cidr,
            "--endpoint-reconciler-type", "none",
            "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file", str(p / "sa.pub"),
            "--service-account-signing-key-file", str(p / "sa.key"),
            "--allow-privileged=true",
            "--profiling=false",
            # Real kubelets (slurm_k8s_devcluster/kubelet.py): the apiserver reaches them at their
            # InternalIP (node names do not resolve here) with a client certificate.
            "--kubelet-client-certificate", str(p / "apiserver-kubelet-client.crt"),
            "--kubelet-client-key", str(p / "apiserver-kubelet-client.key"),
            "--kubelet-preferred-address-types",
            "InternalIP,Hostname,InternalDNS,ExternalDNS,ExternalIP",
        ]
        if self.token_auth:
            api += ["--token-auth-file", str(p / "tokens.csv")]
        self._popen("kube-apiserver", api)
        wait_for(lambda: self._https_ok(f"{self.server}/readyz", client_cert=True), left(),
                 "kube-apiserver /readyz", check=self._check_alive, interval=0.25)

        common = ["--authentication-skip-lookup", "--bind-address", "127.0.0.1",
                  "--leader-elect=false"]

        def identity(component: str, name: str) -> list[str]:
            """A component's kubeconfig for everything, its secure port and certificates."""
            cfg = str(r / f"{name}.kubeconfig")
            return ["--kubeconfig", cfg, "--authentication-kubeconfig", cfg,
                    "--authorization-kubeconfig", cfg, "--secure-port", str(ports[component]),
                    "--cert-dir", str(r / name)]

        qps = []
        if self.controller_manager_qps:
            qps = [f"--kube-api-qps={self.controller_manager_qps:g}",
                   f"--kube-api-burst={int(self.controller_manager_qps * 2)}"]
        self._popen("kube-controller-manager", [
            str(b / "kube-controller-manager"), *common,
            *identity("kube-controller-manager", "controller-manager"),
            "--flex-volume-plugin-dir", str(r / "flexvolume"),
            "--controllers", "*",
            "--use-service-account-credentials",
            "--service-account-private-key-file", str(p / "sa.key"),
            "--root-ca-file", str(p / "ca.crt"),
            "--cluster-signing-cert-file", str(p / "ca.crt"),
            "--cluster-signing-key-file", str(p / "ca.key"),
            "--service-cluster-ip-range", self.service_cidr,
            *qps,
        ])
        self._popen("kube-scheduler", [
            str(b / "kube-scheduler"), *common, *identity("kube-scheduler", "scheduler")])
        kwok_cfg = str(r / "kwok.kubeconfig")
        self._popen("kwok", [
            str(b / "kwok"), "--kubeconfig", kwok_cfg, "--config", str(stages),
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector", "=".join(KWOK_NODE_ANNOTATION),
            "--node-lease-duration-seconds", "40",
            "--cidr", self.pod_cidr,
            "--node-ip", "127.0.0.1",
            "--server-address", f"127.0.0.1:{ports['kwok']}",
        ])
        for name in ("kube-controller-manager", "kube-scheduler"):
            url = f"https://127.0.0.1:{ports[name]}/healthz"
            wait_for(lambda url=url: self._https_ok(url, client_cert=False),  # type: ignore[misc]
                     left(), f"{name} /healthz", check=self._check_alive, interval=0.25)
        wait_for(lambda: self._http_ok(f"http://127.0.0.1:{ports['kwok']}/healthz"), left(),
                 "kwok /healthz", check=self._check_alive, interval=0.25)

        # The ServiceAccount controller (using its own token via
        # --use-service-account-credentials) populating "default" proves KCM works.
        from kubernetes import client
        with self.admin_client() as api_client:
            core = client.CoreV1Api(api_client)
            wait_for(lambda: core.read_namespaced_service_account("default", "default"),
                     left(), "ServiceAccount default/default (kube-controller-manager)",
                     check=self._check_alive, interval=0.25)
            wait_for(lambda: core.read_namespaced_config_map("kube-root-ca.crt", "default"),
                     left(), "ConfigMap default/kube-root-ca.crt", check=self._check_alive,
                     interval=0.25)

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 120.0, keep_on_failure: bool = False) -> LocalKubeCluster:
        """Start every component; return when all are healthy (and ``kwok_nodes`` Ready)."""
        if self._procs:
            raise KubeClusterError("cluster already started")
        t0 = time.monotonic()
        deadline = t0 + timeout
        if self.bin_dir is None:
            self.bin_dir = ensure_k8s_binaries()
        missing = _missing_binaries(self.bin_dir)
        if missing:
            raise KubeClusterError(f"{self.bin_dir}: missing {', '.join(missing)}")
        for d in (self.base_dir, self.log_dir, self.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._cleanup_stale()
        for attempt in range(3):
            try:
                self._ensure_pki()
                stages = self._write_stages()
                self._start_daemons(deadline, stages)
                if self.kwok_nodes:
                    self._ensure_start_nodes(max(5.0, deadline - time.monotonic()))
                break
            except BaseException as exc:
                logs = self.logs(40)
                port_clash = "address already in use" in logs and isinstance(exc, Exception)
                if port_clash and attempt < 2 and time.monotonic() < deadline:
                    self.stop(grace=5)   # another process grabbed a port: new ports, retry
                    for name in self._ORDER:
                        (self.log_dir / f"{name}.log").unlink(missing_ok=True)
                    continue
                if not keep_on_failure:
                    self.stop()
                if isinstance(exc, KubeClusterError):
                    raise KubeClusterError(f"{exc}\n--- logs ---\n{logs}") from exc
                if isinstance(exc, Exception):
                    raise KubeClusterError(
                        f"cluster start failed: {exc!r}\n--- logs ---\n{logs}") from exc
                raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _ensure_start_nodes(self, timeout: float) -> None:
        """Top the ``<prefix>-<n>`` nodes up to ``kwok_nodes`` (a restart on the same
        base_dir keeps the earlier ones) and wait until all of them are schedulable."""
        prefix = str(self.node_shape.get("prefix", "gpu"))
        with self.admin_client() as api_client:
            existing = _node_names(_core(api_client), prefix)
        shape = {k: v for k, v in self.node_shape.items() if k not in ("wait", "timeout")}
        self.add_gpu_nodes(max(0, self.kwok_nodes - len(existing)), **shape, wait=False)
        with self.admin_client() as api_client:
            names = _node_names(_core(api_client), prefix)
        self.wait_nodes_schedulable(names, timeout=timeout)

    def stop(self, grace: float = 10.0) -> None:
        """Stop what ``start()`` started, by pid, in reverse order. Idempotent."""
        for name in reversed([*self._ORDER, *[k for k in self._procs if k not in self._ORDER]]):
            self._sup.stop(name, grace=grace)
        with contextlib.suppress(OSError):
            self._pid_record().unlink(missing_ok=True)

    def __enter__(self) -> LocalKubeCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ clients

    def admin_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` as cluster-admin (client cert, system:masters).

        Close it (``with cluster.admin_client() as c:``) when done.
        """
        from kubernetes import config
        if not self.kubeconfig.exists():
            raise KubeClusterError("no admin.kubeconfig: start() the cluster first")
        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def client_from_kubeconfig(self, path: Path) -> Any:
        from kubernetes import config
        return config.new_client_from_config(config_file=str(path))

    def kubeconfig_for_service_account(self, namespace: str, name: str, path: Path, *,
                                       expiration_seconds: int = 86400,
                                       audiences: Sequence[str] | None = None) -> Path:
        """Write a kubeconfig that authenticates as ServiceAccount ``namespace/name``.

        The token comes from the TokenRequest API (bound to the ServiceAccount, expiring
        after ``expiration_seconds``), so the holder has exactly that account's RBAC.
        """
        from kubernetes import client
        body = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=list(audiences or []), expiration_seconds=expiration_seconds))
        with self.admin_client() as api_client:
            resp: Any = _core(api_client).create_namespaced_service_account_token(
                name, namespace, body)
        path = Path(path).absolute()
        _write_private(path, _kubeconfig_text(
            self.server, self.ca_file, f"system:serviceaccount:{namespace}:{name}",
            token=resp.status.token, namespace=namespace))
        return path

    def ensure_namespace(self, name: str, timeout: float = 30.0) -> None:
        """Create ``name`` (if absent) and wait for its ``default`` ServiceAccount, without
        which pod creation is refused by the ServiceAccount admission plugin."""
        from kubernetes.client.exceptions import ApiException
        with self.admin_client() as api_client:
            core = _core(api_client)
            try:
                core.create_namespace({"metadata": {"name": name}})
            except ApiException as exc:
                if exc.status != 409:
                    raise
            wait_for(lambda: core.read_namespaced_service_account("default", name), timeout,
                     f"ServiceAccount {name}/default")

    def apply_as_admin(self, objects: Iterable[Mapping[str, Any]]) -> None:
        """Create RBAC objects (ServiceAccount, Role, RoleBinding, ClusterRole,
        ClusterRoleBinding) as the cluster admin, as a site admin applies deploy/rbac.yaml;
        ones that already exist are left as they are."""
        from kubernetes import client as kclient
        from kubernetes.client.exceptions import ApiException
        with self.admin_client() as api_client:
            core = kclient.CoreV1Api(api_client)
            rbac = kclient.RbacAuthorizationV1Api(api_client)
            for obj in objects:
                ns = obj["metadata"].get("namespace")
                create = {
                    "ServiceAccount": lambda: core.create_namespaced_service_account(ns, obj),
                    "Role": lambda: rbac.create_namespaced_role(ns, obj),
                    "RoleBinding": lambda: rbac.create_namespaced_role_binding(ns, obj),
                    "ClusterRole": lambda: rbac.create_cluster_role(obj),
                    "ClusterRoleBinding": lambda: rbac.create_cluster_role_binding(obj),
                }[obj["kind"]]
                try:
                    create()
                except ApiException as exc:
                    if exc.status != 409:
                        raise

    # ------------------------------------------------------------------ nodes

    def add_gpu_nodes(
        self,
        count: int,
        *,
        prefix: str = "gpu",
        gpus: int = 8,
        gpu_product: str = "NVIDIA-H100-80GB-HBM3",
        gpu_memory_mib: int | None = None,
        cpus: int = 224,
        memory: str = "2000Gi",
        pods: int = 110,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        taints: Iterable[str | Mapping[str, str]] | None = None,
        mig: Mapping[str, int] | None = None,
        wait: bool = True,
        timeout: float | None = None,
    ) -> list[str]:
        """Create ``count`` KWOK-managed GPU nodes ``<prefix>-<n>``; return their names.

        Capacity = allocatable: ``cpu``, ``memory``, ``pods``, ``nvidia.com/gpu: gpus`` and,
        per ``mig`` entry (e.g. ``{"1g.10gb": 14}``), ``nvidia.com/mig-<profile>``.
        With ``wait`` returns once KWOK reports them Ready and the node lifecycle
        controller has lifted the ``not-ready`` taint (i.e. they are schedulable).
        """
        from kubernetes.client.exceptions import ApiException
        if count <= 0:
            return []
        resources = {"cpu": _quantity(cpus), "memory": _quantity(memory),
                     "pods": _quantity(pods), "ephemeral-storage": "10Ti",
                     "nvidia.com/gpu": _quantity(gpus)}
        for profile, n in (mig or {}).items():
            resources[f"nvidia.com/mig-{profile}"] = _quantity(n)
        taint_list = [_parse_taint(t) for t in (taints or [])]
        pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)$")
        names: list[str] = []
        with self.admin_client() as api_client:
            core = _core(api_client)
            existing = [int(m.group(1)) for n in _node_names(core) if (m := pattern.match(n))]
            first = max(existing, default=-1) + 1
            for i in range(first, first + count):
                name = f"{prefix}-{i}"
                node_labels = gpu_node_labels(name, gpus=gpus, gpu_product=gpu_product,
                                              gpu_memory_mib=gpu_memory_mib, mig=mig)
                node_labels.update(labels or {})
                body = {
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": {
                        "name": name, "labels": node_labels,
                        "annotations": {KWOK_NODE_ANNOTATION[0]: KWOK_NODE_ANNOTATION[1],
                                        "node.alpha.kubernetes.io/ttl": "0",
                                        **dict(annotations or {})}},
                    "spec": {"taints": taint_list} if taint_list else {},
                    "status": {"capacity": dict(resources), "allocatable": dict(resources)},
                }
                try:
                    core.create_node(body)
                except ApiException as exc:
                    raise KubeClusterError(f"creating node {name}: {exc.status} {exc.reason}: "
                                           f"{exc.body}") from exc
                names.append(name)
            if wait:
                self.wait_nodes_schedulable(names, timeout=timeout or 60.0 + count * 0.5,
                                            core=core)
        return names

    def wait_nodes_schedulable(self, names: Sequence[str], timeout: float = 60.0,
                               core: Any = None) -> None:
        """Wait until every named node is Ready and free of not-ready/unreachable taints."""
        from kubernetes import client
        want = set(names)
        pending: set[str] = set(want)

        def poll(api: Any) -> bool:
            nonlocal pending
            ok = {str(n.metadata.name) for n in api.list_node().items if _node_schedulable(n)}
            pending = want - ok
            return not pending

        def check() -> None:
            if self._procs:
                self._check_alive()

        def run(api: Any) -> None:
            try:
                wait_for(lambda: poll(api), timeout, f"{len(want)} KWOK nodes Ready",
                         check=check, interval=0.25)
            except KubeClusterError as exc:
                raise KubeClusterError(f"{exc}; not ready: {sorted(pending)[:10]}"
                                       f"{' ...' if len(pending) > 10 else ''}") from exc

        if core is not None:
            run(core)
            return
        with self.admin_client() as api_client:
            run(client.CoreV1Api(api_client))

    def delete_nodes(self, names: Iterable[str], wait: bool = True,
                     timeout: float = 60.0) -> None:
        """Delete Node objects (404s ignored); with ``wait`` until they are gone."""
        from kubernetes.client.exceptions import ApiException
        names = list(names)
        with self.admin_client() as api_client:
            core = _core(api_client)
            for name in names:
                try:
                    core.delete_node(name)
                except ApiException as exc:
                    if exc.status != 404:
                        raise
            if wait:
                gone = set(names)
                wait_for(lambda: not gone & set(_node_names(core)),
                         timeout, f"deletion of {len(names)} nodes")


__all__ = [
    "BIN_ENV",
    "GPU_PRODUCTS",
    "K8S_VERSION",
    "KWOK_NODE_ANNOTATION",
    "KubeClusterError",
    "LocalKubeCluster",
    "ensure_k8s_binaries",
    "free_ports",
    "gpu_node_labels",
    "wait_for",
]
