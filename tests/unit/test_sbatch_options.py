"""sbatch's side: directives, getopt_long, and the job_desc encodings sbatch 22.05 produces.

The expected encodings are the ones seen from real sbatch 22.05.8 + slurmctld with a
job_submit.lua probe (docs/sbatch-encodings.md).
"""

from __future__ import annotations

from typing import Any

import pytest

from slurm_k8s_bridge.core.errors import BridgeRefusal
from slurm_k8s_bridge.slurm.sbatch import (
    NOT_A_BATCH_SCRIPT,
    REQUIRED,
    SBATCH_OPTIONS,
    parse_directives,
    parse_options,
    request_from_sbatch,
)
from slurm_k8s_bridge.slurm.sbatch_values import parse_node_count, str_to_mbytes, time_str2mins
from slurm_k8s_bridge.core.request import UNLIMITED

from .helpers import GID, UID, request, script

pytestmark = pytest.mark.unit

# -- directives -------------------------------------------------------------------------

def test_first_line_must_be_a_shebang() -> None:
    with pytest.raises(BridgeRefusal) as info:
        parse_directives("hostname\n#SBATCH -N2\n")
    assert info.value.message == NOT_A_BATCH_SCRIPT
    assert info.value.message == ("This does not look like a batch script.  The first line must start "
                                  "with #! followed by the path to an interpreter.")
    assert info.value.code.startswith("ESLURM_")


def test_leading_blank_line_is_not_a_shebang() -> None:
    with pytest.raises(BridgeRefusal):
        parse_directives("\n#!/bin/bash\n#SBATCH -N2\n")


@pytest.mark.parametrize("text, message", [
    ("", "Batch script is empty!"),
    ("   \n\n", "Batch script contains only whitespace!"),
    ("#!/bin/bash\r\n#SBATCH -N2\r\n", "Batch script contains DOS line breaks"),
    ("#!/bin/bash\n\0\n", "NULL character"),
])
def test_scripts_sbatch_rejects(text: str, message: str) -> None:
    with pytest.raises(BridgeRefusal, match=message.replace("(", r"\(")):
        parse_directives(text)


def test_directives_stop_at_first_command() -> None:
    text = "#!/bin/bash\n#SBATCH -N 3\nhostname\n#SBATCH --time=9\n"
    assert parse_directives(text) == ["-N", "3"]


def test_blank_lines_and_comments_do_not_stop_the_scan() -> None:
    text = "#!/bin/bash\n  #SBATCH -N 3\n\n# hello\n#SBATCH --time=9\n #x\n\t\n#SBATCH --mem=5\n"
    # "  #SBATCH" (leading blanks) is a comment, not a directive
    assert parse_directives(text) == ["--time=9", "--mem=5"]


def test_several_options_per_line_and_trailing_comment() -> None:
    text = "#!/bin/bash\n#SBATCH -N 2 --time=5 # comment --mem=1G\n"
    assert parse_directives(text) == ["-N", "2", "--time=5"]


def test_unquoted_hash_inside_a_word_ends_the_line() -> None:
    assert parse_directives("#!/bin/sh\n#SBATCH --job-name=a#b --time=7\n") == ["--job-name=a"]


def test_quotes_group_words() -> None:
    assert parse_directives('#!/bin/sh\n#SBATCH --job-name="my job" --time=5\n') == ["--job-name=my job", "--time=5"]
    assert parse_directives("#!/bin/sh\n#SBATCH --job-name='a # b'\n") == ["--job-name=a # b"]
    assert parse_directives('#!/bin/sh\n#SBATCH --job-name=x"a b"y -t 4\n') == ["--job-name=xa by", "-t", "4"]


def test_backslash_escapes_a_quote_but_not_whitespace() -> None:
    assert parse_directives('#!/bin/sh\n#SBATCH --job-name=a\\"b\n') == ['--job-name=a"b']
    assert parse_directives("#!/bin/sh\n#SBATCH --job-name=a\\ b\n") == ["--job-name=a", "b"]


