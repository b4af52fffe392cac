"""Fuzzed submissions, the translation core's side: random and malformed requests through
``core.normalize`` (``core.gpus``, ``core.layout``, ``core.constraints``) and ``core.render``,
and slurmctld's limit records through ``core.limits``.

Properties, over four configurations (builtin, Kueue and Volcano gangs; a 20-character
cluster name with a munge-key Secret):

* no exception but a ``BridgeRefusal`` whose message is one readable line and whose code
  the plugin can return;
* every accepted request renders objects whose names, labels, annotations, selectors,
  resources and environment keep the Kubernetes rules (``tests/fuzz_requests.py`` has them,
  written from the rules, not from the bridge);
* normalizing and rendering are deterministic, and survive the AdminComment stamp;
* the limit parsers read any text without failing, and their verdicts are one line.

Requests come two ways: as slurmctld hands them to job_submit (raw ``job_desc`` fields,
Slurm's NO_VAL/INFINITE sentinels, both TRES encodings) and through the sbatch parser.
Bounded like ``test_fuzz_sbatch`` (``FUZZ_EXAMPLES``, derandomized); the regression tests
at the end are the bugs this fuzzing found.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from slurm_k8s_bridge.core import layout
from slurm_k8s_bridge.core.config import BridgeConfig, parse_config
from slurm_k8s_bridge.core.constraints import MAX_CONSTRAINT_TERMS, parse_constraint
from slurm_k8s_bridge.core.errors import BridgeRefusal
from slurm_k8s_bridge.core.gpus import parse_tres
from slurm_k8s_bridge.core.limits import (
    Usage,
    admit_in_order,
    parse_assoc_mgr,
    parse_job_demands,
    parse_time_limit,
    parse_tres_limits,
    parse_tres_usage,
    parse_usage,
)
from slurm_k8s_bridge.core.limits import (
    parse_tres as parse_job_tres,
)
from slurm_k8s_bridge.core.normalize import (
    MAX_ARRAY_INDEX,
    expand_array,
    label_value,
    normalize,
)
from slurm_k8s_bridge.core.render import render
from slurm_k8s_bridge.core.request import BridgeRequest, SlurmJobRequest
from slurm_k8s_bridge.slurm.plugin_build import ESLURM_CODES
from slurm_k8s_bridge.slurm.sbatch import request_from_sbatch

from .. import fuzz_requests as fz
from .conftest import EXAMPLE_CONFIG, fuzz_settings

pytestmark = pytest.mark.unit

FUZZ = fuzz_settings()
DATA = Path(__file__).parent / "data"
JOB_ID = 67108863  # Slurm's largest job id (MaxJobId), the longest names


def _config(**changes: Any) -> BridgeConfig:
    data = copy.deepcopy(yaml.safe_load(EXAMPLE_CONFIG.read_text()))
    for key, value in changes.items():
        if key == "default_rule":
            data["partitions"]["default"].update(value)
        else:
            data[key] = value
    return parse_config(data)


CONFIGS = {
    "builtin": _config(),
    "kueue": _config(default_rule={"gang": "kueue", "queue": "gpu-jobs"},
                     allowed_images=["localhost/slurm-k8s-bridge/", "registry.local/"]),
    "volcano": _config(default_rule={"gang": "volcano", "queue": "default",
                                     "priority_class": "slurm-normal"}),
    "long-names": _config(cluster_name="a" * 20, munge_key_secret="munge-key",
                          conf_server="slurmctld.example:6817"),
}


def answer(req: SlurmJobRequest, config: BridgeConfig) -> BridgeRequest | BridgeRefusal | None:
    """normalize's answer, with the refusal checked to be a proper one."""
    try:
        breq = normalize(req, config)
    except BridgeRefusal as refusal:
        check_refusal(refusal)
        return refusal
    if breq is not None:
        assert normalize(req, config) == breq, "normalize is not deterministic"
        assert normalize(SlurmJobRequest.from_stamp(req.stamp()), config) == breq, \
            "the stamped request normalizes differently"
    return breq


