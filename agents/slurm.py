"""Runs handed to Slurm: the agent on a login node submits, watches and cancels them with Slurm's commands.

The job itself is the same runner as on any host (``python -m
mlfleet.agents.runner RUNDIR``, started by a small batch script), writing
the same files into the run folder, which must be on the filesystem the
compute nodes share: the agent reads metrics and logs by offset, and the
runner's ``exit.json`` is the truth about an exit whenever it is there.

Why it is built like this:

* **No request storms**: the state of every run comes from one ``squeue``
  per poll (:class:`SlurmQueue` keeps it for a short while, so a poll of a
  thousand runs asks once) and, only when some run left ``squeue`` without
  an ``exit.json``, one ``scontrol show job -o`` for all of them. Text
  output only: ``--json`` changes between versions (and 22.05's ``sacct
  --json`` reported exit code 0 for a job that exited 7); ``scontrol``
  works without slurmdbd.
* **Idempotent submits**: the job is named ``mlfleet-<run_id>`` and carries
  the run id as its comment; before ``sbatch`` the run folder's
  ``slurm.json`` and the queue are looked at, so a submit asked again (a
  controller restart, a retried request) never makes a second job.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlfleet.agents.rundir import RunDir, read_json, write_json_atomic
from mlfleet.core.base.errors import UnavailableError
from mlfleet.core.base.models import RunStatus, SlurmPlan

JOB_PREFIX = "mlfleet-"
SLURM_FILE = "slurm.json"
ARRAY_TASK_FILE = "slurm-array.json"  # a task of a job array: {"array": name, "task": i}, before sbatch (slurm_array.py)
COMMAND_TIMEOUT_S = 60.0  # sbatch under load is slow (submitit 1659): slow, not dead
QUEUE_MAX_AGE_S = 1.0  # one squeue answers every run of one poll
SQUEUE_FORMAT = "%i|%j|%T|%r|%P|%b|%N|%F|%K"  # %F/%K: array job id and task id (N/A for a job)
SQUEUE_ARGV = ["squeue", "-h", "-r", "-o", SQUEUE_FORMAT]  # -r: an array's tasks one a line, pending ones too

# Slurm's pending reasons, in a user's words (squeue's %r).
REASON_WORDS = {
    "Resources": "waiting for resources: no node of the partition has what the job asks free now",
    "Priority": "waiting behind jobs of higher priority",
    "ReqNodeNotAvail": "a node the job needs is not available (down, drained or reserved)",
    "QOSMaxGRESPerUser": "the QOS's limit on GPUs per user is reached",
    "QOSMaxJobsPerUserLimit": "the QOS's limit on jobs per user is reached",
    "AssocGrpGRES": "the account's GPU limit is reached",
    "PartitionTimeLimit": "the job's time limit is over the partition's",
    "BadConstraints": "no node of the partition can ever fit what the job asks",
    "Dependency": "waiting for a job it depends on",
    "JobHeldUser": "held by its user",
    "JobHeldAdmin": "held by an administrator",
    "BeginTime": "its start time has not come yet",
}


# Slurm's end states of a job it stopped itself (a SIGTERM mlfleet did not send): the run's reason and why, in words.
STOPPED_BY_SLURM = {
    "TIMEOUT": ("timeout", "Slurm stopped the job at its time limit (TIMEOUT)"),
    "DEADLINE": ("timeout", "Slurm stopped the job at its deadline (DEADLINE)"),
    "CANCELLED": ("cancelled", "cancelled in Slurm (outside mlfleet)"),
    "PREEMPTED": ("cancelled", "preempted in Slurm (PREEMPTED)"),
    "NODE_FAIL": ("lost", "the job's node failed in Slurm (NODE_FAIL)"),
}


def reason_words(reason: str) -> str:
    """Slurm's reason code with what it means (the code is kept, so it can be looked up)."""
    words = REASON_WORDS.get(reason)
    return f"{reason}: {words}" if words else reason


def job_name(run_id: str) -> str:
    return JOB_PREFIX + run_id


def slurm_env() -> dict[str, str]:
    return dict(os.environ)


