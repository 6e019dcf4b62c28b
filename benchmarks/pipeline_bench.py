"""Pipelines side by side: a no-op re-run of one 5-step DAG (mlfleet vs ``dvc repro``), and a 200-step fan-out.

    .venv/bin/python benchmarks/pipeline_bench.py [--repeat 5] [--dvc PATH] [--fanout 199] [--fanout-repeat 3]

DVC is not a dependency of mlfleet: install it into a venv of its own
(``python3 -m venv /tmp/dvcvenv && /tmp/dvcvenv/bin/pip install dvc==3.67.1``)
and pass ``--dvc /tmp/dvcvenv/bin/dvc`` (default: ``dvc`` on PATH; without
one the DVC column says so and the rest still runs).

**No-op re-run.** A temporary project with five steps (prepare, features,
train, evaluate, publish: one small Python script each, in its own folder,
writing the sha256 of its code and of every file it reads, the layout of
tests/test_pipeline_story.py), written twice: once as a ``pipeline.yaml``
(inputs ``STEP.outputs.NAME``), once as ``dvc.yaml`` stages in a git
repository after ``dvc init`` (``wdir`` the step's folder, ``deps`` the
script and what it reads, ``outs`` what it writes). The commands are the
same; only the path a step reads its upstream file at differs (mlfleet puts
an upstream output in the reader's workdir, DVC reads it in place,
``../prepare/out/prepared.txt``). Both run once to fill their caches, then
``--repeat`` no-op re-runs of each are timed as wall time of the whole
command: ``mlfleet pipeline run pipeline.yaml --wait --json`` against a real
controller started here in its own ``MLFLEET_HOME``, and ``dvc repro``.
Beside them: the controller's share (the run's ``created_at`` →
``ended_at``), ``mlfleet pipeline check`` (a new Python process, the
imports and the file read and resolved, no controller: the client's floor)
and ``dvc --version`` (DVC's start-up floor).

**Fan-out.** One root step writing one output, then ``--fanout`` steps (one
shared workdir, each ``cp`` of the root's output to its own file). The
first run is started with ``pipeline run`` (no ``--wait``) and the
controller's own timestamps say how long planning and queueing took:
from the root step's ``ended_at`` (the moment its outputs are recorded and
the planner may go on) to the last fan-out step's ``started_at`` (stamped
in the transaction that inserts its job), checked against the jobs table
(every fan-out job is in it). The run is then let finish, and ``--repeat``
no-op re-runs of all the steps (all cached) are timed as above. Then
``--fanout-repeat`` - 1 more first runs (the root's input changed each time,
so every key is new) are measured the same way and cancelled once every
fan-out job is queued (199 real jobs take a while on a small machine).

Prints Markdown tables for BENCHMARKS.md, with the machine and the load
average at the start and the end (the figures are wall times: other work on
the same cores shows in them).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

MLFLEET = str(Path(sys.executable).with_name("mlfleet"))

STEP_SCRIPT = '''\
"""Step {name}: writes the sha256 of its code and of every file it reads."""
import hashlib, os, sys
h = hashlib.sha256(open(__file__, "rb").read())
for path in sys.argv[2:]:
    h.update(open(path, "rb").read())
os.makedirs(os.path.dirname(sys.argv[1]) or ".", exist_ok=True)
open(sys.argv[1], "w").write(h.hexdigest() + "\\n")
'''

# step -> (its output path, what it reads: workdir files or STEP.outputs.out)
STEPS = {
    "prepare": ("out/prepared.txt", ["data/raw.csv"]),
    "features": ("out/features.txt", ["data/extra.csv"]),
    "train": ("out/model.txt", ["prepare.outputs.out", "features.outputs.out"]),
    "evaluate": ("out/report.txt", ["train.outputs.out"]),
    "publish": ("out/published.txt", ["evaluate.outputs.out"]),
}


# ------------------------------------------------------------------ the two projects
def write_steps(root: Path) -> None:
    for name in STEPS:
        (root / name / "data").mkdir(parents=True, exist_ok=True)
        (root / name / "step.py").write_text(STEP_SCRIPT.format(name=name))
    (root / "prepare" / "data" / "raw.csv").write_text("a,b\n1,2\n3,4\n")
    (root / "features" / "data" / "extra.csv").write_text("c\n5\n6\n")


def mlfleet_pipeline(root: Path) -> Path:
    """The five steps as a pipeline.yaml: an upstream output is read at its producer's path in the reader's workdir."""
    write_steps(root)
    lines = ["name: bench-five", "project: bench", "steps:"]
    for name, (output, reads) in STEPS.items():
        paths = [STEPS[r.split(".")[0]][0] if ".outputs." in r else r for r in reads]
        args = json.dumps(["python3", "step.py", output, *paths])
        lines += [f"  {name}:", f"    job: {{workdir: {name}, command: {args}}}",
                  f"    inputs: {json.dumps(reads)}", f"    outputs: {{out: {output}}}"]
    path = root / "pipeline.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def dvc_project(root: Path, dvc: str) -> None:
    """The same five steps as dvc.yaml stages in a git repository: an upstream output is read in place."""
    write_steps(root)
    stages: list[str] = ["stages:"]
    for name, (output, reads) in STEPS.items():
        paths = [f"../{r.split('.')[0]}/{STEPS[r.split('.')[0]][0]}" if ".outputs." in r else r for r in reads]
        stages += [f"  {name}:", f"    wdir: {name}",
                   f"    cmd: {' '.join(['python3', 'step.py', output, *paths])}",
                   f"    deps: {json.dumps(['step.py', *paths])}", f"    outs: {json.dumps([output])}"]
    (root / "dvc.yaml").write_text("\n".join(stages) + "\n")
    for command in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "config", "core.analytics", "false"],
                    ["git", "add", "-A"], ["git", "-c", "user.name=bench", "-c", "user.email=b@example.org",
                                           "commit", "-qm", "bench"]):
        subprocess.run(command, cwd=root, check=True, capture_output=True, env=dvc_env())


def dvc_env() -> dict[str, str]:
    return {**os.environ, "DVC_NO_ANALYTICS": "1"}


def fanout_pipeline(root: Path, fanout: int) -> Path:
    """A root step and ``fanout`` steps reading its output, sharing one workdir (so one bundle, one submit)."""
    (root / "root").mkdir(parents=True)
    (root / "root" / "seed.txt").write_text("seed\n")
    (root / "fan").mkdir()
    (root / "fan" / "README").write_text("each step copies the root's output\n")
    lines = ["name: bench-fanout", "project: bench", "steps:",
             "  root:", '    job: {workdir: root, command: [sh, -c, "mkdir -p out && cp seed.txt out/root.txt"]}',
             "    inputs: [seed.txt]", "    outputs: {out: out/root.txt}"]
    for i in range(fanout):
        lines += [f"  f{i:03d}:", f'    job: {{workdir: fan, command: [sh, -c, "cp out/root.txt out/f{i:03d}.txt"]}}',
                  "    inputs: [root.outputs.out]", f"    outputs: {{out: out/f{i:03d}.txt}}"]
    path = root / "fanout.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------ running things
class Controller:
    """A real controller (and its local agent) in a private MLFLEET_HOME, stopped and cleaned up at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {**os.environ, "MLFLEET_HOME": str(root)}

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([MLFLEET, *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def json(self, *args: str, timeout: float = 600) -> Any:
        done = self.cli(*args, "--json", timeout=timeout)
        if done.returncode != 0:
            raise SystemExit(f"mlfleet {' '.join(args)} exited {done.returncode}: {done.stderr or done.stdout}")
        return json.loads(done.stdout)

    def query(self, sql: str) -> list[list[Any]]:
        return self.json("db", "query", sql)["rows"]

    def start(self) -> None:
        done = self.cli("controller", "start")
        if done.returncode != 0:
            raise SystemExit(f"mlfleet controller start: {done.stderr}")

    def stop(self) -> None:
        """Stop, then kill what is left of this installation only (processes naming its home)."""
        self.cli("controller", "stop", timeout=60)
        mine = []
        for proc in psutil.process_iter(["pid", "environ", "cmdline"]):
            try:
                env = proc.info.get("environ") or {}
                cmd = " ".join(proc.info.get("cmdline") or [])
            except (psutil.Error, OSError):
                continue
            if proc.pid != os.getpid() and (env.get("MLFLEET_HOME") == str(self.root) or str(self.root) in cmd):
                mine.append(proc)
        for proc in mine:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        psutil.wait_procs(mine, timeout=5)


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}: {done.stderr or done.stdout}")
    return elapsed, done


def seconds_between(start: str, end: str) -> float:
    return (dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds()


def mlfleet_noop(fleet: Controller, path: Path, repeat: int, steps: int) -> dict[str, list[float]]:
    """``repeat`` timed no-op runs (every step must come back cached), with the controller's share of each."""
    walls, inside = [], []
    for _ in range(repeat):
        wall, done = timed([MLFLEET, "pipeline", "run", str(path), "--wait", "--json"], path.parent, fleet.env)
        run = json.loads(done.stdout)
        cached = [s for s in run["steps"] if s["state"] == "cached"]
        assert run["state"] == "succeeded" and len(cached) == steps, [(s["step"], s["state"]) for s in run["steps"]]
        walls.append(wall)
        inside.append(seconds_between(run["created_at"], run["ended_at"]))
    return {"wall": walls, "controller": inside}


def first_run(fleet: Controller, path: Path) -> dict[str, Any]:
    done = fleet.cli("pipeline", "run", str(path), "--wait", "--json", timeout=900)
    run = json.loads(done.stdout) if done.stdout.startswith("{") else {}
    if done.returncode != 0 or run.get("state") != "succeeded":
        raise SystemExit(f"the first run of {path.name} did not succeed: {done.stderr or done.stdout}")
    return run


def fanout_first_run(fleet: Controller, path: Path, fanout: int) -> dict[str, Any]:
    """Start it without --wait; once every fan-out step has its job, read the controller's timestamps."""
    t0 = time.perf_counter()
    started = fleet.json("pipeline", "run", str(path))
    returned = time.perf_counter() - t0
    run_id = started["run_id"]
    deadline = time.monotonic() + 600
    while True:
        (running,), = fleet.query(f"select count(*) from pipeline_steps where run_id = '{run_id}' "
                                  "and step <> 'root' and job_id is not null")
        if running == fanout:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"only {running} of {fanout} fan-out steps had a job after 600 s")
        time.sleep(0.2)
    all_queued = time.perf_counter() - t0
    (root_start, root_end, first, last, jobs_first, jobs_last, jobs), = fleet.query(
        "select epoch(r.started_at), epoch(r.ended_at), epoch(min(s.started_at)), epoch(max(s.started_at)), "
        "epoch(min(j.submitted_at)), epoch(max(j.submitted_at)), count(j.job_id) "
        "from pipeline_steps r join pipeline_steps s on s.run_id = r.run_id and s.step <> 'root' "
        "left join jobs j on j.job_id = s.job_id "
        f"where r.run_id = '{run_id}' and r.step = 'root' group by all")
    assert jobs == fanout, (jobs, fanout)
    return {"run_id": run_id, "cli_return": returned, "all_queued_wall": all_queued,
            "root_ran": root_end - root_start, "planned_first": first - root_end, "planned_last": last - root_end,
            "jobs_span": (jobs_last - jobs_first), "jobs_after_root": jobs_last - root_end}


def wait_ended(fleet: Controller, run_id: str, timeout: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    run = fleet.json("pipeline", "show", run_id)
    while run["state"] == "running" and time.perf_counter() - t0 < timeout:
        time.sleep(1.0)
        run = fleet.json("pipeline", "show", run_id)
    return run


# ------------------------------------------------------------------ the tables
def ms(values: list[float]) -> str:
    return f"{min(values) * 1000:,.0f} / {statistics.median(values) * 1000:,.0f}"


def machine_line(load_before: tuple[float, ...], load_after: tuple[float, ...], dvc_version: str) -> str:
    memory = psutil.virtual_memory().total / 1024**3
    return (f"machine: {platform.machine()}, {os.cpu_count()} cores, {memory:.0f} GiB, Python "
            f"{platform.python_version()}, {dvc_version}, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, "
            f"load average {load_before[0]:.2f} / {load_before[1]:.2f} at the start, "
            f"{load_after[0]:.2f} / {load_after[1]:.2f} at the end (1 / 5 min)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dvc", default=shutil.which("dvc"), help="the dvc command (default: dvc on PATH)")
    ap.add_argument("--fanout", type=int, default=199, help="steps reading the root's output (total: this + 1)")
    ap.add_argument("--fanout-repeat", type=int, default=3,
                    help="first runs of the fan-out measured (the first is let finish, the others are cancelled)")
    ap.add_argument("--skip-fanout", action="store_true")
    args = ap.parse_args()
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="mlfpb-work", dir="/tmp"))
    fleet = Controller(Path(tempfile.mkdtemp(prefix="mlfpb", dir="/tmp")))
    dvc_version = "DVC not found"
    results: dict[str, Any] = {}
    try:
        # --- DVC first: it needs no controller, so nothing of mlfleet runs beside it
        if args.dvc:
            dvc_version = "DVC " + subprocess.run([args.dvc, "--version"], capture_output=True, text=True,
                                                  check=True).stdout.strip()
            project = work / "dvc"
            project.mkdir()
            dvc_project(project, args.dvc)
            timed([args.dvc, "repro"], project, dvc_env())
            again = [timed([args.dvc, "repro"], project, dvc_env()) for _ in range(args.repeat)]
            assert all("didn't change" in d.stdout or "up to date" in d.stdout for _, d in again), again[-1][1].stdout
            results["dvc"] = [t for t, _ in again]
            results["dvc_version"] = [timed([args.dvc, "--version"], project, dvc_env())[0] for _ in range(args.repeat)]
        fleet.start()
        five = mlfleet_pipeline(work / "mlfleet")
        first_run(fleet, five)
        results["mlfleet"] = mlfleet_noop(fleet, five, args.repeat, len(STEPS))
        results["check"] = [timed([MLFLEET, "pipeline", "check", str(five)], five.parent, fleet.env)[0]
                            for _ in range(args.repeat)]
        if not args.skip_fanout:
            fan = fanout_pipeline(work / "fanout", args.fanout)
            measured = fanout_first_run(fleet, fan, args.fanout)
            t0 = time.perf_counter()
            ended = wait_ended(fleet, measured["run_id"], 900)
            measured["rest"] = time.perf_counter() - t0
            measured["state"] = ended["state"]
            results["fanout"] = measured
            if ended["state"] == "succeeded":
                results["fan_noop"] = mlfleet_noop(fleet, fan, args.repeat, args.fanout + 1)
                results["fan_check"] = [timed([MLFLEET, "pipeline", "check", str(fan)], fan.parent, fleet.env)[0]
                                        for _ in range(args.repeat)]
            more = []
            for i in range(args.fanout_repeat - 1):  # a new seed: the root runs, every fan-out key is new
                (fan.parent / "root" / "seed.txt").write_text(f"seed {i}\n")
                more.append(fanout_first_run(fleet, fan, args.fanout))
                fleet.json("pipeline", "cancel", more[-1]["run_id"])
                wait_ended(fleet, more[-1]["run_id"], 300)
            results["fanout_all"] = [measured, *more]
    finally:
        fleet.stop()
        shutil.rmtree(fleet.root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    print(machine_line(load_before, load_after, dvc_version))
    print(f"`benchmarks/pipeline_bench.py --repeat {args.repeat} --fanout {args.fanout}`; min / median ms\n")
    print("| 5-step DAG, no-op re-run | mlfleet | DVC |")
    print("|---|---:|---:|")
    m = results["mlfleet"]
    dvc = ms(results["dvc"]) if "dvc" in results else "not measured"
    print(f"| whole command (`pipeline run --wait` / `dvc repro`) | {ms(m['wall'])} | {dvc} |")
    print(f"| of which the controller (run created → ended) | {ms(m['controller'])} | – |")
    dvc_floor = ms(results["dvc_version"]) if "dvc_version" in results else "not measured"
    print(f"| start-up floor (`pipeline check` / `dvc --version`) | {ms(results['check'])} | {dvc_floor} |")
    if "fanout" in results:
        f = results["fanout"]
        every = results["fanout_all"]
        pick = lambda key: ms([r[key] for r in every])  # noqa: E731
        total = args.fanout + 1
        print(f"\n| {total}-step fan-out (1 root, {args.fanout} readers), first run: min / median of "
              f"{len(every)} | ms |")
        print("|---|---:|")
        print(f"| `pipeline run` (no --wait) returns (root planned and submitted) | {pick('cli_return')} |")
        print(f"| root's job ran (its started_at → ended_at) | {pick('root_ran')} |")
        print(f"| root ended → first fan-out step queued with its job | {pick('planned_first')} |")
        print(f"| root ended → all {args.fanout} fan-out jobs in the jobs table (their submitted_at) | "
              f"{pick('jobs_after_root')} |")
        print(f"| root ended → all {args.fanout} fan-out steps marked running with their job | "
              f"{pick('planned_last')} |")
        print(f"| `pipeline run` started → all {args.fanout} jobs seen in the jobs table (polled every 0.2 s) | "
              f"{pick('all_queued_wall')} |")
        print(f"| the first run, from then until it ended ({f['state']}; one sample) | {f['rest'] * 1000:,.0f} |")
        if "fan_noop" in results:
            n = results["fan_noop"]
            print(f"| no-op re-run, whole command | {ms(n['wall'])} |")
            print(f"| no-op re-run, the controller (run created → ended) | {ms(n['controller'])} |")
            print(f"| `pipeline check` of the {total}-step file | {ms(results['fan_check'])} |")


if __name__ == "__main__":
    main()