def test_empty_quoted_word_ends_the_line() -> None:
    assert parse_directives('#!/bin/sh\n#SBATCH -J "" -t 3\n') == ["-J"]
    with pytest.raises(BridgeRefusal, match="option requires an argument -- 'J'"):
        request_from_sbatch('#!/bin/sh\n#SBATCH -J "" -t 3\n', [], UID, GID)


def test_unmatched_quote_is_refused() -> None:
    with pytest.raises(BridgeRefusal, match=r"line 2: Unmatched `\"` in \[--job-name=\"abc\]"):
        parse_directives('#!/bin/sh\n#SBATCH --job-name="abc\n')


def test_old_slurm_magic_and_no_space_after_magic() -> None:
    assert parse_directives("#!/bin/sh\n#SLURM -N 3\n#SBATCH--time=11\n") == ["-N", "3", "--time=11"]


def test_hetjob_separator_is_refused() -> None:
    with pytest.raises(BridgeRefusal, match="heterogeneous jobs are not supported by slurm-k8s-bridge yet"):
        parse_directives("#!/bin/sh\n#SBATCH -N1\n#SBATCH hetjob\n#SBATCH -N2\n")


def test_words_of_all_lines_form_one_argument_vector() -> None:
    # like sbatch, an option's argument may sit on the next #SBATCH line
    req = request_from_sbatch("#!/bin/sh\n#SBATCH --nodes\n#SBATCH 3\n", [], UID, GID)
    assert (req.min_nodes, req.max_nodes) == (3, 3)


def test_stray_word_in_script_is_an_invalid_directive() -> None:
    with pytest.raises(BridgeRefusal, match="Invalid directive found in batch script: extra"):
        request_from_sbatch("#!/bin/sh\n#SBATCH -N2 extra\n", [], UID, GID)


# -- getopt_long ------------------------------------------------------------------------

def test_option_table_is_sbatch_22_05() -> None:
    names = [spec.name for spec in SBATCH_OPTIONS]
    assert len(names) == len(set(names)) == 106 + 3
    shorts = {spec.short for spec in SBATCH_OPTIONS if spec.short}
    assert shorts == set("AabDMCScdmexBGhHiJLkFwNnoOspqQtvVW")
    for name in ("gpus-per-task", "mem-per-gpu", "ntasks-per-gpu", "wait-all-nodes", "kill-on-invalid-dep",
                 "k8s-image", "k8s-queue", "k8s-priority"):
        assert name in names


@pytest.mark.parametrize("spec", SBATCH_OPTIONS, ids=lambda spec: spec.name)
def test_every_option_is_accepted(spec: Any) -> None:
    argv = [f"--{spec.name}=1"] if spec.has_arg == REQUIRED else [f"--{spec.name}"]
    found, rest = parse_options(argv)
    assert [(p.spec.name, p.value) for p in found] == [(spec.name, "1" if spec.has_arg == REQUIRED else None)]
    assert rest == []
    if spec.short:
        found, _ = parse_options([f"-{spec.short}", "1"] if spec.has_arg == REQUIRED else [f"-{spec.short}"])
        assert found[0].spec is spec


@pytest.mark.parametrize("argv, message", [
    (["--foo"], "unrecognized option '--foo'"),
    (["--foo=bar"], "unrecognized option '--foo=bar'"),
    (["--ntasks-per=3"], "option '--ntasks-per=3' is ambiguous; possibilities: '--ntasks-per-core' "
                         "'--ntasks-per-gpu' '--ntasks-per-node' '--ntasks-per-socket' '--ntasks-per-tres'"),
    (["--me=3"], "option '--me=3' is ambiguous; possibilities: '--mem' '--mem-bind' '--mem-per-cpu' "
                 "'--mem-per-gpu'"),
    (["--hold=3"], "option '--hold' doesn't allow an argument"),
    (["--ho=3"], "option '--hold' doesn't allow an argument"),
    (["--time"], "option '--time' requires an argument"),
    (["-z"], "invalid option -- 'z'"),
    (["-N"], "option requires an argument -- 'N'"),
])
def test_getopt_errors(argv: list[str], message: str) -> None:
    with pytest.raises(BridgeRefusal) as info:
        parse_options(argv)
    assert info.value.message == message