# How a Slurm command says slurmctld did not answer (nothing was refused: ask again later)
UNREACHABLE_WORDS = ("unable to contact slurm controller", "socket timed out", "connection refused",
                     "zero bytes were transmitted", "communication connection failure", "connect failure",
                     "temporarily unable to accept", "backup controller in standby")
# A submitted job in neither squeue nor scontrol this long after its submit was forgotten by Slurm (MinJobAge):
# twice a queue refresh and then some, so a submit the last squeue did not see yet is never taken for one.
FORGOTTEN_GRACE_S = 2 * QUEUE_MAX_AGE_S + 10.0


class SlurmUnreachable(UnavailableError):
    """slurmctld did not answer (down, restarting, overloaded): nothing was refused, the same command may work
    later. Any other failure of a Slurm command (sbatch's refusal of a partition, say) is a plain
    :class:`UnavailableError` with Slurm's sentence."""


def _command(argv: list[str], timeout: float = COMMAND_TIMEOUT_S, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=slurm_env(), cwd=cwd)
    except FileNotFoundError:
        raise UnavailableError(f"{argv[0]} is not installed on this host; is it a Slurm login node?") from None
    except subprocess.TimeoutExpired:
        raise SlurmUnreachable(f"{argv[0]} did not answer in {timeout:.0f} s (slurmctld busy or down?)") from None
    if done.returncode != 0:
        error = SlurmUnreachable if any(w in done.stderr.lower() for w in UNREACHABLE_WORDS) else UnavailableError
        raise error(f"{argv[0]} failed: {done.stderr.strip().removeprefix(argv[0] + ': ') or done.returncode}")
    return done.stdout


# ------------------------------------------------------------------ parsers (pure)
@dataclass(frozen=True)
class QueuedJob:
    job_id: str
    name: str
    state: str  # PENDING, RUNNING, COMPLETING, ...
    reason: str
    partition: str = ""
    gres: str = ""
    nodes: str = ""
    array_job_id: str = ""  # a task of a job array: the array's id and the task's index
    task: str = ""


def task_key(name: str, task: str) -> str:
    """How a task of an array is found in :class:`SlurmQueue`: ``NAME_TASK`` (a job alone: its name)."""
    return f"{name}_{task}"


def parse_squeue(text: str) -> dict[str, QueuedJob]:
    """``squeue -h -r -o SQUEUE_FORMAT`` lines, by job name, an array's tasks by ``NAME_TASK`` (mlfleet's only)."""
    jobs = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 4 or not parts[1].startswith(JOB_PREFIX):
            continue
        parts += [""] * (9 - len(parts))
        array, task = (parts[7], parts[8]) if parts[8].isdigit() else ("", "")
        job = QueuedJob(parts[0], parts[1], parts[2], parts[3], parts[4], parts[5], parts[6], array, task)
        jobs[task_key(job.name, task) if task else job.name] = job
    return jobs


def parse_scontrol_jobs(text: str) -> dict[str, dict[str, str]]:
    """``scontrol show job -o`` (one job a line, ``Key=Value`` words), by JobName, an array's tasks by
    ``NAME_TASK`` (``ArrayTaskId``; a range of tasks still pending is in squeue, not here); the first match wins."""
    jobs: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        fields = dict(word.split("=", 1) for word in line.split() if "=" in word)
        name = fields.get("JobName", "")
        if not name.startswith(JOB_PREFIX):
            continue
        task = fields.get("ArrayTaskId", "")
        if "ArrayJobId" in fields and not task.isdigit():
            continue
        jobs.setdefault(task_key(name, task) if task else name, fields)
    return jobs


