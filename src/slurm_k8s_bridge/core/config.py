"""The bridge configuration: one YAML file, validated when it is loaded.

Every problem is a :class:`~slurm_k8s_bridge.core.errors.ConfigError` naming the dotted key
(``shapes.h100.gpus: must be a positive integer``); unknown keys are refused so that a typo
never silently falls back to a default. ``slurm_plugins/k8s-bridge.example.yaml`` documents
every key.

Memory sizes accept Kubernetes quantities (``2000Gi``, ``512Mi``, ``2T``, ``500G``) or a
plain integer of megabytes; they are kept in MB as Slurm counts them (1 MB = 1 MiB).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import yaml

from slurm_k8s_bridge.core import contract
from slurm_k8s_bridge.core import gang as gangs
from slurm_k8s_bridge.core.errors import ConfigError

#: The label Kubernetes GPU feature discovery puts the GPU model in.
DEFAULT_GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
DEFAULT_RULE = "default"
MAX_CLUSTER_NAME = 20

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = contract.DNS_SUBDOMAIN
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
#: Slurm feature and GRES type names: no constraint operators, no separators.
_SLURM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
#: MIG profiles as the NVIDIA device plugin names them (``1g.10gb``, ``1g.10gb.me``).
_MIG_PROFILE = re.compile(r"^[0-9]+g\.[0-9]+gb(\.[a-z0-9]+)*$")
#: ``allowed_images`` are prefixes of image references (``registry.example.com/team/``)
_IMAGE_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$")
_QUANTITY = re.compile(r"^([0-9]+)(Ki|Mi|Gi|Ti|Pi|k|K|M|G|T|P)$")
_QUANTITY_BYTES = {
    "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50,
    "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
}
_TOLERATION_OPERATORS = ("Exists", "Equal")
_TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")

T = TypeVar("T")


# -- the configuration types ------------------------------------------------------------

@dataclass(frozen=True)
class SharedMount:
    """A site filesystem mounted into every pod at the same path as on the login nodes."""

    host_path: str
    path: str
    read_only: bool = False


@dataclass(frozen=True)
class NodeShape:
    """One kind of Kubernetes GPU node, as Slurm users name it (``--gres=gpu:h100:8``)."""

    name: str
    #: the Slurm GRES type (``--gres=gpu:<gres_type>:N``)
    gres_type: str
    #: value of ``gpu_product_label`` on these nodes (``NVIDIA-H100-80GB-HBM3``)
    gpu_product: str
    gpus: int
    cpus: int
    memory_mb: int
    gpu_product_label: str = DEFAULT_GPU_PRODUCT_LABEL
    features: tuple[str, ...] = ()
    #: MIG profile -> instances of it one GPU can hold (``{"1g.10gb": 7}``)
    mig: Mapping[str, int] = field(default_factory=dict)
    #: extra labels these nodes carry and pods of this shape must match
    node_labels: Mapping[str, str] = field(default_factory=dict)

    def mig_per_node(self, profile: str) -> int:
        """How many instances of ``profile`` one node of this shape offers (0: none)."""
        return self.mig.get(profile, 0) * self.gpus


@dataclass(frozen=True)
class PartitionRule:
    """What the bridge does with jobs of one Slurm partition."""

    name: str
    bridged: bool = True
    namespace: str = "slurm-jobs"
    queue: str | None = None
    priority_class: str | None = None
    gang: str = gangs.DEFAULT
    #: names of the shapes jobs of this partition may use; ``None``: all of them
    shapes: tuple[str, ...] | None = None
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    service_account: str | None = None


@dataclass(frozen=True)
class AccountRule:
    """Per Slurm account overrides (``-A physics``)."""

    name: str
    namespace: str | None = None
    queue: str | None = None
    priority_class: str | None = None


@dataclass(frozen=True)
class LeaderElection:
    """``leader_election``: several daemon replicas, one acting (``daemon.leader``)."""

    enabled: bool = False
    lease_name: str = "slurm-k8s-bridge"
    namespace: str = "slurm-k8s-bridge"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    identity: str | None = None   # None: hostname_pid

    def problem(self) -> tuple[str, str] | None:
        """(key, what is wrong) when the timings cannot keep two leaders apart."""
        if not self.renew_deadline < self.lease_duration:
            return "renew_deadline_seconds", "must be less than lease_duration_seconds"
        if not self.retry_period * 1.2 < self.renew_deadline:
            return "retry_period_seconds", "must be less than renew_deadline_seconds / 1.2"
        return None


@dataclass(frozen=True)
class BridgeConfig:
    """The whole validated configuration."""

    cluster_name: str = "slurm"
    worker_image: str = "localhost/slurm-k8s-bridge-worker:bookworm"
    worker_command: tuple[str, ...] | None = None
    time_limit_grace_seconds: int = 300
    #: Slurm's KillWait: seconds between the SIGTERM and the SIGKILL of a requeue
    kill_wait_seconds: int = 30
    #: the most a ``--signal`` TIME gives a preempted job before it is requeued
    max_preempt_grace_seconds: int = 300
    default_mem_per_cpu_mb: int = 2048
    default_partition: str | None = None
    max_array_tasks: int = 1001
    shared_mounts: tuple[SharedMount, ...] = ()
    munge_key_secret: str | None = None
    conf_server: str | None = None
    slurmd_port: int = 6818
    allowed_images: tuple[str, ...] = ()
    allowed_priority_classes: tuple[str, ...] | None = None
    #: environment every task of a bridged job gets inside its pod (set by spank_k8s)
    task_env: Mapping[str, str] = field(default_factory=dict)
    #: show on each mirrored node the GPUs Kubernetes-native pods hold there (the daemon
    #: then watches pods in every namespace: deploy/rbac-native-gpu-usage.yaml)
    native_gpu_usage: bool = False
    leader_election: LeaderElection = field(default_factory=LeaderElection)
    shapes: Mapping[str, NodeShape] = field(default_factory=dict)
    node_features: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    partitions: Mapping[str, PartitionRule] = field(default_factory=dict)
    qos_priority_classes: Mapping[str, str] = field(default_factory=dict)
    #: --qos -> Kueue WorkloadPriorityClass of the Job (partitions with gang: kueue): the
    #: priority Kueue admits and preempts by, apart from the pods' PriorityClass
    qos_workload_priority_classes: Mapping[str, str] = field(default_factory=dict)
    accounts: Mapping[str, AccountRule] = field(default_factory=dict)
    source: str | None = None

    def rule_for(self, partition: str | None) -> PartitionRule:
        """The rule for ``partition``; ``None`` means Slurm's default partition.

        A partition not listed gets the ``default`` rule under its own name.
        """
        name = partition if partition else self.default_partition
        if name is None:
            return self.partitions[DEFAULT_RULE]
        rule = self.partitions.get(name)
        if rule is not None:
            return rule
        return replace(self.partitions[DEFAULT_RULE], name=name)

    def shapes_of(self, rule: PartitionRule) -> tuple[NodeShape, ...]:
        """The shapes a partition may use, in configuration order."""
        if rule.shapes is None:
            return tuple(self.shapes.values())
        return tuple(self.shapes[name] for name in rule.shapes)

    def account_rule(self, account: str | None) -> AccountRule | None:
        return self.accounts.get(account) if account else None

    def shape_features(self) -> frozenset[str]:
        return frozenset(f for shape in self.shapes.values() for f in shape.features)


# -- loading ----------------------------------------------------------------------------

def job_namespaces(config: BridgeConfig) -> list[str]:
    """Every namespace bridged jobs may run in (partitions and account overrides)."""
    return sorted({r.namespace for r in config.partitions.values() if r.bridged}
                  | {a.namespace for a in config.accounts.values() if a.namespace})


def load_config(path: str | os.PathLike[str]) -> BridgeConfig:
    """Read and validate the YAML file at ``path``."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise ConfigError("(file)", "no such file", source) from None
    except OSError as exc:
        raise ConfigError("(file)", f"cannot be read: {exc.strerror}", source) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("(file)", f"is not valid YAML: {_one_line(str(exc))}", source) from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError("(top level)", "must be a mapping of keys", source)
    return parse_config(data, source)


