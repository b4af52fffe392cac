"""Random sbatch requests, good and malformed, and the Kubernetes rules that rendered objects
must keep: shared by the fuzz tests of three tiers (tests/unit/test_fuzz_*.py,
tests/k8s/test_fuzz_render_api.py, tests/slurm/test_fuzz_slurmctld.py).

The generators take a ``random.Random``: the slurm tier drives them with a seeded one (the
same seed gives the same invocations), the unit tier with Hypothesis' ``st.randoms()``
(which records, replays and shrinks every choice). Values mix the forms users really write
(``--gres=gpu:h100:8``, ``-N 2-4``, ``--time=1-00:00``, ``--constraint=[h100|a100]``)
with every malformed neighbour of them and hostile text (quotes, newlines, shell syntax,
unicode, very long strings).

The validators are written from the Kubernetes rules themselves (apimachinery's
validation: DNS-1123 label and subdomain, DNS-1035 label, qualified names, label values,
environment variable names, quantities, IANA service names), not from the bridge's code.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

# -- what users type ---------------------------------------------------------------------

#: feature names of the example configuration's shapes and node features, plus neighbours
FEATURES = ("h100", "hopper", "a100", "ampere", "ib", "k8s-pod", "bogus", "H100", "a100 ", "gpu")
#: GRES types: the shapes' types, their MIG profiles, and ones no shape has
GPU_TYPES = ("h100", "a100", "1g.10gb", "3g.40gb", "7g.80gb", "v100", "H100", "tesla", "gpu")

HOSTILE_PIECES = (
    "'", '"', "`", "\\", "$(id)", "${HOME}", ";", "&&", "|", "#", "%j", "%x", "=", ",", ":",
    "\n", "\r", "\t", " ", "  ", "-", "--", "/", "..", "*", "[", "]", "(", ")", "{", "}",
    "\u00e9", "\u4e2d\u6587", "\U0001f680", "\u202e", "\u200b", "\ufeff", "\u0663", "\u00a0",
    "\x1b[31m", "\x7f", "(null)", "None", "NaN", "0x10", "-1", "4294967294", "99999999999999999999",
)


def hostile_text(rnd: random.Random, *, nul: bool = False, max_len: int = 4000) -> str:
    """Text users should never send, and sometimes do: quotes, shell syntax, control
    characters, unicode, and now and then something very long."""
    kind = rnd.randrange(6)
    if kind == 0:
        return "".join(rnd.choice(HOSTILE_PIECES) for _ in range(rnd.randint(1, 8)))
    if kind == 1:
        return rnd.choice(("x", "A", "\u00e9", "-", "9")) * rnd.randint(60, max_len)
    if kind == 2:
        alphabet = "abcXYZ019-_. '\"\\\n\t#%=,:;$\u00e9\u4e2d\U0001f680"
        return "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 80)))
    if kind == 3:
        # code points anywhere in the BMP and above, but no surrogates (not text)
        points = [rnd.choice((rnd.randint(0x20, 0x7e), rnd.randint(0xa0, 0xd7ff),
                              rnd.randint(0xe000, 0x10ffff), rnd.randint(1, 0x1f)))
                  for _ in range(rnd.randint(1, 30))]
        text = "".join(map(chr, points))
        return text if nul else text.replace("\0", "")
    if kind == 4:
        return ""
    return rnd.choice(("job", "train-llm", "my job", "a.b_c-d", "--oops", "x" * 63, "x" * 64,
                       "-leading", "trailing-", "UPPER", "\u00e9t\u00e9", "1234", "."))


def _pick(rnd: random.Random, *choices: Callable[[], str] | str) -> str:
    choice = rnd.choice(choices)
    return choice() if callable(choice) else choice


def count_text(rnd: random.Random) -> str:
    """A count as users type it, or nearly."""
    return _pick(rnd, lambda: str(rnd.randint(1, 9)), lambda: str(rnd.randint(0, 300)),
                 lambda: str(rnd.randint(0, 70000)), "0", "-1", "+3", " 4", "4 ", "1k", "2m",
                 "0x10", "", "abc", "3.5", "4294967294", "4294967295", "65535", "65536",
                 "99999999999999999999", "1e3", "\u0663", lambda: hostile_text(rnd))


def gpu_count(rnd: random.Random) -> str:
    return _pick(rnd, lambda: str(rnd.randint(1, 8)), lambda: str(rnd.randint(0, 64)), "0", "-2",
                 "2k", "99999999999999999999", "", "x", "1.5", "4294967295")


def gres_text(rnd: random.Random) -> str:
    """``--gres`` values: every form sbatch takes, and the broken ones."""
    t, n = rnd.choice(GPU_TYPES), gpu_count(rnd)
    return _pick(rnd, "gpu", lambda: f"gpu:{n}", lambda: f"gpu:{t}:{n}", lambda: f"gpu:{t}",
                 lambda: f"gres:gpu:{n}", lambda: f"gpu:{n},gpu:{t}:{n}", "shard:2",
                 lambda: f"gpu:h100:{n},shard:1", "none", "gpu:", "gpu::2", ":2", "gpu:h100:a100:2",
                 "gpu:2:2", lambda: f"gpu:{n}k", "gpu/h100=2", "gpu=2", "gpu:h100:2,gpu:a100:2",
                 "gpu:,", ",", "help", lambda: f"gpu:{t}:{n}(S:0-1)", lambda: hostile_text(rnd))


def gpus_text(rnd: random.Random) -> str:
    """``--gpus``/``--gpus-per-node``/``--gpus-per-task``/``--gpus-per-socket`` values."""
    t, n = rnd.choice(GPU_TYPES), gpu_count(rnd)
    return _pick(rnd, lambda: n, lambda: f"{t}:{n}", lambda: f"{n},{t}:{n}", "h100", ":", ",",
                 lambda: f"gpu:{n}", lambda: hostile_text(rnd))


def tres_text(rnd: random.Random) -> str:
    """A ``tres_per_*`` string as slurmctld hands it to job_submit (both encodings)."""
    t, n = rnd.choice(GPU_TYPES), gpu_count(rnd)
    items = [_pick(rnd, lambda: f"gres:gpu:{n}", lambda: f"gres:gpu:{t}:{n}", lambda: f"gres/gpu:{t}={n}",
                   lambda: f"gres/gpu={n}", lambda: f"gres/gpu:{t}:{n}", lambda: f"cpu={n}", "gres:shard:1",
                   "license/x=1", "gres:gpu", lambda: f"gres:gpu:{t}", "gres/gpu:=2", "gres:", "=", "",
                   lambda: f"gpu:{n}", lambda: f"gres/gpu={n}k", lambda: hostile_text(rnd))
             for _ in range(rnd.randint(1, 3))]
    return ",".join(items)


def memory_text(rnd: random.Random) -> str:
    unit = rnd.choice(("", "K", "M", "G", "T", "KB", "MB", "GB", "TB", "k", "g", "P", "b", "Gi", " G"))
    return _pick(rnd, lambda: f"{rnd.randint(0, 4096)}{unit}", lambda: f"{rnd.randint(1, 3000)}G", "0",
                 "-5G", "1.5G", lambda: "9" * rnd.randint(10, 30) + unit, "G", "",
                 lambda: hostile_text(rnd))


def time_text(rnd: random.Random) -> str:
    def n(hi: int = 99) -> int:
        return rnd.randint(0, hi)
    return _pick(rnd, lambda: str(n(10000)), lambda: f"{n()}:{n(59)}", lambda: f"{n(48)}:{n(59)}:{n(59)}",
                 lambda: f"{n(30)}-{n(23)}", lambda: f"{n(30)}-{n(23)}:{n(59)}",
                 lambda: f"{n(30)}-{n(23)}:{n(59)}:{n(59)}", "UNLIMITED", "infinite", "-1", "0",
                 "00:00:00", "1-", "-1:00", "1:2:3:4", "1-2-3", "::", "\u0663", "24:00:00",
                 "99999999999:00", "1e3", "1-99999999999999", "", " 5", "5 ", "1:-5",
                 lambda: hostile_text(rnd))


def nodes_text(rnd: random.Random) -> str:
    a, b = rnd.randint(0, 9), rnd.randint(0, 70000)
    return _pick(rnd, lambda: str(rnd.randint(1, 8)), lambda: f"{rnd.randint(1, 4)}-{rnd.randint(1, 8)}",
                 lambda: f"{a}-{b}", lambda: f"{a}k", "-", "2-", "-3", "0", "1-0", "99999999999",
                 "abc", "1 - 2", "1m", "65536", "65537", "1-1k", lambda: hostile_text(rnd))


def constraint_text(rnd: random.Random, depth: int = 0) -> str:
    """A feature expression with ``&`` ``,`` ``|`` ``(...)`` ``[...]`` ``*N``, or a broken one."""
    if depth == 0 and rnd.random() < 0.15:
        return _pick(rnd, "", "&", "|h100", "h100&", "(h100", "h100)", "[h100|a100", "[[h100]]",
                     "h100*", "h100*x", "h100 | a100", "h100||a100", "()", "[]",
                     lambda: "|".join(rnd.choice(FEATURES) for _ in range(80)),
                     lambda: "(" * 300 + "h100" + ")" * 300, lambda: hostile_text(rnd))

    def operand() -> str:
        roll = rnd.random()
        if depth < 3 and roll < 0.15:
            return "(" + constraint_text(rnd, depth + 1) + ")"
        if depth < 3 and roll < 0.25:
            return "[" + constraint_text(rnd, depth + 1) + "]"
        feature = rnd.choice(FEATURES)
        return f"{feature}*{rnd.randint(0, 4)}" if roll < 0.3 else feature

    parts = [operand()]
    for _ in range(rnd.randint(0, 3)):
        parts += [rnd.choice("&|,"), operand()]
    return "".join(parts)


def array_text(rnd: random.Random) -> str:
    a, b, s = rnd.randint(0, 20), rnd.randint(0, 2000), rnd.randint(0, 5)
    return _pick(rnd, "0-15:4%2", "1,3,5-7", lambda: f"{a}-{b}", lambda: f"{a}-{b}:{s}", lambda: f"{a}-{b}%{s}",
                 lambda: str(rnd.randint(0, 4_000_001)), "%2", "1-", "-1", "0-4294967295", "1-3:0",
                 "999999999999999999", "5-1", "1,,2", "1-10%0", "0-1000000", "4000000", "4000001",
                 "1-3%", "1-3%x", ",", "", lambda: hostile_text(rnd))


def node_list_text(rnd: random.Random) -> str:
    return _pick(rnd, "node1", "node[1-2]", "gpu-0,gpu-1", "node[1-", "node[2-1]", "k8s-[0-3]",
                 lambda: "n" * rnd.randint(100, 300), lambda: hostile_text(rnd))


def spank_value(rnd: random.Random, option: str) -> str:
    good = {"k8s-image": ("localhost/slurm-k8s-bridge/x:1", "registry.local/ml/train:2.1",
                          "localhost/slurm-k8s-bridge-worker:bookworm", "docker.io/library/ubuntu:22.04"),
            "k8s-queue": ("team-a", "gpu-jobs", "physics-gpu", "a.b"),
            "k8s-priority": ("research-high", "slurm-high", "system-cluster-critical")}[option]
    return _pick(rnd, lambda: rnd.choice(good), "Bad_Name", "UPPER", "a" * 64, "a" * 254, "-x", "",
                 lambda: "localhost/slurm-k8s-bridge/" + "a" * 600, lambda: hostile_text(rnd))


#: sbatch options the bridge reads (or that change what it reads), with a value generator;
#: None: a flag without value; "optional": a flag with an optional ``=value``.
def option_values(rnd: random.Random) -> dict[str, Callable[[], str | None]]:
    return {
        "partition": lambda: _pick(rnd, "gpu", "cpu", "hopper-prod", "gpu,cpu", "gpu,gpu", "", "nosuch",
                                   lambda: hostile_text(rnd)),
        "nodes": lambda: nodes_text(rnd),
        "ntasks": lambda: count_text(rnd),
        "ntasks-per-node": lambda: count_text(rnd),
        "tasks-per-node": lambda: count_text(rnd),
        "cpus-per-task": lambda: count_text(rnd),
        "cpus-per-gpu": lambda: count_text(rnd),
        "ntasks-per-gpu": lambda: count_text(rnd),
        "ntasks-per-tres": lambda: count_text(rnd),
        "sockets-per-node": lambda: count_text(rnd),
        "cores-per-socket": lambda: count_text(rnd),
        "threads-per-core": lambda: count_text(rnd),
        "extra-node-info": lambda: _pick(rnd, "2:4:1", "*:*", "0", "1", "2-4:*", "1:2:3:4", "::",
                                         lambda: hostile_text(rnd)),
        "hint": lambda: _pick(rnd, "compute_bound", "memory_bound", "multithread", "nomultithread",
                              "bogus", "compute_bound,nomultithread", lambda: hostile_text(rnd)),
        "mem": lambda: memory_text(rnd),
        "mem-per-cpu": lambda: memory_text(rnd),
        "mem-per-gpu": lambda: memory_text(rnd),
        "gres": lambda: gres_text(rnd),
        "gpus": lambda: gpus_text(rnd),
        "gpus-per-node": lambda: gpus_text(rnd),
        "gpus-per-task": lambda: gpus_text(rnd),
        "gpus-per-socket": lambda: gpus_text(rnd),
        "time": lambda: time_text(rnd),
        "constraint": lambda: constraint_text(rnd),
        "array": lambda: array_text(rnd),
        "nodelist": lambda: node_list_text(rnd),
        "exclude": lambda: node_list_text(rnd),
        "job-name": lambda: hostile_text(rnd),
        "comment": lambda: hostile_text(rnd),
        "account": lambda: _pick(rnd, "physics", "research", "", lambda: hostile_text(rnd)),
        "qos": lambda: _pick(rnd, "high", "normal", "bogus", lambda: hostile_text(rnd)),
        "exclusive": lambda: rnd.choice((None, "user", "mcs", "exclusive", "oversubscribe", "bogus", "")),
        "oversubscribe": lambda: None,
        "k8s-image": lambda: spank_value(rnd, "k8s-image"),
        "k8s-queue": lambda: spank_value(rnd, "k8s-queue"),
        "k8s-priority": lambda: spank_value(rnd, "k8s-priority"),
    }


#: short letters of the options above (sbatch 22.05)
SHORT = {"partition": "p", "nodes": "N", "ntasks": "n", "cpus-per-task": "c", "mem": None,
         "gpus": "G", "time": "t", "constraint": "C", "array": "a", "nodelist": "w", "exclude": "x",
         "job-name": "J", "account": "A", "qos": "q", "extra-node-info": "B", "oversubscribe": "s"}
#: options whose value is optional (``--opt`` or ``--opt=value``)
OPTIONAL_VALUE = ("exclusive",)
FLAGS = ("oversubscribe",)


def option_words(rnd: random.Random, name: str, value: str | None) -> list[str]:
    """One option as words, in one of the forms getopt_long takes."""
    if name in FLAGS:
        short = SHORT.get(name)
        return [f"-{short}"] if short and rnd.random() < 0.5 else [f"--{name}"]
    if name in OPTIONAL_VALUE:
        return [f"--{name}"] if value is None else [f"--{name}={value}"]
    assert value is not None
    short = SHORT.get(name)
    form = rnd.randrange(4 if short else 2)
    if form == 0:
        return [f"--{name}={value}"]
    if form == 1:
        return [f"--{name}", value]
    if form == 2:
        return [f"-{short}{value}"]
    return [f"-{short}", value]


def directive_line(words: list[str]) -> str:
    """An ``#SBATCH`` line that sbatch splits back into ``words`` (quoted where needed)."""
    out = []
    for word in words:
        if re.fullmatch(r"[A-Za-z0-9_./:=+,@%-]+", word):
            out.append(word)
        else:
            out.append('"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "#SBATCH " + " ".join(out)


def sbatch_invocation(rnd: random.Random, *, nul: bool = False, max_options: int = 8,
                      raw_directives: bool = True) -> tuple[list[str], list[str]]:
    """(command-line words, ``#SBATCH`` lines) of one random submission: a random subset of
    the options the bridge reads, each in a random form and place; now and then a raw,
    possibly broken directive line. Values with a newline stay on the command line."""
    values = option_values(rnd)
    names = rnd.sample(sorted(values), rnd.randint(0, min(max_options, len(values))))
    if rnd.random() < 0.1 and names:
        names.append(rnd.choice(names))  # the same option twice: the last one wins
    argv: list[str] = []
    directives: list[str] = []
    for name in names:
        value = values[name]()
        if value is not None and not nul:
            value = value.replace("\0", "")
        words = option_words(rnd, name, value)
        if rnd.random() < 0.4 and not any(c in w for w in words for c in "\n\r\0"):
            directives.append(directive_line(words))
        else:
            argv.extend(words)
    if raw_directives and rnd.random() < 0.1:
        line = hostile_text(rnd).replace("\n", " ").replace("\r", " ").replace("\0", "")
        directives.append(rnd.choice(("#SBATCH ", "#SBATCH", "#SLURM ")) + line)
    return argv, directives


def batch_script(directives: list[str], body: str = "srun hostname\n") -> str:
    return "#!/bin/bash\n" + "".join(line + "\n" for line in directives) + body


# -- the Kubernetes rules ----------------------------------------------------------------

DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
QUALIFIED_NAME_PART = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
ENV_VAR_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
QUANTITY = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|[mkMGTPE]|[eE][+-]?[0-9]+)?")
IANA_SVC_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
ANNOTATIONS_MAX_BYTES = 256 * 1024