def parse_sinfo(text: str) -> dict[str, Any]:
    """``sinfo -h -o '%P|%a|%F|%G|%c|%m|%D'``: partitions with nodes idle/alloc/down and GPUs by type.

    ``%F`` is allocated/idle/other/total nodes; ``%G`` a GRES list such as
    ``gpu:a100:4(S:0-1),gpu:2``; a GRES without a type is counted as ``gpu``.
    """
    partitions = []
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 7:
            continue
        name, avail, counts, gres, cpus, memory, nodes = parts[:7]
        alloc, idle, other, total = (int(x) if x.isdigit() else 0 for x in (counts.split("/") + ["0"] * 4)[:4])
        gpus: dict[str, int] = {}
        for item in gres.split(","):
            item = item.split("(")[0]
            bits = item.split(":")
            if bits[0] != "gpu" or len(bits) < 2:
                continue
            gtype, count = (bits[1], bits[2]) if len(bits) >= 3 else ("gpu", bits[1])
            if count.isdigit():
                gpus[gtype] = gpus.get(gtype, 0) + int(count)
        default = name.endswith("*")
        partitions.append({"name": name.rstrip("*"), "default": default, "up": avail == "up",
                           "nodes": {"allocated": alloc, "idle": idle, "down": other, "total": total},
                           "gpus_per_node": gpus, "cpus_per_node": int(cpus.rstrip("+")) if cpus.rstrip("+").isdigit()
                           else 0, "memory_mb_per_node": int(memory.rstrip("+")) if memory.rstrip("+").isdigit()
                           else 0, "node_count": int(nodes) if nodes.isdigit() else total})
    return {"partitions": partitions}


def output_option(folder: Path, pattern: str) -> str:
    """sbatch's ``--output`` for a job whose working dir is ``folder``: ``pattern``, relative (it lands there).

    Why not the path: Slurm expands ``%j``, ``%x``... and backslash escapes in ``--output``, and slurmstepd
    puts the working dir in front of a relative name before it expands it, so a folder with ``%`` or ``\\``
    in its path can hold no Slurm output file at all (the job fails: JobLaunchFailure). There the output is
    ``/dev/null`` and the batch script sends its own output to the same file name (:func:`redirect_line`).
    """
    return "/dev/null" if "%" in str(folder) or "\\" in str(folder) else pattern


def redirect_line(folder: Path, name: str) -> str:
    """The batch script's ``exec >>NAME 2>&1`` when Slurm cannot write its output file there, else ""."""
    return f'exec >>"{name}" 2>&1\n' if output_option(folder, "x") == "/dev/null" else ""


def sbatch_argv(plan: SlurmPlan, run: RunDir, script: Path) -> list[str]:
    """The sbatch command for one run (pure: tested without Slurm); run it in the run folder (``cwd``).

    sbatch started in the run folder makes it the job's working dir: no path in ``--chdir`` nor ``--output``.
    """
    out = output_option(run.root, "slurm-%j.out")
    argv = ["sbatch", "--parsable", f"--job-name={job_name(run.run_id)}", f"--comment={run.run_id}",
            f"--output={out}", f"--error={out}"]
    return [*argv, *plan_options(plan), str(script)]


def plan_options(plan: SlurmPlan) -> list[str]:
    """sbatch's options for what the job asks (partition, account, QOS, GPUs, CPUs, memory, time)."""
    argv = []
    if plan.partition:
        argv.append(f"--partition={plan.partition}")
    if plan.account:
        argv.append(f"--account={plan.account}")
    if plan.qos:
        argv.append(f"--qos={plan.qos}")
    if plan.gres:
        argv.append(f"--gres={plan.gres}")
    if plan.cpus:
        argv.append(f"--cpus-per-task={plan.cpus}")
    if plan.memory_mb:
        argv.append(f"--mem={plan.memory_mb}M")
    if plan.time_limit_min:
        argv.append(f"--time={plan.time_limit_min}")
    return argv


def batch_script(run: RunDir) -> str:
    """The script sbatch runs: the same runner as everywhere, in the run's folder."""
    return (f"#!/bin/sh\n# mlfleet run {run.run_id}\n{redirect_line(run.root, 'slurm-$SLURM_JOB_ID.out')}"
            f"exec {shlex.quote(sys.executable)} -m mlfleet.agents.runner {shlex.quote(str(run.root))}\n")


