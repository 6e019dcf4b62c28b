"""The ``environment:`` block of a job spec: the checks its types cannot express (issue 15).

Kept apart from core/jobs/spec.py so that the rules of one block read in one
place: which fields exclude each other, what a Python version looks like,
and (with the file system) that a requirements file or a project is really
in the workdir, where the controller will read it from the job's snapshot.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from mlfleet.core.base.models import PYTHON_VERSION_PATTERN, Environment
from mlfleet.core.base.yamlsource import Located

Fail = Callable[..., None]  # spec.py's fail(parts, problem, hint="")

_BUILD_FIELDS = ("python", "requirements", "project", "setup")


def typed_as_written(data: dict[str, Any], located: Located) -> None:
    """``python: 3.10`` is the text "3.10" (YAML would read 3.1), requirement and setup items are text too."""
    env = data.get("environment")
    if not isinstance(env, dict):
        return
    env = dict(env)
    if "python" in env:
        env["python"] = located.as_typed(("environment", "python"), env["python"])
    for key in ("requirements", "setup"):
        if isinstance(env.get(key), list):
            env[key] = [located.as_typed(("environment", key, i), v) for i, v in enumerate(env[key])]
    data["environment"] = env


def environment_errors(env: Environment | None, fail: Fail) -> None:
    """Each mistake in the block, as one ``fail`` (one sentence at its line)."""
    if env is None:
        return
    given = [name for name in _BUILD_FIELDS if getattr(env, name) not in (None, [])]
    if env.inherit and given:
        fail(("environment", "inherit"), f"is true, so the job runs in the node's own environment and "
             f"{', '.join(given)} would have no effect", "drop inherit, or drop the environment: block's other fields")
        return
    if env.requirements is not None and env.project is not None:
        fail(("environment", "project"), "cannot come with requirements",
             "list requirements (or a requirements.txt), or point project at a folder with pyproject.toml and uv.lock")
    if env.python is not None and not re.match(PYTHON_VERSION_PATTERN, env.python):
        fail(("environment", "python"), f"{env.python!r} is not a Python version",
             'write a version such as "3.11" or "3.11.2"')
    if isinstance(env.requirements, list):
        for i, item in enumerate(env.requirements):
            text = item.strip()
            if not text or text.startswith("#"):
                fail(("environment", "requirements", i), "is empty", "write a requirement such as numpy>=2")
            elif "\n" in text or "\r" in text:  # requirements.in is line-based: a 2nd line is an option uv obeys
                fail(("environment", "requirements", i), "holds a line break", "give one requirement per item")
            elif text.startswith("-"):
                fail(("environment", "requirements", i), f"{text!r} is an installer option, not a requirement",
                     "set environments.index_url or environments.find_links in config.yaml instead")
            else:
                continue
            break
    elif isinstance(env.requirements, str):
        _relative_path_errors(("environment", "requirements"), env.requirements, fail)
    if env.project is not None:
        _relative_path_errors(("environment", "project"), env.project, fail)
    for i, command in enumerate(env.setup):
        if not command.strip():
            fail(("environment", "setup", i), "is empty", "give a shell command, or drop it")
            break


def _relative_path_errors(parts: tuple[Any, ...], path: str, fail: Fail) -> None:
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or "\0" in path:
        fail(parts, f"{path!r} is not inside the workdir",
             "give a path relative to workdir: the controller reads it from the job's code snapshot")


def workdir_errors(env: Environment | None, workdir: Path, fail: Fail) -> None:
    """The files the block names must be in the workdir (checked at submit, not when the job is placed)."""
    if env is None or env.inherit:
        return
    if isinstance(env.requirements, str) and not (workdir / env.requirements).is_file():
        fail(("environment", "requirements"), f"{env.requirements!r} is not a file in workdir {str(workdir)!r}",
             "give a requirements.txt relative to workdir, or a list of requirements")
    for field in ("requirements", "project"):
        path = getattr(env, field)
        if isinstance(path, str) and not _stays_inside(workdir, path):  # the snapshot leaves such a link out
            fail(("environment", field), f"{path!r} is a link to {str((workdir / path).resolve())!r}, outside the "
                 "workdir", "copy it into the workdir: the controller reads it from the job's code snapshot")
    if env.project is not None:
        folder = workdir / env.project
        missing = [name for name in ("pyproject.toml", "uv.lock") if not (folder / name).is_file()]
        if missing:
            fail(("environment", "project"), f"{str(folder)!r} has no {' and no '.join(missing)}",
                 "run 'uv lock' in the project (project: needs pyproject.toml and uv.lock)")


def _stays_inside(workdir: Path, path: str) -> bool:
    try:
        (workdir / path).resolve().relative_to(workdir.resolve())
    except ValueError:
        return False
    return True
