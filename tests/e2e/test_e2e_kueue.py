"""One job through the real Kueue on a real kubelet: ``DevCluster(real_node=True,
kueue=True)`` (``dev-cluster up --real-node --kueue``): partition gpu with ``gang: kueue``,
ClusterQueue gpu, the worker image on the kubelet node. sbatch creates the Job suspended in
LocalQueue gpu, Kueue admits and unsuspends it, the worker pod's slurmd registers, the job's
step runs in the pod and its output reaches the shared directory. Skipped, with the reason
printed, as the rest of the tier, or when Kueue cannot be built.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from .test_e2e import E2E, ONE

pytestmark = pytest.mark.e2e

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


@pytest.fixture(scope="module")
def dev_options() -> dict[str, Any]:
    return {"kueue": True}


def test_a_job_admitted_by_kueue_runs_in_a_worker_pod_on_the_real_node(dev_cluster: Any) -> None:
    e2e = E2E(dev_cluster)
    cwd = e2e.workdir("kueue")
    job = e2e.sbatch(["-p", "gpu", "-N1", "--gres=gpu:1", *ONE, "-o", "kueue-%j.out",
                      "--wrap", "srun hostname; echo ran-through-kueue"], cwd)
    name = f"slurm-{job}"

    def k8s_job() -> Any:
        with e2e.kube.admin_client() as api:
            try:
                return client.BatchV1Api(api).read_namespaced_job(name, "slurm-jobs")
            except ApiException as exc:
                if exc.status == 404:
                    return None     # not created yet
                raise
    created = e2e.wait(k8s_job, 60, f"Job {name}")
    assert created.metadata.labels.get(QUEUE_LABEL) == "gpu", created.metadata.labels
    e2e.wait(lambda: not k8s_job().spec.suspend, 120, f"Kueue unsuspending {name}")
    e2e.wait_state(job, {"COMPLETED", "FAILED", "CANCELLED", "NODE_FAIL", "TIMEOUT"}, 240)
    out = cwd / f"kueue-{job}.out"
    text = out.read_text() if out.exists() else ""
    assert e2e.state(job) == "COMPLETED", f"{e2e.state(job)}; output {text!r}\n{e2e.diagnostics()}"
    assert "ran-through-kueue" in text and f"{name}-0" in text, text
    e2e.wait_pods_gone(job)
    print(f"\nKueue on the real node: job {job} ran in pod {name}-0: {text.strip()!r}")
