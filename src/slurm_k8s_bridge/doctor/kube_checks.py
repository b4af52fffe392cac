"""The doctor's Kubernetes side, as the daemon's own identity sees it: the API server
answers over TLS with a certificate the kubeconfig trusts, the credentials are accepted,
every right the daemon needs is granted (one SelfSubjectAccessReview per verb of
``kube.rbac.required_rbac``), the job namespaces exist, Kueue's API and LocalQueues are there
when a partition admits through Kueue, and GPU nodes carry the capacity and labels the
configured shapes name.

Where it runs: inside the daemon pod (in-cluster ServiceAccount) or anywhere with the
daemon's kubeconfig (``--kubeconfig``). An administrator's kubeconfig passes every RBAC
check, so give the daemon's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from slurm_k8s_bridge.core import gang
from slurm_k8s_bridge.core.config import BridgeConfig, NodeShape, job_namespaces
from slurm_k8s_bridge.core.gang.kueue import KueueGang
from slurm_k8s_bridge.doctor.report import Finding, fail, ok, skip, warn
from slurm_k8s_bridge.kube.errors import KubeApiError
from slurm_k8s_bridge.kube.rbac import DAEMON_NAMESPACE, rbac_for_config
from slurm_k8s_bridge.kube.transport import _Http

GPU_RESOURCE = "nvidia.com/gpu"
KUEUE_GROUP = "kueue.x-k8s.io"
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
RBAC_FIX = ("apply the daemon's RBAC for this configuration (slurm-k8s-bridge rbac --config "
            "FILE | kubectl apply -f -)")
MAX_NODE_PAGES = 50
#: the Service a dry-run create names when the namespace itself may not be read
PROBE_SERVICE = "slurm-k8s-bridge-doctor-probe"


@dataclass(frozen=True)
class KubeTarget:
    """Which API server and identity: a kubeconfig file, or the pod's ServiceAccount."""

    kubeconfig: str | None
    in_cluster: bool
    source: str


def choose_target(kubeconfig: str | None, env: Mapping[str, str],
                  sa_dir: Path = SA_DIR) -> KubeTarget | None:
    if kubeconfig:
        return KubeTarget(kubeconfig, False, "--kubeconfig")
    if env.get("KUBERNETES_SERVICE_HOST") and (sa_dir / "token").exists():
        return KubeTarget(None, True, "in-cluster ServiceAccount")
    if env.get("KUBECONFIG"):
        return KubeTarget(env["KUBECONFIG"].split(os.pathsep)[0], False, "$KUBECONFIG")
    return None