def parse_config(data: Mapping[str, Any], source: str | None = None) -> BridgeConfig:
    """Validate an already parsed configuration mapping."""
    top = _Section(data, "", source)
    shapes = _parse_shapes(top.child("shapes"), source)
    node_features = _parse_node_features(top.optional_child("node_features"), source)
    _check_feature_clash(shapes, node_features, source)
    partitions = _parse_partitions(top.optional_child("partitions"), shapes, source)
    config = BridgeConfig(
        cluster_name=top.get("cluster_name", _cluster_name, "slurm"),
        worker_image=top.get("worker_image", _image, BridgeConfig.worker_image),
        worker_command=top.get_optional("worker_command", _command),
        time_limit_grace_seconds=top.get("time_limit_grace_seconds", _non_negative_int, 300),
        kill_wait_seconds=top.get("kill_wait_seconds", _non_negative_int, 30),
        max_preempt_grace_seconds=top.get("max_preempt_grace_seconds", _non_negative_int, 300),
        default_mem_per_cpu_mb=top.get("default_mem_per_cpu_mb", _memory_mb, 2048),
        default_partition=top.get_optional("default_partition", _partition_name),
        max_array_tasks=top.get("max_array_tasks", _positive_int, 1001),
        shared_mounts=top.get("shared_mounts", _shared_mounts, ()),
        munge_key_secret=top.get_optional("munge_key_secret", _dns_subdomain),
        conf_server=top.get_optional("conf_server", _conf_server),
        slurmd_port=top.get("slurmd_port", _port, 6818),
        allowed_images=top.get("allowed_images", _image_prefixes, ()),
        allowed_priority_classes=top.get_optional("allowed_priority_classes", _dns_subdomain_list),
        task_env=top.get("task_env", _env_map, {}),
        native_gpu_usage=top.get("native_gpu_usage", _bool, False),
        leader_election=_parse_leader_election(top.optional_child("leader_election")),
        shapes=shapes,
        node_features=node_features,
        partitions=partitions,
        qos_priority_classes=top.get("qos_priority_classes", _name_map(_dns_subdomain), {}),
        qos_workload_priority_classes=top.get("qos_workload_priority_classes",
                                              _name_map(_dns_subdomain), {}),
        accounts=_parse_accounts(top.optional_child("accounts"), source),
        source=source,
    )
    top.refuse_unknown()
    return config


