"""Which files a run may hand out as artifacts, and opening one without being fooled.

An artifact is served by the agent, which may run as a user (root, say)
who can read far more than the job's owner meant to share. So a path a
run names is served only if it is a regular file inside the run's folder,
the job's workdir, or a folder the host's configuration allows
(``artifact_roots`` in hosts.yaml, ``local.artifact_roots`` in config.yaml,
passed in the launch request). The path is resolved (every symlink
followed) and must land inside one of those; the file is then opened from
the root down, one component at a time with ``O_NOFOLLOW``, so a folder or
file swapped for a symlink after the check is refused, not followed. The
same rule is applied by ``track.log_artifact`` when the job logs it and
here each time it is read: a line written by hand cannot widen it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mlfleet.core.base.errors import NotFoundError, UsageError

from mlfleet.agents.rundir import RunDir

ROOTS_ENV = "MLFLEET_ARTIFACT_ROOTS"  # os.pathsep-separated, for track.log_artifact in the job
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device",
          stat.S_IFBLK: "a device", stat.S_IFLNK: "a symlink"}


def allowed_roots(run_root: Path, workdir: str | None, extra: list[str]) -> list[str]:
    """The folders a run's artifacts may be in, resolved, without repeats."""
    roots: list[str] = []
    for folder in [os.path.abspath(run_root), *([workdir] if workdir else []), *extra]:
        if folder and os.path.isabs(folder):
            real = os.path.realpath(folder)
            if real != "/" and real not in roots:  # a workdir of / would make every file the run's
                roots.append(real)
    return roots


# The agent's own records in a run's folder: never artifacts (launch.json holds the job's environment).
_RECORDS = {"launch.json", "runner.json", "started.json", "exit.json", "lineage.json", "cancel.json", "logs.json",
            "logs.lock", "runner.log", "service.json", "restarts.json"}


def run_roots(run: RunDir) -> list[str]:
    """The run's folder first, then its workdir and the host's extra folders (from its launch request)."""
    launch = run.launch or {}
    extra = launch.get("artifact_roots") or []
    return allowed_roots(run.root, launch.get("workdir"), [str(p) for p in extra if isinstance(p, str)])


def _inside(resolved: str, roots: list[str]) -> tuple[str, str] | None:
    for root in roots:
        if resolved == root:
            return root, ""
        if resolved.startswith(root.rstrip("/") + "/"):
            return root, resolved[len(root.rstrip("/")) + 1:]
    return None


def open_artifact(path: str, roots: list[str], run_id: str) -> int:
    """A read-only descriptor of the regular file ``path``, or one sentence saying why it is refused.

    ``roots[0]`` is the run's own folder, whose agent records are never served.
    """
    if not os.path.isabs(path) or "\0" in path:
        raise UsageError(f"artifact {path!r} of run {run_id} is not an absolute path")
    place = _inside(os.path.realpath(path), roots)
    if place is None:
        real = os.path.realpath(path)
        shown = path if real == path else f"{path} ({real})"
        raise UsageError(f"artifact {shown} of run {run_id} is outside the run's folder and its workdir on its node, "
                         "so it is not served; write artifacts there, or add the folder to the host's artifact_roots "
                         "(hosts.yaml; local.artifact_roots in config.yaml)")
    root, rel = place
    parts = [p for p in rel.split("/") if p]
    if root == roots[0] and len(parts) == 1 and (parts[0] in _RECORDS or parts[0].startswith(".")):
        raise UsageError(f"artifact {path} of run {run_id} is the agent's own record of the run, not an artifact")
    fds: list[int] = []
    try:
        fds.append(os.open(root, _DIR_FLAGS))
        for part in parts[:-1]:
            fds.append(os.open(part, _DIR_FLAGS, dir_fd=fds[-1]))
        if not parts:
            raise IsADirectoryError(path)
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fds[-1])
    except FileNotFoundError:
        raise NotFoundError(f"artifact {path} of run {run_id} is no longer on this host") from None
    except IsADirectoryError:
        raise UsageError(f"artifact {path} of run {run_id} is a folder, not a regular file; "
                         "log the files in it") from None
    except OSError as exc:  # ELOOP / ENOTDIR: a symlink appeared on the way since it was resolved
        raise UsageError(f"artifact {path} of run {run_id} cannot be opened safely here ({exc.strerror}); "
                         "it changed while being opened") from None
    finally:
        for d in fds:
            os.close(d)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise UsageError(f"artifact {path} of run {run_id} is {kind}, not a regular file, so it is not served")
    os.set_blocking(fd, True)
    return fd