def status_of(run: RunDir, queued: QueuedJob | None, final: dict[str, str] | None) -> RunStatus:
    """A Slurm run's status from its folder, its line in squeue and (gone from squeue) scontrol's record. Pure
    but for reading the run's own files; exit.json, written by the runner, wins over anything Slurm says."""
    run_id = run.run_id
    exit_record = run.exit
    started = run.started or {}
    if exit_record is not None:
        return RunStatus(run_id=run_id, state="exited", pid=started.get("pid"), started_at=started.get("started_at"),
                         finished_at=exit_record.get("finished_at"), exit_code=exit_record.get("exit_code"),
                         signal=exit_record.get("signal"), reason=exit_record.get("reason", "exited"),
                         message=exit_record.get("message", ""))
    if queued is not None:
        if queued.state == "PENDING":
            return RunStatus(run_id=run_id, state="starting", message=f"pending in Slurm ({reason_words(queued.reason)})")
        if started:
            return RunStatus(run_id=run_id, state="running", pid=started.get("pid"),
                             started_at=started.get("started_at"))
        return RunStatus(run_id=run_id, state="starting", message=f"Slurm job {queued.state.lower()}")
    if final is None:
        return RunStatus(run_id=run_id, state="starting", message="submitted; not in Slurm's queue yet")
    state, reason = final.get("JobState", ""), final.get("Reason", "")
    code, _, sig = final.get("ExitCode", "0:0").partition(":")
    if state == "CANCELLED":
        return RunStatus(run_id=run_id, state="exited", reason="cancelled", message="cancelled in Slurm" if
                         run.file("cancel.json").exists() else "cancelled in Slurm (outside mlfleet)")
    if state in STOPPED_BY_SLURM and run.runner is not None:  # the runner was killed before it wrote its exit
        why, words = STOPPED_BY_SLURM[state]
        return RunStatus(run_id=run_id, state="exited", reason=why, message=words)
    if state in ("COMPLETED", "FAILED") and run.runner is not None:
        return RunStatus(run_id=run_id, state="exited", reason="lost", exit_code=int(code) if code.isdigit() else None,
                         message=f"the Slurm job ended ({state}, {reason}) without the runner recording an exit"
                         + output_tail(run, final))
    return RunStatus(run_id=run_id, state="exited", reason="failed-to-start",
                     exit_code=int(code) if code.isdigit() else None, signal=int(sig) if sig.isdigit() and sig != "0"
                     else None, message=f"Slurm ended the job before it started: {state} ({reason_words(reason)})"
                     + output_tail(run, final))


def output_tail(run: RunDir, final: dict[str, str], lines: int = 5, max_bytes: int = 2048) -> str:
    """``; slurm-ID.out ends: ...``: what Slurm's own output file says of a job that died before the runner took
    over (a python missing on the compute node, a module load that failed), or "" when it said nothing.

    Why: that file is written by Slurm, not the runner, so ``jobs logs`` never shows it; the one line a user
    reads about the failure must say what went wrong there. The file is scontrol's ``StdOut=`` when that is
    a file (a path with spaces is cut in ``scontrol -o``'s words), else ``slurm-JOBID.out`` in the run folder,
    else the run folder's newest ``slurm-*.out``; only its end is read.
    """
    named, job_id = final.get("StdOut", ""), final.get("JobId", "")
    candidates = [Path(named)] if named.startswith("/") else []
    if job_id.isdigit():
        candidates.append(run.file(f"slurm-{job_id}.out"))
    path = next((p for p in candidates if p.is_file()), None) or max(
        run.root.glob("slurm-*.out"), key=lambda p: p.stat().st_mtime, default=None)
    if path is None:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - max_bytes))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [" ".join(line.split()) for line in text.splitlines() if line.strip()][-lines:]
    return f"; {path.name} ends: {' | '.join(kept)}" if kept else ""


# ------------------------------------------------------------------ the agent's side
@dataclass
class SlurmQueue:
    """The queue as one squeue saw it, shared by every run of one poll; counts the commands it ran."""

    max_age: float = QUEUE_MAX_AGE_S
    commands: int = 0
    _at: float = -1e9
    _jobs: dict[str, QueuedJob] = field(default_factory=dict)
    _final: dict[str, dict[str, str]] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def jobs(self) -> dict[str, QueuedJob]:
        with self._lock:
            if time.monotonic() - self._at > self.max_age:
                self.commands += 1
                self._jobs = parse_squeue(_command(SQUEUE_ARGV))
                self._final = None
                self._at = time.monotonic()
            return self._jobs

    def final(self) -> dict[str, dict[str, str]]:
        """Records of jobs that left squeue (one scontrol for all of them, once per squeue)."""
        self.jobs()
        with self._lock:
            if self._final is None:
                self.commands += 1
                self._final = parse_scontrol_jobs(_command(["scontrol", "show", "job", "-o"]))
            return self._final

    def forget(self) -> None:
        with self._lock:
            self._at = -1e9


