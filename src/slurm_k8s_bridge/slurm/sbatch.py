"""sbatch's side of a request: batch script directives and options -> ``SlurmJobRequest``.

``slurm-k8s-bridge translate SCRIPT [OPTIONS...]`` must reach the same ``SlurmJobRequest`` the
job_submit plugin builds from the real ``job_desc_msg_t``, so this module does what sbatch
22.05 does before it sends a job (src/sbatch/opt.c, src/common/slurm_opt.c, proc_args.c and the
client-side ``gres_job_state_validate``), and nothing more:

* ``#SBATCH`` (and the old ``#SLURM``) lines at the top of the script, read until the first
  line that is neither blank nor a comment, split like sbatch's ``get_argument`` (quotes group,
  a backslash escapes the next character but never whitespace, an unquoted ``#`` ends the line,
  an empty quoted word ends the line);
* all script words form one argument vector, parsed with getopt_long rules (unique prefixes,
  ``--opt=value`` or ``--opt value``, short clusters ``-HN2``, ``+``: stop at the first
  non-option), then the command line the same way; for each option the last value wins;
* the derived fields sbatch fills before sending: ``num_tasks`` from ``--ntasks-per-node``
  with a fixed node count, from ``-N`` with ``--sockets-per-node``/``--cores-per-socket``/
  ``--threads-per-core``/``-B``/``--hint``, and from the GPU options (``--gpus`` with
  ``--gpus-per-node`` fixes ``-N``; ``--gpus`` with ``--gpus-per-task`` fixes ``-n``;
  ``--gpus-per-node`` with ``--gpus-per-task`` fixes ``--ntasks-per-node``; ``--ntasks-per-gpu``
  sets ``-n``; ``--cpus-per-gpu`` with ``--gpus-per-task`` sets ``-c``).

The encodings were checked against real sbatch 22.05.8 and slurmctld (docs/sbatch-encodings.md).
Errors sbatch would print are raised as ``BridgeRefusal`` with sbatch's own wording.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from slurm_k8s_bridge.core.errors import SbatchRefusal as BridgeRefusal
from slurm_k8s_bridge.core.request import UNLIMITED, SlurmJobRequest

NONE, REQUIRED, OPTIONAL = 0, 1, 2

NOT_A_BATCH_SCRIPT = ("This does not look like a batch script.  The first line must start with "
                      "#! followed by the path to an interpreter.")
HETJOB_MESSAGE = "heterogeneous jobs are not supported by slurm-k8s-bridge yet"
MEMORY_EXCLUSIVE = "--mem, --mem-per-cpu, and --mem-per-gpu are mutually exclusive."
BAD_OPTION = "ESLURM_NOT_SUPPORTED"
BAD_GRES = "ESLURM_INVALID_GRES"

#: job_desc->shared values
SHARED_NONE, SHARED_OK, SHARED_USER, SHARED_MCS = 0, 1, 2, 3
_MEMORY_OPTIONS = ("mem", "mem-per-cpu", "mem-per-gpu")
#: SPANK options of spank_k8s.so, as sbatch shows them once the plugin is in plugstack.conf.
SPANK_OPTIONS = ("k8s-image", "k8s-queue", "k8s-priority")


@dataclass(frozen=True)
class OptionSpec:
    """One sbatch option as getopt_long sees it."""

    name: str
    has_arg: int
    short: str | None = None
    #: options sharing one meaning (``--tasks-per-node`` is ``--ntasks-per-node``)
    same_as: str | None = None

    @property
    def key(self) -> str:
        return self.same_as or self.name


def _opt(name: str, has_arg: int, short: str | None = None, same_as: str | None = None) -> OptionSpec:
    return OptionSpec(name, has_arg, short, same_as)


#: Every option sbatch 22.05.8 accepts (slurm_opt.c ``common_options`` with a set function for
#: sbatch; the same list as ``man sbatch``), plus this project's SPANK options.
SBATCH_OPTIONS: tuple[OptionSpec, ...] = (
    _opt("account", REQUIRED, "A"),
    _opt("acctg-freq", REQUIRED),
    _opt("array", REQUIRED, "a"),
    _opt("batch", REQUIRED),
    _opt("begin", REQUIRED, "b"),
    _opt("bb", REQUIRED),
    _opt("bbf", REQUIRED),
    _opt("cluster-constraint", REQUIRED),
    _opt("chdir", REQUIRED, "D"),
    _opt("cluster", REQUIRED),
    _opt("clusters", REQUIRED, "M"),
    _opt("comment", REQUIRED),
    _opt("container", REQUIRED),
    _opt("context", REQUIRED),
    _opt("contiguous", NONE),
    _opt("constraint", REQUIRED, "C"),
    _opt("core-spec", REQUIRED, "S"),
    _opt("cores-per-socket", REQUIRED),
    _opt("cpu-freq", REQUIRED),
    _opt("cpus-per-gpu", REQUIRED),
    _opt("cpus-per-task", REQUIRED, "c"),
    _opt("deadline", REQUIRED),
    _opt("delay-boot", REQUIRED),
    _opt("dependency", REQUIRED, "d"),
    _opt("distribution", REQUIRED, "m"),
    _opt("error", REQUIRED, "e"),
    _opt("exclude", REQUIRED, "x"),
    _opt("exclusive", OPTIONAL),
    _opt("export", REQUIRED),
    _opt("export-file", REQUIRED),
    _opt("extra-node-info", REQUIRED, "B"),
    _opt("get-user-env", OPTIONAL),
    _opt("gid", REQUIRED),
    _opt("gpu-bind", REQUIRED),
    _opt("gpu-freq", REQUIRED),
    _opt("gpus", REQUIRED, "G"),
    _opt("gpus-per-node", REQUIRED),
    _opt("gpus-per-socket", REQUIRED),
    _opt("gpus-per-task", REQUIRED),
    _opt("gres", REQUIRED),
    _opt("gres-flags", REQUIRED),
    _opt("help", NONE, "h"),
    _opt("hint", REQUIRED),
    _opt("hold", NONE, "H"),
    _opt("ignore-pbs", NONE),
    _opt("input", REQUIRED, "i"),
    _opt("job-name", REQUIRED, "J"),
    _opt("kill-on-invalid-dep", REQUIRED),
    _opt("licenses", REQUIRED, "L"),
    _opt("mail-type", REQUIRED),
    _opt("mail-user", REQUIRED),
    _opt("mcs-label", REQUIRED),
    _opt("mem", REQUIRED),
    _opt("mem-bind", REQUIRED),
    _opt("mem-per-cpu", REQUIRED),
    _opt("mem-per-gpu", REQUIRED),
    _opt("mincpus", REQUIRED),
    _opt("network", REQUIRED),
    _opt("nice", OPTIONAL),
    _opt("no-kill", OPTIONAL, "k"),
    _opt("no-requeue", NONE),
    _opt("nodefile", REQUIRED, "F"),
    _opt("nodelist", REQUIRED, "w"),
    _opt("nodes", REQUIRED, "N"),
    _opt("ntasks", REQUIRED, "n"),
    _opt("ntasks-per-core", REQUIRED),
    _opt("ntasks-per-gpu", REQUIRED),
    _opt("ntasks-per-node", REQUIRED),
    _opt("ntasks-per-socket", REQUIRED),
    _opt("ntasks-per-tres", REQUIRED),
    _opt("open-mode", REQUIRED),
    _opt("output", REQUIRED, "o"),
    _opt("overcommit", NONE, "O"),
    _opt("oversubscribe", NONE, "s"),
    _opt("parsable", NONE),
    _opt("partition", REQUIRED, "p"),
    _opt("power", REQUIRED),
    _opt("prefer", REQUIRED),
    _opt("priority", REQUIRED),
    _opt("profile", REQUIRED),
    _opt("propagate", OPTIONAL),
    _opt("qos", REQUIRED, "q"),
    _opt("quiet", NONE, "Q"),
    _opt("reboot", NONE),
    _opt("requeue", NONE),
    _opt("reservation", REQUIRED),
    _opt("signal", REQUIRED),
    _opt("sockets-per-node", REQUIRED),
    _opt("spread-job", NONE),
    _opt("switches", REQUIRED),
    _opt("tasks-per-node", REQUIRED, same_as="ntasks-per-node"),
    _opt("test-only", NONE),
    _opt("thread-spec", REQUIRED),
    _opt("threads-per-core", REQUIRED),
    _opt("time", REQUIRED, "t"),
    _opt("time-min", REQUIRED),
    _opt("tmp", REQUIRED),
    _opt("uid", REQUIRED),
    _opt("use-min-nodes", NONE),
    _opt("verbose", NONE, "v"),
    _opt("version", NONE, "V"),
    _opt("usage", NONE),
    _opt("wait", NONE, "W"),
    _opt("wait-all-nodes", REQUIRED),
    _opt("wckey", REQUIRED),
    _opt("wrap", REQUIRED),
    # SPANK options registered by spank_k8s.so
    _opt("k8s-image", REQUIRED),
    _opt("k8s-queue", REQUIRED),
    _opt("k8s-priority", REQUIRED),
)

_LONG = {spec.name: spec for spec in SBATCH_OPTIONS}
_SHORT = {spec.short: spec for spec in SBATCH_OPTIONS if spec.short}
_NOT_A_REQUEST = ("help", "usage", "version")


# -- the batch script ---------------------------------------------------------------------

def parse_directives(script_text: str) -> list[str]:
    """The option words of a batch script's ``#SBATCH`` lines, as sbatch reads them.

    Raises ``BridgeRefusal`` where sbatch refuses the script (no ``#!``, DOS line breaks, a NUL
    character, an unmatched quote, a heterogeneous job). Read the script with ``newline=""``
    so that DOS line breaks reach this check, as they reach sbatch's.
    """
    _check_script(script_text)
    words: list[str] = []
    for lineno, line in enumerate(script_text.split("\n"), start=1):
        if line.startswith("#SBATCH"):
            rest = line[len("#SBATCH"):]
        elif line.startswith("#SLURM"):
            rest = line[len("#SLURM"):]
        else:
            if _is_command(line):
                break
            continue
        if re.match(r"^\s*(hetjob|packjob)(\s|$)", rest, re.IGNORECASE):
            raise BridgeRefusal(HETJOB_MESSAGE, "ESLURM_NOT_SUPPORTED")
        words.extend(_line_words(rest, lineno))
    return words


def _check_script(text: str) -> None:
    if not text:
        raise BridgeRefusal("Batch script is empty!", BAD_OPTION)
    if not text.strip():
        raise BridgeRefusal("Batch script contains only whitespace!", BAD_OPTION)
    if not text.startswith("#!"):
        raise BridgeRefusal(NOT_A_BATCH_SCRIPT, BAD_OPTION)
    if "\0" in text:
        raise BridgeRefusal("The Slurm controller does not allow scripts that contain a NULL "
                            "character '\\0'.", BAD_OPTION)
    if "\r\n" in text:
        raise BridgeRefusal("Batch script contains DOS line breaks (\\r\\n) instead of expected "
                            "UNIX line breaks (\\n).", BAD_OPTION)


def _is_command(line: str) -> bool:
    """sbatch stops reading directives at the first line with something before any ``#``."""
    stripped = line.lstrip()
    return bool(stripped) and not stripped.startswith("#")


