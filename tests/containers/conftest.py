"""Fixtures for the container images (containers/, scripts/build-images.sh).

``images`` (module, parametrized by suite) builds the base and the three images for one
Debian suite with ``scripts/build-images.sh`` (seconds when nothing changed, ~5 min per
suite cold) and hands their tags to the tests. Every test is skipped, with the reason
printed, when no container engine runs here, when building needs root or debootstrap that
are missing, or when the build fails; ``SLURM_K8S_IMAGES_REQUIRED=1`` turns a failed
build into a failure instead.

Environment:
  SLURM_K8S_IMAGE_SUITES   suites to test, comma-separated (default bookworm,trixie)
  SLURM_K8S_IMAGE_ENGINE   podman or docker (default: podman if installed, else a running docker)
  SLURM_K8S_IMAGES_NO_BUILD=1   use the images as they are (skip when missing)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ..paths import REPO

SUITES = [s for s in os.environ.get("SLURM_K8S_IMAGE_SUITES", "bookworm,trixie").split(",") if s]
#: Slurm's major.minor in each suite's images
SLURM_OF_SUITE = {"bookworm": "22.05", "trixie": "24.11"}
BUILD_TIMEOUT = 3600


def _say(message: str) -> None:
    print(f"\n[containers] {message}", file=sys.stderr, flush=True)


def _skip_or_fail(reason: str) -> None:
    _say(reason)
    if os.environ.get("SLURM_K8S_IMAGES_REQUIRED") == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def find_engine() -> tuple[str | None, str]:
    """(engine, why not) -- podman if installed, else docker with a running engine."""
    wanted = os.environ.get("SLURM_K8S_IMAGE_ENGINE")
    candidates = [wanted] if wanted else ["podman", "docker"]
    why = []
    for name in candidates:
        if shutil.which(name) is None:
            why.append(f"{name} not installed")
            continue
        probe = subprocess.run([name, "info"], capture_output=True, text=True, timeout=60)
        if probe.returncode == 0:
            return name, ""
        why.append(f"{name} info failed: {(probe.stderr or probe.stdout).strip().splitlines()[-1:]}")
    return None, "no container engine (" + "; ".join(why) + "); scripts/build-images.sh " \
        "--install-deps installs podman"


@dataclass
class Images:
    engine: str
    suite: str
    worker: str
    controller: str
    login: str
    slurm: str
    created: list[str] = field(default_factory=list)  # containers and networks to remove

    def run(self, image: str, *args: str, engine_args: Sequence[str] = (), entrypoint: str | None = None,
            timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``ENGINE run --rm [engine_args] IMAGE args``; ``entrypoint`` replaces the image's."""
        cmd = [self.engine, "run", "--rm", *engine_args]
        if entrypoint is not None:
            cmd += ["--entrypoint", entrypoint]
        cmd += [image, *args]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} -> rc={res.returncode}\nstdout:\n{res.stdout}\n"
                                 f"stderr:\n{res.stderr}")
        return res

    def sh(self, image: str, script: str, **kwargs) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
        """Run a bash script in ``image`` without its entrypoint."""
        return self.run(image, "-c", script, entrypoint="bash", **kwargs)

    def engine_cmd(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([self.engine, *args], capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"{self.engine} {' '.join(args)} -> rc={res.returncode}\n{res.stderr}")
        return res

    def name(self, prefix: str) -> str:
        name = f"skb-{prefix}-{uuid.uuid4().hex[:8]}"
        self.created.append(name)
        return name


def _build(engine: str, suite: str) -> None:
    if os.environ.get("SLURM_K8S_IMAGES_NO_BUILD") == "1":
        return
    needs_base = subprocess.run([engine, "image", "inspect", f"localhost/slurm-k8s-bridge-base:{suite}"],
                                capture_output=True).returncode != 0
    if needs_base and os.geteuid() != 0:
        _skip_or_fail(f"the {suite} base image is missing and debootstrap needs root")
    if needs_base and shutil.which("debootstrap") is None:
        _skip_or_fail(f"the {suite} base image is missing and debootstrap is not installed "
                      "(scripts/build-images.sh --install-deps)")
    _say(f"building the {suite} images with {engine} (scripts/build-images.sh; ~5 min cold)")
    try:
        res = subprocess.run(["bash", str(REPO / "scripts" / "build-images.sh"), "--suite", suite,
                              "--engine", engine], capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        _skip_or_fail(f"building the {suite} images took more than {BUILD_TIMEOUT} s")
        return
    if res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-25:])
        _skip_or_fail(f"the {suite} images could not be built:\n{tail}")
    _say(res.stdout.strip().splitlines()[-5:] and "\n".join(res.stdout.strip().splitlines()[-5:]))


@pytest.fixture(scope="module", params=SUITES)
def images(request: pytest.FixtureRequest) -> Iterator[Images]:
    suite = request.param
    if suite not in SLURM_OF_SUITE:
        pytest.fail(f"SLURM_K8S_IMAGE_SUITES: unknown suite {suite!r}", pytrace=False)
    engine, why = find_engine()
    if engine is None:
        _skip_or_fail(why)
    assert engine is not None
    _build(engine, suite)
    tags = {n: f"localhost/slurm-k8s-bridge-{n}:{suite}" for n in ("worker", "controller", "login")}
    for tag in tags.values():
        if subprocess.run([engine, "image", "inspect", tag], capture_output=True).returncode != 0:
            _skip_or_fail(f"{tag} does not exist (scripts/build-images.sh --suite {suite})")
    imgs = Images(engine=engine, suite=suite, slurm=SLURM_OF_SUITE[suite], **tags)
    yield imgs
    for name in reversed(imgs.created):
        subprocess.run([engine, "rm", "-f", name], capture_output=True, timeout=60)
        subprocess.run([engine, "network", "rm", "-f", name], capture_output=True, timeout=60)
