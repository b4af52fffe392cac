"""Fuzzed submissions, sbatch's side: random and malformed options and batch scripts through
the sbatch-option parser (``slurm.sbatch``, ``slurm.sbatch_values``).

Properties: the parser either returns a ``SlurmJobRequest`` or refuses with sbatch's own
kind of refusal, whose message is one readable line and whose code is one the plugin can
return; a request survives its AdminComment stamp unchanged; the value readers keep Slurm's
arithmetic. Hypothesis drives the generators of ``tests/fuzz_requests.py`` (``st.randoms()``:
every choice is recorded, replayed and shrunk) and plain ``st.text()`` for hostile values.
Bounded: ``FUZZ_EXAMPLES`` examples per property (default 150), no deadline, derandomized
(the same examples every run; set ``FUZZ_RANDOM=1`` to explore new ones).

The regression tests at the end are the bugs this fuzzing found, each as one example.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from slurm_k8s_bridge.core.errors import BridgeRefusal, SbatchRefusal
from slurm_k8s_bridge.core.request import UNLIMITED, SlurmJobRequest
from slurm_k8s_bridge.slurm.plugin_build import ESLURM_CODES
from slurm_k8s_bridge.slurm.sbatch import (
    SBATCH_OPTIONS,
    parse_directives,
    request_from_sbatch,
)
from slurm_k8s_bridge.slurm.sbatch_values import (
    parse_int,
    parse_node_count,
    str_to_mbytes,
    time_str2mins,
    xfmt_tres,
)

from .. import fuzz_requests as fz
from .conftest import fuzz_settings

pytestmark = pytest.mark.unit

FUZZ = fuzz_settings(HealthCheck.function_scoped_fixture)
SAMPLES = json.loads((Path(__file__).parent / "data" / "sbatch-directives-sample.json").read_text())
UID = GID = 1000
#: options whose value is a string the bridge reads or that sbatch checks
VALUED = sorted(spec.name for spec in SBATCH_OPTIONS if spec.has_arg != 0 and spec.name not in
                ("help", "usage", "version"))


def submit(script: str, argv: list[str]) -> SlurmJobRequest | BridgeRefusal:
    """The parser's answer: a request, or the refusal (checked to be a proper one)."""
    try:
        req = request_from_sbatch(script, argv, UID, GID, script_name="job.sh")
    except BridgeRefusal as refusal:
        check_refusal(refusal)
        return refusal
    assert isinstance(req, SlurmJobRequest)
    assert SlurmJobRequest.from_stamp(req.stamp()) == req
    return req


def check_refusal(refusal: BridgeRefusal) -> None:
    assert not fz.message_problems(refusal.message), fz.message_problems(refusal.message)
    assert not fz.message_problems(refusal.user_message())
    assert refusal.code in ESLURM_CODES, f"{refusal.code} is not a code the plugin can return"


# -- whole submissions --------------------------------------------------------------------

@FUZZ
@given(st.randoms(use_true_random=False))
def test_random_submissions_parse_or_refuse(rnd: random.Random) -> None:
    argv, directives = fz.sbatch_invocation(rnd, nul=True)
    submit(fz.batch_script(directives), argv)


@FUZZ
@given(st.sampled_from(VALUED), st.text(max_size=300), st.booleans())
def test_any_text_as_any_option_value(option: str, value: str, in_script: bool) -> None:
    if in_script:
        submit(fz.batch_script([fz.directive_line([f"--{option}={value}"])]) if "\n" not in value
               and "\r" not in value else "#!/bin/sh\n", [])
    else:
        submit("#!/bin/sh\ntrue\n", [f"--{option}={value}"])


@FUZZ
@given(st.lists(st.text(max_size=40), max_size=8))
def test_any_words_as_a_command_line(argv: list[str]) -> None:
    submit("#!/bin/sh\ntrue\n", argv)


@FUZZ
@given(st.text(max_size=400))
def test_any_text_after_sbatch_magic(line: str) -> None:
    submit("#!/bin/bash\n#SBATCH " + line + "\nsrun true\n", [])


@FUZZ
@given(st.text(max_size=600))
def test_any_script(text: str) -> None:
    try:
        words = parse_directives(text)
    except SbatchRefusal as refusal:
        check_refusal(refusal)
        return
    assert all(isinstance(w, str) and w for w in words)


@FUZZ
@given(st.sampled_from(SAMPLES), st.randoms(use_true_random=False))
def test_real_scripts_with_one_option_changed(case: dict[str, Any], rnd: random.Random) -> None:
    """The sample of real batch scripts, each with one directive replaced by a random option
    (good or broken) and one random option on the command line."""
    lines = [f"#SBATCH {line}" for line in case["directive_lines"]]
    extra_argv, extra_lines = fz.sbatch_invocation(rnd, max_options=2)
    if lines:
        lines[rnd.randrange(len(lines))] = extra_lines[0] if extra_lines else "#SBATCH --hold"
    submit(fz.batch_script(lines), extra_argv)


def test_real_scripts_parse() -> None:
    """The seeds themselves: every sample script parses (they are real, submitted jobs)."""
    for case in SAMPLES:
        script = fz.batch_script([f"#SBATCH {line}" for line in case["directive_lines"]])
        assert isinstance(submit(script, []), SlurmJobRequest), case["id"]


