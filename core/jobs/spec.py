"""Job specs from YAML into validated models, with errors at file:line:field.

Validation is msgspec's (types, ranges, unknown fields); this module turns
its error paths back into the YAML line the user has to fix, and adds the
checks that need the file system (``workdir`` must exist).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from mlfleet.core.base import units
from mlfleet.core.base.errors import SpecError
from mlfleet.core.base.models import MAX_GPU_MEMORY, JobSpec, SecretRef
from mlfleet.core.base.sweep_models import bounds_as_numbers
from mlfleet.core.base.validation import collect_errors, raise_collected, touches
from mlfleet.core.base.yamlsource import Located, dotted, read_yaml
from mlfleet.core.jobs.env_spec import environment_errors, typed_as_written, workdir_errors
from mlfleet.core.jobs.overrides import Override, apply, blame_overrides
from mlfleet.core.jobs.params import env_collisions, unknown_placeholders
from mlfleet.core.team.secret_store import NAME_PATTERN as SECRET_NAME



def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def load_job_spec(path: str | Path, overrides: list[Override] | None = None) -> JobSpec:
    """Read, validate and resolve a job spec file (workdir made absolute).

    Every mistake found is reported, up to :data:`MAX_SPEC_ERRORS`, each one
    sentence at its line (a :class:`SpecErrors` when there are several), so a
    user fixes a spec in one pass rather than one error per submit.
    ``overrides`` (``--set``, ``--name``) are applied first; a mistake in one
    names it instead of a line (core/jobs/overrides.py).
    """
    located = read_yaml(path)
    if not isinstance(located.data, dict):
        raise SpecError(located.path, located.line_of(()), None, f"a job spec must be a YAML mapping, got {_describe(located.data)}",
                        "start with 'name:' and 'command:' (see configs/)")
    data = as_typed_in_file(dict(located.data), located)  # before the overrides: it reads the file's text
    data = bounds_as_numbers(apply(data, overrides or []))
    spec, errors = _checked(data, located, Path(path).parent)
    _raise_if_any(blame_overrides(errors, overrides or []))
    assert spec is not None  # no errors: it converted
    return spec


def as_typed_in_file(data: dict[str, Any], located: Located) -> dict[str, Any]:
    """``data`` with the values that are text kept as typed in the file, not as YAML read them.

    argv items, environment values, tags and labels are text: ``0.10`` stays
    "0.10", ``010`` stays "010", ``yes`` stays "yes". ``located`` must be the
    view whose paths start at the job (a pipeline's inline job: ``Located.under``).
    """
    if isinstance(data.get("command"), list):
        data["command"] = [located.as_typed(("command", i), v) for i, v in enumerate(data["command"])]
    for parts in (("env",), ("tags",), ("constraints", "labels")):
        mapping = _get(data, parts)
        if isinstance(mapping, dict):
            _put(data, parts, {k: located.as_typed(parts + (k,), v) for k, v in mapping.items()})
    typed_as_written(data, located)
    return data


def job_spec_errors(data: dict[str, Any], located: Located, base: Path) -> list[SpecError]:
    """Every mistake in a job's data, its workdir (relative to ``base``) included; empty when it is a valid job.

    For specs that hold a job (a pipeline's inline ``job:``): they report
    these errors with their own, and resolve the job with :func:`resolve_job_spec`.
    """
    return _checked(data, located, base)[1]


def resolve_job_spec(data: dict[str, Any], located: Located, base: Path) -> JobSpec:
    """A valid job's data as its JobSpec, the workdir made absolute (relative to ``base``); raises SpecError(s)."""
    spec, errors = _checked(data, located, base)
    _raise_if_any(errors)
    assert spec is not None
    return spec


def _checked(data: dict[str, Any], located: Located, base: Path) -> tuple[JobSpec | None, list[SpecError]]:
    """The resolved spec (None unless it is valid) and every mistake found, the workdir check included."""
    spec, errors, removed = _validate(data, located)
    if spec is not None and len(errors) < MAX_SPEC_ERRORS and not touches(("workdir",), removed):
        try:
            spec = _resolve(spec, base, located)
        except SpecError as exc:
            errors.append(exc)
    return (spec if not errors else None), errors


def _get(data: Any, parts: tuple[str, ...]) -> Any:
    for part in parts:
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _put(data: dict[str, Any], parts: tuple[str, ...], value: Any) -> None:
    for part in parts[:-1]:
        data[part] = dict(data[part])
        data = data[part]
    data[parts[-1]] = value


MAX_SPEC_ERRORS = 5  # "a few": more than this is one problem repeated, and the first ones say so
# Stand-ins for a required field found wrong, so that validation can go on to the rest of the spec.
_STAND_INS: dict[tuple[Any, ...], Any] = {("name",): "x", ("command",): ["x"], ("sweep", "random", "n"): 1,
                                          ("sweep", "objective", "metric"): "x"}


def validate_job_spec(data: dict[str, Any], located: Located | None = None) -> JobSpec:
    """msgspec validation plus the checks types cannot express; every mistake found, up to a few."""
    spec, errors, _ = _validate(data, located)
    _raise_if_any(errors)
    assert spec is not None
    return spec


def _raise_if_any(errors: list[SpecError]) -> None:
    raise_collected(errors, MAX_SPEC_ERRORS)


def _validate(data: dict[str, Any], located: Located | None) -> tuple[JobSpec | None, list[SpecError], set[tuple]]:
    """Convert, setting each wrong value aside so later errors are found too (core/base/validation.py), then the checks types cannot express.

    Returns the spec (with defaults where values were set aside; None when
    that was not possible), the errors, and the paths set aside (checks that
    involve them are skipped: their value is not the user's).
    """
    display = located.path if located else "job spec"
    spec, errors, removed, _ = collect_errors(data, JobSpec, located, display=display, max_errors=MAX_SPEC_ERRORS,
                                           stand_ins=_STAND_INS)
    if spec is None:
        return None, errors, removed
    errors.extend(_semantic_errors(spec, located, display, removed))
    return spec, errors, removed




def _semantic_errors(spec: JobSpec, located: Located | None, display: str,
                     removed: set[tuple[Any, ...]]) -> list[SpecError]:
    """The checks types cannot express, each found error one SpecError (none whose fields were set aside)."""
    errors: list[SpecError] = []

    def fail(parts: tuple[Any, ...], problem: str, hint: str = "", also: tuple[tuple[Any, ...], ...] = ()) -> None:
        if any(touches(p, removed) for p in (parts, *also)):
            return
        line = located.line_of(parts) if located else None
        errors.append(SpecError(display, line, dotted(parts), problem, hint))

    if isinstance(spec.command, str) and not spec.command.strip():
        fail(("command",), "is empty", "give the program to run, e.g. [python, train.py]")
    if isinstance(spec.command, list):
        if not spec.command:
            fail(("command",), "is an empty list", "give the program to run, e.g. [python, train.py]")
        elif not spec.command[0].strip():
            fail(("command", 0), "the program name is empty")
    gpus = (("resources", "gpus"),)
    if spec.resources.gpu_memory is not None:
        if spec.resources.gpu_memory > MAX_GPU_MEMORY:
            fail(("resources", "gpu_memory"), f"{units.format_size(spec.resources.gpu_memory)} per GPU is more than any GPU has",
                 "gpu_memory is per GPU; 1 TiB at most")
        elif spec.resources.gpus == 0:
            fail(("resources", "gpu_memory"), "is set but resources.gpus is 0", "ask for gpus: 1 or more, or drop gpu_memory",
                 also=gpus)
    for i, name in enumerate(spec.resources.gpu_types):
        if not name.strip():
            where = ("resources", "gpu_type") if isinstance(spec.resources.gpu_type, str) else ("resources", "gpu_type", i)
            fail(where, "is empty", "name a GPU model like H100, or drop gpu_type")
            break
    else:
        if spec.resources.gpu_types and spec.resources.gpus == 0:  # it would be ignored: a job without GPUs
            fail(("resources", "gpu_type"), "is set but resources.gpus is 0, so it would have no effect",
                 "ask for gpus: 1 or more, or drop gpu_type", also=gpus)
    for key, value in spec.env.items():
        if not key or "=" in key or "\0" in key:
            fail(("env", key), "is not a valid environment variable name")
        elif isinstance(value, SecretRef) and not SECRET_NAME.fullmatch(value.secret):
            fail(("env", key, "secret"), f"{value.secret[:80]!r} is not a secret name",
                 "use letters, digits, '_', '.' or '-' (see mlfleet secrets list)")
    if spec.tags and any(not k for k in spec.tags):
        fail(("tags",), "has an empty key")
    swept = {p[len("params."):] for p in _swept_paths(spec) if p.startswith("params.")}
    for parts, key in unknown_placeholders(spec.command, spec.params, swept):
        fail(parts, f"{{params.{key}}} names no param", "add it under params: (or to the sweep), or fix the name")
    for first, second, variable in env_collisions(spec.params)[:1]:
        fail(("params", second), f"and params.{first} would both be the environment variable {variable}",
             "rename one of them")
    for i, path in enumerate(spec.inputs):
        if not path.strip() or "\0" in path:
            fail(("inputs", i), "is not a path", "give a file, folder or glob, relative to workdir (data/train.csv)")
    if spec.service is not None:
        fail(("service",), "is set by deployments, not in a job spec",
             "write a deployment spec and run mlfleet deploy apply FILE (docs/deployments.md)")
    environment_errors(spec.environment, fail)
    return errors


def _swept_paths(spec: JobSpec) -> set[str]:
    """The spec paths a sweep block sets, so a placeholder may name a param only the sweep gives."""
    if spec.sweep is None:
        return set()
    return set(spec.sweep.grid or {}) | set(spec.sweep.random.space if spec.sweep.random else {})


def _resolve(spec: JobSpec, base: Path, located: Located) -> JobSpec:
    workdir = Path(spec.workdir).expanduser()
    if not workdir.is_absolute():
        workdir = (base / workdir).resolve()
    if not workdir.is_dir():
        line = located.line_of(("workdir",))
        problem = f"folder {str(workdir)!r} does not exist"
        raise SpecError(located.path, line, "workdir", problem, "a relative workdir is taken from the spec file's folder")

    def fail(parts: tuple[Any, ...], problem: str, hint: str = "") -> None:
        raise SpecError(located.path, located.line_of(parts), dotted(parts), problem, hint)

    workdir_errors(spec.environment, workdir, fail)
    return msgspec.structs.replace(spec, workdir=str(workdir))


