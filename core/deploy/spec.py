"""Deployment specs from YAML into validated models, with errors at file:line:field (docs: DEPLOY contract).

A deployment is "this model, served by this command, N times": its spec
shares the job spec's fields for what runs where (command, workdir, env,
environment, resources, constraints) and adds the model reference, the
replica count, the health/metrics probes and the rollout rules. Validation
is the job spec's: msgspec for types, core/base/validation for turning its
error paths into the line to fix, and the jobs capability's own checks for
the shared fields (through :func:`validate_job_spec`, so the two never
disagree about what a command or an environment may be).

Every replica is a job (:func:`replica_job_spec`); the agent fills in
``{port}`` and ``{model_path}`` at launch.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from mlfleet.core.base import units
from mlfleet.core.base.errors import SpecError, SpecErrors
from mlfleet.core.base.models import (NAME_PATTERN, Constraints, Environment, EnvValue, HealthProbe, JobSpec, MetricNames,
                                      Name, Resources, Seconds, ServicePlan, spec_dec_hook, to_plain)
from mlfleet.core.base.validation import collect_errors, raise_collected, touches
from mlfleet.core.base.yamlsource import Located, dotted, read_yaml
from mlfleet.core.jobs.overrides import Override, apply, blame_overrides
from mlfleet.core.jobs.spec import validate_job_spec

MAX_REPLICAS = 64
MAX_DELAY_S = 86400.0
MAX_SPEC_ERRORS = 5  # as job specs: more than this is one problem repeated
PORT = "{port}"
MODEL_PATH = "{model_path}"

Arg = Annotated[str, Meta(max_length=65536)]
ModelRef = Annotated[str, Meta(min_length=1, max_length=300)]
_NAME_RE = re.compile(NAME_PATTERN)


class Delay(Seconds):
    """A duration that may be zero (``initial_delay: 0s``, ``drain: 0s``); job durations may not."""


def deploy_dec_hook(kind: type, value: Any) -> Any:
    """The job spec's units, plus :class:`Delay`."""
    if kind is Delay:
        seconds = units.parse_duration(_scalar(value))
        if seconds > MAX_DELAY_S:
            raise ValueError(f"{value!r} is longer than a day")
        return Delay(seconds)
    return spec_dec_hook(kind, value)


def _scalar(value: Any) -> int | float | str:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a duration like 0s or 3s, got {type(value).__name__}")
    return value
_BARE_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class HealthSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``health:``: the liveness probe's fields (:class:`HealthProbe`) plus the ``deep`` probe inside it.

    The deep probe lives under ``health`` in the YAML because users think of
    it as part of "is it healthy"; the ServicePlan keeps the two apart.
    """

    path: Annotated[str, Meta(min_length=1, max_length=2048, pattern=r"^/")] = "/health"
    method: Literal["GET", "POST", "PUT", "HEAD"] = "GET"
    body: Annotated[str, Meta(max_length=65536)] | None = None
    expect_status: Annotated[int, Meta(ge=100, le=599)] = 200
    interval: Seconds = Seconds(5.0)
    timeout: Seconds = Seconds(2.0)
    initial_delay: Delay = Delay(0.0)
    failures: Annotated[int, Meta(ge=1, le=100)] = 3
    deep: HealthProbe | None = None

    def liveness(self) -> HealthProbe:
        return HealthProbe(path=self.path, method=self.method, body=self.body, expect_status=self.expect_status,
                           interval=self.interval, timeout=self.timeout, initial_delay=self.initial_delay,
                           failures=self.failures)


class MetricsSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``metrics:``: where the server's Prometheus text is (``prometheus``) and which families mean what."""

    prometheus: Annotated[str, Meta(min_length=1, max_length=2048, pattern=r"^/")] = "/metrics"
    interval: Seconds = Seconds(5.0)
    requests: Annotated[str, Meta(min_length=1, max_length=256)] = "http_requests"
    errors: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    latency: Annotated[str, Meta(min_length=1, max_length=256)] = "http_request_duration_seconds"
    gauges: Annotated[list[Annotated[str, Meta(min_length=1, max_length=256)]], Meta(max_length=32)] = \
        msgspec.field(default_factory=list)

    def names(self) -> MetricNames:
        return MetricNames(path=self.prometheus, interval=self.interval, requests=self.requests, errors=self.errors,
                           latency=self.latency, gauges=list(self.gauges))


class RolloutSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``rollout:``: how fast a new version replaces the old (core/deploy/rollout.py carries it out)."""

    max_surge: Annotated[int, Meta(ge=0, le=MAX_REPLICAS)] = 1  # replicas above ``replicas`` while rolling
    max_unavailable: Annotated[int, Meta(ge=0, le=MAX_REPLICAS)] = 0  # healthy ones below ``replicas`` allowed
    ready_timeout: Seconds = Seconds(120.0)  # a new replica not healthy by then rolls the deployment back
    drain: Delay = Delay(3.0)  # out of the endpoints this long before it is stopped (in-flight requests)


class DeploymentSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A deployment as the user wrote it (after validation; workdir made absolute by :func:`load_deployment_spec`)."""

    name: Name
    model: ModelRef  # NAME@ALIAS (follows the alias), NAME:VERSION (pinned) or NAME (the latest version)
    command: Annotated[list[Arg], Meta(max_length=1000)] | Arg
    workdir: Annotated[str, Meta(min_length=1, max_length=4096)] = "."
    project: Name = "default"
    env: Annotated[dict[str, EnvValue], Meta(max_length=1000)] = msgspec.field(default_factory=dict)
    environment: Environment | None = None
    resources: Resources = msgspec.field(default_factory=Resources)
    constraints: Constraints = msgspec.field(default_factory=Constraints)
    replicas: Annotated[int, Meta(ge=0, le=MAX_REPLICAS)] = 1
    health: HealthSpec = msgspec.field(default_factory=HealthSpec)
    metrics: MetricsSpec | None = msgspec.field(default_factory=MetricsSpec)  # null: not scraped
    rollout: RolloutSpec = msgspec.field(default_factory=RolloutSpec)
    # The server reads $MLFLEET_PORT itself, so neither command nor env needs "{port}".
    port_from_env: bool = False

    def content_hash(self) -> str:
        """sha256 of the canonical JSON of the spec: an apply of the same spec is no change."""
        return hashlib.sha256(msgspec.json.encode(to_plain(self), order="sorted")).hexdigest()


# Field path -> the Struct there: for "did you mean" on an unknown field, and for finding a bad mapping key.
STRUCTS: dict[tuple[Any, ...], type[msgspec.Struct]] = {
    (): DeploymentSpec, ("resources",): Resources, ("constraints",): Constraints, ("environment",): Environment,
    ("health",): HealthSpec, ("health", "deep"): HealthProbe, ("metrics",): MetricsSpec, ("rollout",): RolloutSpec,
}
# Fields shared with job specs, checked by the jobs capability's own rules (same paths, same lines).
_JOB_FIELDS = ("name", "command", "project", "workdir", "env", "environment", "resources", "constraints")
_STAND_INS: dict[tuple[Any, ...], Any] = {("name",): "x", ("command",): ["{port}"], ("model",): "x"}


def parse_model_ref(ref: str) -> tuple[str, str | None, int | None]:
    """``NAME@ALIAS`` -> (name, alias, None); ``NAME:3`` -> (name, None, 3); ``NAME`` -> (name, None, None): latest.

    Raises ValueError with the sentence to show (the spec check puts it at its line).
    """
    hint = "write NAME@ALIAS (e.g. iris@production), NAME:VERSION (e.g. iris:3) or NAME"
    if not isinstance(ref, str) or not ref:
        raise ValueError(f"model reference {ref!r} is empty; {hint}")
    name, alias, version = ref, None, None
    if "@" in ref and ":" in ref:
        raise ValueError(f"model reference {ref!r} has both an alias and a version; {hint}")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        if not _NAME_RE.match(alias) or len(alias) > 128:
            raise ValueError(f"model reference {ref!r}: alias {alias!r} is not a name; {hint}")
    elif ":" in ref:
        name, text = ref.split(":", 1)
        if not text.isascii() or not text.isdigit() or int(text) < 1 or len(text) > 18:
            raise ValueError(f"model reference {ref!r}: version {text!r} is not a number from 1 up; {hint}")
        version = int(text)
    if not name or not _NAME_RE.match(name) or len(name) > 128:
        raise ValueError(f"model reference {ref!r}: model name {name!r} is not a name "
                         "(a letter or digit, then letters, digits, '.', '_' or '-'); " + hint)
    return name, alias, version