# -- the value readers ---------------------------------------------------------------------

@FUZZ
@given(st.text(max_size=60))
def test_time_reader_returns_minutes_or_nothing(text: str) -> None:
    minutes = time_str2mins(text)
    assert minutes is None or minutes == UNLIMITED or minutes >= 0


@FUZZ
@given(st.integers(0, 400), st.integers(0, 23), st.integers(0, 59), st.integers(0, 59),
       st.sampled_from(["M", "M:S", "H:M:S", "D-H", "D-H:M", "D-H:M:S"]))
def test_time_formats_count_like_slurm(days: int, hours: int, minutes: int, seconds: int, form: str) -> None:
    text = {"M": f"{minutes}", "M:S": f"{minutes}:{seconds}", "H:M:S": f"{hours}:{minutes}:{seconds}",
            "D-H": f"{days}-{hours}", "D-H:M": f"{days}-{hours}:{minutes}",
            "D-H:M:S": f"{days}-{hours}:{minutes}:{seconds}"}[form]
    total = {"M": minutes * 60, "M:S": minutes * 60 + seconds,
             "H:M:S": hours * 3600 + minutes * 60 + seconds, "D-H": days * 86400 + hours * 3600,
             "D-H:M": days * 86400 + hours * 3600 + minutes * 60,
             "D-H:M:S": days * 86400 + hours * 3600 + minutes * 60 + seconds}[form]
    assert time_str2mins(text) == -(-total // 60)


@FUZZ
@given(st.text(max_size=40))
def test_memory_reader_returns_mb_or_nothing(text: str) -> None:
    mb = str_to_mbytes(text)
    assert mb is None or 0 <= mb < 2**63


@FUZZ
@given(st.integers(0, 10**7), st.sampled_from(["", "K", "M", "G", "T", "k", "m", "g", "t", "KB", "gb", "Tb"]))
def test_memory_units_are_powers_of_1024(number: int, unit: str) -> None:
    scale = {"k": None, "": 1, "m": 1, "g": 1024, "t": 1024**2}[unit[:1].lower()]
    expected = -(-number // 1024) if scale is None else number * scale
    assert str_to_mbytes(f"{number}{unit}") == expected


@FUZZ
@given(st.text(max_size=30), st.booleans())
def test_integer_reader_fits_a_c_int_or_refuses(text: str, positive: bool) -> None:
    try:
        number = parse_int("--ntasks", text, positive)
    except SbatchRefusal as refusal:
        check_refusal(refusal)
        return
    assert (1 if positive else 0) <= number <= 2**31 - 1


@FUZZ
@given(st.text(max_size=30))
def test_node_count_reader(text: str) -> None:
    try:
        low, high = parse_node_count(text)
    except SbatchRefusal as refusal:
        check_refusal(refusal)
        return
    assert high == 0 or low <= high


@FUZZ
@given(st.text(max_size=60))
def test_tres_formatter_prefixes_every_item(text: str) -> None:
    out = xfmt_tres(None, "gres:gpu", text)
    assert out is None or all(item.startswith("gres:gpu:") for item in out.split(",gres:gpu:")[:1])


# -- regressions: the bugs this fuzzing found -----------------------------------------------

def refusal_of(script: str, argv: list[str]) -> BridgeRefusal:
    answer = submit(script, argv)
    assert isinstance(answer, BridgeRefusal), answer
    return answer


def test_regression_control_characters_never_reach_a_refusal() -> None:
    """A directive line with a BEL character and an unmatched quote was refused with the
    raw line, control characters and all (a message must be one clean line)."""
    refusal = refusal_of("#!/bin/sh\n#SBATCH --comment 'x\x07y\n", [])
    assert "Unmatched `'`" in refusal.message and "\x07" not in refusal.message
    refusal = refusal_of("#!/bin/sh\n", ["--ntasks=4\x1b[31m"])
    assert refusal.message == 'Invalid numeric value "4?[31m" for --ntasks.'


def test_regression_a_long_value_is_cut_in_the_message() -> None:
    """A 4000-character value made a 4000-character message."""
    refusal = refusal_of("#!/bin/sh\n", ["--nodes=" + "x" * 4000])
    assert len(refusal.message) < 200 and refusal.message.endswith('..." is not a valid node count')


def test_regression_integers_beyond_a_c_int_are_refused() -> None:
    """``-c 99999999999999999999`` was taken as a 20-digit CPU count (sbatch refuses it)."""
    refusal = refusal_of("#!/bin/sh\n", ["-c", "9" * 20])
    assert refusal.message == "Numeric argument (9223372036854775807) to big for --cpus-per-task."
    assert isinstance(submit("#!/bin/sh\n", ["-c", str(2**31 - 1)]), SlurmJobRequest)


def test_regression_memory_beyond_64_bits_is_refused() -> None:
    """``--mem=99999999999999999999G`` became an integer slurmctld cannot hold (its top bit
    is the per-CPU flag)."""
    refusal = refusal_of("#!/bin/sh\n", ["--mem=" + "9" * 20 + "G"])
    assert refusal.message == "Invalid --mem specification"
    assert str_to_mbytes(f"{2**63 - 1}") == 2**63 - 1
    assert str_to_mbytes(f"{2**63}") is None
