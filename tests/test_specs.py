"""A user writes a job spec wrong, and mlfleet says what, where and how to fix it, in one sentence.

Each file in ``tests/specs/bad/`` starts with the answer it deserves::

    # expect: <line> <field, or - for none> <words the problem must contain>

and the files in ``tests/specs/good/`` are specs that must load as written.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO, Fleet
from mlfleet.core.jobs.spec import load_job_spec
from mlfleet.core.base.errors import EXIT_USAGE, SpecError

SPECS = Path(__file__).resolve().parent / "specs"
BAD = sorted((SPECS / "bad").glob("*.yaml"))
GOOD = SPECS / "good"
_EXPECT_RE = re.compile(r"^# expect: (?P<line>\d+) (?P<field>\S+) (?P<problem>.+)$")


@dataclass(frozen=True)
class Expected:
    line: int
    field: str | None
    problem: str


def expected_of(path: Path) -> Expected:
    first = path.read_bytes().split(b"\n", 1)[0].decode("utf-8")
    match = _EXPECT_RE.match(first)
    assert match, f"{path.name}: the first line must be '# expect: <line> <field or -> <problem>'"
    field = match.group("field")
    return Expected(int(match.group("line")), None if field == "-" else field, match.group("problem").strip())


def test_the_corpus_is_there_and_every_file_says_what_it_expects() -> None:
    assert len(BAD) >= 30
    for path in BAD:
        expected_of(path)


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_a_bad_spec_is_refused_with_one_sentence_at_its_line_and_field(path: Path) -> None:
    expected = expected_of(path)
    with pytest.raises(SpecError) as caught:
        load_job_spec(str(path))
    error = caught.value
    message = str(error)
    assert "\n" not in message, f"not one line: {message!r}"
    assert message.startswith(f"{path}:"), message
    assert (error.line, error.field) == (expected.line, expected.field), message
    where = f"{path}:{expected.line}: "
    assert message.startswith(where), message
    assert expected.problem in message[len(where):], message
    assert error.exit_code == EXIT_USAGE


def test_a_zero_byte_file_is_called_empty(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_bytes(b"")
    with pytest.raises(SpecError) as caught:
        load_job_spec(str(path))
    assert str(caught.value).startswith(f"{path}:1: the file is empty")


# ------------------------------------------------------------ good specs

def test_a_full_gpu_spec_keeps_its_sizes_durations_and_typed_text() -> None:
    spec = load_job_spec(str(GOOD / "gpu-finetune.yaml"))
    assert spec.name == "llama-finetune" and spec.project == "nlp"
    # what was typed reaches the process: 0.10 stays "0.10", 3 stays "3", yes stays "yes"
    assert spec.argv == ["python", "finetune.py", "--lr", "0.10", "--epochs", "3", "--fp16", "yes"]
    assert spec.env_strings() == {"OMP_NUM_THREADS": "8", "WANDB_DISABLED": "true", "LEARNING_RATE": "0.10"}
    assert spec.params == {"model": "llama-3-8b", "lr": 0.0001, "layers": ["attn", "mlp"]}
    assert spec.resources.gpus == 2
    assert spec.resources.gpu_memory == 20 * 1024**3
    assert spec.resources.memory == 512 * 1000**2
    assert spec.resources.gpu_types == ["H100", "A100"]
    assert spec.resources.cpus == 16
    assert spec.constraints.labels == {"zone": "eu-west"} and spec.constraints.hosts == ["gpu1", "gpu2"]
    assert (spec.priority, spec.retries) == (10, 3)
    assert spec.timeout == 2 * 3600 + 30 * 60
    assert spec.workdir == str(GOOD)


def test_a_shell_string_command_runs_through_sh_and_workdir_is_taken_from_the_spec_folder() -> None:
    spec = load_job_spec(str(GOOD / "shell-oneliner.yaml"))
    assert spec.argv == ["/bin/sh", "-c", "python eval.py --split test && echo done"]
    assert spec.workdir == str(SPECS)
    assert Path(spec.workdir).is_absolute()
    assert spec.resources.gpu_types == ["L4"]
    assert spec.resources.gpu_memory == int(1.5 * 1024**3)
    assert spec.resources.memory == 64 * 1024**3
    assert spec.timeout == 45.0


def test_a_minimal_spec_gets_safe_defaults() -> None:
    spec = load_job_spec(str(GOOD / "minimal.yaml"))
    assert spec.argv == ["echo", "hello"]
    assert spec.project == "default"
    assert spec.resources.gpus == 0 and spec.resources.gpu_memory is None and spec.resources.memory is None
    assert (spec.priority, spec.retries, spec.timeout) == (0, 0, None)
    assert spec.workdir == str(GOOD)


def test_dates_in_argv_and_env_are_passed_as_typed() -> None:
    spec = load_job_spec(str(GOOD / "dated-arguments.yaml"))
    assert spec.argv == ["python", "backfill.py", "--since", "2024-01-01", "--at", "12:30"]
    assert spec.env_strings() == {"SNAPSHOT_DATE": "2024-01-31"}
    assert spec.timeout == 86400


def test_a_spec_loads_the_same_from_a_relative_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(SPECS)
    spec = load_job_spec("good/minimal.yaml")
    assert spec.workdir == str(GOOD)


# ------------------------------------------------------------- the CLI

CLI_CASES = ["gpus-word", "unknown-top-level-field-typo", "duplicate-key", "workdir-missing", "timeout-soon",
             "yaml-alias-bomb", "tag-int-too-large"]


def _submit(fleet: Fleet, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlfleet", "submit", str(path)], env=fleet.env,
                          capture_output=True, text=True, timeout=60, cwd=REPO)


def _assert_no_controller_was_bothered(fleet: Fleet) -> None:
    # Validation happens in the client: a bad spec never starts a controller or creates a DuckDB file.
    assert fleet.controller_pid is None
    assert not fleet.home.db_path.exists()
    assert not fleet.home.controller_socket.exists()


@pytest.mark.parametrize("name", CLI_CASES)
def test_submit_of_a_bad_spec_prints_one_line_and_exits_2(fleet: Fleet, name: str) -> None:
    path = SPECS / "bad" / f"{name}.yaml"
    expected = expected_of(path)
    proc = _submit(fleet, path)
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and proc.stderr.endswith("\n"), proc.stderr
    where = f"mlfleet: {path}:{expected.line}: "
    assert lines[0].startswith(where), lines[0]
    assert expected.problem in lines[0][len(where):], lines[0]
    _assert_no_controller_was_bothered(fleet)


def test_submit_of_a_missing_file_prints_one_line_and_exits_2(fleet: Fleet) -> None:
    path = fleet.root / "no-such-spec.yaml"
    proc = _submit(fleet, path)
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"mlfleet: {path}: ") and "not found" in lines[0]
    _assert_no_controller_was_bothered(fleet)


def test_endless_or_self_referencing_spec_files_are_one_sentence(tmp_path) -> None:
    from mlfleet.core.base.errors import SpecError
    from mlfleet.core.base.yamlsource import read_yaml

    alias = tmp_path / "alias.yaml"
    alias.write_text("a: &a [*a]\n")
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    for path, words in ((alias, "the alias *a refers to the value it is inside"), (deep, "nests too deeply"), ("/dev/zero", "not a regular file")):
        try:
            read_yaml(path)
        except SpecError as exc:
            assert words in str(exc)
        else:
            raise AssertionError(f"{path} was accepted")


def _laughs(levels: int, fan: int) -> str:
    """Each level an anchored list of ``fan`` aliases to the level before: fan**levels values from a few lines."""
    text = "a0: &a0 [x]\n"
    for n in range(1, levels + 1):
        text += f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * fan)}]\n"
    return text


def test_aliases_that_repeat_a_value_load_and_aliases_that_multiply_it_are_refused_at_their_line(tmp_path: Path) -> None:
    from mlfleet.core.base.yamlsource import MAX_ALIAS_EXPANSION, read_yaml

    modest = tmp_path / "modest.yaml"
    modest.write_text("defaults: &d {lr: 0.1, seeds: [1, 2, 3]}\nrun1: *d\nrun2: {cfg: *d}\n" + _laughs(4, 9))
    data = read_yaml(modest).data
    assert data["run2"] == {"cfg": {"lr": 0.1, "seeds": [1, 2, 3]}} and len(data["a4"]) == 9
    # The largest expansion allowed and one more than that: 2 levels of fan-out f add f*f + f values.
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_laughs(6, 7))  # 7**6 = 117,649 leaves alone
    with pytest.raises(SpecError) as caught:
        read_yaml(bomb)
    assert caught.value.line == 7 and "the alias *a5" in str(caught.value)
    assert f"more than {MAX_ALIAS_EXPANSION:,} beyond what is written" in str(caught.value)


def test_an_alias_bomb_in_hosts_yaml_or_config_yaml_is_one_sentence_and_exit_2(fleet: Fleet) -> None:
    bomb = _laughs(9, 9)
    for target, command in ((fleet.home.hosts_file, ("hosts", "list")), (fleet.home.config_file, ("jobs", "list"))):
        target.write_text(bomb)
        result = fleet.cli(*command, timeout=60)
        assert result.code == EXIT_USAGE, result.err
        lines = result.err.splitlines()
        assert len(lines) == 1 and "Traceback" not in result.err, result.err
        assert lines[0].startswith(f"mlfleet: {target}:") and "aliases expand this file to" in lines[0], lines[0]
        target.unlink()
