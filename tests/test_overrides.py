"""A user changes a spec from the command line (--set, --name) and the params reach the program."""

from __future__ import annotations

import json

from conftest import Fleet

SPEC = """name: train
command: "echo lr={params.lr} env=$MLFLEET_PARAM_LR batch=$MLFLEET_PARAM_BATCH_SIZE; python -c 'from mlfleet import track; print(\\"params\\", track.params())'"
params:
  lr: 0.5
  batch-size: 32
resources:
  gpus: 0
"""


def test_set_and_name_change_the_job_and_the_program_sees_its_params(fleet: Fleet) -> None:
    spec = fleet.write_spec("train", SPEC)
    done = fleet.cli("submit", str(spec), "--set", "params.lr=0.1", "--set", "params.note='0.10'", "--name", "lr-0.1",
                     "--wait", "--json")
    assert done.code == 0, done.err
    job = fleet.job(done.json()["job_id"])
    assert job["name"] == "lr-0.1"
    assert job["spec"]["params"] == {"lr": 0.1, "batch-size": 32, "note": "0.10"}
    shown = fleet.cli("jobs", "show", job["job_id"]).out
    assert "params: lr=0.1, batch-size=32, note=0.10" in shown

    out = fleet.cli("jobs", "logs", job["job_id"]).out
    assert "lr=0.1 env=0.1 batch=32" in out
    printed = out.split("params ", 1)[1].strip().replace("'", '"')
    assert json.loads(printed) == {"lr": 0.1, "batch-size": 32, "note": "0.10"}

    run = fleet.cli_json("runs", "show", done.json()["run_id"])
    assert run["params"]["lr"] == 0.1 and run["params"]["note"] == "0.10"


def test_a_placeholder_value_is_shell_quoted_in_a_string_command(fleet: Fleet) -> None:
    spec = fleet.write_spec("quote", "name: quote\ncommand: \"printf '%s|' {params.msg}\"\nparams: {msg: 'a b; echo pwned'}\n")
    done = fleet.cli("submit", str(spec), "--wait", "--json")
    assert done.code == 0, done.err
    assert fleet.cli("jobs", "logs", done.json()["job_id"]).out == "a b; echo pwned|"


def test_set_mistakes_are_one_sentence_naming_the_set(fleet: Fleet) -> None:
    spec = fleet.write_spec("train", SPEC)
    cases = {
        ("--set", "resources.gpuz=2"): "--set resources.gpuz=2: unknown field; did you mean 'gpus'?",
        ("--set", "resources.gpus=two"): "--set resources.gpus=two: expected an integer, got 'two'",
        ("--set", "resources.gpus=[1"): "--set resources.gpus=[1: the value is not valid YAML",
        ("--set", "params.lr"): "--set params.lr: expected PATH=VALUE",
        ("--set", "name.first=x"): "--set name.first=x: name is 'train', so it has no field 'first'",
        ("--name", "bad name"): "--name bad name: must start with a letter or digit",
    }
    for args, sentence in cases.items():
        result = fleet.cli("submit", str(spec), *args)
        assert result.code == 2, (args, result.err)
        assert result.err.startswith(f"mlfleet: {sentence}"), (args, result.err)
        assert len(result.err.strip().splitlines()) == 1
    assert fleet.cli_json("jobs", "list") == []


def test_an_unknown_placeholder_is_a_spec_error_at_its_line(fleet: Fleet) -> None:
    spec = fleet.write_spec("typo", "name: typo\nparams: {lr: 0.1}\ncommand: [python, train.py, --lr, '{params.lrr}']\n")
    result = fleet.cli("submit", str(spec))
    assert result.code == 2
    assert f"{spec}:3: command[3]: {{params.lrr}} names no param" in result.err


def test_the_same_key_with_another_set_is_refused_as_another_spec(fleet: Fleet) -> None:
    spec = fleet.write_spec("train", SPEC)
    first = fleet.cli("submit", str(spec), "--set", "params.lr=0.1", "--key", "k1", "--json")
    assert first.code == 0, first.err
    again = fleet.cli("submit", str(spec), "--set", "params.lr=0.1", "--key", "k1", "--json")
    assert again.code == 0 and again.json()["job_id"] == first.json()["job_id"] and again.json()["existing"]
    other = fleet.cli("submit", str(spec), "--set", "params.lr=0.2", "--key", "k1")
    assert other.code == 2 and "was already used for job" in other.err and "params differs" in other.err
