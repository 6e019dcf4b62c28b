"""The node's GPU claims: which live run holds which GPU, whichever controller placed it.

Many controllers may share one node (a team where each person runs their
own), each believing it owns the GPUs. Between one controller's launch and
its job showing in NVML, another would see the GPU free and place there too.
The node is the one place that sees every launch, so it keeps the books:

- a run's claim is written in its folder (``claim.json``) in the same step,
  under one lock, as the check that no other live run holds those GPUs; two
  launches racing from two controllers: exactly one wins, the other is
  refused with :class:`GpuClaimedError`, a sentence naming the GPUs and the
  holder. The folder is the truth, so a restarted agent keeps the claims.
- a claim lasts while its run is live (starting or running); an exited or
  lost run holds nothing.
- sharing follows the scheduler's: a run without ``gpu_memory`` holds its
  GPUs whole (no one else may use them); a run with ``gpu_memory`` reserves
  that much memory of each, and shares a GPU with other such runs while the
  reservations fit its memory (when the node knows it). A whole-GPU claim
  and a share never mix.
- Slurm runs claim nothing here: Slurm gives them their GPUs.

Every telemetry sample carries the claims (``HostSample.gpu_claims``), so
every controller counts a claimed GPU as in use from its next poll.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from mlfleet.core.base.errors import GpuClaimedError
from mlfleet.core.base.models import GpuClaim, LaunchRequest

from mlfleet.agents.rundir import RunDir, read_json, write_json_atomic

CLAIM_FILE = "claim.json"
LOCK_FILE = "claims.lock"

# One lock per state dir within a process (threads), and flock across processes
_THREAD_LOCKS: dict[Path, threading.Lock] = {}
_GUARD = threading.Lock()


@contextlib.contextmanager
def claiming(state_dir: Path) -> Iterator[None]:
    """Held while a launch checks the claims and writes its own: one launch at a time per node."""
    with _GUARD:
        lock = _THREAD_LOCKS.setdefault(state_dir.resolve(), threading.Lock())
    with lock, open(state_dir / LOCK_FILE, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def claim_record(request: LaunchRequest) -> dict:
    """What ``claim.json`` holds for a run (written only for runs started here, with GPUs or not)."""
    return {"gpu_indices": list(request.gpu_indices), "gpu_memory": request.gpu_memory,
            "job_id": request.job_id, "controller": request.controller, "owner": request.owner,
            "claimed_at": time.time()}


def write_claim(run: RunDir, request: LaunchRequest) -> None:
    write_json_atomic(run.file(CLAIM_FILE), claim_record(request))


def make_run(state_dir: Path, run: RunDir, request: LaunchRequest, current: Callable[[], list[GpuClaim]],
             memory_totals: dict[int, int]) -> None:
    """Make the run's folder and write its claim, refused if another live run holds its GPUs.

    Checked and written under the node's claims lock, so of two launches
    racing for one GPU (two controllers) exactly one gets it; the folder
    exists from here on, so the same run asked again is never refused by
    its own claim (``FileExistsError``: the caller answers its status).
    Slurm runs claim nothing (Slurm gives them GPUs).
    """
    if request.slurm is not None or not request.gpu_indices:
        run.root.mkdir()
        if request.slurm is None:
            write_claim(run, request)  # no GPUs, but whose run it is
        return
    with claiming(state_dir):
        if run.root.is_dir():
            raise FileExistsError(run.root)
        check(request, current(), memory_totals)
        run.root.mkdir()
        write_claim(run, request)


def same_controller(run: RunDir, request: LaunchRequest) -> None:
    """A run id already here from another controller is not this launch's run (job ids are random, unique in one
    controller's store only): refused, so the asking controller never mistakes another's run for its own."""
    theirs = controller_of(run)
    if request.controller and theirs and theirs != request.controller:
        raise GpuClaimedError(f"refused: run id {request.run_id} is already another controller's run on this "
                              f"node (controller {theirs}); the job is placed again under a new run id")


def controller_of(run: RunDir) -> str:
    """The controller that launched the run, by its claim ("" when not known: an older controller or agent)."""
    return str((read_json(run.file(CLAIM_FILE)) or {}).get("controller") or "")


def held(runs_dir: Path, live: Callable[[str], bool], ended: set[tuple[str, int]] | None = None) -> list[GpuClaim]:
    """Every GPU claim of a live run in ``runs_dir``, by index then run.

    A run folder without ``claim.json`` (one an older agent started) claims
    what its ``launch.json`` asked for. ``live(run_id)`` says whether the run
    is starting or running; runs with an exit record are skipped before it
    is asked, and remembered in ``ended`` (name and inode: an exit is
    forever) so that a node keeping thousands of old runs reads none of them
    again at each sample.
    """
    claims: list[GpuClaim] = []
    ended = set() if ended is None else ended
    with os.scandir(runs_dir) as entries:
        folders = [(e.name, e.inode()) for e in entries if not e.name.startswith(".")]
    for key in folders:
        if key in ended:
            continue
        path = runs_dir / key[0]
        if not path.is_dir():
            continue
        if (path / "exit.json").exists():
            ended.add(key)
            continue
        record = read_json(path / CLAIM_FILE)
        if record is None:
            launch = read_json(path / "launch.json") or {}
            if launch.get("slurm"):
                continue
            record = {"gpu_indices": launch.get("gpu_indices") or [], "gpu_memory": launch.get("gpu_memory"),
                      "job_id": launch.get("job_id", ""), "controller": launch.get("controller", ""),
                      "owner": launch.get("owner", "")}
        indices = [int(i) for i in record.get("gpu_indices") or []]
        if not indices or not live(path.name):
            continue
        memory = record.get("gpu_memory")
        for index in indices:
            claims.append(GpuClaim(index=index, run_id=path.name, job_id=str(record.get("job_id") or ""),
                                   controller=str(record.get("controller") or ""),
                                   owner=str(record.get("owner") or ""),
                                   gpu_memory=int(memory) if memory is not None else None))
    claims.sort(key=lambda c: (c.index, c.run_id))
    return claims


def check(request: LaunchRequest, claims: list[GpuClaim], memory_totals: dict[int, int]) -> None:
    """Raise :class:`GpuClaimedError` when ``request`` may not have its GPUs beside ``claims``."""
    asked = set(request.gpu_indices)
    others = [c for c in claims if c.index in asked and c.run_id != request.run_id]
    if not others:
        return
    if request.gpu_memory is None:  # a whole GPU: any holder refuses it
        raise GpuClaimedError(_sentence(request, others, "held by"))
    whole = [c for c in others if c.gpu_memory is None]
    if whole:
        raise GpuClaimedError(_sentence(request, whole, "held whole by"))
    for index in sorted(asked):
        total = memory_totals.get(index)
        sharing = [c for c in others if c.index == index]
        reserved = sum(int(c.gpu_memory or 0) for c in sharing)
        if total is not None and sharing and reserved + request.gpu_memory > total:
            raise GpuClaimedError(
                f"GPU {index} has {_gib(total - reserved)} of its {_gib(total)} left unreserved, not the "
                f"{_gib(request.gpu_memory)} run {request.run_id} asks for: "
                + "; ".join(f"{_gib(c.gpu_memory or 0)} reserved by {_holder(c)}" for c in sharing))


def _sentence(request: LaunchRequest, holders: list[GpuClaim], verb: str) -> str:
    by_run: dict[str, list[GpuClaim]] = {}
    for claim in holders:
        by_run.setdefault(claim.run_id, []).append(claim)
    parts = []
    for claims in by_run.values():
        indices = sorted({c.index for c in claims})
        label = "GPU" if len(indices) == 1 else "GPUs"
        parts.append(f"{label} {', '.join(str(i) for i in indices)} {'is' if len(indices) == 1 else 'are'} "
                     f"{verb} {_holder(claims[0])}")
    return f"refused: {'; '.join(parts)} (run {request.run_id} was not started here)"


def _holder(claim: GpuClaim) -> str:
    who = [w for w in (f"user {claim.owner}" if claim.owner else "",
                       f"controller {claim.controller}" if claim.controller else "") if w]
    return f"run {claim.run_id}" + (f" ({', '.join(who)})" if who else "")


def _gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB"
