"""A pipeline step's ``job:``: inline job spec fields, or ``spec: FILE`` changed by ``set:``, into a JobSpec.

Both ways go through the jobs capability's own rules, so a job in a pipeline
and a job in a file never disagree about what a command, a workdir or an
environment may be. Inline, the errors land at the pipeline's lines (through
``Located.under``) with the step's path in front of the field
(``steps.train.job.resources.gpus``); from a file, at the job file's lines,
and a ``set:`` entry is an ``--set`` (a mistake it causes names the ``set:``
line, core/jobs/overrides.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlfleet.core.base.errors import SpecError, SpecErrors, UsageError
from mlfleet.core.base.models import JobSpec
from mlfleet.core.base.yamlsource import Located, dotted
from mlfleet.core.jobs.overrides import Override, parse_path
from mlfleet.core.jobs.spec import as_typed_in_file, job_spec_errors, load_job_spec, resolve_job_spec


def typed_jobs(data: dict[str, Any], located: Located) -> dict[str, Any]:
    """Inline jobs' text values as typed in the file (read before overrides and params change what the file says)."""
    steps = data.get("steps")
    if not isinstance(steps, dict):
        return data
    out = {}
    for name, step in steps.items():
        if isinstance(step, dict) and isinstance(step.get("job"), dict) and "spec" not in step["job"]:
            step = {**step, "job": as_typed_in_file(dict(step["job"]), located.under(("steps", name, "job")))}
        out[name] = step
    return {**data, "steps": out}


def job_of_step(pipeline: str, project: str, step: str, job: dict[str, Any], located: Located,
                base: Path) -> tuple[JobSpec | None, list[SpecError]]:
    """The step's JobSpec (workdir absolute) or None, and every mistake found in it.

    An inline job is named ``PIPELINE-STEP`` and takes the pipeline's project
    unless it says otherwise; its relative workdir is taken from ``base``
    (the pipeline file's folder).
    """
    at = ("steps", step, "job")
    if "spec" in job:
        return _from_file(at, job, located, base)
    job.setdefault("name", f"{pipeline}-{step}")
    job.setdefault("project", project)
    view = located.under(at, job)
    found = job_spec_errors(job, view, base)
    if found:
        return None, [SpecError(e.path, e.line, f"{dotted(at)}.{e.field}" if e.field else dotted(at), e.problem, e.hint)
                      for e in found]
    return resolve_job_spec(job, view, base), []


def _from_file(at: tuple[Any, ...], job: dict[str, Any], located: Located,
               base: Path) -> tuple[JobSpec | None, list[SpecError]]:
    def fail(parts: tuple[Any, ...], problem: str, hint: str = "") -> tuple[None, list[SpecError]]:
        return None, [SpecError(located.path, located.line_of(parts), dotted(parts), problem, hint)]

    for key in job:
        if key not in ("spec", "set"):
            return fail(at + (key,), "cannot come with spec: (the job is the file's)",
                        f"change the file's job with set: {{{key}: ...}}, or write the job inline without spec:")
    spec, changes = job["spec"], job.get("set", {})
    if not isinstance(spec, str) or not spec.strip():
        return fail(at + ("spec",), "must be the path of a job spec file", "e.g. spec: ../train.yaml")
    if not isinstance(changes, dict):
        return fail(at + ("set",), "must be a mapping of spec paths to values", "e.g. set: {params.lr: 0.1}")
    overrides = []
    for key, value in changes.items():
        said = f"{located.path}:{located.line_of(at + ('set', key))}: {dotted(at + ('set',))}"
        try:
            overrides.append(Override(said, parse_path(str(key), said), value))
        except UsageError as exc:
            return fail(at + ("set", key), str(exc).split(": ", 1)[-1].split("; ")[0], "e.g. params.lr or command[1]")
    path = Path(spec).expanduser()
    try:
        return load_job_spec(path if path.is_absolute() else base / path, overrides), []
    except SpecErrors as exc:
        return None, list(exc.errors)
    except SpecError as exc:
        if exc.problem == "file not found":
            return fail(at + ("spec",), f"{spec!r} is not a file", "a relative spec is taken from the pipeline file's folder")
        return None, [exc]
    except UsageError as exc:  # a set: the file's shape cannot take (a field of a list, say)
        return fail(at + ("set",), str(exc))