def load_deployment_spec(path: str | Path, overrides: list[Override] | None = None) -> DeploymentSpec:
    """Read, validate and resolve a deployment spec file (workdir made absolute, relative to the file).

    Every mistake found (up to :data:`MAX_SPEC_ERRORS`) is one sentence at its
    line; several come as :class:`SpecErrors`. ``overrides`` (``--set``) are
    applied first, and a mistake in one names it instead of a line.
    """
    located = read_yaml(path)
    if not isinstance(located.data, dict):
        raise SpecError(located.path, located.line_of(()), None, "a deployment spec must be a YAML mapping",
                        "start with 'name:', 'model:' and 'command:' (see configs/deploy/)")
    data = dict(located.data)
    # argv items and env values are text as typed (0.10 stays "0.10", 010 stays "010").
    if isinstance(data.get("command"), list):
        data["command"] = [located.as_typed(("command", i), v) for i, v in enumerate(data["command"])]
    for parts in (("env",), ("constraints", "labels")):
        mapping = _get(data, parts)
        if isinstance(mapping, dict):
            _put(data, parts, {k: located.as_typed(parts + (k,), v) for k, v in mapping.items()})
    env = data.get("environment")
    if isinstance(env, dict) and "python" in env:  # python: 3.10 is "3.10", not 3.1
        data["environment"] = {**env, "python": located.as_typed(("environment", "python"), env["python"])}
    data = apply(data, overrides or [])
    spec, errors, removed = _validate(data, located)
    if spec is not None and not errors and not any(r[:1] == ("workdir",) for r in removed):
        workdir = Path(spec.workdir).expanduser()
        if not workdir.is_absolute():
            workdir = (Path(path).parent / workdir).resolve()
        if workdir.is_dir():
            spec = msgspec.structs.replace(spec, workdir=str(workdir))
        else:
            errors.append(SpecError(located.path, located.line_of(("workdir",)), "workdir",
                                    f"folder {str(workdir)!r} does not exist",
                                    "a relative workdir is taken from the spec file's folder"))
    _raise_if_any(blame_overrides(errors, overrides or []))
    assert spec is not None
    return spec


def validate_deployment_spec(data: dict[str, Any], located: Located | None = None) -> DeploymentSpec:
    """msgspec validation plus the checks types cannot express (the RPC's check of a spec sent as data)."""
    if not isinstance(data, dict):
        raise SpecError("deployment spec", None, None, "a deployment spec must be a mapping")
    spec, errors, _ = _validate(data, located)
    _raise_if_any(errors)
    assert spec is not None
    return spec


def _get(data: Any, parts: tuple[str, ...]) -> Any:
    for part in parts:
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _put(data: dict[str, Any], parts: tuple[str, ...], value: Any) -> None:
    for part in parts[:-1]:
        data[part] = dict(data[part])
        data = data[part]
    data[parts[-1]] = value


def _raise_if_any(errors: list[SpecError]) -> None:
    raise_collected(errors, MAX_SPEC_ERRORS)


def _validate(data: dict[str, Any], located: Located | None) -> tuple[DeploymentSpec | None, list[SpecError], set[tuple]]:
    """Convert, setting each wrong value aside so later errors are found too (core/base/validation.py), then the checks types cannot express."""
    display = located.path if located else "deployment spec"
    spec, errors, removed, data = collect_errors(data, DeploymentSpec, located, display=display, max_errors=MAX_SPEC_ERRORS,
                                           structs=STRUCTS, stand_ins=_STAND_INS, dec_hook=deploy_dec_hook)
    if spec is None:
        return None, errors, removed
    errors.extend(_semantic_errors(spec, data, located, display, removed))
    return spec, errors[:MAX_SPEC_ERRORS], removed


