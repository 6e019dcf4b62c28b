"""Lineage: where a run came from and what it used (docs/tracking.md).

Two pure-ish pieces, used by the controller:

* :func:`git_lineage`, at submit: the commit of the workdir's repository,
  whether it is dirty and a hash of the changes, by running ``git``.
* :func:`gpu_usage`, at the end of a run: GPU-hours and the job's mean and
  peak GPU utilisation and memory, from the telemetry the controller holds.

What the node knows (input hashes, Python, packages) is recorded by the
agent (``mlfleet.agents.lineage``) and merged in by the controller.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any, Iterable

from mlfleet.core.base.models import HostSample

_GIT_TIMEOUT_S = 60


def _git(workdir: Path, *args: str) -> bytes | None:
    try:
        done = subprocess.run(["git", "-C", str(workdir), *args], capture_output=True, timeout=_GIT_TIMEOUT_S,
                              env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def git_lineage(workdir: Path) -> dict[str, Any]:
    """The git state of the repository that holds ``workdir`` (all null outside one, or without git).

    Keys: ``git_repo``, ``git_commit``, ``git_branch``, ``git_dirty``, ``diff_hash``.
    ``git_dirty`` is true when ``git status`` shows anything: changes to tracked
    files, staged or not, and untracked files that are not ignored.
    ``diff_hash`` (null when clean) is the sha256 of ``git diff HEAD
    --binary`` followed by, for each untracked, not-ignored file in sorted
    order, its path, a NUL, its content's sha256 and a newline: two
    submits with the same commit and the same hash ran the same code.
    """
    top = _git(workdir, "rev-parse", "--show-toplevel")
    if top is None:
        return dict.fromkeys(("git_repo", "git_commit", "git_branch", "git_dirty", "diff_hash"))
    root = Path(top.decode("utf-8", "surrogateescape").strip())
    head = _git(workdir, "rev-parse", "--verify", "--quiet", "HEAD")
    commit = head.decode().strip() if head else None
    branch = _git(workdir, "symbolic-ref", "--quiet", "--short", "HEAD")
    status = _git(workdir, "status", "--porcelain=v1", "-z", "--untracked-files=all")
    dirty = bool(status) if status is not None else None
    diff_sha256 = None
    if dirty:
        h = hashlib.sha256()
        diff = _git(root, "diff", "HEAD", "--binary", "--no-color", "--no-ext-diff") if commit else \
            _git(root, "diff", "--cached", "--binary", "--no-color", "--no-ext-diff")
        h.update(diff or b"")
        untracked = _git(root, "ls-files", "-z", "--others", "--exclude-standard") or b""
        for name in sorted(n for n in untracked.split(b"\0") if n):
            h.update(name + b"\0" + _file_sha256(root / os.fsdecode(name)).encode() + b"\n")
        diff_sha256 = h.hexdigest()
    return {"git_repo": str(root), "git_commit": commit, "git_branch": branch.decode().strip() if branch else None,
            "git_dirty": dirty, "diff_hash": diff_sha256}


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    except OSError:
        return "unreadable"
    return h.hexdigest()


def gpu_usage(run_id: str, gpus: list[int], started: float | None, finished: float | None,
              samples: Iterable[HostSample], window_rows: Iterable[dict[str, Any]], sample_interval: float = 1.0
              ) -> dict[str, Any]:
    """GPU-hours (GPUs x elapsed hours) and mean/peak utilisation and memory of the run's GPUs.

    Keys: ``elapsed_s``, ``gpu_hours``, ``gpu_util_mean``/``_peak`` (percent),
    ``gpu_mem_mean``/``_peak`` (bytes); the GPU ones only when telemetry has them.

    The run's GPUs are the ones assigned to it plus any where one of its
    processes shows up. ``samples`` are the live samples the controller
    still holds (about 5 minutes, one a second); ``window_rows`` are the
    stored 10-s means (``gpu_telemetry``: ts, window_s, gpu_index,
    utilization, memory_used) that cover the earlier part of a longer run.
    Memory is the run's own processes' memory where NVML reports it, else
    the whole GPU's; both are per GPU. Peaks over the stored part are peaks
    of window means.
    """
    if started is None or finished is None or finished < started:
        return {}
    elapsed = finished - started
    usage: dict[str, Any] = {"elapsed_s": round(elapsed, 3), "gpu_hours": round(len(gpus) * elapsed / 3600, 6)}
    points: list[tuple[float, float | None, float | None]] = []  # (weight s, utilisation %, memory bytes)
    live = [s for s in samples if started <= s.ts <= finished + sample_interval]
    live_from = min((s.ts for s in live), default=float("inf"))
    for row in window_rows:
        ts = float(row["ts"])
        if started <= ts <= finished + float(row["window_s"]) and ts < live_from and row["gpu_index"] in gpus:
            points.append((float(row["window_s"]), row["utilization"], row["memory_used"]))
    for sample in live:
        for gpu in sample.gpus:
            mine = [p for p in gpu.processes if p.run_id == run_id]
            if gpu.index not in gpus and not mine:
                continue
            own = [p.used_memory for p in mine if p.used_memory is not None]
            points.append((sample_interval, gpu.utilization, float(sum(own)) if own else gpu.memory_used))
    for name, column in (("gpu_util", 1), ("gpu_mem", 2)):
        values = [(p[0], p[column]) for p in points if p[column] is not None]
        if values:
            total = sum(w for w, _ in values)
            usage[f"{name}_mean"] = round(sum(w * v for w, v in values) / total, 3)
            usage[f"{name}_peak"] = max(v for _, v in values)
    return usage