def _parse_leader_election(s: _Section | None) -> LeaderElection:
    if s is None:
        return LeaderElection()
    d = LeaderElection()
    le = LeaderElection(
        enabled=s.get("enabled", _bool, d.enabled),
        lease_name=s.get("lease_name", _dns_subdomain, d.lease_name),
        namespace=s.get("namespace", _dns_label, d.namespace),
        lease_duration=s.get("lease_duration_seconds", _positive_number, d.lease_duration),
        renew_deadline=s.get("renew_deadline_seconds", _positive_number, d.renew_deadline),
        retry_period=s.get("retry_period_seconds", _positive_number, d.retry_period),
        identity=s.get_optional("identity", _string))
    s.refuse_unknown()
    if (problem := le.problem()) is not None:
        raise ConfigError(s.key(problem[0]), problem[1], s.source)
    return le


def _positive_number(value: Any, key: str, source: str | None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(key, "must be a positive number of seconds", source)
    return float(value)


def _parse_shapes(section: _Section, source: str | None) -> dict[str, NodeShape]:
    if not section.keys():
        raise ConfigError("shapes", "must describe at least one GPU node shape", source)
    shapes: dict[str, NodeShape] = {}
    for name in section.keys():
        if not _SLURM_NAME.match(name):
            raise ConfigError(f"shapes.{name}", "shape names may use letters, digits, '.', '_', '-'", source)
        s = section.child(name)
        gpus = s.get("gpus", _positive_int)
        mig = s.get("mig", _mig_map, {})
        shapes[name] = NodeShape(
            name=name,
            gres_type=s.get("gres_type", _slurm_name),
            gpu_product=s.get("gpu_product", _label_value_nonempty),
            gpu_product_label=s.get("gpu_product_label", _label_key, DEFAULT_GPU_PRODUCT_LABEL),
            gpus=gpus,
            cpus=s.get("cpus", _positive_int),
            memory_mb=s.get("memory", _memory_mb),
            features=s.get("features", _feature_list, ()),
            mig=mig,
            node_labels=s.get("node_labels", _label_map, {}),
        )
        s.refuse_unknown()
    mig_names = {p for shape in shapes.values() for p in shape.mig}
    for shape in shapes.values():
        if shape.gres_type in mig_names:
            raise ConfigError(f"shapes.{shape.name}.gres_type",
                              f"{shape.gres_type} is also a MIG profile name", source)
    section.refuse_unknown()
    return shapes


def _parse_node_features(section: _Section | None, source: str | None) -> dict[str, dict[str, str]]:
    if section is None:
        return {}
    out: dict[str, dict[str, str]] = {}
    for name in section.keys():
        key = f"node_features.{name}"
        if not _SLURM_NAME.match(name):
            raise ConfigError(key, "feature names may use letters, digits, '.', '_', '+', '-'", source)
        labels = section.get(name, _label_map)
        if not labels:
            raise ConfigError(key, "must map the feature to at least one node label", source)
        out[name] = labels
    return out


def _check_feature_clash(shapes: Mapping[str, NodeShape], node_features: Mapping[str, Any],
                         source: str | None) -> None:
    for shape in shapes.values():
        for feature in shape.features:
            if feature in node_features:
                raise ConfigError(f"node_features.{feature}",
                                  f"is also a feature of shape {shape.name}", source)


def _parse_partitions(section: _Section | None, shapes: Mapping[str, NodeShape],
                      source: str | None) -> dict[str, PartitionRule]:
    raw: dict[str, _Section] = {}
    if section is not None:
        for name in section.keys():
            if name != DEFAULT_RULE and not _is_partition_name(name):
                raise ConfigError(f"partitions.{name}", "is not a valid Slurm partition name", source)
            raw[name] = section.child(name)
    default = _partition_rule(DEFAULT_RULE, raw.get(DEFAULT_RULE), PartitionRule(DEFAULT_RULE),
                              shapes, source)
    rules = {DEFAULT_RULE: default}
    for name, part in raw.items():
        if name != DEFAULT_RULE:
            rules[name] = _partition_rule(name, part, replace(default, name=name), shapes, source)
    return rules


def _partition_rule(name: str, s: _Section | None, base: PartitionRule,
                    shapes: Mapping[str, NodeShape], source: str | None) -> PartitionRule:
    if s is None:
        return base
    key = f"partitions.{name}"
    rule = PartitionRule(
        name=name,
        bridged=s.get("bridged", _bool, base.bridged),
        namespace=s.get("namespace", _dns_label, base.namespace),
        queue=s.get_optional("queue", _queue_name, base.queue),
        priority_class=s.get_optional("priority_class", _dns_subdomain, base.priority_class),
        gang=s.get("gang", _gang, base.gang),
        shapes=s.get_optional("shapes", _shape_names(shapes), base.shapes),
        node_selector=s.get("node_selector", _label_map, base.node_selector),
        tolerations=s.get("tolerations", _tolerations, base.tolerations),
        service_account=s.get_optional("service_account", _dns_subdomain, base.service_account),
    )
    s.refuse_unknown()
    if rule.bridged and gangs.backend(rule.gang).needs_queue and rule.queue is None:
        raise ConfigError(f"{key}.queue", f"is required when gang is {rule.gang} (the LocalQueue name)",
                          source)
    return rule


def _parse_accounts(section: _Section | None, source: str | None) -> dict[str, AccountRule]:
    if section is None:
        return {}
    out: dict[str, AccountRule] = {}
    for name in section.keys():
        a = section.child(name)
        out[name] = AccountRule(
            name=name,
            namespace=a.get_optional("namespace", _dns_label),
            queue=a.get_optional("queue", _queue_name),
            priority_class=a.get_optional("priority_class", _dns_subdomain),
        )
        a.refuse_unknown()
    return out


# -- a mapping being validated ----------------------------------------------------------

class _Section:
    """One mapping of the file, remembering its dotted path and which keys were read."""

    def __init__(self, data: Any, path: str, source: str | None) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(path or "(top level)", "must be a mapping of keys", source)
        for key in data:
            if not isinstance(key, str):
                raise ConfigError(self._join(path, str(key)), "keys must be strings", source)
        self.data: Mapping[str, Any] = data
        self.path = path
        self.source = source
        self.seen: set[str] = set()

    @staticmethod
    def _join(path: str, key: str) -> str:
        return f"{path}.{key}" if path else key

    def key(self, name: str) -> str:
        return self._join(self.path, name)

    def keys(self) -> list[str]:
        self.seen.update(self.data)
        return list(self.data)

    def child(self, name: str) -> _Section:
        section = self.optional_child(name)
        if section is None:
            raise ConfigError(self.key(name), "is required", self.source)
        return section

    def optional_child(self, name: str) -> _Section | None:
        self.seen.add(name)
        if name not in self.data or self.data[name] is None:
            return None
        return _Section(self.data[name], self.key(name), self.source)

    _MISSING: Any = object()

    def get(self, name: str, check: Callable[[Any, str, str | None], T], default: Any = _MISSING) -> T:
        self.seen.add(name)
        if name not in self.data or self.data[name] is None:
            if default is _Section._MISSING:
                raise ConfigError(self.key(name), "is required", self.source)
            return default  # type: ignore[no-any-return]
        return check(self.data[name], self.key(name), self.source)

    def get_optional(self, name: str, check: Callable[[Any, str, str | None], T],
                     default: T | None = None) -> T | None:
        self.seen.add(name)
        if name not in self.data:
            return default
        if self.data[name] is None:
            return None
        return check(self.data[name], self.key(name), self.source)

    def refuse_unknown(self) -> None:
        for name in self.data:
            if name not in self.seen:
                raise ConfigError(self.key(name), "unknown key", self.source)


# -- value checks: each takes (value, dotted key, source) and returns the clean value ----

def _positive_int(value: Any, key: str, source: str | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(key, "must be a positive integer", source)
    return value


def _non_negative_int(value: Any, key: str, source: str | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(key, "must be an integer >= 0", source)
    return value


def _port(value: Any, key: str, source: str | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ConfigError(key, "must be a TCP port number (1-65535)", source)
    return value


def _bool(value: Any, key: str, source: str | None) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, "must be true or false", source)
    return value


def _string(value: Any, key: str, source: str | None) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(key, "must be a non-empty string", source)
    return value


def _matching(pattern: re.Pattern[str], problem: str, max_len: int = 253) -> Callable[[Any, str, str | None], str]:
    def check(value: Any, key: str, source: str | None) -> str:
        text = _string(value, key, source)
        if len(text) > max_len or not pattern.match(text):
            raise ConfigError(key, f"{problem} (got {text!r})", source)
        return text
    return check


_dns_label = _matching(_DNS_LABEL, "must be a DNS label: lowercase letters, digits and '-', at most 63", 63)
_dns_subdomain = _matching(_DNS_SUBDOMAIN, "must be a DNS subdomain name: lowercase letters, digits, '-' and '.'")
_slurm_name = _matching(_SLURM_NAME, "may use letters, digits, '.', '_', '+', '-'", 64)
_label_value_nonempty = _matching(_LABEL_VALUE, "must be a Kubernetes label value", 63)
_image = _matching(contract.IMAGE_PATTERN, "must be a container image reference", contract.IMAGE_MAX)
_image_prefix = _matching(_IMAGE_PREFIX, "must be the start of a container image reference",
                          contract.IMAGE_MAX)
_queue_name = _matching(_DNS_SUBDOMAIN, "must be a queue name: lowercase letters, digits, '-' and '.', "
                        f"at most {contract.QUEUE_NAME_MAX} (it becomes a label value)",
                        contract.QUEUE_NAME_MAX)


def _cluster_name(value: Any, key: str, source: str | None) -> str:
    text = _string(value, key, source)
    if len(text) > MAX_CLUSTER_NAME or not _DNS_1035_LABEL.match(text):
        raise ConfigError(key, f"must be a DNS label starting with a letter, at most {MAX_CLUSTER_NAME} "
                               f"characters (got {text!r})", source)
    return text


def _partition_name(value: Any, key: str, source: str | None) -> str:
    text = _string(value, key, source)
    if not _is_partition_name(text):
        raise ConfigError(key, f"is not a valid Slurm partition name (got {text!r})", source)
    return text


def _is_partition_name(text: str) -> bool:
    return bool(text) and not any(c.isspace() or c in ",:" for c in text)


def _gang(value: Any, key: str, source: str | None) -> str:
    if value not in gangs.BACKENDS:
        raise ConfigError(key, f"must be one of {', '.join(gangs.BACKENDS)} (got {value!r})", source)
    return str(value)


def _conf_server(value: Any, key: str, source: str | None) -> str:
    text = _string(value, key, source)
    if not re.match(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$", text):
        raise ConfigError(key, f"must be HOST or HOST:PORT (got {text!r})", source)
    return text


def _label_key(value: Any, key: str, source: str | None) -> str:
    text = _string(value, key, source)
    prefix, _, name = text.rpartition("/")
    if (not name or len(name) > 63 or not _LABEL_NAME.match(name)
            or (prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)))
            or (text.startswith("/"))):
        raise ConfigError(key, f"must be a Kubernetes label key like example.com/name (got {text!r})", source)
    return text


def _label_value(value: Any, key: str, source: str | None) -> str:
    if isinstance(value, bool):
        raise ConfigError(key, 'label values are strings: quote it ("true")', source)
    if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
        raise ConfigError(key, f"must be a Kubernetes label value (got {value!r})", source)
    return value


def _label_map(value: Any, key: str, source: str | None) -> dict[str, str]:
    return {_label_key(k, f"{key}.{k}", source): _label_value(v, f"{key}.{k}", source)
            for k, v in _mapping(value, key, source, "a mapping of label keys to values").items()}


def _mapping(value: Any, key: str, source: str | None, what: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"must be {what}", source)
    return value


def _name_map(check: Callable[[Any, str, str | None], str]) -> Callable[[Any, str, str | None], dict[str, str]]:
    def parse(value: Any, key: str, source: str | None) -> dict[str, str]:
        if not isinstance(value, Mapping):
            raise ConfigError(key, "must be a mapping", source)
        return {str(k): check(v, f"{key}.{k}", source) for k, v in value.items()}
    return parse


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _env_map(value: Any, key: str, source: str | None) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ConfigError(key, "must be a mapping of environment variable names to values", source)
    out: dict[str, str] = {}
    for k, v in value.items():
        item = f"{key}.{k}"
        if not isinstance(k, str) or not _ENV_NAME.match(k):
            raise ConfigError(item, "not a valid environment variable name", source)
        if isinstance(v, bool) or not isinstance(v, (str, int, float)) or "\n" in str(v):
            raise ConfigError(item, "must be a single-line string", source)
        out[k] = str(v)
    return out


def _list(value: Any, key: str, source: str | None) -> Sequence[Any]:
    if not isinstance(value, list):
        raise ConfigError(key, "must be a list", source)
    return value


def _feature_list(value: Any, key: str, source: str | None) -> tuple[str, ...]:
    items = _list(value, key, source)
    out = tuple(_slurm_name(v, f"{key}[{i}]", source) for i, v in enumerate(items))
    if len(set(out)) != len(out):
        raise ConfigError(key, "lists a feature twice", source)
    return out


def _command(value: Any, key: str, source: str | None) -> tuple[str, ...]:
    items = _list(value, key, source)
    if not items:
        raise ConfigError(key, "must not be empty (leave it out to use the image's entrypoint)", source)
    return tuple(_string(v, f"{key}[{i}]", source) for i, v in enumerate(items))


def _image_prefixes(value: Any, key: str, source: str | None) -> tuple[str, ...]:
    items = _list(value, key, source)
    return tuple(_image_prefix(v, f"{key}[{i}]", source) for i, v in enumerate(items))


def _dns_subdomain_list(value: Any, key: str, source: str | None) -> tuple[str, ...]:
    items = _list(value, key, source)
    return tuple(_dns_subdomain(v, f"{key}[{i}]", source) for i, v in enumerate(items))


def _shape_names(shapes: Mapping[str, NodeShape]) -> Callable[[Any, str, str | None], tuple[str, ...]]:
    def parse(value: Any, key: str, source: str | None) -> tuple[str, ...]:
        items = _list(value, key, source)
        if not items:
            raise ConfigError(key, "must name at least one shape (leave it out for all shapes)", source)
        for i, name in enumerate(items):
            if name not in shapes:
                raise ConfigError(f"{key}[{i}]", f"no shape named {name!r} (shapes: "
                                                 f"{', '.join(shapes)})", source)
        return tuple(str(n) for n in items)
    return parse


def _mig_map(value: Any, key: str, source: str | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for profile, count in _mapping(value, key, source, "a map of MIG profiles to instances per GPU").items():
        item = f"{key}.{profile}"
        if not isinstance(profile, str) or not _MIG_PROFILE.match(profile):
            raise ConfigError(item, "is not a MIG profile name like 1g.10gb", source)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 7:
            raise ConfigError(item, "must be the number of instances per GPU (1-7)", source)
        out[profile] = count
    return out


def _shared_mounts(value: Any, key: str, source: str | None) -> tuple[SharedMount, ...]:
    mounts = []
    for i, item in enumerate(_list(value, key, source)):
        s = _Section(item, f"{key}[{i}]", source)
        host_path = s.get("host_path", _absolute_path)
        mount = SharedMount(host_path=host_path,
                            path=s.get("path", _absolute_path, host_path),
                            read_only=s.get("read_only", _bool, False))
        s.refuse_unknown()
        mounts.append(mount)
    paths = [m.path for m in mounts]
    for i, path in enumerate(paths):
        if path in paths[:i]:
            raise ConfigError(f"{key}[{i}].path", f"{path} is mounted twice", source)
    return tuple(mounts)


def _absolute_path(value: Any, key: str, source: str | None) -> str:
    text = _string(value, key, source)
    if not text.startswith("/") or "\x00" in text:
        raise ConfigError(key, f"must be an absolute path (got {text!r})", source)
    return text


def _tolerations(value: Any, key: str, source: str | None) -> tuple[Mapping[str, Any], ...]:
    out = []
    for i, item in enumerate(_list(value, key, source)):
        s = _Section(item, f"{key}[{i}]", source)
        toleration: dict[str, Any] = {}
        operator = s.get("operator", _choice(_TOLERATION_OPERATORS), "Equal")
        tkey = s.get_optional("key", _label_key)
        if tkey is not None:
            toleration["key"] = tkey
        elif operator != "Exists":
            raise ConfigError(s.key("key"), "is required unless operator is Exists", source)
        toleration["operator"] = operator
        tvalue = s.get_optional("value", _label_value)
        if tvalue is not None:
            if operator == "Exists":
                raise ConfigError(s.key("value"), "must be left out when operator is Exists", source)
            toleration["value"] = tvalue
        effect = s.get_optional("effect", _choice(_TAINT_EFFECTS))
        if effect is not None:
            toleration["effect"] = effect
        seconds = s.get_optional("tolerationSeconds", _non_negative_int)
        if seconds is not None:
            toleration["tolerationSeconds"] = seconds
        s.refuse_unknown()
        out.append(toleration)
    return tuple(out)


def _choice(options: Sequence[str]) -> Callable[[Any, str, str | None], str]:
    def check(value: Any, key: str, source: str | None) -> str:
        if value not in options:
            raise ConfigError(key, f"must be one of {', '.join(options)} (got {value!r})", source)
        return str(value)
    return check


def _memory_mb(value: Any, key: str, source: str | None) -> int:
    try:
        return parse_memory_mb(value)
    except ValueError as exc:
        raise ConfigError(key, str(exc), source) from None


def parse_memory_mb(value: Any) -> int:
    """A memory size in MB (MiB) from a Kubernetes quantity or a plain integer of MB.

    ``2000Gi`` -> 2048000, ``512Mi`` -> 512, ``1G`` -> 953 (decimal units round down),
    ``4096`` -> 4096. Raises ``ValueError`` with the reason.
    """
    if isinstance(value, bool):
        raise ValueError("must be a memory size such as 512Gi or an integer of MB")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("must be a positive memory size")
        return value
    if isinstance(value, str):
        match = _QUANTITY.match(value.strip())
        if match:
            number, unit = int(match.group(1)), match.group(2)
            mb = number * _QUANTITY_BYTES[unit] // (1 << 20)
            if mb <= 0:
                raise ValueError(f"{value} is less than 1 MB")
            return mb
        if value.strip().isdigit():
            raise ValueError(f"{value!r} has no unit: write {value}Mi, or an unquoted integer of MB")
    raise ValueError(f"must be a memory size such as 512Gi, 2000G or an integer of MB (got {value!r})")


def _one_line(text: str) -> str:
    return " ".join(text.split())

