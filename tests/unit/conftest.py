"""Fixtures for the pure unit tests: the example configuration and request helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm_k8s_bridge.core.config import BridgeConfig, load_config

from ..paths import REPO, EXAMPLE_CONFIG



@pytest.fixture(scope="session")
def config() -> BridgeConfig:
    return load_config(EXAMPLE_CONFIG)


def fuzz_settings(*also_suppress: object) -> object:
    """The Hypothesis settings of the fuzz tests (``test_fuzz_*.py``): ``FUZZ_EXAMPLES``
    examples per property (default 150), no deadline, no example database, derandomized
    unless ``FUZZ_RANDOM`` is set; ``also_suppress``: more health checks to turn off."""
    import os

    from hypothesis import HealthCheck, settings
    return settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")), deadline=None,
                    database=None, derandomize=not os.environ.get("FUZZ_RANDOM"),
                    suppress_health_check=[HealthCheck.too_slow, *also_suppress])
