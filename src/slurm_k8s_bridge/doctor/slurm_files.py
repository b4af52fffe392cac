"""Reading what a Slurm host has on disk, for the doctor: slurm.conf (with its ``Include``
files), plugstack.conf, Slurm hostlists, and two facts out of a built plugin ``.so`` -- the
Slurm version it was compiled against (its ``plugin_version`` symbol, which Slurm's plugin
loader compares with its own) and the bridge contract it carries (``k8sb-contract:{...}``).

No processes, no network: files in, plain values out; every problem a ``SlurmFileError``
naming the file.
"""

from __future__ import annotations

import glob
import re
import shlex
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

#: record lines: every ``key=value`` of the line belongs to the record of its first key
RECORD_KEYS = ("nodename", "partitionname", "nodeset", "downnodes", "frontendname")
#: most names one hostlist may expand to (a typo like ``n[0-99999999]`` must not hang us)
MAX_HOSTS = 100_000
MAX_INCLUDE_DEPTH = 8
CONTRACT_MARK = b"k8sb-contract:"
_CONTRACT_RE = re.compile(rb"k8sb-contract:\{[^}]*\}")


class SlurmFileError(Exception):
    """A file the doctor cannot read or make sense of; the message names it."""


@dataclass
class SlurmConf:
    """slurm.conf as slurmctld reads it: simple options (last one wins, keys lower-cased)
    and the records of NodeName / PartitionName / NodeSet lines (``DEFAULT`` applied)."""

    path: Path
    options: dict[str, str] = field(default_factory=dict)
    nodes: list[dict[str, str]] = field(default_factory=list)
    partitions: list[dict[str, str]] = field(default_factory=list)
    nodesets: list[dict[str, str]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.options.get(key.lower(), default)

    def list_option(self, key: str) -> list[str]:
        """A comma-separated option (``JobSubmitPlugins=lua,k8s``) as its items."""
        return [v.strip() for v in (self.get(key) or "").split(",") if v.strip()]

    def plugstack_path(self) -> Path:
        """``PlugStackConfig``, else plugstack.conf beside slurm.conf (Slurm's default)."""
        value = self.get("PlugStackConfig")
        return Path(value) if value else self.path.parent / "plugstack.conf"

    def plugin_dirs(self) -> list[Path]:
        value = self.get("PluginDir")
        return [Path(p) for p in value.split(":") if p] if value else []

    def partition(self, name: str) -> dict[str, str] | None:
        for part in self.partitions:
            if part.get("partitionname") == name:
                return part
        return None


def parse_slurm_conf(path: str | Path) -> SlurmConf:
    conf = SlurmConf(Path(path))
    defaults: dict[str, dict[str, str]] = {"nodename": {}, "partitionname": {}}
    for line in _conf_lines(Path(path), conf.files, 0):
        pairs = split_pairs(line)
        if not pairs:
            continue
        first = pairs[0][0].lower()
        if first in RECORD_KEYS:
            record = {k.lower(): v for k, v in pairs}
            if first in defaults and record[first].upper() == "DEFAULT":
                defaults[first].update({k: v for k, v in record.items() if k != first})
                continue
            merged = {**defaults.get(first, {}), **record}
            {"nodename": conf.nodes, "partitionname": conf.partitions,
             "nodeset": conf.nodesets}.get(first, []).append(merged)
        else:
            for key, value in pairs:
                conf.options[key.lower()] = value
    return conf


def _read_included(path: Path, depth: int, keyword: str) -> str:
    """A configuration file's text, ``depth`` includes down (refused past the limit)."""
    if depth > MAX_INCLUDE_DEPTH:
        raise SlurmFileError(f"{path}: {keyword} nested more than {MAX_INCLUDE_DEPTH} deep")
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise SlurmFileError(f"{path}: cannot be read: {exc.strerror}") from None


def _conf_lines(path: Path, seen: list[Path], depth: int) -> Iterable[str]:
    text = _read_included(path, depth, "Include")
    seen.append(path)
    for line in _logical_lines(text):
        words = line.split(None, 1)
        if words and words[0].lower() == "include" and len(words) == 2:
            target = words[1].strip()
            pattern = target if target.startswith("/") else str(path.parent / target)
            matches = sorted(glob.glob(pattern)) or [pattern]
            for match in matches:
                yield from _conf_lines(Path(match), seen, depth + 1)
        else:
            yield line


def _logical_lines(text: str) -> Iterable[str]:
    """Lines without comments, with ``\\``-continued lines joined."""
    pending = ""
    for raw in text.splitlines():
        line = re.sub(r"(?<!\\)#.*", "", raw).rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            yield line
    if pending.strip():
        yield pending.strip()


def split_pairs(line: str) -> list[tuple[str, str]]:
    """``NodeName=a[0-3] CPUs=8 Feature="x,y"`` -> [(NodeName, a[0-3]), (CPUs, 8), ...];
    words without ``=`` are kept with an empty value."""
    try:
        words = shlex.split(line, comments=False, posix=True)
    except ValueError:
        words = line.split()
    pairs = []
    for word in words:
        key, _, value = word.partition("=")
        pairs.append((key, value))
    return pairs


# -- hostlists ------------------------------------------------------------------------

def split_top_level(text: str) -> list[str]:
    """``a[0-3],b,c[1,2]`` -> [``a[0-3]``, ``b``, ``c[1,2]``]: commas outside brackets."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def expand_hostlist(text: str, limit: int = MAX_HOSTS) -> list[str]:
    """Every name of a Slurm hostlist (``gpu-[00-03,7],login``), in order."""
    names: list[str] = []
    for item in split_top_level(text):
        names.extend(_expand_one(item, limit - len(names)))
        if len(names) > limit:
            raise SlurmFileError(f"hostlist {text!r} names more than {limit} hosts")
    return names


def _expand_one(item: str, limit: int) -> list[str]:
    match = re.search(r"\[([^\]]*)\]", item)
    if not match:
        return [item]
    head, tail = item[:match.start()], item[match.end():]
    values: list[str] = []
    for part in match.group(1).split(","):
        lo, dash, hi = part.partition("-")
        if not dash:
            values.append(lo)
            continue
        if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
            raise SlurmFileError(f"bad range [{part}] in hostlist {item!r}")
        if int(hi) - int(lo) + 1 > limit:
            raise SlurmFileError(f"hostlist {item!r} names more than {MAX_HOSTS} hosts")
        values.extend(str(n).zfill(len(lo)) for n in range(int(lo), int(hi) + 1))
    out: list[str] = []
    for value in values:
        out.extend(_expand_one(head + value + tail, limit - len(out)))
        if len(out) > limit:
            raise SlurmFileError(f"hostlist {item!r} names more than {MAX_HOSTS} hosts")
    return out


# -- node records ---------------------------------------------------------------------

@dataclass(frozen=True)
class NodeLine:
    """What one NodeName line offers a job (the figures slurmctld checks a job against)."""

    names: tuple[str, ...]
    cpus: int
    memory_mb: int
    gres: Mapping[tuple[str, str | None], int]   # (name, type or None) -> count
    features: frozenset[str]
    state: str

    def gres_count(self, name: str, gtype: str | None) -> int:
        return self.gres.get((name, gtype), 0)


def node_line(record: Mapping[str, str]) -> NodeLine:
    def number(key: str, default: int) -> int:
        value = record.get(key, "")
        return int(value) if value.isdigit() else default

    sockets = number("sockets", 1) * number("boards", 1)
    computed = sockets * number("corespersocket", 1) * number("threadspercore", 1)
    cpus = number("cpus", computed if "corespersocket" in record else 1)
    features = record.get("feature", record.get("features", ""))
    return NodeLine(names=tuple(expand_hostlist(record.get("nodename", ""))),
                    cpus=cpus, memory_mb=number("realmemory", 1),
                    gres=parse_gres(record.get("gres", "")),
                    features=frozenset(f.strip() for f in features.split(",") if f.strip()),
                    state=record.get("state", "").upper())


def parse_gres(text: str) -> dict[tuple[str, str | None], int]:
    """``gpu:h100:8,gpu:1g.10gb:56`` -> {(gpu, h100): 8, (gpu, 1g.10gb): 56}; ``gpu:4`` ->
    {(gpu, None): 4}. Counts may carry K/M/G suffixes (Slurm's)."""
    out: dict[tuple[str, str | None], int] = {}
    for item in split_top_level(text):
        parts = item.split("(")[0].split(":")
        name = parts[0]
        gtype: str | None = None
        count = 1
        if len(parts) == 2:
            if _count(parts[1]) is None:
                gtype = parts[1]
            else:
                count = _count(parts[1]) or 0
        elif len(parts) >= 3:
            gtype, count = parts[1], _count(parts[2]) or 0
        out[(name, gtype)] = out.get((name, gtype), 0) + count
    return out


def _count(text: str) -> int | None:
    match = re.fullmatch(r"([0-9]+)([KMG]?)", text)
    if not match:
        return None
    return int(match.group(1)) * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[match.group(2)]


# -- plugstack.conf -------------------------------------------------------------------

@dataclass(frozen=True)
class PlugstackEntry:
    """``required|optional PATH [ARGS]`` of plugstack.conf (or a file it includes)."""

    kind: str
    path: str
    args: tuple[str, ...]
    source: Path

    def arg(self, key: str) -> str | None:
        for arg in self.args:
            name, eq, value = arg.partition("=")
            if eq and name == key:
                return value
        return None

    def resolve(self, plugin_dirs: Iterable[Path]) -> Path:
        """Where Slurm finds the plugin: an absolute path, else the first PluginDir
        that holds it."""
        path = Path(self.path)
        if path.is_absolute():
            return path
        dirs = list(plugin_dirs)
        for directory in dirs:
            if (directory / path).exists():
                return directory / path
        return (dirs[0] if dirs else Path(".")) / path


def parse_plugstack(path: str | Path) -> list[PlugstackEntry]:
    entries: list[PlugstackEntry] = []
    _plugstack_into(Path(path), entries, 0)
    return entries


def _plugstack_into(path: Path, entries: list[PlugstackEntry], depth: int) -> None:
    text = _read_included(path, depth, "include")
    for line in _logical_lines(text):
        words = line.split()
        if words[0].lower() == "include" and len(words) >= 2:
            for match in sorted(glob.glob(words[1] if words[1].startswith("/")
                                          else str(path.parent / words[1]))):
                _plugstack_into(Path(match), entries, depth + 1)
        elif words[0] in ("required", "optional") and len(words) >= 2:
            entries.append(PlugstackEntry(words[0], words[1], tuple(words[2:]), path))


# -- built plugins --------------------------------------------------------------------

def version_text(number: int) -> str:
    """``0x160508`` -> ``22.05.8`` (SLURM_VERSION_NUMBER's layout)."""
    return f"{(number >> 16) & 0xFF}.{(number >> 8) & 0xFF:02d}.{number & 0xFF}"


def version_number(text: str) -> int | None:
    """``slurm-wlm 22.05.8`` / ``slurm 24.11.5`` / ``22.05.8`` -> SLURM_VERSION_NUMBER."""
    match = re.search(r"\b([0-9]{2})\.([0-9]{1,2})\.([0-9]+)", text)
    if not match:
        return None
    major, minor, micro = (int(g) for g in match.groups())
    return (major << 16) | (minor << 8) | micro


def same_release(a: int, b: int) -> bool:
    """What Slurm's plugin loader demands: the same major and minor (24.11.x with 24.11.y)."""
    return (a >> 8) == (b >> 8)


def elf_symbol_bytes(data: bytes, symbol: str) -> bytes | None:
    """The bytes of a defined data symbol in a 64-bit little-endian ELF shared object
    (looked up in .dynsym, then .symtab); None when the object has no such symbol."""
    if data[:4] != b"\x7fELF":
        raise SlurmFileError("not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise SlurmFileError("not a 64-bit little-endian ELF file")
    try:
        shoff, = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum, _ = struct.unpack_from("<HHH", data, 0x3A)
        sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
                    for i in range(shnum)]
        for wanted_type in (11, 2):   # SHT_DYNSYM, SHT_SYMTAB
            for sec in sections:
                if sec[1] != wanted_type:
                    continue
                strtab = sections[sec[6]]
                entsize = sec[9] or 24
                for off in range(sec[4], sec[4] + sec[5], entsize):
                    st_name, _info, _other, shndx, value, size = struct.unpack_from("<IBBHQQ", data, off)
                    if shndx == 0 or shndx >= len(sections):
                        continue
                    name_at = strtab[4] + st_name
                    end = data.index(b"\x00", name_at)
                    if data[name_at:end].decode("ascii", "replace") != symbol:
                        continue
                    target = sections[shndx]
                    if target[1] == 8:  # SHT_NOBITS (.bss): no bytes in the file
                        return None
                    at = value - target[3] + target[4]
                    return data[at:at + size]
    except (struct.error, ValueError, IndexError) as exc:
        raise SlurmFileError(f"malformed ELF file ({exc})") from None
    return None


@dataclass(frozen=True)
class PluginFacts:
    """What a built plugin says about itself."""

    path: Path
    #: SLURM_VERSION_NUMBER it was compiled against (None: it has no plugin_version)
    slurm_version: int | None
    #: the ``k8sb-contract:{...}`` strings it carries (one for a bridge plugin)
    contracts: tuple[str, ...]


def read_plugin(path: str | Path) -> PluginFacts:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SlurmFileError(f"{path}: cannot be read: {exc.strerror}") from None
    try:
        raw = elf_symbol_bytes(data, "plugin_version")
    except SlurmFileError as exc:
        raise SlurmFileError(f"{path}: {exc}") from None
    version = struct.unpack("<I", raw[:4])[0] if raw is not None and len(raw) >= 4 else None
    contracts = tuple(m.decode("utf-8", "replace")[len(CONTRACT_MARK):]
                      for m in _CONTRACT_RE.findall(data))
    return PluginFacts(path, version, contracts)