def _line_words(rest: str, lineno: int) -> list[str]:
    """Split the text after ``#SBATCH`` like sbatch's ``get_argument``."""
    words: list[str] = []
    pos = len(rest) - len(rest.lstrip())
    while True:
        start = pos
        while pos < len(rest) and rest[pos].isspace():
            pos += 1
        if pos < len(rest) and rest[pos] == ":":
            raise BridgeRefusal(f"line {lineno}: Unexpected `:` in [{rest[start:]}]", BAD_OPTION)
        word, pos = _next_word(rest, pos, lineno, rest[start:])
        if word is None:
            return words
        words.append(word)


def _next_word(rest: str, pos: int, lineno: int, shown: str) -> tuple[str | None, int]:
    chars: list[str] = []
    quote = ""
    escaped = False
    while pos < len(rest) and (quote or not rest[pos].isspace()):
        c = rest[pos]
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
            pos += 1
            continue
        elif quote:
            if c == quote:
                quote = ""
                pos += 1
                continue
        elif c in "\"'":
            quote = c
            pos += 1
            continue
        elif c == "#":
            break
        chars.append(c)
        pos += 1
    if quote:
        raise BridgeRefusal(f"line {lineno}: Unmatched `{quote}` in [{shown}]", BAD_OPTION)
    if not chars:
        # sbatch returns "no argument" here: an empty word ("") or a comment ends the line
        return None, pos
    return "".join(chars), pos


