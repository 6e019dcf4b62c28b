"""Garbage collection of built environments on this node: by age, then by a disk budget.

Rules (docs/configuration.md ``environments.keep_for`` / ``disk_budget``):

1. trash a crash left behind (``envs/.trash-*``) is deleted first;
2. an environment whose last use (``.mlfleet-last-used``, else its ready
   marker) is older than ``keep_for`` is removed;
3. then, while the environments together are over ``disk_budget``, the least
   recently used one goes;
4. never one a live run names (a run folder whose launch.json has
   ``environment.env_hash`` and no exit.json), one used in the last
   ``GRACE_S`` (a run may be about to start in it), or one being built: its
   flock is taken without waiting and a busy lock means "leave it".

WHY rename first: removal is ``rename(envs/<hash>, envs/.trash-<hash>-<pid>)``
under the env's lock, then ``rmtree``. The rename is atomic, so a crash
mid-removal leaves a trash folder (rule 1 cleans it), never a half
environment under its real name with a ready marker that would be reused.

Sizes are apparent file sizes, each inode counted once per environment
(uv hardlinks files from its cache, so the disk freed may be less).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any

from mlfleet.agents.envs.build import LAST_USED, READY, _HASH

GRACE_S = 3600.0  # an environment used this recently is never removed (a launch may be on its way into it)
TRASH = ".trash-"


def in_use(state_dir: Path) -> set[str]:
    """The env_hashes that runs not yet ended name in their launch.json."""
    used: set[str] = set()
    runs = state_dir / "runs"
    for run in runs.iterdir() if runs.is_dir() else ():
        if (run / "exit.json").exists():
            continue
        try:
            launch = json.loads((run / "launch.json").read_text())
        except (OSError, ValueError):
            continue
        env = launch.get("environment") if isinstance(launch, dict) else None
        if isinstance(env, dict) and isinstance(env.get("env_hash"), str):
            used.add(env["env_hash"])
    return used


def last_used(env: Path) -> float:
    for name in (LAST_USED, READY):
        try:
            return (env / name).stat().st_mtime
        except OSError:
            continue
    return env.stat().st_mtime


def size_of(folder: Path) -> int:
    seen: set[int] = set()
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size
    return total


def _remove(envs: Path, env_hash: str, state_dir: Path) -> bool:
    """Rename to trash under the env's lock (skipped if a build holds it), then delete."""
    fd = os.open(envs / f".{env_hash}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # being built (or checked) right now
        if env_hash in in_use(state_dir):  # a run launched since the first look
            return False
        trash = envs / f"{TRASH}{env_hash}-{os.getpid()}"
        os.rename(envs / env_hash, trash)
    finally:
        os.close(fd)
    shutil.rmtree(trash, ignore_errors=True)
    return True


def collect_garbage(state_dir: Path, keep_for: float, disk_budget: int | None, now: float) -> dict[str, Any]:
    """Apply the rules above once; what was removed and why, and the bytes the kept ones hold."""
    envs = state_dir / "envs"
    removed: dict[str, str] = {}
    if not envs.is_dir():
        return {"removed": removed, "kept_bytes": 0}
    for trash in envs.glob(TRASH + "*"):
        shutil.rmtree(trash, ignore_errors=True)
    used = in_use(state_dir)
    found = [(last_used(p), p.name) for p in envs.iterdir()
             if p.is_dir() and _HASH.match(p.name) and (p / READY).is_file()]
    keep: list[tuple[float, str, int]] = []
    for when, env_hash in sorted(found):
        protected = env_hash in used or now - when < GRACE_S
        if not protected and now - when > keep_for and _remove(envs, env_hash, state_dir):
            removed[env_hash] = "unused for longer than keep_for"
        else:
            keep.append((when, env_hash, size_of(envs / env_hash)))
    total = sum(size for _, _, size in keep)
    if disk_budget is not None:
        for when, env_hash, size in list(keep):  # least recently used first
            if total <= disk_budget:
                break
            if env_hash in used or now - when < GRACE_S or not _remove(envs, env_hash, state_dir):
                continue
            removed[env_hash] = "over the disk budget (least recently used)"
            total -= size
    return {"removed": removed, "kept_bytes": total}
