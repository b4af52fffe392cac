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
import signal as _signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from slurm_k8s_bridge.core.errors import SbatchRefusal as BridgeRefusal
from slurm_k8s_bridge.core.errors import shown
from slurm_k8s_bridge.core.contract import SPANK_OPTIONS
from slurm_k8s_bridge.core.request import KILL_JOB_BATCH, KILL_JOB_RESV, UNLIMITED, SlurmJobRequest
from slurm_k8s_bridge.slurm.sbatch_values import (
    BAD_GRES,
    BAD_OPTION,
    _JobDesc,
    _SbatchOptions,
    _gpu_derivations,
    _mbytes,
    gres_prepend_tres_type,
    parse_int,
    parse_node_count,
    time_str2mins,
    xfmt_tres,
)

NONE, REQUIRED, OPTIONAL = 0, 1, 2

NOT_A_BATCH_SCRIPT = ("This does not look like a batch script.  The first line must start with "
                      "#! followed by the path to an interpreter.")
HETJOB_MESSAGE = "heterogeneous jobs are not supported by slurm-k8s-bridge yet"
MEMORY_EXCLUSIVE = "--mem, --mem-per-cpu, and --mem-per-gpu are mutually exclusive."

#: job_desc->shared values
SHARED_NONE, SHARED_OK, SHARED_USER, SHARED_MCS = 0, 1, 2, 3
_MEMORY_OPTIONS = ("mem", "mem-per-cpu", "mem-per-gpu")
#: SPANK options of spank_k8s.so, as sbatch shows them once the plugin is in plugstack.conf.


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


#: Every option sbatch 22.05.8 accepts (slurm_opt.c ``common_options`` with a set function for
#: sbatch; the same list as ``man sbatch``), in that order: ``name`` takes no argument,
#: ``name=`` a required one, ``name?`` an optional one; ``/X`` is the short option.
_SBATCH_TABLE = """
    account=/A acctg-freq= array=/a batch= begin=/b bb= bbf= cluster-constraint= chdir=/D
    cluster= clusters=/M comment= container= context= contiguous constraint=/C core-spec=/S
    cores-per-socket= cpu-freq= cpus-per-gpu= cpus-per-task=/c deadline= delay-boot=
    dependency=/d distribution=/m error=/e exclude=/x exclusive? export= export-file=
    extra-node-info=/B get-user-env? gid= gpu-bind= gpu-freq= gpus=/G gpus-per-node=
    gpus-per-socket= gpus-per-task= gres= gres-flags= help/h hint= hold/H ignore-pbs input=/i
    job-name=/J kill-on-invalid-dep= licenses=/L mail-type= mail-user= mcs-label= mem= mem-bind=
    mem-per-cpu= mem-per-gpu= mincpus= network= nice? no-kill?/k no-requeue nodefile=/F
    nodelist=/w nodes=/N ntasks=/n ntasks-per-core= ntasks-per-gpu= ntasks-per-node=
    ntasks-per-socket= ntasks-per-tres= open-mode= output=/o overcommit/O oversubscribe/s
    parsable partition=/p power= prefer= priority= profile= propagate? qos=/q quiet/Q reboot
    requeue reservation= signal= sockets-per-node= spread-job switches= tasks-per-node=
    test-only thread-spec= threads-per-core= time=/t time-min= tmp= uid= use-min-nodes verbose/v
    version/V usage wait/W wait-all-nodes= wckey= wrap=
"""
#: the SPANK options registered by spank_k8s.so, in the same notation
_SPANK_TABLE = "k8s-image= k8s-queue= k8s-priority="
#: options sharing one meaning
_SAME_AS = {"tasks-per-node": "ntasks-per-node"}
_ARG_KINDS = {"=": REQUIRED, "?": OPTIONAL, "": NONE}


def _options(table: str) -> tuple[OptionSpec, ...]:
    out = []
    for token in table.split():
        spec, _, short = token.partition("/")
        found = re.fullmatch(r"([a-z][a-z0-9-]*)([=?]?)", spec)
        if not found:
            raise ValueError(f"bad sbatch option table entry {token!r}")
        name, kind = found.groups()
        out.append(OptionSpec(name, _ARG_KINDS[kind], short or None, _SAME_AS.get(name)))
    return tuple(out)


SBATCH_OPTIONS: tuple[OptionSpec, ...] = _options(_SBATCH_TABLE) + _options(_SPANK_TABLE)

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
            raise BridgeRefusal(f"line {lineno}: Unexpected `:` in [{shown(rest[start:])}]", BAD_OPTION)
        word, pos = _next_word(rest, pos, lineno, rest[start:])
        if word is None:
            return words
        words.append(word)