# -- getopt_long ------------------------------------------------------------------------

@dataclass(frozen=True)
class ParsedOption:
    spec: OptionSpec
    value: str | None
    from_script: bool


def parse_options(argv: Sequence[str], from_script: bool = False) -> tuple[list[ParsedOption], list[str]]:
    """getopt_long over ``argv`` with sbatch's table (``+``: stop at the first non-option).

    Returns the options in order and the words left over (the script and its arguments).
    """
    found: list[ParsedOption] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return found, list(argv[i + 1:])
        if not word.startswith("-") or word == "-":
            return found, list(argv[i:])
        if word.startswith("--"):
            spec, value, i = _long_option(argv, i)
            found.append(ParsedOption(spec, value, from_script))
            continue
        i = _short_options(argv, i, found, from_script)
    return found, []


def _long_option(argv: Sequence[str], i: int) -> tuple[OptionSpec, str | None, int]:
    body = argv[i][2:]
    name, has_value, value = body.partition("=")
    spec = _LONG.get(name) or _unique_prefix(name, body)
    if spec.has_arg == NONE:
        if has_value:
            raise BridgeRefusal(f"option '--{spec.name}' doesn't allow an argument", BAD_OPTION)
        return spec, None, i + 1
    if has_value:
        return spec, value, i + 1
    if spec.has_arg == OPTIONAL:
        return spec, None, i + 1
    if i + 1 >= len(argv):
        raise BridgeRefusal(f"option '--{spec.name}' requires an argument", BAD_OPTION)
    return spec, argv[i + 1], i + 2


def _unique_prefix(name: str, body: str) -> OptionSpec:
    matches = [spec for spec in SBATCH_OPTIONS if spec.name.startswith(name)] if name else []
    if not matches:
        raise BridgeRefusal(f"unrecognized option '--{body}'", BAD_OPTION)
    first = matches[0]
    if all((m.key, m.has_arg) == (first.key, first.has_arg) for m in matches):
        return first
    names = " ".join(f"'--{m.name}'" for m in matches)
    raise BridgeRefusal(f"option '--{body}' is ambiguous; possibilities: {names}", BAD_OPTION)


def _short_options(argv: Sequence[str], i: int, found: list[ParsedOption], from_script: bool) -> int:
    cluster = argv[i][1:]
    for pos, letter in enumerate(cluster):
        spec = _SHORT.get(letter)
        if spec is None:
            raise BridgeRefusal(f"invalid option -- '{letter}'", BAD_OPTION)
        rest = cluster[pos + 1:]
        if spec.has_arg == NONE:
            found.append(ParsedOption(spec, None, from_script))
            continue
        if rest:
            found.append(ParsedOption(spec, rest, from_script))
            return i + 1
        if spec.has_arg == OPTIONAL:
            found.append(ParsedOption(spec, None, from_script))
            return i + 1
        if i + 1 >= len(argv):
            raise BridgeRefusal(f"option requires an argument -- '{letter}'", BAD_OPTION)
        found.append(ParsedOption(spec, argv[i + 1], from_script))
        return i + 2
    return i + 1


# -- sbatch's option values -------------------------------------------------------------