def test_long_option_forms_and_prefixes() -> None:
    found, _ = parse_options(["--part=gpu", "--nodes", "2", "--tasks-per=4", "--exclusive", "--exclusive=user"])
    assert [(p.spec.key, p.value) for p in found] == [
        ("partition", "gpu"), ("nodes", "2"), ("ntasks-per-node", "4"), ("exclusive", None), ("exclusive", "user")]


def test_optional_argument_needs_equals() -> None:
    found, rest = parse_options(["--exclusive", "user"])
    assert found[0].value is None
    assert rest == ["user"]


def test_short_option_clusters() -> None:
    found, _ = parse_options(["-HN2", "-n", "4", "-c8", "-Qs"])
    assert [(p.spec.short, p.value) for p in found] == [("H", None), ("N", "2"), ("n", "4"), ("c", "8"),
                                                        ("Q", None), ("s", None)]


def test_options_stop_at_first_non_option_and_double_dash() -> None:
    found, rest = parse_options(["-N2", "job.sh", "-n", "4"])
    assert len(found) == 1 and rest == ["job.sh", "-n", "4"]
    found, rest = parse_options(["-N2", "--", "-n"])
    assert len(found) == 1 and rest == ["-n"]


@pytest.mark.parametrize("option", ["--help", "--usage", "--version", "-h", "-V"])
def test_options_that_submit_nothing_are_refused(option: str) -> None:
    with pytest.raises(BridgeRefusal, match="does not submit a job"):
        request(option)


# -- value parsers ----------------------------------------------------------------------

@pytest.mark.parametrize("text, minutes", [
    ("90", 90), ("5:30", 6), ("1:00:01", 61), ("0:0:30", 1), ("1-02:03:04", 1564), ("2-3", 3060),
    ("2-3:30", 3090), ("3-00:00:00", 4320), ("100:00:00", 6000), ("00:02:00", 2), ("5-", 7200),
    ("UNLIMITED", UNLIMITED), ("infinite", UNLIMITED), ("-1", UNLIMITED), ("0", 0),
])
def test_time_formats(text: str, minutes: int) -> None:
    assert time_str2mins(text) == minutes


@pytest.mark.parametrize("text", ["1:", "1::", "1:2:3:4", "abc", "1.5", "", "1-2-3", "1:2-3", "-5"])
def test_bad_times(text: str) -> None:
    assert time_str2mins(text) is None


@pytest.mark.parametrize("text, mb", [
    ("10", 10), ("10G", 10240), ("10g", 10240), ("1T", 1048576), ("512K", 1), ("1025K", 2), ("5M", 5),
    ("5MB", 5), ("2gb", 2048), ("0", 0),
])
def test_memory_sizes(text: str, mb: int) -> None:
    assert str_to_mbytes(text) == mb


@pytest.mark.parametrize("text", ["1.5G", "10X", "-1", "G", "10GiB", ""])
def test_bad_memory_sizes(text: str) -> None:
    assert str_to_mbytes(text) is None


@pytest.mark.parametrize("text, nodes", [
    ("2", (2, 2)), ("2-4", (2, 4)), ("-4", (1, 4)), ("2k", (2048, 2048)), ("0", (0, 0)), ("1-1", (1, 1)),
])
def test_node_counts(text: str, nodes: tuple[int, int]) -> None:
    assert parse_node_count(text) == nodes


@pytest.mark.parametrize("text, message", [
    ("3-2", "Maximum node count 2 is less than minimum node count 3"),
    ("2-", "Maximum node count -1 is less than minimum node count 2"),
    ("abc", '"abc" is not a valid node count'),
])
def test_bad_node_counts(text: str, message: str) -> None:
    with pytest.raises(BridgeRefusal) as info:
        parse_node_count(text)
    assert info.value.message == message


# -- job_desc encodings (verified against sbatch 22.05.8) -------------------------------