def _semantic_errors(spec: DeploymentSpec, data: dict[str, Any], located: Located | None, display: str,
                     removed: set[tuple[Any, ...]]) -> list[SpecError]:
    errors: list[SpecError] = []

    def fail(parts: tuple[Any, ...], problem: str, hint: str = "") -> None:
        if touches(parts, removed):
            return
        line = located.line_of(parts) if located else None
        errors.append(SpecError(display, line, dotted(parts), problem, hint))

    # The shared fields: the jobs capability's rules, at the same paths and lines.
    shared = {k: data[k] for k in _JOB_FIELDS if k in data}
    try:
        validate_job_spec(shared, located)
    except SpecErrors as exc:
        errors.extend(_as_display(e, display) for e in exc.errors if e.field is None or not touches(_path_of(e), removed))
    except SpecError as exc:
        if exc.field is None or not touches(_path_of(exc), removed):
            errors.append(_as_display(exc, display))

    try:
        parse_model_ref(spec.model)
    except ValueError as exc:
        fail(("model",), str(exc).split("; ")[0].replace(f"model reference {spec.model!r}", f"{spec.model!r}", 1),
             str(exc).split("; ")[-1])

    pieces = [(("command",), spec.command)] if isinstance(spec.command, str) else \
        [(("command", i), c) for i, c in enumerate(spec.command)]
    for parts, text in pieces:
        if "\0" in text:
            fail(parts, "holds a NUL character", "an argument cannot carry one; remove it")
        for m in _BARE_PLACEHOLDER.finditer(text):
            if m.group(0) not in (PORT, MODEL_PATH) and isinstance(spec.command, list) and m.group(0) == text:
                close = difflib.get_close_matches(text, [PORT, MODEL_PATH], n=1)
                fail(parts, f"{text} is not a placeholder mlfleet fills in",
                     f"did you mean {close[0]}?" if close else "the placeholders are {port} and {model_path}")
    in_env = any(isinstance(v, str) and PORT in v for v in spec.env.values())
    if not spec.port_from_env and not in_env and not any(PORT in text for _, text in pieces):
        fail(("command",), "does not say where the server listens: mlfleet picks a free port on each node",
             "put \"{port}\" in command (e.g. --port \"{port}\") or in an env value, "
             "or set port_from_env: true if the server reads $MLFLEET_PORT itself")

    rollout = spec.rollout
    if spec.replicas > 0 and rollout.max_surge == 0 and rollout.max_unavailable == 0:
        fail(("rollout", "max_surge"), "and rollout.max_unavailable are both 0, so no replica could ever be replaced",
             "allow one extra replica (max_surge: 1) or one fewer while rolling (max_unavailable: 1)")
    if rollout.ready_timeout <= 0:
        fail(("rollout", "ready_timeout"), "must be more than 0s", "give a new replica time to start, e.g. 2m")
    probes = [(("health",), spec.health.liveness())]
    if spec.health.deep is not None:
        probes.append((("health", "deep"), spec.health.deep))
    for parts, probe in probes:
        if probe.interval <= 0:
            fail(parts + ("interval",), "must be more than 0s", "probe every few seconds, e.g. 2s")
        elif probe.timeout <= 0:
            fail(parts + ("timeout",), "must be more than 0s", "e.g. 1s")
        elif probe.timeout >= probe.interval:
            fail(parts + ("timeout",), f"({probe.timeout:g}s) must be shorter than the interval ({probe.interval:g}s)",
                 "a probe must end before the next one starts")
    if spec.metrics is not None and spec.metrics.interval <= 0:
        fail(("metrics", "interval"), "must be more than 0s", "scrape every few seconds, e.g. 5s")
    return errors


def _path_of(error: SpecError) -> tuple[Any, ...]:
    """The field path of a SpecError's dotted field (``command[1]`` -> ("command", 1))."""
    out: list[Any] = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", error.field or ""):
        out.append(int(index) if index else name)
    return tuple(out)


def _as_display(error: SpecError, display: str) -> SpecError:
    """A job-spec check's error, said about the deployment spec (and without job-only hints)."""
    if error.path == display:
        return error
    return SpecError(display, error.line, error.field, error.problem, error.hint)


def replica_job_spec(spec: DeploymentSpec, version: int, replica_id: str, model_sha256: str | None,
                     model_file: str | None) -> JobSpec:
    """The job one replica is: the deployment's command and placement, tagged, with the ServicePlan set.

    ``{port}`` and ``{model_path}`` stay in the argv for the agent to fill in;
    retries are 0 because the agent's supervisor restarts the server itself.
    """
    plan = ServicePlan(deployment=spec.name, version=version, replica=replica_id, health=spec.health.liveness(),
                       deep=spec.health.deep, metrics=spec.metrics.names() if spec.metrics else None,
                       model_sha256=model_sha256, model_file=model_file)
    command: list[str] | str = list(spec.command) if isinstance(spec.command, list) else spec.command
    return JobSpec(name=replica_id, command=command, project=spec.project, workdir=spec.workdir, env=dict(spec.env),
                   tags={"deployment": spec.name, "version": str(version)}, resources=spec.resources,
                   constraints=spec.constraints, environment=spec.environment, service=plan)