def api_client(target: KubeTarget, timeout: float) -> Any:
    """An ApiClient that does not retry (the doctor reports the first failure)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if target.in_cluster:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        config.load_kube_config(config_file=target.kubeconfig,  # type: ignore[no-untyped-call]
                                client_configuration=configuration)
    configuration.retries = 0
    return client.ApiClient(configuration)


class Api:
    """JSON GET/POST through the daemon's own request pipeline (``kube.transport``)."""

    def __init__(self, client: Any, timeout: float) -> None:
        self.http = _Http(client)
        self.server = str(client.configuration.host)
        self.timeout = (min(5.0, timeout), timeout)

    def get(self, path: str, query: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return self.http.request("GET", path, query=query, timeout=self.timeout).body

    def post(self, path: str, body: Mapping[str, Any],
             query: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return self.http.request("POST", path, body=dict(body), query=query,
                                 timeout=self.timeout).body


# -- reachability, TLS, credentials ---------------------------------------------------

def connection_problem(server: str, reason: str, target: KubeTarget) -> Finding:
    """A request that got no answer, told as its cause: TLS or the network."""
    where = f"{target.kubeconfig} ({target.source})" if target.kubeconfig else target.source
    if re.search(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed|SSLCertVerification", reason):
        detail = re.search(r"certificate verify failed: ([^(')\"]+)", reason)
        why = detail.group(1).strip() if detail else "verification failed"
        return fail("kube.tls", f"TLS: {server} presents a certificate the kubeconfig's CA does "
                    f"not trust ({why})", f"put the API server's CA in certificate-authority(-data) "
                    f"of {where}")
    if re.search(r"SSLError|SSL|TLS|wrong version number", reason):
        return fail("kube.tls", f"TLS handshake with {server} failed: {_short(reason)}",
                    f"check that {server} is the API server's https address ({where})")
    if re.search(r"[Cc]onnection refused|Name or service not known|No route|timed out|"
                 r"NewConnectionError|Max retries|ConnectTimeout", reason):
        return fail("kube.api", f"the API server {server} cannot be reached: {_short(reason)}",
                    f"check the server address in {where} and the network to it")
    return fail("kube.api", f"{server} did not answer: {_short(reason)}",
                f"check the server address in {where}")


def _short(text: str) -> str:
    text = " ".join(text.split())
    match = re.search(r"(\[Errno [^\]]*\][^'\")]*|Connection refused|timed out|"
                      r"certificate verify failed[^'\")]*)", text)
    return match.group(1).strip() if match else text[:240]


def check_api(api: Api, target: KubeTarget) -> tuple[list[Finding], str | None]:
    """/version (reachability and TLS), then who we are (credentials)."""
    try:
        version = api.get("/version")
    except KubeApiError as exc:
        if exc.status is None:
            return [connection_problem(api.server, exc.reason, target)], None
        if exc.status != 401 and exc.status != 403:
            return [fail("kube.api", f"{api.server}/version: {exc.status} {exc.reason}",
                         "check that the kubeconfig names a Kubernetes API server")], None
        version = {}
    found = [ok("kube.api", f"{api.server} answers over TLS"
                + (f" (Kubernetes {version.get('gitVersion')})" if version.get("gitVersion") else ""))]
    try:
        review = api.post("/apis/authentication.k8s.io/v1/selfsubjectreviews",
                          {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        user = str(((review.get("status") or {}).get("userInfo") or {}).get("username") or "?")
    except KubeApiError as exc:
        if exc.status == 401:
            return found + [fail("kube.credentials", f"{api.server} rejects the credentials of "
                                 f"{target.kubeconfig or target.source} (401 Unauthorized)",
                                 "renew the token or client certificate (an expired ServiceAccount "
                                 "token: create a new one)")], None
        if exc.status is None:
            return found + [connection_problem(api.server, exc.reason, target)], None
        user = "(identity not reported by this API server)"
    found.append(ok("kube.credentials", f"authenticated as {user}"))
    return found, user


# -- RBAC -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Right:
    verb: str
    group: str
    resource: str
    namespace: str    # "" for cluster-wide
    name: str = ""

    def describe(self) -> str:
        what = f"{self.resource}.{self.group}" if self.group else self.resource
        where = f"in namespace {self.namespace}" if self.namespace else "cluster-wide"
        return f"{self.verb} {what}{' ' + self.name if self.name else ''} {where}"


def required_rights(objects: Sequence[Mapping[str, Any]]) -> list[Right]:
    """Every (verb, resource, namespace) the daemon's Roles and ClusterRoles grant."""
    rights: list[Right] = []
    for obj in objects:
        if obj.get("kind") not in ("Role", "ClusterRole"):
            continue
        namespace = str((obj.get("metadata") or {}).get("namespace") or "") if obj["kind"] == "Role" else ""
        for rule in obj.get("rules") or []:
            for group in rule.get("apiGroups") or [""]:
                for resource in rule.get("resources") or []:
                    for verb in rule.get("verbs") or []:
                        for name in rule.get("resourceNames") or [""]:
                            right = Right(verb, group, resource, namespace, name)
                            if right not in rights:
                                rights.append(right)
    return rights


def daemon_rbac(config: BridgeConfig, daemon_namespace: str) -> list[dict[str, Any]]:
    """What ``slurm-k8s-bridge rbac`` (deploy/) grants a daemon with ``config``."""
    return rbac_for_config(config, daemon_namespace=daemon_namespace)


def check_rbac(api: Api, rights: Sequence[Right], user: str | None) -> list[Finding]:
    denied: list[Right] = []
    for right in rights:
        attributes = {"verb": right.verb, "group": right.group, "resource": right.resource}
        if right.namespace:
            attributes["namespace"] = right.namespace
        if right.name:
            attributes["name"] = right.name
        try:
            review = api.post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", {
                "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attributes}})
        except KubeApiError as exc:
            return [fail("kube.rbac", f"SelfSubjectAccessReview refused: {exc}",
                         "the API server must serve authorization.k8s.io/v1 to every user")]
        if not (review.get("status") or {}).get("allowed"):
            denied.append(right)
    if denied:
        return _denials(denied, rights, user or "this identity")
    return [ok("kube.rbac", f"all {len(rights)} rights the daemon needs are granted"
               + (f" to {user}" if user else ""))]


def _denials(denied: Sequence[Right], rights: Sequence[Right], user: str) -> list[Finding]:
    """One finding per namespace (and one for cluster-wide rights) naming every missing verb,
    by resource: ``may not create,delete jobs.batch; get services in namespace x``."""
    out: list[Finding] = []
    for namespace in dict.fromkeys(r.namespace for r in denied):
        missing = [r for r in denied if r.namespace == namespace]
        by_resource: dict[str, list[str]] = {}
        for r in missing:
            what = f"{r.resource}.{r.group}" if r.group else r.resource
            by_resource.setdefault(what + (f" {r.name}" if r.name else ""), []).append(r.verb)
        text = "; ".join(f"{','.join(verbs)} {what}" for what, verbs in by_resource.items())
        where = f"in namespace {namespace}" if namespace else "cluster-wide"
        wanted = [r for r in rights if r.namespace == namespace]
        none = " (nothing the daemon needs there is granted: no Role bound)" \
            if namespace and len(missing) == len(wanted) else ""
        out.append(fail("kube.rbac", f"{user} may not {text} {where}{none}",
                        f"{RBAC_FIX}; it grants these verbs"))
    return out


# -- namespaces -------------------------------------------------------------------------

def check_namespace(api: Api, namespace: str) -> Finding:
    check = f"kube.namespace.{namespace}"
    missing = fail(check, f"namespace {namespace} does not exist: bridged jobs there cannot start",
                   f"kubectl create namespace {namespace} (and apply the daemon's Role there)")
    try:
        ns = api.get(f"/api/v1/namespaces/{namespace}")
        if (ns.get("status") or {}).get("phase") == "Terminating":
            return fail(check, f"namespace {namespace} is being deleted",
                        f"wait for it to go, then kubectl create namespace {namespace}")
        return ok(check, f"namespace {namespace} exists")
    except KubeApiError as exc:
        if exc.status == 404:
            return missing
        if exc.status != 403:
            return fail(check, f"reading namespace {namespace}: {exc}", "see the API server's log")
    # the daemon may not read namespaces; a dry-run create of a Service tells it
    body = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": PROBE_SERVICE},
            "spec": {"clusterIP": "None", "ports": [{"port": 1}]}}
    try:
        api.post(f"/api/v1/namespaces/{namespace}/services", body, query={"dryRun": "All"})
    except KubeApiError as exc:
        if exc.status == 404:
            return missing
        if exc.status == 409:
            return ok(check, f"namespace {namespace} exists")
        if exc.status == 403 and "being terminated" in exc.reason:
            return fail(check, f"namespace {namespace} is being deleted",
                        f"wait for it to go, then kubectl create namespace {namespace}")
        if exc.status == 403:
            return fail(check, f"namespace {namespace} does not exist, or the daemon has no rights "
                        "in it (this identity may neither read it nor create a Service there)",
                        f"kubectl create namespace {namespace}, then {RBAC_FIX}")
        return fail(check, f"dry-run Service create in {namespace}: {exc}", "see the API server's log")
    return ok(check, f"namespace {namespace} exists (a dry-run Service create passed)")


# -- gang backends ----------------------------------------------------------------------

def kueue_queues(config: BridgeConfig) -> list[tuple[str, str, str]]:
    """(partition, namespace, LocalQueue) of every bridged partition admitting through Kueue,
    with the account overrides' queues."""
    out: list[tuple[str, str, str]] = []
    for rule in config.partitions.values():
        if not rule.bridged or not isinstance(gang.backend(rule.gang), KueueGang):
            continue
        pairs = [(rule.namespace, rule.queue)] + [
            (a.namespace or rule.namespace, a.queue or rule.queue) for a in config.accounts.values()
            if a.queue or a.namespace]
        for namespace, queue in pairs:
            if queue and not any((n, q) == (namespace, queue) for _, n, q in out):
                out.append((rule.name, namespace, queue))
    return out


def _served_version(api: Api, group: str) -> tuple[str | None, set[str]]:
    """The preferred version of an API group and its resources (None: not served)."""
    try:
        info = api.get(f"/apis/{group}")
    except KubeApiError as exc:
        if exc.status == 404:
            return None, set()
        raise
    version = str((info.get("preferredVersion") or {}).get("groupVersion") or "")
    if not version:
        return None, set()
    resources = api.get(f"/apis/{version}").get("resources") or []
    return version, {str(r.get("name")) for r in resources}


def check_gang_backends(api: Api, config: BridgeConfig) -> list[Finding]:
    out: list[Finding] = []
    used = {r.gang for r in config.partitions.values() if r.bridged}
    for name in sorted(used):
        backend = gang.backend(name)
        for kind in backend.kinds:
            try:
                info = api.get(f"/apis/{kind.api_version}")
            except KubeApiError as exc:
                if exc.status != 404:
                    return out + [fail(f"kube.gang.{name}", f"discovery of {kind.api_version}: {exc}",
                                       "see the API server's log")]
                info = {}
            names = {str(r.get("name")) for r in info.get("resources") or []}
            if kind.resource not in names:
                out.append(fail(f"kube.gang.{name}", f"partitions use gang: {name} but the API "
                                f"server does not serve {kind.resource}.{kind.api_version}",
                                backend.install_hint or f"install {name}, or set gang: builtin"))
            else:
                out.append(ok(f"kube.gang.{name}", f"{kind.resource}.{kind.api_version} is served"))
    queues = kueue_queues(config)
    if not queues:
        out.append(skip("kube.kueue", "no bridged partition admits through Kueue (gang: kueue)"))
        return out
    partitions = sorted({r.name for r in config.partitions.values()
                         if r.bridged and isinstance(gang.backend(r.gang), KueueGang)})
    try:
        version, resources = _served_version(api, KUEUE_GROUP)
    except KubeApiError as exc:
        return out + [fail("kube.kueue", f"discovery of {KUEUE_GROUP}: {exc}", "see the API server's log")]
    if version is None or "localqueues" not in resources:
        return out + [fail("kube.kueue", f"partition rules {', '.join(partitions)} use gang: kueue but "
                           f"Kueue is not installed (the API server serves no {KUEUE_GROUP} "
                           "LocalQueues): their Jobs would stay suspended forever",
                           "install Kueue (its CRDs and controller), or set gang: builtin")]
    out.append(ok("kube.kueue", f"Kueue API {version} is served"))
    for _, namespace, queue in queues:
        check = f"kube.kueue.{namespace}.{queue}"
        try:
            lq = api.get(f"/apis/{version}/namespaces/{namespace}/localqueues/{queue}")
        except KubeApiError as exc:
            if exc.status == 404:
                out.append(fail(check, f"LocalQueue {namespace}/{queue} does not exist: jobs "
                                "sent to it are never admitted",
                                f"create LocalQueue {queue} in {namespace} pointing at a ClusterQueue"))
            elif exc.status == 403:
                out.append(skip(check, f"this identity may not read LocalQueue {namespace}/{queue} "
                                f"(check it with: kubectl get localqueue -n {namespace} {queue})"))
            else:
                out.append(fail(check, f"reading LocalQueue {namespace}/{queue}: {exc}",
                                "see the API server's log"))
            continue
        conditions = {c.get("type"): c for c in (lq.get("status") or {}).get("conditions") or []}
        active = conditions.get("Active")
        if active is not None and active.get("status") != "True":
            out.append(warn(check, f"LocalQueue {namespace}/{queue} is not active: "
                            f"{active.get('message') or active.get('reason')}",
                            "check its ClusterQueue (kubectl describe clusterqueue)"))
        else:
            out.append(ok(check, f"LocalQueue {namespace}/{queue} exists (ClusterQueue "
                          f"{(lq.get('spec') or {}).get('clusterQueue')})"))
    return out


# -- GPU nodes --------------------------------------------------------------------------

def parse_quantity(text: Any) -> float:
    """A Kubernetes quantity (``8``, ``500m``, ``2000Gi``, ``1e3``) as a number."""
    value = str(text or "0").strip()
    suffixes = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
                "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
                "P": 1e15, "E": 1e18}
    for suffix in sorted(suffixes, key=len, reverse=True):
        if value.endswith(suffix) and value[:-len(suffix)]:
            try:
                return float(value[:-len(suffix)]) * suffixes[suffix]
            except ValueError:
                return 0.0
    try:
        return float(value)
    except ValueError:
        return 0.0


def node_shape(node: Mapping[str, Any], shapes: Sequence[NodeShape]) -> NodeShape | None:
    labels = (node.get("metadata") or {}).get("labels") or {}
    for shape in shapes:
        if labels.get(shape.gpu_product_label) == shape.gpu_product and all(
                labels.get(k) == v for k, v in shape.node_labels.items()):
            return shape
    return None


def gpu_node_findings(nodes: Sequence[Mapping[str, Any]], config: BridgeConfig) -> list[Finding]:
    """Pure: what the listed nodes mean for the configured shapes."""
    shapes = list(config.shapes.values())
    gpu_shapes = [s for s in shapes if s.gpus]
    label_keys = sorted({s.gpu_product_label for s in gpu_shapes})
    out: list[Finding] = []
    per_shape: dict[str, list[str]] = {s.name: [] for s in shapes}
    gpu_nodes = 0
    for node in nodes:
        meta = node.get("metadata") or {}
        name = str(meta.get("name"))
        labels = meta.get("labels") or {}
        status = node.get("status") or {}
        capacity = parse_quantity((status.get("capacity") or {}).get(GPU_RESOURCE))
        allocatable = status.get("allocatable") or {}
        if capacity <= 0:
            continue
        gpu_nodes += 1
        shape = node_shape(node, gpu_shapes)
        if shape is None:
            products = {k: labels[k] for k in label_keys if k in labels}
            if not products:
                out.append(fail("kube.gpu_nodes", f"node {name} has {capacity:g} {GPU_RESOURCE} but "
                                f"no {' / '.join(label_keys) or 'GPU product'} label: no shape "
                                "matches it, bridged jobs never run there",
                                f"run NVIDIA GPU feature discovery, or: kubectl label node {name} "
                                f"{label_keys[0] if label_keys else 'nvidia.com/gpu.product'}=<product>"))
            else:
                out.append(warn("kube.gpu_nodes", f"node {name} ({', '.join(f'{k}={v}' for k, v in products.items())}) "
                                "matches no configured shape: bridged jobs never run there",
                                "add a shape with that gpu_product (and node_labels) if it should serve them"))
            continue
        per_shape[shape.name].append(name)
        if capacity < shape.gpus:
            out.append(fail("kube.gpu_nodes", f"node {name} has {capacity:g} {GPU_RESOURCE}; shape "
                            f"{shape.name} says {shape.gpus}: pods asking a whole node never schedule",
                            f"set shapes.{shape.name}.gpus: {int(capacity)} (or a shape of its own)"))
        cpu = parse_quantity(allocatable.get("cpu"))
        mem_mb = parse_quantity(allocatable.get("memory")) / 2**20
        if cpu < shape.cpus or mem_mb < shape.memory_mb:
            out.append(warn("kube.gpu_nodes", f"node {name} offers {cpu:g} CPUs / {mem_mb:.0f} MB "
                            f"allocatable; shape {shape.name} promises {shape.cpus} / {shape.memory_mb}",
                            f"lower shapes.{shape.name}.cpus/memory to what the nodes allocate"))
    if gpu_nodes == 0:
        return [fail("kube.gpu_nodes", f"no node has {GPU_RESOURCE} capacity ({len(nodes)} nodes): "
                     "bridged jobs can never run",
                     "install the NVIDIA device plugin (or GPU operator) on the GPU nodes")]
    for shape in shapes:
        if shape.gpus and not per_shape[shape.name]:
            out.append(warn("kube.gpu_nodes", f"no node of shape {shape.name} "
                            f"({shape.gpu_product_label}={shape.gpu_product}): its jobs wait forever",
                            f"remove shape {shape.name}, or label its nodes"))
    counts = ", ".join(f"{name} x{len(names)}" for name, names in per_shape.items() if names)
    if not any(f.status == "fail" for f in out):
        out.insert(0, ok("kube.gpu_nodes", f"{gpu_nodes} GPU nodes: {counts or 'none of a shape'}"))
    return out


def list_nodes(api: Api) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    token = None
    for _ in range(MAX_NODE_PAGES):
        page = api.get("/api/v1/nodes", query={"limit": 500, "continue": token})
        items += page.get("items") or []
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            break
    return items


# -- all of it ------------------------------------------------------------------------

def kube_findings(*, kubeconfig: str | None, config: BridgeConfig | None, env: Mapping[str, str],
                  timeout: float = 15.0, sa_dir: Path = SA_DIR) -> list[Finding]:
    from kubernetes.config.config_exception import ConfigException

    target = choose_target(kubeconfig, env, sa_dir)
    if target is None:
        return [skip("kube", "no --kubeconfig, no $KUBECONFIG and not in a pod: the Kubernetes "
                     "checks need the daemon's identity (--kubeconfig PATH)")]
    try:
        client = api_client(target, timeout)
    except (ConfigException, OSError, ValueError, TypeError, KeyError, yaml.YAMLError) as exc:
        return [fail("kube.api", f"cannot load {target.kubeconfig or target.source}: "
                     f"{' '.join(str(exc).split())[:300]}", "give a valid kubeconfig (--kubeconfig PATH)")]
    out: list[Finding] = []
    try:
        api = Api(client, timeout)
        found, user = check_api(api, target)
        out += found
        if any(f.status == "fail" for f in out):
            return out + [skip("kube", "the other Kubernetes checks need an answering API server")]
        if config is None:
            return out + [skip("kube", "the other Kubernetes checks need a valid bridge configuration")]
        for namespace in job_namespaces(config):
            out.append(check_namespace(api, namespace))
        daemon_ns = DAEMON_NAMESPACE
        if target.in_cluster and (sa_dir / "namespace").exists():
            daemon_ns = (sa_dir / "namespace").read_text().strip() or DAEMON_NAMESPACE
        out += check_rbac(api, required_rights(daemon_rbac(config, daemon_ns)), user)
        out += check_gang_backends(api, config)
        try:
            out += gpu_node_findings(list_nodes(api), config)
        except KubeApiError as exc:
            out.append(fail("kube.gpu_nodes", f"cannot list nodes: {exc}", RBAC_FIX))
    except KubeApiError as exc:
        out.append(fail("kube.api", str(exc), "see the API server's log"))
    finally:
        client.close()
    return out