NOT_SET: dict[str, Any] = {
    "tres_per_node": None, "tres_per_job": None, "tres_per_task": None, "tres_per_socket": None,
    "cpus_per_tres": None, "mem_per_tres": None, "min_nodes": None, "max_nodes": None, "num_tasks": None,
    "ntasks_per_node": None, "cpus_per_task": None, "pn_min_memory": None, "mem_per_cpu": False,
    "shared": None, "time_limit": None, "features": None, "array_inx": None, "partition": None,
}

ENCODINGS: list[tuple[str, dict[str, Any]]] = [
    ("--gres=gpu:2", {"tres_per_node": "gres:gpu:2"}),
    ("--gres=gpu", {"tres_per_node": "gres:gpu"}),
    ("--gres=gpu:h100:8", {"tres_per_node": "gres:gpu:h100:8"}),
    ("--gres=gpu:1g.10gb:2", {"tres_per_node": "gres:gpu:1g.10gb:2"}),
    ("--gres=gpu:h100:2 --gres=gpu:3", {"tres_per_node": "gres:gpu:3"}),
    ("--gpus-per-node=4 --gres=gpu:2", {"tres_per_node": "gres:gpu:4,gres:gpu:2"}),
    ("--gpus-per-node=4", {"tres_per_node": "gres:gpu:4"}),
    ("--gpus-per-node=h100:4", {"tres_per_node": "gres:gpu:h100:4"}),
    ("--gres=none", {}),
    ("--gpus=16", {"tres_per_job": "gres:gpu:16"}),
    ("--gpus=h100:16", {"tres_per_job": "gres:gpu:h100:16"}),
    ("--gpus=gpu:4", {"tres_per_job": "gres:gpu:gpu:4"}),
    ("--gpus=4 --gpus-per-node=2", {"tres_per_job": "gres:gpu:4", "tres_per_node": "gres:gpu:2",
                                    "min_nodes": 2, "max_nodes": 2}),
    ("--gpus-per-task=2 -n4", {"tres_per_task": "gres:gpu:2", "num_tasks": 4}),
    ("--gpus-per-task=1 -N 2", {"tres_per_task": "gres:gpu:1", "min_nodes": 2, "max_nodes": 2, "num_tasks": 2}),
    ("--gpus=8 --gpus-per-task=2", {"tres_per_job": "gres:gpu:8", "tres_per_task": "gres:gpu:2", "num_tasks": 4}),
    ("--gpus-per-task=2 --gpus-per-node=4 -n 2", {"tres_per_task": "gres:gpu:2", "tres_per_node": "gres:gpu:4",
                                                  "num_tasks": 2, "ntasks_per_node": 2}),
    ("--gpus-per-task=1 --ntasks-per-node=4 -N2", {"tres_per_task": "gres:gpu:1", "min_nodes": 2, "max_nodes": 2,
                                                   "num_tasks": 8, "ntasks_per_node": 4}),
    ("--gpus-per-socket=2 --sockets-per-node=2", {"tres_per_socket": "gres:gpu:2"}),
    ("--ntasks-per-gpu=2 --gpus=4", {"tres_per_job": "gres:gpu:4", "num_tasks": 8}),
    ("--ntasks-per-gpu=2 --gpus-per-node=4 -N2", {"tres_per_node": "gres:gpu:4", "min_nodes": 2, "max_nodes": 2,
                                                  "num_tasks": 16}),
    ("--cpus-per-gpu=6 --gpus-per-node=2", {"cpus_per_tres": "gres:gpu:6", "tres_per_node": "gres:gpu:2"}),
    ("--gpus-per-task=2 --cpus-per-gpu=3 -n 2", {"cpus_per_tres": "gres:gpu:3", "tres_per_task": "gres:gpu:2",
                                                 "num_tasks": 2, "cpus_per_task": 6}),
    ("--mem-per-gpu=20G --gpus-per-node=2", {"mem_per_tres": "gres:gpu:20480", "tres_per_node": "gres:gpu:2"}),
    ("-N 2-4", {"min_nodes": 2, "max_nodes": 4}),
    ("-N 2", {"min_nodes": 2, "max_nodes": 2}),
    ("-N 0", {"min_nodes": 0}),
    ("-N2 --ntasks-per-node=4", {"min_nodes": 2, "max_nodes": 2, "ntasks_per_node": 4, "num_tasks": 8}),
    ("-N 2-4 --ntasks-per-node=4", {"min_nodes": 2, "max_nodes": 4, "ntasks_per_node": 4}),
    ("--ntasks-per-node=8", {"ntasks_per_node": 8, "num_tasks": 8}),
    ("--tasks-per-node=3 -N2", {"ntasks_per_node": 3, "num_tasks": 6, "min_nodes": 2, "max_nodes": 2}),
    ("-N2 -n8", {"min_nodes": 2, "max_nodes": 2, "num_tasks": 8}),
    ("-N 4 -n 2", {"min_nodes": 2, "max_nodes": 2, "num_tasks": 2}),
    ("-N 2-4 -n 3", {"min_nodes": 2, "max_nodes": 3, "num_tasks": 3}),
    ("-n 8", {"num_tasks": 8}),
    ("-N2 --hint=nomultithread", {"min_nodes": 2, "max_nodes": 2, "num_tasks": 2}),
    ("-N2 --threads-per-core=2", {"min_nodes": 2, "max_nodes": 2, "num_tasks": 4}),
    ("-N 2 -B 2:4:2", {"min_nodes": 2, "max_nodes": 2, "num_tasks": 32}),
    ("-N 3 --sockets-per-node=2", {"min_nodes": 3, "max_nodes": 3, "num_tasks": 6}),
    ("-c 4 -N 3", {"cpus_per_task": 4, "min_nodes": 3, "max_nodes": 3}),
    ("--mem=10G", {"pn_min_memory": 10240}),
    ("--mem=10", {"pn_min_memory": 10}),
    ("--mem=512K", {"pn_min_memory": 1}),
    ("--mem=0", {"pn_min_memory": 0}),
    ("--mem-per-cpu=4G", {"pn_min_memory": 4096, "mem_per_cpu": True}),
    ("--exclusive", {"shared": 0}),
    ("--oversubscribe", {"shared": 1}),
    ("--exclusive=user", {"shared": 2}),
    ("--exclusive=mcs", {"shared": 3}),
    ("--exclusive --oversubscribe", {"shared": 1}),
    ("-t 1-02:03:04", {"time_limit": 1564}),
    ("--time=UNLIMITED", {"time_limit": UNLIMITED}),
    ("-t 0", {"time_limit": UNLIMITED}),
    ("-t 5:30", {"time_limit": 6}),
    ("-C h100&ib", {"features": "h100&ib"}),
    ("--array=0-15:4%2", {"array_inx": "0-15:4%2"}),
    ("-p gpu,cpu", {"partition": "gpu,cpu"}),
    ("--part=gpu", {"partition": "gpu"}),
]


