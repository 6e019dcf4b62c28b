"""``ensure_env``: a job's environment, built once per ``env_hash`` on this node and reused after.

Layout under the agent's state dir::

    wheelhouse/<sha256>          wheels shipped by the workstation, named by content
    envs/<env_hash>/             a finished environment (a venv) ...
    envs/<env_hash>/.mlfleet-ready      ... finished only once this marker exists: the commit point
    envs/<env_hash>/.mlfleet-last-used  touched at every use (for garbage collection by age)
    envs/.<env_hash>.lock        flock held while that environment is built
    envs/.building-<hash>-<pid>  a build in progress (uv), renamed to envs/<env_hash> when installed
    envs/.client/                the agent's ``mlfleet.track``, on each environment's sys.path (client.py)
    wheelhouse/named/<sha256>/<file name>   a symlink to the blob under the wheel's real file name
                                 (installers read tags from names); one folder per wheel, at the same path
                                 for every build, because uv caches a find-links wheel by its path: a new
                                 path per build made every environment unpack every wheel again
    envs/.links-<hash>-<pid>/    the build's pinned requirements (name==version --hash=sha256:...)
    uv-cache/                    uv's cache, on the same filesystem as envs/ so installs hardlink

WHY the marker and not the rename is the commit point: ``setup:``
commands run in the final folder (they may write absolute paths), after
the rename; a folder without a marker is what a crash or a failure left,
and the next attempt removes it under the lock. So a failed build never
poisons the cache, and ten jobs asking at once build once: the others wait
on the lock, then find the marker.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from mlfleet.core.base.models import EnvPlan

from mlfleet.agents.envs.client import link_client
from mlfleet.agents.envs.install import (
    Cancelled, EnvBuildCancelled, EnvBuildError, Log, first_error, installer_environment, pip_commands,
    requirements_text, run_logged, uv_binary, uv_commands)
from mlfleet.agents.envs.locking import EnvLock

READY = ".mlfleet-ready"
LAST_USED = ".mlfleet-last-used"
_HASH = re.compile(r"^[0-9a-f]{16,128}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_WHEEL_NAME = re.compile(r"^[A-Za-z0-9_.+!-]+\.whl$")

__all__ = ["EnvBuildCancelled", "EnvBuildError", "ensure_env", "env_path", "is_ready", "READY"]


def env_path(state_dir: Path, env_hash: str) -> Path:
    return state_dir / "envs" / env_hash


def is_ready(state_dir: Path, env_hash: str) -> bool:
    """Is this environment built here (the warm-host question)?"""
    return bool(_HASH.match(env_hash)) and (env_path(state_dir, env_hash) / READY).is_file()


def ensure_env(state_dir: Path, plan: EnvPlan, log: Log, *, cancelled: Cancelled | None = None,
               use_uv: bool | None = None, compile_after: bool = True) -> Path:
    """The folder of ``plan``'s environment, built from the wheelhouse first if it is not here yet.

    ``log`` gets each line of the build (the runner writes them to the job's
    stdout); ``cancelled`` is asked while waiting and building, and stops
    the build. ``use_uv`` None: uv when the agent has it, else pip. Raises
    :class:`EnvBuildError` with one sentence; nothing half-built is left
    marked ready.
    """
    cancelled = cancelled or (lambda: False)
    _check_plan(plan)
    final = env_path(state_dir, plan.env_hash)
    if _reuse(final):
        log(f"environment {plan.env_hash[:12]} is ready here: reusing it")
        return final
    envs = final.parent
    envs.mkdir(parents=True, exist_ok=True, mode=0o700)
    with EnvLock(envs / f".{plan.env_hash}.lock", cancelled, plan.env_hash,
                 on_wait=lambda: log("another run is building this environment: waiting for it")):
        if _reuse(final):
            log(f"environment {plan.env_hash[:12]} was built meanwhile: reusing it")
            return final
        _remove_leftovers(envs, plan.env_hash)
        uv = uv_binary() if use_uv is not False else None
        if use_uv and uv is None:
            raise EnvBuildError(plan.env_hash, "uv is not installed beside this agent (run mlfleet hosts bootstrap)")
        started = time.monotonic()
        log(f"building environment {plan.env_hash[:12]} ({len(plan.wheels)} wheels, Python {plan.python_version}, "
            f"{plan.platform}) with {'uv' if uv else 'pip'}")
        try:
            _build(state_dir, plan, final, uv, log, cancelled)
        except BaseException:
            _remove(final)  # never a ready marker, and no garbage for the next attempt to trip over
            raise
        finally:
            _remove_leftovers(envs, plan.env_hash, only_mine=True)
        log(f"environment {plan.env_hash[:12]} built in {time.monotonic() - started:.2f} s")
    if compile_after:
        _compile_in_background(final)
    return final


def _reuse(final: Path) -> bool:
    if not (final / READY).is_file():
        return False
    try:
        (final / LAST_USED).touch()
    except OSError:  # a read-only or full disk must not stop a job whose environment is built
        pass
    return True


def _check_plan(plan: EnvPlan) -> None:
    """The plan names paths on this node: refuse anything that is not a plain hash or wheel name."""
    if not _HASH.match(plan.env_hash):
        raise EnvBuildError(plan.env_hash, f"the environment hash {plan.env_hash[:80]!r} is not a lower-case hex digest")
    for wheel in plan.wheels:
        if not _SHA256.match(wheel.sha256) or not _WHEEL_NAME.match(wheel.filename):
            raise EnvBuildError(plan.env_hash, f"the pinned wheel {wheel.filename[:120]!r} has a bad name or sha256")


def _named(wheelhouse: Path, sha256: str, filename: str) -> Path:
    """``wheelhouse/named/<sha256>/``: a folder holding only ``filename``, a link to the blob (made once, atomically)."""
    folder = wheelhouse / "named" / sha256
    link = folder / filename
    if not link.is_symlink():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        temp = folder / f".{filename}.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        temp.symlink_to(Path("..") / ".." / sha256)
        os.rename(temp, link)  # two builds making the same link both end with the same one
    return folder


def _build(state_dir: Path, plan: EnvPlan, final: Path, uv: str | None, log: Log, cancelled: Cancelled) -> None:
    _check_interpreter(plan)
    envs = final.parent
    links = envs / f".links-{plan.env_hash}-{os.getpid()}"
    links.mkdir(mode=0o700)
    wheelhouse = state_dir / "wheelhouse"
    named: list[Path] = []
    for wheel in plan.wheels:
        blob = wheelhouse / wheel.sha256
        if not blob.is_file():
            raise EnvBuildError(plan.env_hash, f"the wheel {wheel.filename} ({wheel.name}=={wheel.version}) is not "
                                               f"in this host's wheelhouse; it was never shipped here")
        named.append(_named(wheelhouse, wheel.sha256, wheel.filename))
    requirements = links / "requirements.txt"
    requirements.write_text(requirements_text(plan))
    building = final if uv is None else envs / f".building-{plan.env_hash}-{os.getpid()}"
    commands = (uv_commands(uv, plan, building, named, requirements) if uv
                else pip_commands(plan, building, named, requirements))
    env = installer_environment(state_dir)
    for argv in commands:
        code, lines = run_logged(argv, env, envs, log, cancelled, plan.env_hash)
        if code != 0:
            raise EnvBuildError(plan.env_hash, first_error(lines, code))
    if building != final:
        os.rename(building, final)  # fails if final exists, which the lock and the leftover sweep rule out
    link_client(final, state_dir)  # from mlfleet import track works inside it (agents/envs/client.py)
    _run_setup(plan, final, log, cancelled)
    _write_ready(final, plan, "uv" if uv else "pip")


def _check_interpreter(plan: EnvPlan) -> None:
    """The interpreter must still be there, and still the version the wheels were resolved for."""
    try:
        out = subprocess.run([plan.python, "-I", "-c", "import sys; print(*sys.version_info[:3], sep='.')"],
                             capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, cwd="/")
    except (OSError, subprocess.SubprocessError) as exc:
        raise EnvBuildError(plan.env_hash, f"the interpreter {plan.python} cannot be run on this host "
                                           f"({getattr(exc, 'strerror', None) or exc})") from None
    version = out.stdout.strip()
    if out.returncode != 0 or version != plan.python_version:
        now = f"is {version}" if out.returncode == 0 else "does not start"
        raise EnvBuildError(plan.env_hash, f"the interpreter {plan.python} {now} on this host, and the environment "
                                           f"was resolved for Python {plan.python_version}; submit the job again")


def _run_setup(plan: EnvPlan, final: Path, log: Log, cancelled: Cancelled) -> None:
    """Each ``setup:`` command once, in the finished folder, with the environment activated."""
    if not plan.setup:
        return
    env = activated_environment(dict(os.environ), final)
    shell = shutil.which("bash") or "/bin/sh"
    for number, command in enumerate(plan.setup, 1):
        log(f"setup {number}/{len(plan.setup)}: {command}")
        code, lines = run_logged([shell, "-c", command], env, final, log, cancelled, plan.env_hash)
        if code != 0:
            said = next((line.strip() for line in reversed(lines) if line.strip()), "")
            tail = f": {first_error([said], code)}" if said else ""
            raise EnvBuildError(plan.env_hash, f"setup command {number} ({command[:80]}) failed with exit "
                                               f"status {code}{tail}")


def activated_environment(env: dict[str, str], root: Path) -> dict[str, str]:
    """``env`` as ``source bin/activate`` leaves it: the environment's ``bin`` first, ``VIRTUAL_ENV`` set."""
    env = {k: v for k, v in env.items() if k not in ("PYTHONHOME", "CONDA_PREFIX", "CONDA_DEFAULT_ENV")}
    env["VIRTUAL_ENV"] = str(root)
    env["PATH"] = os.pathsep.join([str(root / "bin"), env.get("PATH", os.defpath)])
    return env