def dns1123_label(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 63 and bool(DNS1123_LABEL.fullmatch(value))


def dns1123_subdomain(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 253 and bool(DNS1123_SUBDOMAIN.fullmatch(value))


def dns1035_label(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 63 and bool(DNS1035_LABEL.fullmatch(value))


def qualified_name(value: Any) -> bool:
    """A label or annotation key: ``[prefix/]name``, prefix a DNS subdomain, name <= 63."""
    if not isinstance(value, str):
        return False
    prefix, slash, name = value.rpartition("/")
    if slash and not dns1123_subdomain(prefix):
        return False
    return len(name) <= 63 and bool(QUALIFIED_NAME_PART.fullmatch(name))


def label_value(value: Any) -> bool:
    return isinstance(value, str) and (value == "" or (len(value) <= 63
                                                       and bool(QUALIFIED_NAME_PART.fullmatch(value))))


def port_name(value: Any) -> bool:
    return (isinstance(value, str) and 0 < len(value) <= 15 and bool(IANA_SVC_NAME.fullmatch(value))
            and "--" not in value and any(c.isalpha() for c in value))


def quantity(value: Any) -> bool:
    return isinstance(value, str) and bool(QUANTITY.fullmatch(value))


def _labels(where: str, labels: Any) -> Iterator[str]:
    if not isinstance(labels, Mapping):
        yield f"{where}: labels are not a mapping"
        return
    for key, value in labels.items():
        if not qualified_name(key):
            yield f"{where}: label key {key!r} is not a qualified name"
        if not label_value(value):
            yield f"{where}: label {key} value {value!r} is not a label value"


def _annotations(where: str, annotations: Any) -> Iterator[str]:
    if not isinstance(annotations, Mapping):
        yield f"{where}: annotations are not a mapping"
        return
    size = 0
    for key, value in annotations.items():
        if not qualified_name(key):
            yield f"{where}: annotation key {key!r} is not a qualified name"
        if not isinstance(value, str):
            yield f"{where}: annotation {key} is not a string"
            continue
        size += len(key.encode()) + len(value.encode())
    if size > ANNOTATIONS_MAX_BYTES:
        yield f"{where}: annotations are {size} bytes, more than {ANNOTATIONS_MAX_BYTES}"


def _metadata(where: str, meta: Mapping[str, Any], *, name_rule: Callable[[Any], bool] | None) -> Iterator[str]:
    if name_rule is not None and not name_rule(meta.get("name")):
        yield f"{where}: name {meta.get('name')!r} breaks its naming rule"
    if "namespace" in meta and not dns1123_label(meta["namespace"]):
        yield f"{where}: namespace {meta['namespace']!r} is not a DNS-1123 label"
    yield from _labels(where, meta.get("labels", {}))
    yield from _annotations(where, meta.get("annotations", {}))


def _resources(where: str, resources: Mapping[str, Any]) -> Iterator[str]:
    for kind in ("requests", "limits"):
        for name, value in (resources.get(kind) or {}).items():
            if not qualified_name(name):
                yield f"{where}: resource name {name!r} is not a qualified name"
            if not quantity(value):
                yield f"{where}: {kind}[{name}] = {value!r} is not a quantity"


def _pod_spec(where: str, spec: Mapping[str, Any]) -> Iterator[str]:
    if "subdomain" in spec and not dns1123_label(spec["subdomain"]):
        yield f"{where}: subdomain {spec['subdomain']!r} is not a DNS-1123 label"
    for key in ("priorityClassName", "serviceAccountName", "schedulerName"):
        if key in spec and not dns1123_subdomain(spec[key]):
            yield f"{where}: {key} {spec[key]!r} is not a DNS-1123 subdomain"
    yield from _labels(f"{where}.nodeSelector", spec.get("nodeSelector", {}))
    affinity = spec.get("affinity") or {}
    required = ((affinity.get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = required.get("nodeSelectorTerms", [])
    if "nodeSelectorTerms" in required and not terms:
        yield f"{where}: required node affinity with no nodeSelectorTerms"
    for term in terms:
        for expr in term.get("matchExpressions", []):
            if not qualified_name(expr.get("key")):
                yield f"{where}: node affinity key {expr.get('key')!r} is not a qualified name"
            if expr.get("operator") == "In" and not expr.get("values"):
                yield f"{where}: node affinity {expr.get('key')} In with no values"
            for value in expr.get("values", []):
                if not label_value(value):
                    yield f"{where}: node affinity value {value!r} is not a label value"
    for rule in (affinity.get("podAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution", []):
        if not qualified_name(rule.get("topologyKey")):
            yield f"{where}: topologyKey {rule.get('topologyKey')!r} is not a qualified name"
        yield from _labels(f"{where}.podAffinity", rule.get("labelSelector", {}).get("matchLabels", {}))
    for toleration in spec.get("tolerations", []):
        if toleration.get("key") and not qualified_name(toleration["key"]):
            yield f"{where}: toleration key {toleration['key']!r} is not a qualified name"
    volumes = [v.get("name") for v in spec.get("volumes", [])]
    for name in volumes:
        if not dns1123_label(name):
            yield f"{where}: volume name {name!r} is not a DNS-1123 label"
    if len(set(volumes)) != len(volumes):
        yield f"{where}: volume names repeat"
    for container in spec.get("containers", []):
        cwhere = f"{where}.containers[{container.get('name')}]"
        if not dns1123_label(container.get("name")):
            yield f"{cwhere}: container name is not a DNS-1123 label"
        if not isinstance(container.get("image"), str) or not container["image"] or container["image"] != container["image"].strip():
            yield f"{cwhere}: image {container.get('image')!r} is empty or padded"
        for env in container.get("env", []):
            if not ENV_VAR_NAME.fullmatch(str(env.get("name"))):
                yield f"{cwhere}: env name {env.get('name')!r} is not a valid variable name"
            if "value" in env and not isinstance(env["value"], str):
                yield f"{cwhere}: env {env.get('name')} value is not a string"
        for port in container.get("ports", []):
            if "name" in port and not port_name(port["name"]):
                yield f"{cwhere}: port name {port['name']!r} is not an IANA service name"
        for mount in container.get("volumeMounts", []):
            if mount.get("name") not in volumes:
                yield f"{cwhere}: mount of unknown volume {mount.get('name')!r}"
        yield from _resources(cwhere, container.get("resources", {}))


def object_problems(obj: Mapping[str, Any]) -> list[str]:
    """What in one rendered object the API server would refuse by its naming rules."""
    kind = obj.get("kind")
    meta = obj.get("metadata", {})
    where = f"{kind}/{meta.get('name')}"
    rule = {"Service": dns1035_label, "Job": dns1123_label}.get(str(kind), dns1123_subdomain)
    problems = list(_metadata(where, meta, name_rule=rule))
    spec = obj.get("spec", {})
    if kind == "Service":
        problems += list(_labels(f"{where}.selector", spec.get("selector", {})))
        for port in spec.get("ports", []):
            if not port_name(port.get("name")):
                problems.append(f"{where}: port name {port.get('name')!r} is not an IANA service name")
    if kind == "Job":
        template = spec.get("template", {})
        problems += list(_metadata(f"{where}.template", template.get("metadata", {}), name_rule=None))
        problems += list(_pod_spec(f"{where}.pod", template.get("spec", {})))
        for key in ("completions", "parallelism"):
            if not isinstance(spec.get(key), int) or spec[key] < 1:
                problems.append(f"{where}: {key} {spec.get(key)!r} is not a positive integer")
        deadline = spec.get("activeDeadlineSeconds")
        if deadline is not None and (not isinstance(deadline, int) or deadline <= 0):
            problems.append(f"{where}: activeDeadlineSeconds {deadline!r} is not positive")
    if kind == "PodGroup":
        if "queue" in spec and not dns1123_subdomain(spec["queue"]):
            problems.append(f"{where}: queue {spec['queue']!r} is not a DNS-1123 subdomain")
        for name, value in (spec.get("minResources") or {}).items():
            if not quantity(value):
                problems.append(f"{where}: minResources[{name}] {value!r} is not a quantity")
    try:
        json.dumps(obj, allow_nan=False)
    except (TypeError, ValueError) as exc:
        problems.append(f"{where}: not JSON: {exc}")
    return problems


# -- refusals ----------------------------------------------------------------------------

#: a refusal message longer than this is not "one readable line"
MESSAGE_MAX = 1024


def message_problems(message: Any) -> list[str]:
    """What makes a refusal message not one readable line naming the problem."""
    if not isinstance(message, str):
        return [f"message is not text: {message!r}"]
    problems = []
    if not message.strip():
        problems.append("message is empty")
    if re.search(r"[\x00-\x1f\x7f]", message):
        problems.append(f"message holds control characters: {message[:200]!r}")
    if len(message) > MESSAGE_MAX:
        problems.append(f"message is {len(message)} characters long: {message[:120]!r}...")
    return problems


# -- requests as slurmctld hands them to job_submit ----------------------------------------

#: Slurm's "not set" and "no limit" encodings, which a job_desc field may hold
NO_VAL, NO_VAL16, INFINITE, INFINITE16 = 0xFFFFFFFE, 0xFFFE, 0xFFFFFFFF, 0xFFFF


def raw_int(rnd: random.Random, *, small: int = 8) -> int | None:
    """A job_desc integer field: usually unset or small, sometimes at Slurm's edges."""
    roll = rnd.random()
    if roll < 0.5:
        return None
    if roll < 0.85:
        return rnd.randint(1, small)
    return rnd.choice((0, -1, NO_VAL, NO_VAL16, INFINITE, INFINITE16, 2**31, 2**63, 65536, 65537,
                       rnd.randint(0, 2**32)))


def _maybe(rnd: random.Random, make: Callable[[], Any], p: float = 0.4, junk: float = 0.05) -> Any:
    roll = rnd.random()
    if roll < junk:
        return hostile_text(rnd)
    return make() if roll < p + junk else None


def job_desc_fields(rnd: random.Random) -> dict[str, Any]:
    """Keyword arguments of a ``SlurmJobRequest`` as the plugin reads them from a
    ``job_desc_msg_t``: plausible values most of the time, Slurm's sentinels and malformed
    text some of the time."""
    gpu_tres = lambda: _pick(rnd, lambda: f"gres:gpu:{rnd.randint(1, 8)}",
                             lambda: f"gres:gpu:{rnd.choice(GPU_TYPES)}:{rnd.randint(1, 8)}",
                             lambda: f"gres/gpu:{rnd.choice(GPU_TYPES)}={rnd.randint(1, 8)}",
                             lambda: f"gres/gpu={rnd.randint(1, 16)}", lambda: tres_text(rnd))
    memory = rnd.choice((None, None, 0, 1, 1024, 64000, 2**63 | 4096, 2**63, NO_VAL,
                         rnd.randint(0, 4_000_000)))
    return {
        "partition": rnd.choice((None, None, "gpu", "cpu", "hopper-prod", "gpu,cpu", hostile_text(rnd))),
        "min_nodes": raw_int(rnd), "max_nodes": raw_int(rnd), "num_tasks": raw_int(rnd, small=64),
        "ntasks_per_node": raw_int(rnd), "cpus_per_task": raw_int(rnd, small=64),
        "pn_min_memory": memory, "mem_per_cpu": rnd.random() < 0.2,
        "tres_per_node": _maybe(rnd, gpu_tres), "tres_per_job": _maybe(rnd, gpu_tres, 0.2),
        "tres_per_task": _maybe(rnd, gpu_tres, 0.15), "tres_per_socket": _maybe(rnd, gpu_tres, 0.03, 0.01),
        "ntasks_per_tres": raw_int(rnd) if rnd.random() < 0.05 else None,
        "cpus_per_tres": _maybe(rnd, lambda: f"gres:gpu:{count_text(rnd)}", 0.1),
        "mem_per_tres": _maybe(rnd, lambda: f"gres:gpu:{rnd.randint(0, 100000)}", 0.1),
        "features": _maybe(rnd, lambda: constraint_text(rnd), 0.3),
        "time_limit": rnd.choice((None, -1, 0, 1, 60, 1440, NO_VAL, INFINITE, 2**31, rnd.randint(1, 10**6))),
        "shared": rnd.choice((None, None, 0, 1, 2, 3, 4, NO_VAL16, INFINITE16, -1)),
        "account": rnd.choice((None, None, "physics", "", hostile_text(rnd))),
        "qos": rnd.choice((None, None, "high", "normal", "", hostile_text(rnd))),
        "name": rnd.choice((None, "job", hostile_text(rnd))),
        "array_inx": _maybe(rnd, lambda: array_text(rnd), 0.15),
        "user_id": rnd.choice((1000, 0, 4294967294, INFINITE, -1, None)),
        "group_id": rnd.choice((1000, 0, 4294967294, INFINITE, -1, None)),
        "spank_options": {k: spank_value(rnd, k) for k in ("k8s-image", "k8s-queue", "k8s-priority")
                          if rnd.random() < 0.1},
        "het_job_offset": rnd.choice((None,) * 19 + (0, NO_VAL)),
        "work_dir": rnd.choice((None, "/home/u", hostile_text(rnd))),
        "submit_line": rnd.choice((None, "sbatch job.sh", hostile_text(rnd))),
    }