@pytest.mark.parametrize("options, expected", ENCODINGS, ids=[e[0] for e in ENCODINGS])
def test_encodings_match_sbatch_22_05(options: str, expected: dict[str, Any]) -> None:
    req = request(*options.split())
    got = {name: getattr(req, name) for name in NOT_SET}
    assert got == {**NOT_SET, **expected}


@pytest.mark.parametrize("options, message", [
    ("--gres=gpu:h100:8 --gpus-per-node=4", "Invalid GRES specification (with and without type identification)"),
    ("--gpus=2,h100:3", "Invalid GRES specification (with and without type identification)"),
    ("--mem=1.5G", "Invalid --mem specification"),
    ("-n 0", 'Invalid numeric value "0" for --ntasks.'),
    ("-c 0", 'Invalid numeric value "0" for --cpus-per-task.'),
    ("--exclusive=bogus", "Invalid --exclusive specification"),
    ("--time=1:", "Invalid --time specification"),
    ("--hint=bogus", 'unrecognized --hint argument "bogus", see --hint=help'),
    ("--gpus-per-task=1 -N2 -c 4", "Failed to validate job spec. --gpus-per-task used without either --gpus or "
                                   "-n/--ntasks is not allowed."),
    ("--gpus=6 --gpus-per-node=4", "Failed to validate job spec, --gpus is not multiple of "
                                   "--gres=gpu/--gpus-per-node"),
    ("--cpus-per-gpu=4 -c 2 --gpus=1", "--cpus-per-gpu is mutually exclusive with --cpus-per-task"),
    ("--mem-per-gpu=10G", "Requested mem_per_tres=gres:gpu:10240 but did not request any GPU."),
    ("--gpus=8 --gpus-per-node=4 -N 3", "Failed to validate job spec. Based on --gpu and --gres=gpu/--gpus-per-node "
                                        "required nodes (2) doesn't fall between min_nodes (3) and max_nodes (3) "
                                        "boundaries."),
    ("--gpus-per-task=3 --gpus-per-node=4 -n 2", "Failed to validate job spec, --gres=gpu/--gpus-per-node not "
                                                 "multiple of --gpus-per-task."),
    ("--gpus=4 -N 8", "Failed to validate job spec, --gpus < -N"),
    ("--ntasks-per-gpu=2 --gpus-per-task=1 -n 2", "--gpus-per-task is mutually exclusive with --ntasks-per-gpu and "
                                                  "SLURM_NTASKS_PER_GPU"),
    ("--ntasks-per-gpu=2", "gres_job_state_validate: --ntasks-per-tres needs either a GRES GPU specification or a "
                           "node/ntask specification"),
    ("--mem=10G --mem-per-cpu=4G", "--mem, --mem-per-cpu, and --mem-per-gpu are mutually exclusive."),
])
def test_refusals_match_sbatch(options: str, message: str) -> None:
    with pytest.raises(BridgeRefusal) as info:
        request(*options.split())
    assert info.value.message == message