def is_slurm_run(run: RunDir) -> bool:
    return run.file(SLURM_FILE).exists() or (run.launch or {}).get("slurm") is not None  # {}: the defaults


def submit(run: RunDir, plan: SlurmPlan, queue: SlurmQueue) -> str:
    """Submit the run's runner with sbatch once; its Slurm job id. Asked again, the existing job's id."""
    recorded = read_json(run.file(SLURM_FILE))
    if recorded and recorded.get("job_id"):
        return str(recorded["job_id"])
    queue.forget()
    existing = queue.jobs().get(job_name(run.run_id))
    if existing is not None:  # submitted, then the agent died before slurm.json was written
        write_json_atomic(run.file(SLURM_FILE), {"job_id": existing.job_id, "submitted_at": time.time()})
        return existing.job_id
    script = run.file("slurm-batch.sh")
    script.write_text(batch_script(run))
    script.chmod(0o700)
    out = _command(sbatch_argv(plan, run, script), cwd=run.root)
    job_id = out.strip().split(";")[0]
    write_json_atomic(run.file(SLURM_FILE), {"job_id": job_id, "submitted_at": time.time()})
    queue.forget()
    return job_id


def slurm_stopped(run: RunDir, exit_record: dict[str, Any], queue: SlurmQueue) -> RunStatus:
    """A run whose runner got a SIGTERM mlfleet did not send: why, from scontrol's ``JobState`` (TIMEOUT: a
    timeout, CANCELLED: a scancel outside mlfleet, NODE_FAIL: lost...), written into exit.json once known.

    Why not at once: the runner cannot tell Slurm's time limit from a scancel by hand; Slurm can, once the job
    is done completing. Until then the run is still "running" (a terminal status is never taken back). The same
    squeue and scontrol as every poll's answer it; a job Slurm no longer knows keeps the runner's guess.
    """
    key = queue_key(run)
    started = run.started or {}
    queued = queue.jobs().get(key)
    final = None if queued is not None or not run.file(SLURM_FILE).exists() else queue.final().get(key)
    state = (final or {}).get("JobState", "") if queued is None else queued.state
    if queued is not None or state in ("RUNNING", "COMPLETING", "SUSPENDED", "STOPPED"):
        return RunStatus(run_id=run.run_id, state="running", pid=started.get("pid"),
                         started_at=started.get("started_at"), message="stopped by Slurm; asking Slurm why")
    record = {**exit_record, "slurm_state": state or "unknown"}
    if state in STOPPED_BY_SLURM:
        record["reason"], record["message"] = STOPPED_BY_SLURM[state]
    write_json_atomic(run.file("exit.json"), record)
    return status_of(run, None, None)


def queue_key(run: RunDir) -> str:
    """The run's key in :class:`SlurmQueue`: its job's name, or ``NAME_TASK`` for a task of an array."""
    task = read_json(run.file(ARRAY_TASK_FILE))
    return task_key(str(task["array"]), str(task["task"])) if task and task.get("array") else job_name(run.run_id)


def status(run: RunDir, queue: SlurmQueue) -> RunStatus:
    exit_record = run.exit
    if exit_record is not None:
        if exit_record.get("slurm_stopped") and not exit_record.get("slurm_state"):
            return slurm_stopped(run, exit_record, queue)
        return status_of(run, None, None)
    key = queue_key(run)
    queued = queue.jobs().get(key)
    final = None if queued is not None or not run.file(SLURM_FILE).exists() else queue.final().get(key)
    if queued is None and final is None and run.file(SLURM_FILE).exists():
        if run.file("cancel.json").exists():
            # Cancelled before it started and already forgotten by Slurm (an array's pending task leaves no record)
            return RunStatus(run_id=run.run_id, state="exited", reason="cancelled", message="cancelled in Slurm")
        forgotten = _forgotten(run)
        if forgotten is not None:
            return forgotten
    return status_of(run, queued, final)


