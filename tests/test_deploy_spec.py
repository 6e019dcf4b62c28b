"""A user writes a deployment spec: a good one loads as written, each mistake is one sentence at its line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mlfleet.core.base.errors import SpecError, SpecErrors
from mlfleet.core.deploy.spec import (DeploymentSpec, load_deployment_spec, parse_model_ref, replica_job_spec,
                                      validate_deployment_spec)
from mlfleet.core.jobs.overrides import parse_overrides

GOOD = """\
name: iris
model: iris@production
command: [python, serve.py, --model, "{model_path}", --port, "{port}"]
workdir: .
project: default
env: {THREADS: 010}
resources: {gpus: 0, cpus: 1, memory: 1GiB}
constraints: {labels: {zone: a}}
replicas: 2
health: {path: /health, expect_status: 200, interval: 2s, timeout: 1s, initial_delay: 0s, failures: 3,
         deep: {path: /predict, method: POST, body: '{"rows": [[5.1, 3.5, 1.4, 0.2]]}', expect_status: 200}}
metrics: {prometheus: /metrics, interval: 5s, requests: http_requests, errors: null,
          latency: http_request_duration_seconds, gauges: []}
rollout: {max_surge: 1, max_unavailable: 0, ready_timeout: 2m, drain: 3s}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "deploy.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def errors_of(exc: SpecError) -> list[SpecError]:
    return exc.errors if isinstance(exc, SpecErrors) else [exc]


def test_the_contract_example_loads_as_written(tmp_path: Path) -> None:
    spec = load_deployment_spec(write(tmp_path, GOOD))
    assert spec.name == "iris" and spec.replicas == 2 and spec.model == "iris@production"
    assert spec.workdir == str(tmp_path.resolve())  # relative to the spec file, made absolute
    assert spec.env == {"THREADS": "010"}  # as typed, not YAML's octal
    assert spec.health.interval == 2 and spec.health.deep is not None and spec.health.deep.method == "POST"
    assert spec.metrics is not None and spec.metrics.names().path == "/metrics"
    assert spec.rollout.ready_timeout == 120 and spec.rollout.drain == 3
    assert spec.content_hash() == load_deployment_spec(write(tmp_path, GOOD)).content_hash()
    assert spec.content_hash() != load_deployment_spec(write(tmp_path, GOOD.replace("replicas: 2", "replicas: 3"))
                                                       ).content_hash()


def test_a_replica_is_a_job_with_the_service_plan(tmp_path: Path) -> None:
    spec = load_deployment_spec(write(tmp_path, GOOD))
    job = replica_job_spec(spec, 3, "iris-v3-1", "ab" * 32, "model.pkl")
    assert job.name == "iris-v3-1" and job.tags == {"deployment": "iris", "version": "3"}
    assert job.command[-1] == "{port}" and "{model_path}" in job.command  # the agent fills them in
    assert job.workdir == spec.workdir and job.resources.memory == 1024**3
    plan = job.service
    assert plan is not None and plan.deployment == "iris" and plan.version == 3 and plan.replica == "iris-v3-1"
    assert plan.health.path == "/health" and plan.health.timeout == 1
    assert plan.deep is not None and plan.deep.path == "/predict"
    assert plan.metrics is not None and plan.metrics.latency == "http_request_duration_seconds"
    assert plan.model_sha256 == "ab" * 32 and plan.model_file == "model.pkl" and plan.port is None


@pytest.mark.parametrize("ref,parsed", [("iris@production", ("iris", "production", None)),
                                        ("iris:3", ("iris", None, 3)), ("iris", ("iris", None, None))])
def test_model_refs(ref: str, parsed: tuple) -> None:
    assert parse_model_ref(ref) == parsed


@pytest.mark.parametrize("ref", ["", "iris@", "iris:", "iris:0", "iris:x", "iris@prod:3", "@prod", "-iris", "ir is",
                                 "iris:٣"])
def test_bad_model_refs_say_how_to_write_one(ref: str) -> None:
    with pytest.raises(ValueError, match="NAME@ALIAS"):
        parse_model_ref(ref)


def test_each_mistake_at_its_line(tmp_path: Path) -> None:
    text = GOOD.replace("model: iris@production", "model: iris@")
    text = text.replace("replicas: 2", "replicas: two")
    text = text.replace("project: default", "projekt: default")
    with pytest.raises(SpecErrors) as info:
        load_deployment_spec(write(tmp_path, text))
    found = {e.field: e for e in info.value.errors}
    assert found["replicas"].line == 9 and "expected an integer" in found["replicas"].problem
    assert found["projekt"].line == 5 and found["projekt"].hint == "did you mean 'project'?"
    assert found["model"].line == 2 and "alias" in found["model"].problem
    assert str(info.value).splitlines()[0].startswith(f"{tmp_path / 'deploy.yaml'}:2: model:")


def test_unknown_nested_field_suggests_the_right_one(tmp_path: Path) -> None:
    text = GOOD.replace("max_surge: 1", "max_surg: 1").replace("prometheus: /metrics", "prometeus: /metrics")
    text = text.replace("method: POST", "methd: POST")
    with pytest.raises(SpecErrors) as info:
        load_deployment_spec(write(tmp_path, text))
    hints = {e.field: (e.line, e.hint) for e in info.value.errors}
    assert hints["rollout.max_surg"] == (14, "did you mean 'max_surge'?")
    assert hints["metrics.prometeus"] == (12, "did you mean 'prometheus'?")
    assert hints["health.deep.methd"] == (11, "did you mean 'method'?")


