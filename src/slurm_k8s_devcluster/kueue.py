"""A real Kueue controller manager against the development cluster's API server.

``LocalKueue`` installs Kueue into a ``LocalKubeCluster`` and runs its manager as a plain
process (binary and manifests from ``scripts/build-kueue.sh``, built from the Go module
proxy; ``ensure_kueue``), out of the cluster, through the harness's one supervisor:

* the ``kueue-system`` namespace, the ServiceAccount ``kueue-controller-manager`` with
  Kueue's own ClusterRole (``config/components/rbac/role.yaml``), its Secrets Role and its
  metrics-auth rules; the manager authenticates with a token of that account (a
  kubeconfig), so it has exactly the rights a Kueue Deployment has;
* the CRDs of ``config/components/crd/bases`` applied as they are, with the conversion
  webhook the kustomization would add to the multi-version ones;
* the admission webhooks of ``config/components/webhook`` for Kueue's own kinds and the
  enabled integrations only (``batch/job``): a webhook with ``failurePolicy: Fail`` for
  pods or deployments would stop every pod of the shared control plane while Kueue is
  down. ``stop()`` removes the webhook configurations again for the same reason;
* certificates by Kueue's own internal cert management (cert-controller): it writes a
  self-signed CA and serving certificate for ``kueue-webhook-service.kueue-system.svc``
  into the Secret ``kueue-webhook-server-cert`` and patches the webhook configurations'
  and CRDs' ``caBundle``; the harness copies the Secret into the manager's ``certDir``,
  as the kubelet's Secret volume does for a Kueue pod. The API server reaches the webhook server on loopback because
  ``kueue-webhook-service`` is an ``ExternalName`` Service naming ``localhost``: for a
  service reference kube-apiserver dials ``<externalName>:<port>`` and checks the
  certificate against ``<service>.<namespace>.svc`` (its ClusterIP resolver), so no
  kube-proxy, no /etc/hosts entry and no certificate of our own are needed.

``start()`` returns once the manager is ready and a dry-run ResourceFlavor create has
gone through its validating webhook (the proof the API server reaches it).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from slurm_k8s_devcluster.errors import KubeClusterError
from slurm_k8s_devcluster.k8s import LocalKubeCluster, _core, free_ports, wait_for
from slurm_k8s_devcluster.k8s_binaries import (
    _cache_root,
    _source_root,
    run_build_script,
)
from slurm_k8s_devcluster.supervisor import Supervised, Supervisor, kill_recorded

KUEUE_VERSION = "v0.17.0"
KUEUE_BIN_ENV = "SLURM_K8S_BRIDGE_KUEUE_BIN"
BUILD_SCRIPT = Path("scripts") / "build-kueue.sh"
NAMESPACE = "kueue-system"
SERVICE_ACCOUNT = "kueue-controller-manager"
WEBHOOK_SERVICE = "kueue-webhook-service"
WEBHOOK_SECRET = "kueue-webhook-server-cert"
#: the names config/default's namePrefix ("kueue-") gives the two webhook configurations
#: (Kueue's cert management patches exactly these)
WEBHOOK_CONFIGS = {"MutatingWebhookConfiguration": "kueue-mutating-webhook-configuration",
                   "ValidatingWebhookConfiguration": "kueue-validating-webhook-configuration"}
#: CRDs whose kustomization adds a conversion webhook (config/components/crd/kustomization.yaml)
CONVERSION_CRDS = ("localqueues", "clusterqueues", "cohorts", "workloads", "multikueueclusters")
#: integration framework -> the webhook path fragment of its kind (manifests.yaml)
FRAMEWORK_PATHS = {"batch/job": "-batch-v1-job"}
#: the visibility API server (an aggregated API) is not needed by the bridge
FEATURE_GATES = {"VisibilityOnDemand": False}
API_GROUP = "kueue.x-k8s.io"
API_VERSION = "v1beta2"


class KueueUnavailable(KubeClusterError):
    """Kueue could not be built or found here; tests skip on it (the message says why)."""


def ensure_kueue(timeout: float = 1800.0) -> Path:
    """The directory holding the ``kueue`` binary (its manifests are in ``../share/kueue``).

    Order: ``$SLURM_K8S_BRIDGE_KUEUE_BIN`` (such a bin directory), ``scripts/build-kueue.sh``
    of the source checkout (instant when cached, about 3 minutes cold on 2 cores), the
    pinned version's cache directory."""
    env = os.environ.get(KUEUE_BIN_ENV)
    if env:
        bin_dir = Path(env).expanduser().absolute()
    else:
        root = _source_root(BUILD_SCRIPT)
        cached = _cache_root() / f"kueue-{KUEUE_VERSION}"
        if root is not None:
            bin_dir, _ = run_build_script(root / BUILD_SCRIPT, [], timeout, error=KueueUnavailable,
                                          cwd=root)
        elif (cached / ".complete").is_file():
            bin_dir = cached / "bin"
        else:
            raise KueueUnavailable(f"no {BUILD_SCRIPT} (not a source checkout) and no cached Kueue "
                                   f"under {cached}; set ${KUEUE_BIN_ENV}")
    if not os.access(bin_dir / "kueue", os.X_OK):
        raise KueueUnavailable(f"{bin_dir} has no executable kueue")
    if not (bin_dir.parent / "share" / "kueue" / "crd").is_dir():
        raise KueueUnavailable(f"{bin_dir.parent / 'share' / 'kueue' / 'crd'}: Kueue's CRDs missing")
    return bin_dir


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manager_config(*, webhook_port: int, health_port: int, metrics_port: int, cert_dir: Path,
                   frameworks: Sequence[str]) -> dict[str, Any]:
    """The smallest Kueue ``Configuration`` for an out-of-cluster manager on loopback."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": f"127.0.0.1:{metrics_port}"},
        # all addresses: the API server may dial localhost as ::1 or 127.0.0.1
        "webhook": {"port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": True, "webhookServiceName": WEBHOOK_SERVICE,
                                   "webhookSecretName": WEBHOOK_SECRET},
        "manageJobsWithoutQueueName": False,
        "integrations": {"frameworks": list(frameworks)},
        "featureGates": dict(FEATURE_GATES),
    }


def webhook_configurations(manifests: Iterable[Mapping[str, Any]], *, port: int,
                           frameworks: Sequence[str]) -> list[dict[str, Any]]:
    """Kueue's webhook configurations, renamed as config/default names them, pointing at
    ``kueue-webhook-service`` on ``port``, with only the webhooks of Kueue's own kinds and
    of ``frameworks`` (each path names its kind)."""
    unknown = [f for f in frameworks if f not in FRAMEWORK_PATHS]
    if unknown:
        raise ValueError(f"no webhook paths known for Kueue frameworks {unknown} "
                         f"(known: {', '.join(FRAMEWORK_PATHS)})")
    wanted = ["-kueue-x-k8s-io-", *(FRAMEWORK_PATHS[f] for f in frameworks)]
    out = []
    for doc in manifests:
        kind = doc.get("kind")
        if kind not in WEBHOOK_CONFIGS:
            continue
        hooks = []
        for hook in doc.get("webhooks") or ():
            path = str(((hook.get("clientConfig") or {}).get("service") or {}).get("path") or "")
            if not any(w in path for w in wanted):
                continue
            hook = dict(hook, clientConfig={"service": {"name": WEBHOOK_SERVICE, "namespace": NAMESPACE,
                                                        "path": path, "port": port}})
            hooks.append(hook)
        out.append({"apiVersion": doc["apiVersion"], "kind": kind,
                    "metadata": {"name": WEBHOOK_CONFIGS[kind]}, "webhooks": hooks})
    if len(out) != 2:
        raise KubeClusterError("Kueue's webhook manifests lack a mutating or validating configuration")
    return out


def crd_with_conversion(crd: Mapping[str, Any], port: int) -> dict[str, Any]:
    """The CRD as config/components/crd would make it: a conversion webhook for the
    multi-version kinds (Kueue's cert management fills its caBundle)."""
    out: dict[str, Any] = json.loads(json.dumps(crd))
    if out["spec"]["names"]["plural"] in CONVERSION_CRDS:
        out["spec"]["conversion"] = {"strategy": "Webhook", "webhook": {
            "clientConfig": {"service": {"name": WEBHOOK_SERVICE, "namespace": NAMESPACE,
                                         "path": "/convert", "port": port}},
            "conversionReviewVersions": ["v1"]}}
    return out


class LocalKueue(Supervised):
    """Kueue installed in ``kube`` and its manager running here; state under ``base_dir``
    (default ``kube.base_dir / "kueue"``)."""

    def __init__(self, kube: LocalKubeCluster, base_dir: Path | None = None, *,
                 bin_dir: Path | None = None, frameworks: Sequence[str] = ("batch/job",)) -> None:
        self.kube = kube
        self.base_dir = Path(base_dir or kube.base_dir / "kueue").absolute()
        self.bin_dir = bin_dir
        self.frameworks = tuple(frameworks)
        self.log_dir = self.base_dir / "log"
        self.run_dir = self.base_dir / "run"
        self.config_file = self.run_dir / "kueue-config.yaml"
        self.kubeconfig = self.run_dir / "kueue.kubeconfig"
        self.ports: dict[str, int] = {}
        self.start_seconds: float | None = None
        self._sup = Supervisor(self.log_dir, lambda: self.run_dir / "pids.json", header=True)

    @property
    def share(self) -> Path:
        assert self.bin_dir is not None
        return self.bin_dir.parent / "share" / "kueue"

    def recorded_pids(self) -> dict[str, tuple[int, bool]]:
        return self._sup.recorded()

    # ------------------------------------------------------------------ install

    def install(self) -> None:
        """Namespace, RBAC, CRDs, webhook Service and configurations, the cert Secret
        (re-applied at every start: the webhook port is chosen then)."""
        from kubernetes import client
        port = self.ports["webhook"]
        self.kube.ensure_namespace(NAMESPACE)
        self.kube.apply_as_admin(self._rbac())
        with self.kube.admin_client() as api_client:
            core = client.CoreV1Api(api_client)
            ext = client.ApiextensionsV1Api(api_client)
            adm = client.AdmissionregistrationV1Api(api_client)
            crds = [crd_with_conversion(d, port) for f in sorted((self.share / "crd").glob("*.yaml"))
                    for d in _documents(f)]
            for crd in crds:
                _create_or_replace(lambda b: ext.create_custom_resource_definition(b),
                                   lambda n, b: ext.replace_custom_resource_definition(n, b),
                                   lambda n: ext.read_custom_resource_definition(n), crd)
            service = {"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": WEBHOOK_SERVICE, "namespace": NAMESPACE},
                       "spec": {"type": "ExternalName", "externalName": "localhost",
                                "ports": [{"name": "https", "port": port}]}}
            _create_or_replace(lambda b: core.create_namespaced_service(NAMESPACE, b),
                               lambda n, b: core.replace_namespaced_service(n, NAMESPACE, b),
                               lambda n: core.read_namespaced_service(n, NAMESPACE), service)
            secret: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret",
                                      "metadata": {"name": WEBHOOK_SECRET, "namespace": NAMESPACE}}
            with contextlib.suppress(client.exceptions.ApiException):
                _core(api_client).create_namespaced_secret(NAMESPACE, secret)   # kept when it exists
            hooks = webhook_configurations(_documents(self.share / "webhook" / "manifests.yaml"),
                                           port=port, frameworks=self.frameworks)
            for hook in hooks:
                if hook["kind"] == "MutatingWebhookConfiguration":
                    _create_or_replace(adm.create_mutating_webhook_configuration,
                                       lambda n, b: adm.replace_mutating_webhook_configuration(n, b),
                                       adm.read_mutating_webhook_configuration, hook)
                else:
                    _create_or_replace(adm.create_validating_webhook_configuration,
                                       lambda n, b: adm.replace_validating_webhook_configuration(n, b),
                                       adm.read_validating_webhook_configuration, hook)
            names = [c["metadata"]["name"] for c in crds]
            wait_for(lambda: all(_established(ext.read_custom_resource_definition(n)) for n in names),
                     60, "Kueue's CRDs Established")

    def _rbac(self) -> list[dict[str, Any]]:
        """Kueue's ServiceAccount with the roles of config/components/rbac, named as
        config/default names them."""
        sa = {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}
        objects: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "ServiceAccount",
                                          "metadata": {"name": SERVICE_ACCOUNT, "namespace": NAMESPACE}}]
        for file in ("role.yaml", "metrics_auth_role.yaml", "manager_secrets_role.yaml"):
            for role in _documents(self.share / "rbac" / file):
                name = f"kueue-{role['metadata']['name']}"
                cluster = role["kind"] == "ClusterRole"
                meta = {"name": name} if cluster else {"name": name, "namespace": NAMESPACE}
                objects.append({"apiVersion": role["apiVersion"], "kind": role["kind"],
                                "metadata": meta, "rules": role["rules"]})
                objects.append({"apiVersion": "rbac.authorization.k8s.io/v1",
                                "kind": "ClusterRoleBinding" if cluster else "RoleBinding",
                                "metadata": dict(meta),
                                "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                                            "kind": role["kind"], "name": name},
                                "subjects": [dict(sa)]})
        return objects

    def uninstall_webhooks(self) -> None:
        """Remove the webhook configurations (the API server would refuse Jobs and Kueue
        objects while nothing answers them). CRDs and Kueue's objects stay."""
        from kubernetes import client
        with self.kube.admin_client() as api_client:
            adm = client.AdmissionregistrationV1Api(api_client)
            for delete, name in ((adm.delete_mutating_webhook_configuration,
                                  WEBHOOK_CONFIGS["MutatingWebhookConfiguration"]),
                                 (adm.delete_validating_webhook_configuration,
                                  WEBHOOK_CONFIGS["ValidatingWebhookConfiguration"])):
                try:
                    delete(name)
                except client.exceptions.ApiException as exc:
                    if exc.status != 404:
                        raise

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 180.0) -> LocalKueue:
        """Install Kueue and start its manager; return once its webhooks answer."""
        if self._sup.procs:
            raise KubeClusterError("Kueue already started")
        t0 = time.monotonic()
        deadline = t0 + timeout
        if self.bin_dir is None:
            self.bin_dir = ensure_kueue()
        for d in (self.log_dir, self.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.stop_recorded()
        self.ports = dict(zip(("webhook", "health", "metrics", "visibility"), free_ports(4)))
        try:
            self.install()
            self.kube.kubeconfig_for_service_account(NAMESPACE, SERVICE_ACCOUNT, self.kubeconfig)
            self.config_file.write_text(yaml.safe_dump(manager_config(
                webhook_port=self.ports["webhook"], health_port=self.ports["health"],
                metrics_port=self.ports["metrics"], cert_dir=self.run_dir / "certs",
                frameworks=self.frameworks), sort_keys=False))
            self._sup.start("kueue", [
                str(self.bin_dir / "kueue"), "--config", str(self.config_file),
                "--kubeconfig", str(self.kubeconfig),
                "--visibility-server-port", str(self.ports["visibility"]),
                "--zap-log-level", "info"], cwd=self.run_dir,
                env=dict(os.environ, HOME=str(self.run_dir)))
            check = self._check_alive
            # In a cluster the kubelet mounts the Secret at certDir; here the harness copies it
            # there once Kueue's cert management has filled it (Kueue waits for the files).
            wait_for(self._mount_cert_secret, max(5.0, deadline - time.monotonic()),
                     f"Kueue's certificates in Secret {NAMESPACE}/{WEBHOOK_SECRET}", check=check,
                     interval=0.5)
            wait_for(lambda: _http_ok(f"http://127.0.0.1:{self.ports['health']}/readyz"),
                     max(5.0, deadline - time.monotonic()), "Kueue /readyz", check=check,
                     interval=0.5)
            wait_for(self._webhook_answers, max(5.0, deadline - time.monotonic()),
                     "Kueue's validating webhook (dry-run ResourceFlavor)", check=check, interval=0.5)
        except BaseException as exc:
            logs = self.logs(40)
            self.stop()
            if isinstance(exc, Exception):
                raise KubeClusterError(f"Kueue did not start: {exc}\n--- logs ---\n{logs}") from exc
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _mount_cert_secret(self) -> bool:
        """Write the Secret's ca.crt, tls.crt and tls.key into certDir, as a Secret volume
        would; False while Kueue has not filled the Secret yet."""
        import base64

        from kubernetes import client
        with self.kube.admin_client() as api_client:
            secret = client.CoreV1Api(api_client).read_namespaced_secret(WEBHOOK_SECRET, NAMESPACE)
        data = secret.data or {}
        files = ("ca.crt", "tls.crt", "tls.key")
        if not all(data.get(f) for f in files):
            return False
        cert_dir = self.run_dir / "certs"
        cert_dir.mkdir(mode=0o700, exist_ok=True)
        for name in files:
            path = cert_dir / name
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(base64.b64decode(data[name]))
            tmp.replace(path)
        return True

    def exited_with(self) -> int | None:
        """The manager's exit status once it has exited; None while it runs (or before start)."""
        dead = self._sup.exited(["kueue"])
        return None if dead is None else dead[1]

    def _check_alive(self) -> None:
        self._sup.check_alive(KubeClusterError, lines=30)

    def _webhook_answers(self) -> bool:
        """A dry-run create goes through Kueue's webhooks (an invalid flavor is refused by
        them: proof that the API server reaches the webhook server)."""
        from kubernetes import client
        body = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "ResourceFlavor",
                "metadata": {"name": "skb-webhook-probe"}, "spec": {}}
        with self.kube.admin_client() as api_client:
            client.CustomObjectsApi(api_client).create_cluster_custom_object(
                API_GROUP, API_VERSION, "resourceflavors", body, dry_run="All")
        return True

    def stop(self, grace: float = 10.0) -> None:
        """Stop the manager and remove the webhook configurations. Idempotent."""
        self._sup.stop("kueue", grace=grace)
        with contextlib.suppress(OSError):
            (self.run_dir / "pids.json").unlink(missing_ok=True)
        with contextlib.suppress(Exception):    # the control plane may be gone already
            self.uninstall_webhooks()

    def stop_recorded(self) -> None:
        """Stop a manager an earlier harness on this base_dir left running."""
        record = self.run_dir / "pids.json"
        if record.exists():
            kill_recorded(record, owner=self.base_dir)
            record.unlink(missing_ok=True)

    def __enter__(self) -> LocalKueue:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ queues

    def apply_queues(self, objects: Iterable[Mapping[str, Any]]) -> None:
        """Create or replace ResourceFlavors, ClusterQueues, LocalQueues (as admin)."""
        from kubernetes import client
        plural = {"ResourceFlavor": "resourceflavors", "ClusterQueue": "clusterqueues",
                  "LocalQueue": "localqueues", "WorkloadPriorityClass": "workloadpriorityclasses",
                  "Cohort": "cohorts"}
        with self.kube.admin_client() as api_client:
            api = client.CustomObjectsApi(api_client)
            for obj in objects:
                body = dict(obj)
                res = plural[body["kind"]]
                ns = (body.get("metadata") or {}).get("namespace")
                if ns:
                    _create_or_replace(
                        lambda b, ns=ns, res=res: api.create_namespaced_custom_object(
                            API_GROUP, API_VERSION, ns, res, b),
                        lambda n, b, ns=ns, res=res: api.replace_namespaced_custom_object(
                            API_GROUP, API_VERSION, ns, res, n, b),
                        lambda n, ns=ns, res=res: api.get_namespaced_custom_object(
                            API_GROUP, API_VERSION, ns, res, n), body)
                else:
                    _create_or_replace(
                        lambda b, res=res: api.create_cluster_custom_object(API_GROUP, API_VERSION, res, b),
                        lambda n, b, res=res: api.replace_cluster_custom_object(
                            API_GROUP, API_VERSION, res, n, b),
                        lambda n, res=res: api.get_cluster_custom_object(API_GROUP, API_VERSION, res, n),
                        body)