def test_ntasks_per_gpu_without_gpu_count_is_refused() -> None:
    # sbatch would send no GPU field at all; SlurmJobRequest cannot carry the implied count
    with pytest.raises(BridgeRefusal, match="--ntasks-per-gpu without --gpus"):
        request("--ntasks-per-gpu=2", "-n", "6")


def test_command_line_overrides_script() -> None:
    req = request("-N", "2", "--time=5", directives=("-N 4 --mem=10G", "--time=60", "-p cpu"))
    assert (req.min_nodes, req.max_nodes, req.time_limit) == (2, 2, 5)
    assert req.pn_min_memory == 10240 and req.partition == "cpu"


def test_memory_options_conflict_across_script_and_command_line() -> None:
    with pytest.raises(BridgeRefusal, match="mutually exclusive"):
        request("--mem-per-cpu=1G", directives=("--mem=10G",))


def test_same_memory_option_twice_is_fine() -> None:
    assert request("--mem=2G", directives=("--mem=10G",)).pn_min_memory == 2048


def test_names_account_qos_and_spank_options() -> None:
    req = request("--k8s-image=localhost/slurm-k8s-bridge/worker:dev", "--k8s-queue", "team-a",
                  directives=("-J train-llm", "-A physics -q high", "--k8s-priority=slurm-high"))
    assert (req.name, req.account, req.qos) == ("train-llm", "physics", "high")
    assert req.spank_options == {"k8s-image": "localhost/slurm-k8s-bridge/worker:dev", "k8s-queue": "team-a",
                                 "k8s-priority": "slurm-high"}


def test_job_name_defaults_to_script_name() -> None:
    assert request_from_sbatch(script(), [], UID, GID, script_name="/home/u/train.sbatch").name == "train.sbatch"
    assert request_from_sbatch(script(), [], UID, GID).name == "sbatch"
    assert request_from_sbatch(script(), ["--wrap=hostname"], UID, GID).name == "wrap"


def test_user_group_and_submit_line() -> None:
    req = request_from_sbatch(script(), ["-N", "2"], 1234, 567)
    assert (req.user_id, req.group_id) == (1234, 567)
    assert req.submit_line == "sbatch -N 2"


def test_chdir_is_work_dir() -> None:
    assert request("-D", "/scratch/run").work_dir == "/scratch/run"


def test_hetjob_on_command_line_is_refused() -> None:
    with pytest.raises(BridgeRefusal, match="heterogeneous"):
        request_from_sbatch(script(), ["-N1", ":", "-N2"], UID, GID)