@dataclass
class _SbatchOptions:
    """sbatch's ``slurm_opt_t``, only the fields that reach the bridge (private, per call)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    job_name: str | None = None
    constraint: str | None = None
    array_inx: str | None = None
    chdir: str | None = None
    nodes_set: bool = False
    min_nodes: int = 1
    max_nodes: int = 0
    ntasks: int = 1
    ntasks_set: bool = False
    ntasks_per_node: int | None = None
    ntasks_per_gpu: int | None = None
    ntasks_per_tres: int | None = None
    cpus_per_task: int | None = None
    cpus_per_gpu: int | None = None
    pn_min_memory: int | None = None
    mem_per_cpu: int | None = None
    mem_per_gpu: int | None = None
    gpus: str | None = None
    gpus_per_node: str | None = None
    gpus_per_socket: str | None = None
    gpus_per_task: str | None = None
    gres: str | None = None
    shared: int | None = None
    time_limit: int | None = None
    sockets_per_node: int | None = None
    cores_per_socket: int | None = None
    threads_per_core: int | None = None
    hint: str | None = None
    wrap: bool = False
    spank: dict[str, str] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)


def request_from_sbatch(script_text: str, argv: Sequence[str], uid: int, gid: int, *,
                        script_name: str | None = None) -> SlurmJobRequest:
    """The ``SlurmJobRequest`` sbatch 22.05 would send for ``script_text`` and options ``argv``.

    ``argv`` holds sbatch's options (without ``sbatch`` itself); words after the first
    non-option are the script's own arguments and are ignored. ``script_name`` gives the job its
    default name, as sbatch names a job after its script.
    """
    directives = parse_directives(script_text)
    script_opts, leftover = parse_options(directives, from_script=True)
    if leftover:
        raise BridgeRefusal(f"Invalid directive found in batch script: {leftover[0]}", BAD_OPTION)
    cli_opts, _script_args = parse_options(argv)
    if any(word == ":" for word in _script_args[:1]):
        raise BridgeRefusal(HETJOB_MESSAGE, "ESLURM_NOT_SUPPORTED")
    opts = _SbatchOptions()
    for parsed in script_opts + cli_opts:
        _apply(opts, parsed.spec, parsed.value)
    _verify(opts)
    desc = _job_desc(opts, script_name)
    _gpu_derivations(desc, opts)
    return desc.request(uid, gid, " ".join(["sbatch", *argv]))


def _apply(opts: _SbatchOptions, spec: OptionSpec, value: str | None) -> None:
    """sbatch's set function for one option; options the bridge does not read are accepted."""
    name = spec.key
    opts.seen.add(name)
    text = value if value is not None else ""
    if name in _NOT_A_REQUEST:
        raise BridgeRefusal(f"--{name} does not submit a job", BAD_OPTION)
    setter = _SETTERS.get(name)
    if setter is not None:
        setter(opts, text, value)


def _set_nodes(opts: _SbatchOptions, text: str, _v: str | None) -> None:
    opts.min_nodes, opts.max_nodes = parse_node_count(text)
    opts.nodes_set = True


def _set_ntasks(opts: _SbatchOptions, text: str, _v: str | None) -> None:
    opts.ntasks = parse_int("--ntasks", text, positive=True)
    opts.ntasks_set = True


def _set_cpus_per_task(opts: _SbatchOptions, text: str, _v: str | None) -> None:
    opts.cpus_per_task = parse_int("--cpus-per-task", text, positive=True)


def _set_mem(opts: _SbatchOptions, text: str, _v: str | None) -> None:
    opts.pn_min_memory = _mbytes("--mem", text)


def _set_mem_per_cpu(opts: _SbatchOptions, text: str, _v: str | None) -> None:
    opts.mem_per_cpu = _mbytes("--mem-per-cpu", text)


def _set_mem_per_gpu(opts: _SbatchOptions, text: str, _v: str | None) -> None:
    opts.mem_per_gpu = _mbytes("--mem-per-gpu", text)


def _set_exclusive(opts: _SbatchOptions, text: str, value: str | None) -> None:
    choices = {"exclusive": SHARED_NONE, "oversubscribe": SHARED_OK, "user": SHARED_USER,
               "mcs": SHARED_MCS}
    if value is None:
        opts.shared = SHARED_NONE
    elif text.lower() in choices:
        opts.shared = choices[text.lower()]
    else:
        raise BridgeRefusal("Invalid --exclusive specification", BAD_OPTION)


def _set_oversubscribe(opts: _SbatchOptions, _t: str, _v: str | None) -> None:
    opts.shared = SHARED_OK


def _set_time(opts: _SbatchOptions, text: str, _v: str | None) -> None:
    minutes = time_str2mins(text)
    if minutes is None:
        raise BridgeRefusal("Invalid --time specification", "ESLURM_INVALID_TIME_LIMIT")
    opts.time_limit = UNLIMITED if minutes == 0 else minutes


def _set_gres(opts: _SbatchOptions, text: str, _v: str | None) -> None:
    if text.lower() in ("help", "list"):
        raise BridgeRefusal("--gres=help does not submit a job", BAD_OPTION)
    opts.gres = text if text.lower() == "none" else gres_prepend_tres_type(text)


def _set_extra_node_info(opts: _SbatchOptions, text: str, _v: str | None) -> None:
    parts = text.split(":")
    if not 1 <= len(parts) <= 3:
        raise BridgeRefusal("Invalid --extra-node-info specification", BAD_OPTION)
    values = [_socket_core_thread(p) for p in parts] + [None] * (3 - len(parts))
    opts.sockets_per_node, opts.cores_per_socket, opts.threads_per_core = values


def _socket_core_thread(text: str) -> int | None:
    if text == "*":
        return None
    match = re.match(r"^([0-9]+)(-([0-9]+|\*))?$", text)
    if not match or int(match.group(1)) <= 0:
        raise BridgeRefusal("Invalid --extra-node-info specification", BAD_OPTION)
    return int(match.group(1))


_Setter = Callable[[_SbatchOptions, str, "str | None"], None]


def _set_spank(name: str) -> _Setter:
    def setter(opts: _SbatchOptions, text: str, _v: str | None) -> None:
        opts.spank[name] = text
    return setter


def _string_setter(attribute: str) -> _Setter:
    def setter(opts: _SbatchOptions, text: str, _v: str | None) -> None:
        setattr(opts, attribute, text)
    return setter


def _int_setter(attribute: str, option: str) -> _Setter:
    def setter(opts: _SbatchOptions, text: str, _v: str | None) -> None:
        setattr(opts, attribute, parse_int(option, text, positive=True))
    return setter


def _set_wrap(opts: _SbatchOptions, _t: str, _v: str | None) -> None:
    opts.wrap = True