def gpu_queues(namespace: str, *, cluster_queue: str = "gpu", local_queue: str = "gpu",
               flavor: str = "default-flavor", gpus: int = 8, cpus: str = "10000",
               memory: str = "100Ti") -> list[dict[str, Any]]:
    """A ResourceFlavor, a ClusterQueue with ``gpus`` nvidia.com/gpu of quota (and CPU and
    memory quotas large enough not to matter) and a LocalQueue in ``namespace`` for it."""
    group = f"{API_GROUP}/{API_VERSION}"
    return [
        {"apiVersion": group, "kind": "ResourceFlavor", "metadata": {"name": flavor}, "spec": {}},
        {"apiVersion": group, "kind": "ClusterQueue", "metadata": {"name": cluster_queue},
         "spec": {"namespaceSelector": {},
                  "resourceGroups": [{"coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                                      "flavors": [{"name": flavor, "resources": [
                                          {"name": "cpu", "nominalQuota": cpus},
                                          {"name": "memory", "nominalQuota": memory},
                                          {"name": "nvidia.com/gpu", "nominalQuota": gpus}]}]}]}},
        {"apiVersion": group, "kind": "LocalQueue",
         "metadata": {"name": local_queue, "namespace": namespace},
         "spec": {"clusterQueue": cluster_queue}},
    ]


