"""Fixtures for the pure unit tests: the example configuration and request helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm_k8s_bridge.core.config import BridgeConfig, load_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = REPO / "slurm_plugins" / "k8s-bridge.example.yaml"


@pytest.fixture(scope="session")
def config() -> BridgeConfig:
    return load_config(EXAMPLE_CONFIG)