def _forgotten(run: RunDir) -> RunStatus | None:
    """A submitted job that is in neither squeue nor scontrol: Slurm forgot it (MinJobAge, 300 s by default)
    while nobody looked, e.g. a scancel by hand while the agent was away. Lost, with why, once it was submitted
    longer ago than :data:`FORGOTTEN_GRACE_S`; else None (the queue may not show a fresh submit yet)."""
    recorded = read_json(run.file(SLURM_FILE)) or {}
    try:
        age = time.time() - float(recorded.get("submitted_at") or 0)
    except (TypeError, ValueError):
        age = float("inf")
    if age < FORGOTTEN_GRACE_S or run.exit is not None:  # exit.json may have come after it was first read
        return None
    job = recorded.get("job_id", "?")
    if run.runner is None:
        message = (f"the Slurm job {job} left the queue without starting and Slurm keeps no record of it "
                   "(cancelled outside mlfleet?)")
    else:
        message = (f"the Slurm job {job} ended without the runner recording an exit, and Slurm keeps no record "
                   "of it (its node failed, or it was killed outside mlfleet?)")
    return RunStatus(run_id=run.run_id, state="exited", reason="lost", message=message)


def cancel(run: RunDir, queue: SlurmQueue | None = None) -> None:
    """scancel by name: the one job of this run, whatever its id; a task of an array: that task only (``ID_TASK``)."""
    task = read_json(run.file(ARRAY_TASK_FILE))
    if not task:
        _command(["scancel", f"--name={job_name(run.run_id)}"])
        return
    job_id = str((read_json(run.file(SLURM_FILE)) or {}).get("job_id") or "")
    if not job_id and queue is not None:  # sbatch answered, the agent died before slurm.json: the queue knows
        queue.forget()
        queued = queue.jobs().get(queue_key(run))
        job_id = queued.job_id if queued is not None else ""
    if job_id:
        _command(["scancel", job_id])




# ------------------------------------------------------------------ the cluster's shape, node by node (pure)
# One sinfo line per node and partition (-N), no truncation (":|" is width 0 and "|" after each field): GresUsed is
# per node, so free GPUs per partition and type are sums over exact lines, whatever sinfo would have grouped.
SINFO_NODE_FIELDS = "NodeList:|,Partition:|,Available:|,StateCompact:|,CPUs:|,Memory:|,Gres:|,GresUsed:|"
_IDLE_STATES = {"idle"}
_BUSY_STATES = {"alloc", "mix", "comp"}  # running jobs; the rest (down, drain, drng, fail, maint, resv, ...) are down


_BETWEEN_ITEMS = re.compile(r",(?![^(]*\))")  # a comma not inside parentheses


def split_gres(text: str) -> list[str]:
    """A GRES list split on the commas between items, not those inside ``(IDX:0,2-3)``."""
    items = _BETWEEN_ITEMS.split(text) if "(" in text else text.split(",")
    return [item.strip() for item in items if item.strip()]


def gres_gpus(text: str) -> dict[str, int]:
    """GPUs by type in a GRES list (``gpu:a100:4(S:0-1),gpu:2``); a GPU without a type is counted as ``gpu``."""
    gpus: dict[str, int] = {}
    for item in split_gres(text):
        bits = item.split("(")[0].split(":")
        if bits[0] != "gpu" or len(bits) < 2:
            continue
        gtype, count = (bits[1], bits[2]) if len(bits) >= 3 else ("gpu", bits[1])
        if count.isdigit():
            gpus[gtype] = gpus.get(gtype, 0) + int(count)
    return gpus


def node_state(compact: str) -> str:
    """``idle``, ``allocated`` or ``down`` for sinfo's compact state (``mix``, ``idle~``, ``down*``, ``drng``...)."""
    base = compact.strip().lower().rstrip("*~#!%$@^-+")
    if "*" in compact:  # not responding
        return "down"
    return "idle" if base in _IDLE_STATES else "allocated" if base in _BUSY_STATES else "down"