def check_refusal(refusal: BridgeRefusal) -> None:
    assert not fz.message_problems(refusal.message), fz.message_problems(refusal.message)
    assert not fz.message_problems(refusal.user_message())
    assert refusal.code in ESLURM_CODES, f"{refusal.code} is not a code the plugin can return"


def check_render(breq: BridgeRequest, config: BridgeConfig) -> list[dict[str, Any]]:
    """Render the job (first and last array task of an array) and check every object."""
    tasks = [None] if breq.array_task_ids is None else sorted({breq.array_task_ids[0], breq.array_task_ids[-1]})
    objects: list[dict[str, Any]] = []
    for task in tasks:
        rendered = render(breq, config, JOB_ID, task)
        assert rendered == render(breq, config, JOB_ID, task), "render is not deterministic"
        objects += rendered
    problems = [p for obj in objects for p in fz.object_problems(obj)]
    assert not problems, problems
    for job in (o for o in objects if o["kind"] == "Job"):
        assert job["metadata"]["name"] == job["spec"]["template"]["spec"]["subdomain"]
        hostname = f"{job['metadata']['name']}-{breq.nodes - 1}"
        assert fz.dns1123_label(hostname), f"pod hostname {hostname!r}"
        requests = job["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
        assert int(requests["cpu"]) >= 1 and int(requests["memory"].removesuffix("Mi")) >= 1, requests
    return objects


def check_request(breq: BridgeRequest) -> None:
    assert breq.nodes >= 1 and breq.tasks >= 1 and breq.tasks_per_node >= 1
    assert breq.node_range[0] <= breq.nodes <= breq.node_range[1]
    assert breq.cpus_per_node >= breq.cpus_per_task >= 1
    assert breq.gpus_per_node >= 0 and breq.memory_mb_per_node >= 1
    assert (breq.gpu_resource is None) == (breq.gpus_per_node == 0)
    assert breq.job_name is None or fz.label_value(breq.job_name)
    if breq.array_task_ids is not None:
        assert breq.array_task_ids == tuple(sorted(set(breq.array_task_ids)))
        assert 0 <= breq.array_task_ids[0] and breq.array_task_ids[-1] <= MAX_ARRAY_INDEX


# -- requests as job_submit sees them -------------------------------------------------------

@FUZZ
@given(st.randoms(use_true_random=False), st.sampled_from(sorted(CONFIGS)))
def test_raw_requests_refused_or_rendered(rnd: random.Random, config_name: str) -> None:
    config = CONFIGS[config_name]
    result = answer(SlurmJobRequest(**fz.job_desc_fields(rnd)), config)
    if isinstance(result, BridgeRequest):
        check_request(result)
        check_render(result, config)


@FUZZ
@given(st.randoms(use_true_random=False), st.sampled_from(sorted(CONFIGS)))
def test_sbatch_submissions_refused_or_rendered(rnd: random.Random, config_name: str) -> None:
    config = CONFIGS[config_name]
    argv, directives = fz.sbatch_invocation(rnd)
    try:
        req = request_from_sbatch(fz.batch_script(directives), argv, 1000, 1000, script_name="job.sh")
    except BridgeRefusal as refusal:
        check_refusal(refusal)
        return
    result = answer(req, config)
    if isinstance(result, BridgeRequest):
        check_request(result)
        check_render(result, config)


@FUZZ
@given(st.sampled_from(["name", "account", "qos", "partition", "features", "array_inx",
                        "tres_per_node", "tres_per_job", "tres_per_task", "cpus_per_tres",
                        "mem_per_tres", "work_dir", "submit_line"]),
       st.text(max_size=200), st.sampled_from(sorted(CONFIGS)))
def test_any_text_in_any_text_field(field: str, text: str, config_name: str) -> None:
    config = CONFIGS[config_name]
    base = {"tres_per_node": "gres:gpu:h100:2", "user_id": 1000, "group_id": 1000}
    result = answer(SlurmJobRequest(**{**base, field: text}), config)
    if isinstance(result, BridgeRequest):
        check_render(result, config)


@FUZZ
@given(st.text(max_size=300))
def test_any_job_name_becomes_a_label_value_or_nothing(text: str) -> None:
    value = label_value(text)
    assert value is None or (value and fz.label_value(value))


# -- the parts ------------------------------------------------------------------------------

@FUZZ
@given(st.randoms(use_true_random=False))
def test_constraint_expressions_parse_or_refuse(rnd: random.Random) -> None:
    text = fz.constraint_text(rnd)
    try:
        expr = parse_constraint(text)
    except BridgeRefusal as refusal:
        check_refusal(refusal)
        return
    assert 1 <= len(expr.alternatives) <= MAX_CONSTRAINT_TERMS
    assert all(alternative for alternative in expr.alternatives)
    assert expr.matching <= expr.names


@FUZZ
@given(st.text(alphabet="&|,()[]* h100a", max_size=60))
def test_constraint_operator_soup(text: str) -> None:
    try:
        parse_constraint(text)
    except BridgeRefusal as refusal:
        check_refusal(refusal)


@FUZZ
@given(st.randoms(use_true_random=False), st.integers(1, 2000))
def test_array_specs_expand_or_refuse(rnd: random.Random, most: int) -> None:
    spec = fz.array_text(rnd)
    try:
        ids, limit = expand_array(spec, most)
    except BridgeRefusal as refusal:
        check_refusal(refusal)
        return
    assert 0 < len(ids) <= most and ids == tuple(sorted(set(ids)))
    assert 0 <= ids[0] and ids[-1] <= MAX_ARRAY_INDEX
    assert limit is None or limit > 0


@FUZZ
@given(st.randoms(use_true_random=False))
def test_tres_strings_parse_or_refuse(rnd: random.Random) -> None:
    text = fz.tres_text(rnd)
    try:
        items = parse_tres(text, "--gres")
    except BridgeRefusal as refusal:
        check_refusal(refusal)
        return
    assert all(item.name and 0 <= item.count < 2**63 for item in items)


# -- slurmctld's limit records ---------------------------------------------------------------

SAMPLE_ASSOC = (DATA / "slurm-22.05-assoc_mgr.txt").read_text()
SAMPLE_DEMANDS = (DATA / "slurm-22.05-job-demands.txt").read_text()


def mutate(rnd: random.Random, text: str) -> str:
    """Slurm's own output with a few tokens replaced, cut or repeated."""
    tokens = text.replace("\n", " \n ").split(" ")
    junk = ("", "N", "inf", "-inf", "nan", "1e999", "9" * 400, "-1", "N(inf)", "4(nan)", "cpu=9e999",
            "gres/gpu=-1(3)", "=(", "{", "}", "|", "(", ")")
    for _ in range(rnd.randint(1, 6)):
        i = rnd.randrange(len(tokens))
        key, sep, _value = tokens[i].partition("=")
        if sep and rnd.random() < 0.6:
            tokens[i] = f"{key}={rnd.choice(junk)}"  # a value slurmctld would never print
        else:
            tokens[i] = rnd.choice((fz.hostile_text(rnd), tokens[i] * 2, *junk))
    return " ".join(tokens).replace(" \n ", "\n")


@FUZZ
@given(st.randoms(use_true_random=False))
def test_limit_records_read_and_judge_any_text(rnd: random.Random) -> None:
    limits = parse_assoc_mgr(mutate(rnd, SAMPLE_ASSOC))
    demands = parse_job_demands(mutate(rnd, SAMPLE_DEMANDS))
    jobs = [(key, demand) for key, (_state, demand) in sorted(demands.items())]
    for _key, ok, why in admit_in_order(jobs, limits):
        assert isinstance(ok, bool) and "\n" not in why


@FUZZ
@given(st.text(max_size=80))
def test_limit_values_read_any_text(text: str) -> None:
    assert isinstance(parse_job_tres(text), dict)
    assert isinstance(parse_tres_usage(text), dict) and isinstance(parse_tres_limits(text), dict)
    assert isinstance(parse_usage(text), Usage)
    minutes = parse_time_limit(text)
    assert minutes is None or minutes >= 0


# -- regressions: the bugs this fuzzing found -----------------------------------------------

def refused(req: SlurmJobRequest, config: BridgeConfig | None = None) -> BridgeRefusal:
    result = answer(req, config or CONFIGS["builtin"])
    assert isinstance(result, BridgeRefusal), result
    return result


def test_regression_array_index_too_large_for_a_hostname() -> None:
    """``--array=99999999999999999999`` was accepted; rendering its pods then failed with a
    ValueError (hostname longer than 63 characters) in the daemon, for ever."""
    refusal = refused(SlurmJobRequest(array_inx="9" * 80, user_id=1000))
    assert refusal.code == "ESLURM_INVALID_ARRAY" and "above 4000000" in refusal.message
    breq = normalize(SlurmJobRequest(array_inx=f"{MAX_ARRAY_INDEX}", user_id=1000), CONFIGS["long-names"])
    assert breq is not None
    check_render(breq, CONFIGS["long-names"])


@pytest.mark.parametrize("uid", [-1, 0xFFFFFFFF, 2**40])
def test_regression_owner_id_outside_32_bits(uid: int) -> None:
    """A uid of -1 (or beyond 32 bits) was put in the ``slurm-k8s-bridge.io/uid`` label,
    which the API server refuses ("-1" is not a label value)."""
    assert "uid" in refused(SlurmJobRequest(user_id=uid)).message
    assert "gid" in refused(SlurmJobRequest(user_id=1000, group_id=uid)).message


def test_regression_node_count_search_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """``-n 100000 --mem=5000G`` (no -N) tried all 65536 node counts, each raising and
    formatting a refusal: seconds of slurmctld's lock time per submission."""
    calls = []
    real = layout._share

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(layout, "_share", counting)
    refusal = refused(SlurmJobRequest(num_tasks=100000, pn_min_memory=5000 * 1024))
    assert "asks for 5120000 MB per node" in refusal.message
    assert len(calls) <= layout.MOST_COUNTS_TRIED
    calls.clear()
    # a request that fits only at many nodes starts at the first count that can hold it
    breq = normalize(SlurmJobRequest(num_tasks=100000, user_id=1000), CONFIGS["builtin"])
    assert breq is not None and breq.nodes == 447 and breq.tasks_per_node == 224
    assert calls == [447]


def test_regression_huge_task_counts_use_integer_arithmetic() -> None:
    """``math.ceil(tasks / nodes)`` went through floats: 2**63 + 1 tasks over 1 node lost
    the +1 in the message."""
    refusal = refused(SlurmJobRequest(num_tasks=2**63 + 1, min_nodes=1, max_nodes=1, ntasks_per_node=1))
    assert f"needs {2**63 + 1} nodes" in refusal.message


def test_regression_gpu_count_beyond_64_bits_is_unreadable() -> None:
    """A 300-digit GPU count was read as a number and repeated in full in the message."""
    refusal = refused(SlurmJobRequest(tres_per_node="gres:gpu:" + "9" * 300))
    assert "cannot read" in refusal.message and len(refusal.message) < 200


def test_regression_long_partition_name_is_cut_in_messages() -> None:
    """Messages repeated a user's 4000-character partition name in full."""
    refusal = refused(SlurmJobRequest(partition="p" * 4000, tres_per_node="gres:gpu:99"))
    assert len(refusal.message) < 400 and "p" * 80 + "..." in refusal.message


def test_regression_limit_values_that_are_not_finite() -> None:
    """``GrpJobs=inf`` and a 400-digit TRES count raised OverflowError (float infinity to
    int) out of the parsers, so one odd assoc_mgr record stopped every admission round."""
    assert parse_usage("inf(nan)") == Usage(0, 0)
    assert parse_job_tres("cpu=" + "9" * 400 + ",gres/gpu=2") == {"gres/gpu": 2}
    limits = parse_assoc_mgr("QOS=normal(1) GrpJobs=inf(1) GrpTRES=cpu=1e999(2)\n")
    assert limits.qos["normal"].grp_jobs.used == 1