_SETTERS: dict[str, _Setter] = {
    "account": _string_setter("account"),
    "array": _string_setter("array_inx"),
    "chdir": _string_setter("chdir"),
    "constraint": _string_setter("constraint"),
    "cores-per-socket": _int_setter("cores_per_socket", "--cores-per-socket"),
    "cpus-per-gpu": _int_setter("cpus_per_gpu", "--cpus-per-gpu"),
    "cpus-per-task": _set_cpus_per_task,
    "exclusive": _set_exclusive,
    "extra-node-info": _set_extra_node_info,
    "gpus": _string_setter("gpus"),
    "gpus-per-node": _string_setter("gpus_per_node"),
    "gpus-per-socket": _string_setter("gpus_per_socket"),
    "gpus-per-task": _string_setter("gpus_per_task"),
    "gres": _set_gres,
    "hint": _string_setter("hint"),
    "job-name": _string_setter("job_name"),
    "mem": _set_mem,
    "mem-per-cpu": _set_mem_per_cpu,
    "mem-per-gpu": _set_mem_per_gpu,
    "nodes": _set_nodes,
    "ntasks": _set_ntasks,
    "ntasks-per-gpu": _int_setter("ntasks_per_gpu", "--ntasks-per-gpu"),
    "ntasks-per-node": _int_setter("ntasks_per_node", "--ntasks-per-node"),
    "ntasks-per-tres": _int_setter("ntasks_per_tres", "--ntasks-per-tres"),
    "oversubscribe": _set_oversubscribe,
    "partition": _string_setter("partition"),
    "qos": _string_setter("qos"),
    "sockets-per-node": _int_setter("sockets_per_node", "--sockets-per-node"),
    "threads-per-core": _int_setter("threads_per_core", "--threads-per-core"),
    "time": _set_time,
    "wrap": _set_wrap,
    **{name: _set_spank(name) for name in SPANK_OPTIONS},
}


def _verify(opts: _SbatchOptions) -> None:
    """sbatch's ``_opt_verify``: option conflicts and the task/node arithmetic."""
    if sum(name in opts.seen for name in _MEMORY_OPTIONS) > 1:
        raise BridgeRefusal(MEMORY_EXCLUSIVE, "ESLURM_INVALID_TASK_MEMORY")
    _verify_ntasks_per_gpu(opts)
    _apply_hint(opts)
    if (opts.ntasks_per_node is not None and not opts.ntasks_set
            and (opts.max_nodes == 0 or opts.min_nodes == opts.max_nodes)):
        opts.ntasks = opts.min_nodes * opts.ntasks_per_node
        opts.ntasks_set = True
    if opts.nodes_set and (opts.min_nodes == opts.max_nodes or opts.max_nodes == 0) and not opts.ntasks_set:
        ntasks = max(opts.min_nodes, 1)
        for factor in (opts.sockets_per_node, opts.cores_per_socket, opts.threads_per_core):
            if factor is not None:
                ntasks *= factor
                opts.ntasks_set = True
        opts.ntasks = ntasks
    elif opts.nodes_set and opts.ntasks_set:
        if opts.ntasks < opts.max_nodes:
            opts.max_nodes = opts.ntasks
        if opts.ntasks < opts.min_nodes:
            opts.min_nodes = opts.max_nodes = opts.ntasks


def _verify_ntasks_per_gpu(opts: _SbatchOptions) -> None:
    if opts.ntasks_per_gpu is None and opts.ntasks_per_tres is None:
        return
    if (opts.ntasks_per_gpu is not None and opts.ntasks_per_tres is not None
            and opts.ntasks_per_gpu != opts.ntasks_per_tres):
        raise BridgeRefusal(f"Inconsistent values set to --ntasks-per-gpu={opts.ntasks_per_gpu} and "
                            f"--ntasks-per-tres={opts.ntasks_per_tres}", BAD_GRES)
    for other in ("gpus-per-task", "gpus-per-socket"):
        if other in opts.seen:
            raise BridgeRefusal(f"--{other} is mutually exclusive with --ntasks-per-gpu and "
                                "SLURM_NTASKS_PER_GPU", BAD_GRES)


def _apply_hint(opts: _SbatchOptions) -> None:
    """``--hint`` is ignored next to -B/--threads-per-core/--ntasks-per-core (slurm_opt.c)."""
    if opts.hint is None or {"ntasks-per-core", "threads-per-core", "extra-node-info"} & opts.seen:
        return
    for token in re.sub(r",(?![0-9])", ";", opts.hint).split(";"):
        word = token.lower()
        if word == "compute_bound":
            opts.sockets_per_node = opts.cores_per_socket = None
            opts.threads_per_core = 1
        elif word == "memory_bound":
            opts.cores_per_socket = opts.threads_per_core = 1
        elif word == "multithread":
            opts.threads_per_core = None
        elif word == "nomultithread":
            opts.threads_per_core = 1
        else:
            raise BridgeRefusal(f'unrecognized --hint argument "{token}", see --hint=help', BAD_OPTION)


# -- job_desc ---------------------------------------------------------------------------