def _write_ready(final: Path, plan: EnvPlan, builder: str) -> None:
    record = {"env_hash": plan.env_hash, "python": plan.python, "python_version": plan.python_version,
              "platform": plan.platform, "builder": builder, "built_at": time.time(),
              "packages": [f"{w.name}=={w.version}" for w in plan.wheels]}
    tmp = final / f".{READY}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(record, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, final / READY)
    (final / LAST_USED).touch()


def _remove_leftovers(envs: Path, env_hash: str, only_mine: bool = False) -> None:
    """What earlier builders of this hash left (they are gone: we hold the lock), or this build's own scratch."""
    mine = {f".building-{env_hash}-{os.getpid()}", f".links-{env_hash}-{os.getpid()}"}
    for entry in envs.iterdir():
        name = entry.name
        if name.startswith((f".building-{env_hash}-", f".links-{env_hash}-")) and (not only_mine or name in mine):
            _remove(entry)
    final = envs / env_hash
    if not only_mine and final.exists() and not (final / READY).is_file():
        _remove(final)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def _compile_in_background(final: Path) -> None:
    """Bytecode after the fact: the first import of a big package is several times faster with it, and a
    build that compiled would be several times slower. Detached; a failure only costs speed."""
    try:
        subprocess.Popen([str(final / "bin" / "python"), "-m", "compileall", "-q", "-j0", str(final / "lib")],
                         cwd=final, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, close_fds=True)
    except OSError:
        pass
