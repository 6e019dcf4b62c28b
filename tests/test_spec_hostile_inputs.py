"""Hostile or odd input in a spec or a --set is one sentence, and a param never becomes shell syntax (pure).

Found by the issue 15 adversarial pass: inside '...' shlex.quote's own quotes
closed the user's, so ``'{params.x}'`` with x = ``$(...)`` ran the command;
a line break in a requirement smuggled an option (``--index-url``) that uv
obeyed; ``--set environment.python=3.10`` was the float 3.1; ``--set
params.x='&a [*a]'`` was a RecursionError traceback.
"""

from __future__ import annotations

import subprocess

import msgspec
import pytest

from mlfleet.core.base.errors import SpecError, UsageError
from mlfleet.core.base.models import JobSpec
from mlfleet.core.jobs.overrides import parse_set
from mlfleet.core.jobs.params import render_argv
from mlfleet.core.jobs.spec import load_job_spec

HOSTILE = ["$(echo PWNED)", "`echo PWNED`", "a  b", "it's", 'say "hi" \\ $HOME', "a\nb", "'; echo PWNED; '", ""]


def shell_prints(command: str, value: str) -> str:
    spec = msgspec.convert({"name": "q", "command": command, "params": {"x": value}}, JobSpec)
    return subprocess.run(render_argv(spec), capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("command", ["printf '%s|' {params.x}", "printf '%s|' '{params.x}'",
                                     "printf '%s|' \"{params.x}\"", "printf '%s|' \"pre {params.x} post\"",
                                     "printf '%s|' 'pre {params.x} post'", "printf '%s|' \\'{params.x}"])
def test_the_program_gets_the_value_as_one_argument_in_every_quote_context(command: str, value: str) -> None:
    expected = {"pre": f"pre {value} post|", "\\'": f"'{value}|"}
    want = next((v for k, v in expected.items() if k in command), f"{value}|")
    assert shell_prints(command, value) == want


def test_params_that_would_set_one_environment_variable_are_refused(tmp_path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("name: a\ncommand: [x]\nparams:\n  lr: 1\n  LR: 2\n")
    with pytest.raises(SpecError) as caught:
        load_job_spec(path)
    assert str(caught.value).startswith(f"{path}:5: params.LR: and params.lr would both be the environment variable "
                                        "MLFLEET_PARAM_LR")


def test_a_requirement_with_a_line_break_is_refused_at_its_line(tmp_path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text('name: a\ncommand: [x]\nenvironment:\n  requirements: ["numpy\\n--index-url http://x"]\n')
    with pytest.raises(SpecError) as caught:
        load_job_spec(path)
    assert str(caught.value).startswith(f"{path}:4: environment.requirements[0]: holds a line break")


def test_set_environment_python_is_text_as_in_a_file() -> None:
    assert parse_set("environment.python=3.10").value == "3.10"
    assert parse_set("environment.requirements=[numpy, 'scipy==1.10']").value == ["numpy", "scipy==1.10"]


@pytest.mark.parametrize("text", ["params.x=&a [*a]", "params.x={k: &b [*b]}"])
def test_a_set_value_that_holds_itself_is_one_sentence(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_set(text)
    assert str(caught.value) == f"--set {text}: the value holds itself (a YAML alias inside its own anchor); write it out"


def test_a_requirements_file_linked_from_outside_the_workdir_is_refused_at_submit(tmp_path) -> None:
    """It passed the check, then failed at placement: the snapshot leaves such a link out ("is it ignored?")."""
    (tmp_path / "wd").mkdir()
    (tmp_path / "wd" / "req.txt").symlink_to("/etc/passwd")
    path = tmp_path / "s.yaml"
    path.write_text("name: a\ncommand: [x]\nworkdir: wd\nenvironment:\n  requirements: req.txt\n")
    with pytest.raises(SpecError) as caught:
        load_job_spec(path)
    assert str(caught.value).startswith(f"{path}:5: environment.requirements: 'req.txt' is a link to '/etc/passwd', "
                                        "outside the workdir")
