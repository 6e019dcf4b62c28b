"""A sweep's runs handed to Slurm as one job array: one ``sbatch --array=0-(N-1)``, task i runs the i-th run folder.

Why an array and not N jobs: one submit for N runs (a 500-point sweep is
one ``sbatch``, not 500 against a busy slurmctld), one line per task in
``squeue -r`` (so the one squeue per poll still answers every run), and the
cluster's own tools show the sweep as one thing (``squeue``, ``scancel ID``).
Each task is still one run of its own: its folder, its ``launch.json``, the
same runner (agents/runner.py), its own status, metrics and cancel
(``scancel ID_TASK``).

The array lives in ``STATE_DIR/slurm-arrays/NAME/`` (on the shared
filesystem, as the run folders): ``runs.list`` (task i's run folder on line
i + 1), ``batch.sh``, ``array.json`` (the intent: the runs and the sbatch
command), ``submitted.json`` (sbatch's answer) and ``job_id`` (left by the
first task that starts). Every run of it gets ``slurm-array.json`` (array
name and task) before ``sbatch`` and ``slurm.json`` (``job_id`` ``ID_TASK``)
after it.

Idempotent like a single submit: a run that has ``slurm-array.json`` is
never put into another array. An array whose submit was not recorded (the
agent died between sbatch and writing ``submitted.json``) is looked for by
its name in squeue, then scontrol, then its ``job_id`` file; only an array
that none of them knows is submitted (again).
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from mlfleet.agents.rundir import RunDir, read_json, write_json_atomic
from mlfleet.agents.slurm import (ARRAY_TASK_FILE, JOB_PREFIX, SLURM_FILE, SlurmQueue, _command, job_name,
                                  output_option, plan_options, redirect_line)
from mlfleet.core.base.errors import UsageError
from mlfleet.core.base.models import SlurmPlan

ARRAYS_DIR = "slurm-arrays"
ARRAY_PREFIX = JOB_PREFIX + "array-"
MAX_TASKS = 1000  # Slurm's default MaxArraySize is 1001 (task ids 0-1000)


def array_name(first_run_id: str) -> str:
    """An array is named after its first run: a run is in one array at most, so the name is never reused."""
    return ARRAY_PREFIX + first_run_id


def array_argv(plan: SlurmPlan, name: str, folder: Path, count: int) -> list[str]:
    """The sbatch command of an array of ``count`` tasks (pure: tested without Slurm); run it in ``folder``.

    No path in ``--output`` (Slurm expands ``%`` patterns and backslashes there: slurm.output_option) and no
    ``--chdir``: sbatch started in the array's folder makes it the tasks' working dir.
    """
    if not 1 <= count <= MAX_TASKS:
        raise UsageError(f"a job array has 1 to {MAX_TASKS} tasks, not {count}")
    out = output_option(folder, "slurm-%A_%a.out")
    return ["sbatch", "--parsable", f"--array=0-{count - 1}", f"--job-name={name}", f"--comment={name}",
            f"--output={out}", f"--error={out}", *plan_options(plan), str(folder / "batch.sh")]


def array_script(name: str, folder: Path, python: str = sys.executable) -> str:
    """The script every task runs: its run folder from ``runs.list`` by SLURM_ARRAY_TASK_ID, then the runner."""
    listing, marker, py = (shlex.quote(str(folder / "runs.list")), shlex.quote(str(folder / "job_id")),
                           shlex.quote(python))
    return (f"#!/bin/sh\n# mlfleet job array {name}: task N runs the run folder on line N+1 of runs.list\n"
            + redirect_line(folder, "slurm-${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}.out") +
            f"[ -s {marker} ] || echo \"$SLURM_ARRAY_JOB_ID\" > {marker}  # the array's id, should sbatch's answer be lost\n"
            f"run=$(sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" {listing})\n"
            f"if [ -z \"$run\" ]; then echo \"mlfleet: no run folder for task $SLURM_ARRAY_TASK_ID in {listing}\" >&2; "
            "exit 2; fi\n"
            f"cd \"$run\" && exec {py} -m mlfleet.agents.runner \"$run\"\n")


def submit(arrays_dir: Path, runs: list[RunDir], plan: SlurmPlan, queue: SlurmQueue) -> str:
    """Submit ``runs`` (already prepared: launch.json written) as one array; the array's job id.

    The intent (array.json, each run's slurm-array.json) is written before
    sbatch, so nothing after a crash can submit a run a second time.
    """
    folder, argv = intend(arrays_dir, runs, plan)
    return _sbatch(folder, runs, argv, queue)


def intend(arrays_dir: Path, runs: list[RunDir], plan: SlurmPlan) -> tuple[Path, list[str]]:
    """Each run's slurm-array.json, then the array's folder (list, script) and, last, array.json: the intent is
    whole once array.json is there (a run whose array has none was never submitted). The folder and sbatch argv."""
    name = array_name(runs[0].run_id)
    folder = arrays_dir / name
    for run in runs:
        if "\n" in str(run.root):
            raise UsageError(f"run folder {str(run.root)!r} has a newline; it cannot be a line of runs.list")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    (folder / "runs.list").write_text("".join(f"{run.root}\n" for run in runs))
    script = folder / "batch.sh"
    script.write_text(array_script(name, folder))
    script.chmod(0o700)
    argv = array_argv(plan, name, folder, len(runs))
    for task, run in enumerate(runs):
        write_json_atomic(run.file(ARRAY_TASK_FILE), {"array": name, "task": task})
    write_json_atomic(folder / "array.json", {"name": name, "runs": [run.run_id for run in runs], "argv": argv,
                                              "runs_dir": str(runs[0].root.parent)})
    return folder, argv


def intended(arrays_dir: Path, name: str) -> bool:
    """Was the array's intent written whole (and so, maybe, submitted)?"""
    return (arrays_dir / name / "array.json").exists()


def resume(arrays_dir: Path, name: str, queue: SlurmQueue) -> str:
    """An array whose intent was written: its job id, from its records, Slurm, or (known to none) a new sbatch."""
    folder = arrays_dir / name
    intent = read_json(folder / "array.json")
    if intent is None:
        raise UsageError(f"job array {name} has no {folder / 'array.json'}; its runs cannot be submitted")
    runs = [RunDir(Path(intent["runs_dir"]) / run_id) for run_id in intent["runs"]]
    submitted = read_json(folder / "submitted.json")
    array_id = str(submitted["job_id"]) if submitted and submitted.get("job_id") else find(name, folder, queue)
    if array_id:
        record(folder, runs, array_id)
        return array_id
    return _sbatch(folder, runs, list(intent["argv"]), queue)


def find(name: str, folder: Path, queue: SlurmQueue) -> str:
    """The id of the array named ``name`` if Slurm (or one of its tasks) knows it, else ""."""
    queue.forget()
    for job in queue.jobs().values():
        if job.name == name and job.array_job_id:
            return job.array_job_id
    for fields in queue.final().values():
        if fields.get("JobName") == name and fields.get("ArrayJobId"):
            return fields["ArrayJobId"]
    try:
        return (folder / "job_id").read_text().strip()
    except OSError:
        return ""


def _sbatch(folder: Path, runs: list[RunDir], argv: list[str], queue: SlurmQueue) -> str:
    array_id = _command(argv, cwd=folder).strip().split(";")[0]
    record(folder, runs, array_id)
    queue.forget()
    return array_id


def record(folder: Path, runs: list[RunDir], array_id: str) -> None:
    """sbatch's answer in the array's folder and, as each task's job id ``ID_TASK``, in each run's slurm.json."""
    now = time.time()
    write_json_atomic(folder / "submitted.json", {"job_id": array_id, "submitted_at": now})
    for task, run in enumerate(runs):
        if not run.file(SLURM_FILE).exists():
            write_json_atomic(run.file(SLURM_FILE), {"job_id": f"{array_id}_{task}", "array_job_id": array_id,
                                                     "array": folder.name, "task": task, "submitted_at": now})


def unfinished_array(run: RunDir) -> str | None:
    """The array a run was put in whose submit is not recorded in the run yet (None: none, or recorded)."""
    if run.file(SLURM_FILE).exists():
        return None
    task = read_json(run.file(ARRAY_TASK_FILE))
    return str(task["array"]) if task and task.get("array") else None


def adopt_single(run: RunDir, queue: SlurmQueue) -> bool:
    """A prepared run sent alone before (``mlfleet-RUN_ID``) and found in the queue: recorded, not put in an array."""
    existing = queue.jobs().get(job_name(run.run_id))
    if existing is None:
        return False
    write_json_atomic(run.file(SLURM_FILE), {"job_id": existing.job_id, "submitted_at": time.time()})
    return True