def _create_or_replace(create: Any, replace: Any, read: Any, body: dict[str, Any]) -> None:
    """Create ``body``, or replace the existing object of that name (a caBundle Kueue
    injected earlier goes with it: Kueue injects it again when it starts)."""
    from kubernetes.client.exceptions import ApiException
    name = body["metadata"]["name"]
    try:
        create(body)
        return
    except ApiException as exc:
        if exc.status != 409:
            raise
    for _ in range(5):
        current = read(name)
        current = current if isinstance(current, dict) else current.to_dict()
        fresh = json.loads(json.dumps(body))
        fresh["metadata"]["resourceVersion"] = (current.get("metadata") or {}).get(
            "resourceVersion") or (current.get("metadata") or {}).get("resource_version")
        try:
            replace(name, fresh)
            return
        except ApiException as exc:
            if exc.status != 409:
                raise
    raise KubeClusterError(f"{body['kind']} {name} keeps changing while it is replaced")


def _established(crd: Any) -> bool:
    conditions = (crd.status.conditions if crd.status else None) or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=3) as resp:
        return bool(resp.status == 200)


__all__ = [
    "KUEUE_VERSION",
    "KueueUnavailable",
    "LocalKueue",
    "crd_with_conversion",
    "ensure_kueue",
    "gpu_queues",
    "manager_config",
    "webhook_configurations",
]