def test_a_command_without_the_port_is_refused_with_what_to_do(tmp_path: Path) -> None:
    text = GOOD.replace(', --port, "{port}"', "")
    with pytest.raises(SpecError) as info:
        load_deployment_spec(write(tmp_path, text))
    assert info.value.line == 3 and info.value.field == "command" and "{port}" in info.value.hint
    # in an env value, or a server that reads $MLFLEET_PORT itself, is fine
    assert load_deployment_spec(write(tmp_path, text.replace("THREADS: 010", 'PORT: "{port}"'))).env["PORT"] == "{port}"
    assert load_deployment_spec(write(tmp_path, text + "port_from_env: true\n")).port_from_env


def test_a_mistyped_placeholder_is_named(tmp_path: Path) -> None:
    with pytest.raises(SpecErrors) as info:
        load_deployment_spec(write(tmp_path, GOOD.replace('"{port}"', '"{prot}"')))
    typo = next(e for e in info.value.errors if e.field == "command[5]")
    assert typo.line == 3 and typo.hint == "did you mean {port}?"
    # a string command runs through the shell: braces there are the shell's, only {port} is looked for
    spec = load_deployment_spec(write(tmp_path, GOOD.replace(
        'command: [python, serve.py, --model, "{model_path}", --port, "{port}"]',
        "command: python serve.py --port {port} --opts '{x}'")))
    assert replica_job_spec(spec, 1, "iris-v1-1", None, None).argv[-1].endswith("'{x}'")


def test_rollout_and_probe_rules(tmp_path: Path) -> None:
    text = GOOD.replace("max_surge: 1, max_unavailable: 0", "max_surge: 0, max_unavailable: 0")
    text = text.replace("timeout: 1s", "timeout: 2s").replace("replicas: 2", "replicas: 65")
    with pytest.raises(SpecErrors) as info:
        load_deployment_spec(write(tmp_path, text))
    found = {e.field: e for e in info.value.errors}
    assert "64" in found["replicas"].problem
    assert "shorter than the interval" in found["health.timeout"].problem and found["health.timeout"].line == 10
    assert "both 0" in found["rollout.max_surge"].problem
    # scaled to zero, nothing is ever replaced: both 0 is fine
    assert load_deployment_spec(write(tmp_path, text.replace("replicas: 65", "replicas: 0").replace(
        "timeout: 2s", "timeout: 1s"))).replicas == 0
    with pytest.raises(SpecError, match="ready_timeout: must be longer than zero"):
        load_deployment_spec(write(tmp_path, GOOD.replace("ready_timeout: 2m", "ready_timeout: 0s")))
    with pytest.raises(SpecError, match="max_unavailable: must be an integer >= 0"):
        load_deployment_spec(write(tmp_path, GOOD.replace("max_unavailable: 0", "max_unavailable: -1")))


def test_missing_fields_and_the_job_rules_of_shared_fields(tmp_path: Path) -> None:
    with pytest.raises(SpecErrors) as info:
        load_deployment_spec(write(tmp_path, "name: iris\ncommand: [serve, '{port}']\nresources: {gpus: 0, gpu_type: H100}\n"))
    found = {e.field: e for e in info.value.errors}
    assert found["model"].problem == "is required but missing"
    assert found["resources.gpu_type"].line == 3  # the jobs capability's rule, at the deployment file's line


def test_workdir_must_exist(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="workdir: folder .* does not exist") as info:
        load_deployment_spec(write(tmp_path, GOOD.replace("workdir: .", "workdir: nowhere")))
    assert info.value.line == 4


def test_set_overrides_apply_and_are_blamed(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    assert load_deployment_spec(path, parse_overrides(["replicas=5"])).replicas == 5
    with pytest.raises(SpecError, match="--set replicas=lots"):
        load_deployment_spec(path, parse_overrides(["replicas=lots"]))


def test_hostile_values_are_sentences_not_tracebacks(tmp_path: Path) -> None:
    base = {"name": "iris", "model": "iris:1", "command": ["serve", "{port}"]}
    with pytest.raises(SpecError, match="too long"):
        validate_deployment_spec({**base, "command": ["serve", "{port}", "x" * 10_000_000]})
    with pytest.raises(SpecError, match="too long"):
        validate_deployment_spec({**base, "model": "m" * 10_000_000})
    with pytest.raises(SpecError, match="NUL"):
        validate_deployment_spec({**base, "command": ["serve\0", "{port}"]})
    deep: object = "x"
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(SpecError, match="command"):
        validate_deployment_spec({**base, "command": deep})
    with pytest.raises(SpecError, match="env"):
        validate_deployment_spec({**base, "env": {"A": deep}})
    with pytest.raises(SpecError, match="mapping"):
        validate_deployment_spec(["not", "a", "mapping"])  # type: ignore[arg-type]
    big = tmp_path / "big.yaml"
    big.write_text("name: iris\nmodel: iris:1\ncommand: [serve, '{port}', " + "x" * 10_000_000 + "]\n")
    with pytest.raises(SpecError):
        load_deployment_spec(big)
    nested = tmp_path / "nested.yaml"
    nested.write_text("name: iris\nmodel: iris:1\ncommand: " + "[" * 5000 + "1" + "]" * 5000 + "\n")
    with pytest.raises(SpecError, match="nests too deeply"):
        load_deployment_spec(nested)
    assert isinstance(validate_deployment_spec(base), DeploymentSpec)
