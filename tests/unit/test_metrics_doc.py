"""docs/metrics.md, the Grafana dashboard and the metric families the daemon exports agree."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from slurm_k8s_bridge.daemon.metrics import DaemonMetrics
from slurm_k8s_bridge.kube.metrics import ApiMetrics

from ..paths import REPO

pytestmark = pytest.mark.unit



def exported() -> dict[str, str]:
    text = DaemonMetrics(leader_election=True).render() + ApiMetrics().render_prometheus()
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))


def test_every_exported_family_is_documented_with_its_type() -> None:
    doc = (REPO / "docs" / "metrics.md").read_text()
    rows = dict(re.findall(r"^\| `(slurm_k8s_bridge_\w+)` \| (\w+) \|", doc, re.MULTILINE))
    assert rows == exported()


def test_the_dashboard_queries_only_exported_families_and_shows_each() -> None:
    families = exported()
    dash = json.loads((REPO / "deploy" / "grafana" / "slurm-k8s-bridge.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = set()
    for expr in exprs:
        for name in re.findall(r"\bslurm_k8s_bridge_\w+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert base in families, f"{expr}: no family {base}"
            used.add(base)
    assert used == set(families)
