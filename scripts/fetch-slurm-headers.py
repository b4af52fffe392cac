#!/usr/bin/env python3
"""Fetch Slurm's development headers (libslurm-dev) of a Debian suite, for build tests.

    scripts/fetch-slurm-headers.py SUITE [--dest DIR] [--refresh]

Prints the include directory (the one containing ``slurm/``) as the last stdout line, so
    .venv/bin/slurm-k8s-bridge plugins install --plugin-dir /tmp/p \\
        --slurm-include "$(scripts/fetch-slurm-headers.py trixie | tail -n1)"
builds the plugins against that suite's Slurm. Progress and errors go to stderr.

Steps (stdlib only, plus dpkg-deb and, when present, gpgv):
  1. GET  MIRROR/dists/SUITE/InRelease; if gpgv and the Debian archive keyring are here,
     check its signature and take the SHA256 of main/binary-amd64/Packages.xz from the
     signed text (otherwise a warning: the chain below is then only as good as plain HTTP).
  2. GET  MIRROR/dists/SUITE/main/binary-amd64/Packages.xz; find ``Package: libslurm-dev``
     (highest Version if listed twice): Filename, Version, Size, SHA256.
  3. GET  MIRROR/Filename; check Size and SHA256; ``dpkg-deb -x`` into a temporary
     directory; copy usr/include/slurm to DEST/SUITE-VERSION/include/slurm.

MIRROR is http://deb.debian.org/debian unless $SLURM_K8S_DEBIAN_MIRROR is set. DEST is
``${XDG_CACHE_HOME:-~/.cache}/slurm-k8s-bridge/slurm-headers`` unless --dest is given.

Cache: DEST/SUITE-VERSION/.complete is written last (the tree is assembled in a temporary
directory and renamed into place, so concurrent runs are safe). If a complete entry for
SUITE exists, it is printed without touching the network (the highest version if there
are several); --refresh asks the mirror which version SUITE has now, and downloads only
if that version is not cached yet.

Exit status: 0 ok, 1 failure (the message says which step), 2 usage, 3 the mirror could
not be reached or stopped answering (stderr: "network error: ..."), so callers can tell
"mirror unreachable" from a real fault.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_MIRROR = "http://deb.debian.org/debian"
MIRROR_ENV = "SLURM_K8S_DEBIAN_MIRROR"
PACKAGE = "libslurm-dev"
ARCH = "amd64"
PACKAGES_PATH = f"main/binary-{ARCH}/Packages.xz"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
SOCKET_TIMEOUT = 30.0          # seconds, per connect / read
DOWNLOAD_DEADLINE = 300.0      # seconds, whole download
MAX_INDEX_BYTES = 64 << 20     # Packages.xz is ~10 MiB; refuse anything absurd
MAX_DEB_BYTES = 256 << 20
MARKER = ".complete"
NETWORK_EXIT = 3


class FetchError(Exception):
    """A step failed; the message says which and why."""


class NetworkError(FetchError):
    """The mirror could not be reached or stopped answering."""


def log(msg: str) -> None:
    print(f"[fetch-slurm-headers] {msg}", file=sys.stderr, flush=True)


# --- HTTP ------------------------------------------------------------------------------

def download(url: str, dest: Path, *, max_bytes: int, deadline: float = DOWNLOAD_DEADLINE,
             timeout: float = SOCKET_TIMEOUT) -> None:
    """GET url into dest, with a per-operation timeout, an overall deadline and a size cap."""
    start = time.monotonic()
    req = urllib.request.Request(url, headers={"User-Agent": "slurm-k8s-bridge-fetch/1"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp, open(dest, "wb") as out:
            total = 0
            while True:
                if time.monotonic() - start > deadline:
                    raise NetworkError(f"GET {url}: not finished after {deadline:.0f}s")
                chunk = resp.read(1 << 16)
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:
                    raise FetchError(f"GET {url}: more than {max_bytes} bytes; refusing")
                out.write(chunk)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise FetchError(f"GET {url}: 404 Not Found (unknown suite or stale mirror?)")
        raise NetworkError(f"GET {url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise NetworkError(f"GET {url}: {exc.reason}") from None
    except (socket.timeout, TimeoutError):
        raise NetworkError(f"GET {url}: timed out after {timeout:.0f}s without data") from None
    except OSError as exc:  # ConnectionResetError, ssl errors, ...
        raise NetworkError(f"GET {url}: {exc}") from None


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- Release / Packages parsing --------------------------------------------------------

def parse_stanzas(text: str) -> list[dict[str, str]]:
    """RFC822-style deb822 paragraphs; continuation lines are joined with newlines."""
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if not line.strip():
            if current:
                stanzas.append(current)
            current, key = {}, None
        elif line[0] in " \t":
            if key:
                current[key] += "\n" + line.strip()
        else:
            key, _, value = line.partition(":")
            current[key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isdigit():
        return 0
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _verrevcmp(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) else 0
            bc = _order(b[j]) if j < len(b) else 0
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def compare_versions(a: str, b: str) -> int:
    """dpkg's version ordering (epoch:upstream-revision)."""
    def split(v: str) -> tuple[int, str, str]:
        epoch, _, rest = v.rpartition(":") if ":" in v else ("0", "", v)
        upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "0")
        return int(epoch or 0), upstream, revision
    ea, ua, ra = split(a)
    eb, ub, rb = split(b)
    if ea != eb:
        return ea - eb
    return _verrevcmp(ua, ub) or _verrevcmp(ra, rb)