def _number(text: str) -> int:
    text = text.strip().rstrip("+")
    return int(text) if text.isdigit() else 0


def parse_sinfo_nodes(text: str) -> dict[str, Any]:
    """``sinfo -h -N -O SINFO_NODE_FIELDS``: partitions with nodes idle/allocated/down and GPUs free/total by type.

    Each partition keeps the keys of :func:`parse_sinfo` (``gpus_per_node`` and
    the rest describe its biggest node) and adds ``gpus``: ``{type: {"total",
    "free", "free_max_node"}}``. A GPU is free on a node that is up and takes
    jobs (idle or partly allocated, in a partition that is up); those of a
    down or drained node count in the total only. ``gpus`` and ``nodes`` at
    the top are the cluster's, each node counted once however many partitions
    it is in.
    """
    partitions: dict[str, dict[str, Any]] = {}
    gres_cache: dict[str, dict[str, int]] = {}
    nodes_seen: dict[str, tuple[str, dict[str, int], dict[str, int]]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 8:
            continue
        node, pname, avail, compact, cpus, memory, gres, used = (p.strip() for p in parts[:8])
        name = pname.rstrip("*")
        part = partitions.get(name)
        if part is None:
            part = partitions[name] = {
                "name": name, "default": pname.endswith("*"), "up": avail == "up",
                "nodes": {"allocated": 0, "idle": 0, "down": 0, "total": 0}, "gpus_per_node": {}, "cpus_per_node": 0,
                "memory_mb_per_node": 0, "node_count": 0, "gpus": {}}
        state = node_state(compact)
        total = gres_cache.get(gres)
        if total is None:  # most nodes of a cluster share a handful of GRES strings
            total = gres_cache[gres] = gres_gpus(gres)
        in_use = gres_cache.get(used)
        if in_use is None:
            in_use = gres_cache[used] = gres_gpus(used)
        if "gpu" in in_use and "gpu" not in total and len(total) == 1:  # a typeless count of a one-type node
            in_use = {next(iter(total)): in_use["gpu"]}
        takes_jobs = state != "down" and avail == "up"
        free = {gtype: max(0, count - in_use.get(gtype, 0)) if takes_jobs else 0 for gtype, count in total.items()}
        part["nodes"][state] += 1
        part["nodes"]["total"] += 1
        part["node_count"] += 1
        size = (sum(total.values()), _number(cpus), _number(memory))
        if size > (sum(part["gpus_per_node"].values()), part["cpus_per_node"], part["memory_mb_per_node"]):
            part["gpus_per_node"], part["cpus_per_node"], part["memory_mb_per_node"] = dict(total), size[1], size[2]
        for gtype, count in total.items():
            entry = part["gpus"].setdefault(gtype, {"total": 0, "free": 0, "free_max_node": 0})
            entry["total"] += count
            entry["free"] += free[gtype]
            entry["free_max_node"] = max(entry["free_max_node"], free[gtype])
        nodes_seen.setdefault(node, (state, total, free))
    cluster_nodes = {"allocated": 0, "idle": 0, "down": 0, "total": len(nodes_seen)}
    cluster_gpus: dict[str, dict[str, int]] = {}
    for state, total, free in nodes_seen.values():
        cluster_nodes[state] += 1
        for gtype, count in total.items():
            entry = cluster_gpus.setdefault(gtype, {"total": 0, "free": 0})
            entry["total"] += count
            entry["free"] += free[gtype]
    return {"partitions": list(partitions.values()), "nodes": cluster_nodes, "gpus": cluster_gpus}


def slurm_shape() -> dict[str, Any]:
    """The cluster's shape now, free GPUs included: one ``sinfo``, whatever the number of nodes."""
    return parse_sinfo_nodes(_command(["sinfo", "-h", "-N", "-O", SINFO_NODE_FIELDS]))


def slurm_info() -> dict[str, Any]:
    """The cluster as ``hosts list`` shows it: one sinfo call (node by node, so free GPUs are known)."""
    return slurm_shape()