def _next_word(rest: str, pos: int, lineno: int, context: str) -> tuple[str | None, int]:
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
        raise BridgeRefusal(f"line {lineno}: Unmatched `{quote}` in [{shown(context)}]", BAD_OPTION)
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
        raise BridgeRefusal(f"unrecognized option '--{shown(body)}'", BAD_OPTION)
    first = matches[0]
    if all((m.key, m.has_arg) == (first.key, first.has_arg) for m in matches):
        return first
    names = " ".join(f"'--{m.name}'" for m in matches)
    raise BridgeRefusal(f"option '--{shown(body)}' is ambiguous; possibilities: {names}", BAD_OPTION)


def _short_options(argv: Sequence[str], i: int, found: list[ParsedOption], from_script: bool) -> int:
    cluster = argv[i][1:]
    for pos, letter in enumerate(cluster):
        spec = _SHORT.get(letter)
        if spec is None:
            raise BridgeRefusal(f"invalid option -- '{shown(letter)}'", BAD_OPTION)
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
        raise BridgeRefusal(f"Invalid directive found in batch script: {shown(leftover[0])}", BAD_OPTION)
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


#: the names Slurm 22.05's ``sig_name2num`` knows (with or without ``SIG``, any case)
_SIGNAL_NAMES = ("HUP", "INT", "QUIT", "ABRT", "KILL", "ALRM", "TERM", "USR1", "USR2", "URG",
                 "CONT", "STOP", "TSTP", "TTIN", "TTOU")
BAD_SIGNAL = "Invalid --signal specification"


def parse_signal(text: str) -> tuple[int, int, int]:
    """``[{R|B}:]SIG[@TIME]`` as sbatch's ``get_signal_opts``: (signal, seconds, flags);
    TIME defaults to 60; ``B`` sets ``KILL_JOB_BATCH``, ``R`` ``KILL_JOB_RESV``."""
    flags = 0
    rest = text
    for letter, bit in (("R", KILL_JOB_RESV), ("B", KILL_JOB_BATCH), ("R", KILL_JOB_RESV)):
        if rest[:1].upper() == letter:
            flags |= bit
            rest = rest[1:]
    if rest.startswith(":"):
        rest = rest[1:]
    name, at, when = rest.partition("@")
    if name.isdigit():
        number = int(name)
    else:
        word = name.upper()
        word = word[3:] if word.startswith("SIG") else word
        number = int(getattr(_signal, f"SIG{word}")) if word in _SIGNAL_NAMES else 0
    if not 1 <= number <= 0xFFFF:
        raise BridgeRefusal(BAD_SIGNAL, BAD_OPTION)
    if not at:
        return number, 60, flags
    if not when.isdigit() or int(when) > 0xFFFF:
        raise BridgeRefusal(BAD_SIGNAL, BAD_OPTION)
    return number, int(when), flags


def _set_signal(opts: _SbatchOptions, text: str, _v: str | None) -> None:
    opts.signal = parse_signal(text)


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


def _flag_setter(attribute: str) -> _Setter:
    """An option without argument (``--wrap``, ``-O``) that turns ``attribute`` on."""
    def setter(opts: _SbatchOptions, _t: str, _v: str | None) -> None:
        setattr(opts, attribute, True)
    return setter


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
    "overcommit": _flag_setter("overcommit"),
    "signal": _set_signal,
    "time": _set_time,
    "wrap": _flag_setter("wrap"),
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
            raise BridgeRefusal(f'unrecognized --hint argument "{shown(token)}", see --hint=help', BAD_OPTION)


# -- job_desc ---------------------------------------------------------------------------


def _job_desc(opts: _SbatchOptions, script_name: str | None) -> _JobDesc:
    """``slurm_opt_create_job_desc`` for the fields the bridge reads."""
    desc = _JobDesc(
        partition=opts.partition, account=opts.account, qos=opts.qos,
        name=_job_name(opts, script_name), features=opts.constraint,
        array_inx=opts.array_inx, work_dir=opts.chdir,
        cpus_per_task=opts.cpus_per_task, ntasks_per_node=opts.ntasks_per_node,
        time_limit=opts.time_limit, shared=opts.shared, spank_options=dict(opts.spank),
        signal=opts.signal, overcommit=opts.overcommit,
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


# -- Slurm's value parsers --------------------------------------------------------------