@dataclass
class _JobDesc:
    """The job_desc fields sbatch sends, before and after the client-side GRES checks."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    name: str | None = None
    features: str | None = None
    array_inx: str | None = None
    work_dir: str | None = None
    min_nodes: int | None = None
    max_nodes: int | None = None
    num_tasks: int | None = None
    ntasks_per_node: int | None = None
    cpus_per_task: int | None = None
    pn_min_memory: int | None = None
    mem_per_cpu: bool = False
    tres_per_node: str | None = None
    tres_per_job: str | None = None
    tres_per_task: str | None = None
    tres_per_socket: str | None = None
    ntasks_per_tres: int | None = None
    cpus_per_tres: str | None = None
    mem_per_tres: str | None = None
    time_limit: int | None = None
    shared: int | None = None
    spank_options: dict[str, str] = field(default_factory=dict)

    def request(self, uid: int, gid: int, submit_line: str) -> SlurmJobRequest:
        return SlurmJobRequest(
            partition=self.partition, account=self.account, qos=self.qos, name=self.name,
            features=self.features, array_inx=self.array_inx, work_dir=self.work_dir,
            min_nodes=self.min_nodes, max_nodes=self.max_nodes, num_tasks=self.num_tasks,
            ntasks_per_node=self.ntasks_per_node, cpus_per_task=self.cpus_per_task,
            pn_min_memory=self.pn_min_memory, mem_per_cpu=self.mem_per_cpu,
            tres_per_node=self.tres_per_node, tres_per_job=self.tres_per_job,
            tres_per_task=self.tres_per_task, tres_per_socket=self.tres_per_socket,
            ntasks_per_tres=self.ntasks_per_tres,
            cpus_per_tres=self.cpus_per_tres, mem_per_tres=self.mem_per_tres,
            time_limit=self.time_limit, shared=self.shared, spank_options=dict(self.spank_options),
            user_id=uid, group_id=gid, submit_line=submit_line,
        )


def _job_desc(opts: _SbatchOptions, script_name: str | None) -> _JobDesc:
    """``slurm_opt_create_job_desc`` for the fields the bridge reads."""
    desc = _JobDesc(
        partition=opts.partition, account=opts.account, qos=opts.qos,
        name=_job_name(opts, script_name), features=opts.constraint,
        array_inx=opts.array_inx, work_dir=opts.chdir,
        cpus_per_task=opts.cpus_per_task, ntasks_per_node=opts.ntasks_per_node,
        time_limit=opts.time_limit, shared=opts.shared, spank_options=dict(opts.spank),
    )
    if opts.ntasks_set:
        desc.num_tasks = opts.ntasks
    if opts.nodes_set:
        desc.min_nodes = opts.min_nodes
        desc.max_nodes = opts.max_nodes or None
    if opts.pn_min_memory is not None:
        desc.pn_min_memory = opts.pn_min_memory
    elif opts.mem_per_cpu is not None:
        desc.pn_min_memory, desc.mem_per_cpu = opts.mem_per_cpu, True
    if opts.cpus_per_gpu:
        desc.cpus_per_tres = f"gres:gpu:{opts.cpus_per_gpu}"
    if opts.mem_per_gpu is not None:
        desc.mem_per_tres = f"gres:gpu:{opts.mem_per_gpu}"
    desc.tres_per_job = xfmt_tres(None, "gres:gpu", opts.gpus)
    desc.tres_per_node = xfmt_tres(None, "gres:gpu", opts.gpus_per_node)
    if opts.gres and opts.gres.lower() != "none":
        desc.tres_per_node = f"{desc.tres_per_node},{opts.gres}" if desc.tres_per_node else opts.gres
    desc.tres_per_socket = xfmt_tres(None, "gres:gpu", opts.gpus_per_socket)
    per_gpu = opts.ntasks_per_gpu if opts.ntasks_per_gpu is not None else opts.ntasks_per_tres
    if per_gpu is not None:
        desc.ntasks_per_tres = per_gpu
    desc.tres_per_task = xfmt_tres(None, "gres:gpu", opts.gpus_per_task)
    return desc


def _job_name(opts: _SbatchOptions, script_name: str | None) -> str | None:
    if opts.job_name is not None:
        return opts.job_name
    if opts.wrap:
        return "wrap"
    if script_name:
        return os.path.basename(script_name)
    return "sbatch"


@dataclass
class _GpuRecord:
    """One ``gpu[:type]`` record of sbatch's client-side gres list."""

    type: str | None
    per_job: int = 0
    per_node: int = 0
    per_socket: int = 0
    per_task: int = 0
    total: int = 0


def _gpu_derivations(desc: _JobDesc, opts: _SbatchOptions) -> None:
    """The job_desc changes of sbatch's client-side ``gres_job_state_validate`` (GPUs only)."""
    ntasks_per_tres = opts.ntasks_per_tres or opts.ntasks_per_gpu
    if not any((desc.cpus_per_tres, desc.tres_per_job, desc.tres_per_node, desc.tres_per_socket,
                desc.tres_per_task, desc.mem_per_tres, ntasks_per_tres)):
        return
    if ((desc.tres_per_task or ntasks_per_tres) and desc.num_tasks is None
            and desc.min_nodes is not None and desc.min_nodes == desc.max_nodes):
        if ntasks_per_tres:
            desc.num_tasks = desc.min_nodes * ntasks_per_tres
        elif desc.ntasks_per_node is not None:
            desc.num_tasks = desc.min_nodes * desc.ntasks_per_node
        elif desc.cpus_per_task is None:
            desc.num_tasks = desc.min_nodes
    records = _gpu_records(desc)
    if ntasks_per_tres:
        if records:
            desc.num_tasks = sum(r.total for r in records) * ntasks_per_tres
        elif desc.num_tasks is not None:
            # sbatch asks for num_tasks / ntasks_per_gpu GPUs without any tres_per_* field;
            # SlurmJobRequest has no field to carry that request.
            raise BridgeRefusal("--ntasks-per-gpu without --gpus, --gpus-per-node or --gres is not "
                                "supported by slurm-k8s-bridge: give the GPU count", BAD_GRES)
        else:
            raise BridgeRefusal("gres_job_state_validate: --ntasks-per-tres needs either a GRES GPU "
                                "specification or a node/ntask specification", BAD_GRES)
    if desc.mem_per_tres and not records:
        raise BridgeRefusal(f"Requested mem_per_tres={desc.mem_per_tres} but did not request any GPU.",
                            BAD_GRES)
    typed = {r.type is not None for r in records}
    if len(typed) > 1:
        raise BridgeRefusal("Invalid GRES specification (with and without type identification)",
                            "ESLURM_INVALID_GRES_TYPE")
    for record in records:
        _test_gres_cnt(record, desc, opts, ntasks_per_tres)


