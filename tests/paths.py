"""Where the checkout's files are, for every test tier (one definition, not one per module)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The example bridge configuration the README and the dev cluster use.
EXAMPLE_CONFIG = REPO / "slurm_plugins" / "k8s-bridge.example.yaml"
DEPLOY = REPO / "deploy"
DOCS = REPO / "docs"