def find_package(packages_text: str, name: str) -> dict[str, str]:
    found = [s for s in parse_stanzas(packages_text) if s.get("Package") == name]
    if not found:
        raise FetchError(f"{name} is not in {PACKAGES_PATH}")
    best = found[0]
    for s in found[1:]:
        if compare_versions(s.get("Version", "0"), best.get("Version", "0")) > 0:
            best = s
    for field in ("Filename", "Version", "SHA256"):
        if not best.get(field):
            raise FetchError(f"{name} {best.get('Version', '?')}: no {field} field")
    filename = best["Filename"]
    if filename.startswith("/") or ".." in filename.split("/") or not filename.endswith(".deb"):
        raise FetchError(f"{name}: suspicious Filename {filename!r}")
    if not re.fullmatch(r"[0-9a-f]{64}", best["SHA256"]):
        raise FetchError(f"{name}: malformed SHA256 {best['SHA256']!r}")
    return best


def signed_index_sha256(mirror: str, suite: str, work: Path, keyring: str) -> str | None:
    """SHA256 of Packages.xz from the signed InRelease, or None if it cannot be checked."""
    gpgv = shutil.which("gpgv")
    if not gpgv or not os.path.isfile(keyring):
        log(f"WARNING: {'gpgv' if not gpgv else keyring} not available: InRelease signature "
            "not checked (Packages.xz integrity rests on plain HTTP)")
        return None
    inrelease = work / "InRelease"
    download(f"{mirror}/dists/{suite}/InRelease", inrelease, max_bytes=8 << 20)
    plain = work / "InRelease.txt"
    try:
        proc = subprocess.run([gpgv, "--keyring", keyring, "--status-fd", "1",
                               "--output", str(plain), str(inrelease)],
                              capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise FetchError("gpgv did not finish in 60s") from None
    if proc.returncode != 0 or "[GNUPG:] VALIDSIG" not in proc.stdout:
        raise FetchError(f"dists/{suite}/InRelease: signature not valid with {keyring}:\n"
                         + proc.stderr.strip())
    signer = re.search(r"\[GNUPG:\] GOODSIG \S+ (.*)", proc.stdout)
    log(f"InRelease signed by {signer.group(1) if signer else 'a key in ' + keyring}")
    release = parse_stanzas(plain.read_text(errors="replace"))
    for line in (release[0].get("SHA256", "") if release else "").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == PACKAGES_PATH:
            return parts[0]
    raise FetchError(f"dists/{suite}/InRelease lists no SHA256 for {PACKAGES_PATH}")


# --- cache -----------------------------------------------------------------------------

def default_dest() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "slurm-k8s-bridge" / "slurm-headers"


def safe_version(version: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+~-]", "_", version)


def cached_entries(dest: Path, suite: str) -> list[tuple[str, Path]]:
    """(Debian version, entry dir) of complete cache entries of SUITE, highest first."""
    entries: list[tuple[str, Path]] = []
    if not dest.is_dir():
        return entries
    for entry in dest.glob(f"{suite}-*"):
        marker = entry / MARKER
        if not (marker.is_file() and (entry / "include" / "slurm" / "slurm.h").is_file()):
            continue
        try:
            info = json.loads(marker.read_text())
            if info.get("suite") != suite:
                continue
            entries.append((str(info["version"]), entry))
        except (ValueError, KeyError, OSError):
            continue
    from functools import cmp_to_key
    entries.sort(key=cmp_to_key(lambda x, y: compare_versions(x[0], y[0])), reverse=True)
    return entries


def install_headers(deb: Path, entry: Path, info: dict[str, str], dest: Path) -> None:
    dpkg_deb = shutil.which("dpkg-deb")
    if not dpkg_deb:
        raise FetchError("dpkg-deb not found (Debian: apt-get install dpkg)")
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=dest))
    try:
        root = staging / "deb"
        try:
            proc = subprocess.run([dpkg_deb, "-x", str(deb), str(root)],
                                  capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            raise FetchError(f"dpkg-deb -x {deb.name}: did not finish in 120s") from None
        if proc.returncode != 0:
            raise FetchError(f"dpkg-deb -x {deb.name} failed:\n{proc.stderr.strip()}")
        src = root / "usr" / "include" / "slurm"
        if not (src / "slurm.h").is_file():
            raise FetchError(f"{deb.name} has no usr/include/slurm/slurm.h")
        tree = staging / "tree"
        shutil.copytree(src, tree / "include" / "slurm", symlinks=False)
        (tree / MARKER).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        try:
            os.rename(tree, entry)
        except OSError:
            # another run installed the same version meanwhile: keep theirs if complete
            if not (entry / MARKER).is_file():
                raise FetchError(f"cannot install {entry}: exists and is incomplete "
                                 "(remove it and retry)") from None
            log(f"{entry} appeared meanwhile (concurrent run); using it")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --- main ------------------------------------------------------------------------------

def fetch(suite: str, dest: Path, *, refresh: bool, keyring: str, verify_release: bool) -> Path:
    if not re.fullmatch(r"[a-z][a-z0-9.-]*", suite):
        raise FetchError(f"{suite!r} is not a Debian suite name")
    if not refresh:
        cached = cached_entries(dest, suite)
        if cached:
            log(f"cached: {suite} {PACKAGE} {cached[0][0]} ({cached[0][1]})")
            return cached[0][1] / "include"
    mirror = (os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR).rstrip("/")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download.", dir=dest) as tmp:
        work = Path(tmp)
        expected_index = (signed_index_sha256(mirror, suite, work, keyring)
                          if verify_release else None)
        index = work / "Packages.xz"
        url = f"{mirror}/dists/{suite}/{PACKAGES_PATH}"
        log(f"GET {url}")
        download(url, index, max_bytes=MAX_INDEX_BYTES)
        if expected_index and sha256_of(index) != expected_index:
            raise FetchError(f"{url}: SHA256 differs from the signed InRelease "
                             "(mirror in the middle of an update? retry)")
        try:
            text = lzma.decompress(index.read_bytes()).decode("utf-8", "replace")
        except lzma.LZMAError as exc:
            raise FetchError(f"{url}: not valid xz data ({exc})") from None
        pkg = find_package(text, PACKAGE)
        version = pkg["Version"]
        entry = dest / f"{suite}-{safe_version(version)}"
        if (entry / MARKER).is_file():
            log(f"cached: {suite} {PACKAGE} {version} ({entry})")
            return entry / "include"
        deb = work / Path(pkg["Filename"]).name
        deb_url = f"{mirror}/{pkg['Filename']}"
        log(f"{suite}: {PACKAGE} {version}; GET {deb_url}")
        size = int(pkg["Size"]) if pkg.get("Size", "").isdigit() else None
        download(deb_url, deb, max_bytes=min(MAX_DEB_BYTES, size or MAX_DEB_BYTES))
        if size is not None and deb.stat().st_size != size:
            raise FetchError(f"{deb_url}: {deb.stat().st_size} bytes, Packages says {size}")
        got = sha256_of(deb)
        if got != pkg["SHA256"]:
            raise FetchError(f"{deb_url}: SHA256 {got} != {pkg['SHA256']} from Packages.xz")
        log(f"SHA256 ok ({got})")
        install_headers(deb, entry, {
            "suite": suite, "package": PACKAGE, "version": version, "mirror": mirror,
            "filename": pkg["Filename"], "sha256": got,
            "release_signature_checked": bool(expected_index),
            "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }, dest)
        return entry / "include"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Download a Debian suite's libslurm-dev headers into a cache and print "
                    "the include directory (last stdout line).")
    parser.add_argument("suite", help="Debian suite or codename: bookworm, trixie, sid, ...")
    parser.add_argument("--dest", type=Path, default=None,
                        help="cache directory (default: ${XDG_CACHE_HOME:-~/.cache}/"
                             "slurm-k8s-bridge/slurm-headers)")
    parser.add_argument("--refresh", action="store_true",
                        help="ask the mirror for the suite's current version even if one "
                             "is cached (downloads only a version not cached yet)")
    parser.add_argument("--keyring", default=KEYRING,
                        help=f"keyring for the InRelease signature (default {KEYRING})")
    parser.add_argument("--no-verify-release", action="store_true",
                        help="skip the InRelease signature check")
    args = parser.parse_args(argv)
    try:
        include = fetch(args.suite, (args.dest or default_dest()).expanduser().absolute(),
                        refresh=args.refresh, keyring=args.keyring,
                        verify_release=not args.no_verify_release)
    except NetworkError as exc:
        log(f"network error: {exc}")
        return NETWORK_EXIT
    except FetchError as exc:
        log(f"error: {exc}")
        return 1
    except OSError as exc:
        log(f"error: {exc}")
        return 1
    print(include)
    return 0


if __name__ == "__main__":
    sys.exit(main())