def _gpu_records(desc: _JobDesc) -> list[_GpuRecord]:
    records: dict[str | None, _GpuRecord] = {}

    def each(text: str | None) -> list[tuple[_GpuRecord, int]]:
        out = []
        for item in (text or "").split(","):
            parsed = _gres_item(item)
            if parsed is None:
                continue
            gpu_type, count = parsed
            record = records.setdefault(gpu_type, _GpuRecord(gpu_type))
            out.append((record, count))
        return out

    for record, count in each(desc.tres_per_job):
        record.per_job = count
        record.total = max(record.total, count)
    for record, count in each(desc.tres_per_node):
        record.per_node = count
        record.total = max(record.total, count * desc.min_nodes if desc.min_nodes is not None else count)
    for record, count in each(desc.tres_per_socket):
        record.per_socket = count
        record.total = max(record.total, count)
    for record, count in each(desc.tres_per_task):
        record.per_task = count
        record.total = max(record.total, count * desc.num_tasks if desc.num_tasks is not None else count)
    return list(records.values())


def _gres_item(item: str) -> tuple[str | None, int] | None:
    """``gres:gpu[:type][:count]`` -> (type, count); None for other GRES or empty items."""
    parts = item.split(":")
    if parts and parts[0] == "gres":
        parts = parts[1:]
    if not parts or parts[0] != "gpu":
        return None
    rest = parts[1:]
    count = 1
    if rest and re.fullmatch(r"[0-9]+", rest[-1]):
        count = int(rest.pop())
    if len(rest) > 1:
        raise BridgeRefusal("Invalid generic resource (gres) specification", BAD_GRES)
    return (rest[0] if rest else None), count


def _test_gres_cnt(r: _GpuRecord, desc: _JobDesc, opts: _SbatchOptions, ntasks_per_tres: int | None) -> None:
    """sbatch's ``_test_gres_cnt``: consistency of the GPU options, and what they imply."""
    def fail(message: str) -> None:
        raise BridgeRefusal(message, BAD_GRES)

    if r.per_job and ((r.per_node and r.per_node > r.per_job) or (r.per_task and r.per_task > r.per_job)
                      or (r.per_socket and r.per_socket > r.per_job)):
        fail("Failed to ensure --gpus >= --gres=gpu/--gpus-per-node >= --gpus-per-socket")
    if r.per_node and ((r.per_task and r.per_task > r.per_node)
                       or (r.per_socket and r.per_socket > r.per_node)):
        fail("Failed to ensure --gpus >= --gpus-per-task")
    if r.per_socket and opts.sockets_per_node is None:
        fail("--gpus-per-socket option requires --sockets-per-node specification")
    if opts.cpus_per_gpu and desc.cpus_per_task is not None:
        fail("--cpus-per-gpu is mutually exclusive with --cpus-per-task")
    if r.per_job and r.per_node:
        if r.per_job % r.per_node:
            fail("Failed to validate job spec, --gpus is not multiple of --gres=gpu/--gpus-per-node")
        req_nodes = r.per_job // r.per_node
        max_nodes = desc.max_nodes
        if ((desc.min_nodes is not None and req_nodes < desc.min_nodes)
                or (max_nodes is not None and req_nodes > max_nodes)):
            fail(f"Failed to validate job spec. Based on --gpu and --gres=gpu/--gpus-per-node required "
                 f"nodes ({req_nodes}) doesn't fall between min_nodes ({_c(desc.min_nodes)}) and "
                 f"max_nodes ({_c(max_nodes)}) boundaries.")
        desc.min_nodes = desc.max_nodes = req_nodes
    if r.per_node and r.per_socket and r.per_node % r.per_socket:
        fail("Failed to validate job spec, --gres=gpu/--gpus-per-node not multiple of --gpus-per-socket.")
    if ntasks_per_tres and desc.num_tasks is not None and desc.num_tasks % ntasks_per_tres:
        fail("Failed to validate job spec, -n/--ntasks has to be a multiple of --ntasks-per-gpu.")
    if r.per_task:
        if r.per_job:
            if r.per_job % r.per_task:
                fail("Failed to validate job spec, --gpus not multiple of --gpus-per-task")
            req_tasks = r.per_job // r.per_task
            if desc.num_tasks is None:
                desc.num_tasks = req_tasks
            elif desc.num_tasks != req_tasks:
                fail("Failed to validate job spec. Based on --gpus and --gpus-per-task number of "
                     "requested tasks differ from -n/--ntasks.")
        elif desc.num_tasks is None:
            fail("Failed to validate job spec. --gpus-per-task used without either --gpus or "
                 "-n/--ntasks is not allowed.")
    if r.per_node and r.per_task:
        if r.per_node % r.per_task:
            fail("Failed to validate job spec, --gres=gpu/--gpus-per-node not multiple of --gpus-per-task.")
        per_node_tasks = r.per_node // r.per_task
        if not desc.ntasks_per_node:
            desc.ntasks_per_node = per_node_tasks
        elif desc.ntasks_per_node != per_node_tasks:
            fail("Failed to validate job spec. Based on --gres=gpu/--gpus-per-node and --gpus-per-task "
                 "requested number of tasks per node differ from --ntasks-per-node.")
    if opts.cpus_per_gpu and r.per_task:
        want = opts.cpus_per_gpu * r.per_task
        if desc.cpus_per_task is None:
            desc.cpus_per_task = want
    if r.per_job:
        if desc.min_nodes is not None and r.per_job < desc.min_nodes:
            fail("Failed to validate job spec, --gpus < -N")
        if desc.max_nodes is not None and r.per_job < desc.max_nodes:
            desc.max_nodes = r.per_job


def _c(value: int | None) -> str:
    return str(value) if value is not None else "4294967294"


# -- Slurm's value parsers --------------------------------------------------------------

def parse_int(option: str, text: str, positive: bool) -> int:
    """Slurm's ``parse_int``: a whole number, > 0 when ``positive``."""
    match = re.fullmatch(r"\s*([+-]?[0-9]+)", text)
    number = int(match.group(1)) if match else -1
    if number < 0 or (positive and number <= 0):
        raise BridgeRefusal(f'Invalid numeric value "{text}" for {option}.', BAD_OPTION)
    return number


def parse_node_count(text: str) -> tuple[int, int]:
    """Slurm's ``verify_node_count``: ``N`` or ``MIN-MAX`` (``k``/``m`` multiply by 1024)."""
    if "-" in text:
        low, high = text.split("-", 1)
        minimum = _nodes(low)
        if minimum < 0:
            minimum = 1
        maximum = _nodes(high)
        if maximum != 0 and maximum < minimum:
            raise BridgeRefusal(f"Maximum node count {maximum} is less than minimum node count "
                                f"{minimum}", "ESLURM_INVALID_NODE_COUNT")
        return minimum, maximum
    count = _nodes(text)
    if count < 0:
        raise BridgeRefusal(f'"{text}" is not a valid node count', "ESLURM_INVALID_NODE_COUNT")
    return count, count


def _nodes(text: str) -> int:
    match = re.match(r"^\s*([+-]?[0-9]+)([kK])?([mM])?(.*)$", text)
    if not match:
        if text.strip():
            raise BridgeRefusal(f'"{text}" is not a valid node count', "ESLURM_INVALID_NODE_COUNT")
        return -1
    number = int(match.group(1))
    if match.group(2):
        number *= 1024
    if match.group(3):
        number *= 1024 * 1024
    if match.group(4).strip():
        raise BridgeRefusal(f'"{text}" is not a valid node count', "ESLURM_INVALID_NODE_COUNT")
    return number


def str_to_mbytes(text: str) -> int | None:
    """Slurm's ``str_to_mbytes``: MB by default, K/M/G/T suffixes (optionally ``B``); K rounds up."""
    match = re.fullmatch(r"\s*([+-]?[0-9]+)([kKmMgGtT][bB]?)?", text)
    if not match:
        return None
    number = int(match.group(1))
    if number < 0:
        return None
    unit = (match.group(2) or "m")[0].lower()
    if unit == "k":
        return (number + 1023) // 1024
    return number * {"m": 1, "g": 1024, "t": 1024 * 1024}[unit]


def _mbytes(option: str, text: str) -> int:
    value = str_to_mbytes(text)
    if value is None:
        raise BridgeRefusal(f"Invalid {option} specification", "ESLURM_INVALID_TASK_MEMORY")
    return value


def time_str2mins(text: str) -> int | None:
    """Slurm's ``time_str2mins``: minutes (seconds round up), ``UNLIMITED`` for no limit.

    Formats: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``; ``-1``, ``INFINITE``,
    ``UNLIMITED`` (any case). ``None`` when the text is not a time. ``0`` stays 0 here; sbatch
    turns a zero ``--time`` into UNLIMITED.
    """
    if text.lower() in ("-1", "infinite", "unlimited"):
        return UNLIMITED
    if not _is_valid_timespec(text):
        return None
    days = hours = minutes = seconds = 0
    if "-" in text:
        fields = _scan_ints(text, "-::") + [0, 0, 0, 0]
        days, hours, minutes, seconds = fields[:4]
    else:
        fields = _scan_ints(text, "::")
        if len(fields) == 3:
            hours, minutes, seconds = fields
        else:
            fields += [0, 0]
            minutes, seconds = fields[:2]
    total = days * 86400 + hours * 3600 + minutes * 60 + seconds
    if total < 0:
        return None
    return (total + 59) // 60


def _is_valid_timespec(text: str) -> bool:
    """Slurm's ``_is_valid_timespec`` (parse_time.c), character for character."""
    digits = dashes = colons = 0
    in_number = False
    for c in text:
        if c.isdigit() and c.isascii():
            if not in_number:
                digits += 1
                in_number = True
        elif c == "-":
            in_number = False
            dashes += 1
            if colons:
                return False
        elif c == ":":
            in_number = False
            colons += 1
        else:
            return False
    if not digits or dashes > 1 or colons > 2:
        return False
    least = {1: 3, 2: 4} if dashes else {1: 2, 2: 3}
    return digits >= least.get(colons, 0)


def _scan_ints(text: str, separators: str) -> list[int]:
    """``sscanf(text, "%d<s1>%d<s2>%d...")``: the integers read before the first mismatch."""
    values: list[int] = []
    pos = 0
    for index in range(len(separators) + 1):
        match = re.match(r"\s*([+-]?[0-9]+)", text[pos:])
        if not match:
            break
        values.append(int(match.group(1)))
        pos += match.end()
        if index == len(separators) or not text[pos:].startswith(separators[index]):
            break
        pos += 1
    return values


def gres_prepend_tres_type(text: str) -> str:
    """Slurm's ``gres_prepend_tres_type``: ``gpu:2,shard:1`` -> ``gres:gpu:2,gres:shard:1``."""
    return ("gres:" + text).replace(",", ",gres:").replace("gres:gres:", "gres:")


def xfmt_tres(current: str | None, prefix: str, text: str | None) -> str | None:
    """Slurm's ``xfmt_tres``: ``h100:4,2`` with ``gres:gpu`` -> ``gres:gpu:h100:4,gres:gpu:2``."""
    if not text:
        return current
    items = [f"{prefix}:{token}" for token in text.split(",") if token]
    joined = ",".join(items)
    return f"{current},{joined}" if current else (joined or None)
