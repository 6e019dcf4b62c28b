"""A five-step pipeline through the real controller and agents: cached by content, re-run exactly where it changed.

Every step has its own code folder and writes an output that is a hash of
everything it read (its code, its inputs), so a change anywhere upstream
shows in every output below it. The mutation story flips one byte in each
thing a step's key covers, one at a time, and asserts the exact set of
steps that ran: no false hit (a step that should have run was cached) and
no needless re-run.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from conftest import Fleet, SshFleet
from test_environment_jobs import offline_wheels

STEP_SCRIPT = '''\
"""Step {name}: writes the sha256 of its code and of every file it reads."""
import hashlib, os, sys, time
h = hashlib.sha256(open(__file__, "rb").read())
for path in sys.argv[2:]:
    h.update(open(path, "rb").read())
time.sleep(float(os.environ.get("STEP_SLEEP", "0")))
os.makedirs(os.path.dirname(sys.argv[1]) or ".", exist_ok=True)
open(sys.argv[1], "w").write(h.hexdigest() + "\\n")
'''

# step -> (its output path, what it reads: workdir files or STEP.outputs.NAME)
STEPS = {
    "prepare": ("out/prepared.txt", ["data/raw.csv"]),
    "features": ("out/features.txt", ["data/extra.csv"]),
    "train": ("out/model.txt", ["prepare.outputs.out", "features.outputs.out"]),
    "evaluate": ("out/report.txt", ["train.outputs.out"]),
    "publish": ("out/published.txt", ["evaluate.outputs.out"]),
}
BELOW = {"prepare": {"train", "evaluate", "publish"}, "features": {"train", "evaluate", "publish"},
         "train": {"evaluate", "publish"}, "evaluate": {"publish"}, "publish": set()}


def read_path(reader: str, item: str) -> str:
    """Where a step finds what it reads: its own workdir file, or an upstream output at its producer's path."""
    if ".outputs." in item:
        return STEPS[item.split(".")[0]][0]
    return item


def write_pipeline(root: Path, extra_env: str = "", locked: str | None = None) -> Path:
    """The five steps; ``locked``: the step that runs in an environment built from its requirements.txt."""
    for name, (output, reads) in STEPS.items():
        folder = root / name
        (folder / "data").mkdir(parents=True, exist_ok=True)
        (folder / "step.py").write_text(STEP_SCRIPT.format(name=name))
    if locked is not None:
        (root / locked / "requirements.txt").write_text("# the lock of this step\ntinypkg==1.0\ntinydep==2.0\n")
    (root / "prepare" / "data" / "raw.csv").write_text("a,b\n1,2\n3,4\n")
    (root / "features" / "data" / "extra.csv").write_text("c\n5\n6\n")
    lines = ["name: five", "project: demo", "steps:"]
    for name, (output, reads) in STEPS.items():
        args = json.dumps(["python3", "step.py", output, *[read_path(name, r) for r in reads]])
        environment = ", environment: {requirements: requirements.txt}" if name == locked else ""
        lines += [f"  {name}:",
                  f"    job: {{workdir: {name}, command: {args}{extra_env}{environment}}}",
                  f"    inputs: {json.dumps(reads)}",
                  f"    outputs: {{out: {output}}}"]
    path = root / "pipeline.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(fleet: Fleet, path: Path, *args: str, code: int = 0) -> dict[str, Any]:
    done = fleet.cli("pipeline", "run", str(path), "--wait", "--json", *args, timeout=240)
    if done.code != code:
        failed = [s for s in done.json()["steps"] if s["state"] == "failed"] if done.out.startswith("{") else []
        logs = [fleet.cli("jobs", "logs", s["job_id"], "--stderr").out for s in failed if s["job_id"]]
        raise AssertionError(f"{done.err}{failed}\n{logs}")
    return done.json()


def ran(shown: dict[str, Any]) -> set[str]:
    return {s["step"] for s in shown["steps"] if s["state"] == "succeeded"}


def states(shown: dict[str, Any]) -> dict[str, str]:
    return {s["step"]: s["state"] for s in shown["steps"]}


def flip_byte(path: Path) -> None:
    """One bit of one byte: in a script or a lock, inside its first comment (it still works); in data, the middle."""
    data = bytearray(path.read_bytes())
    data[4 if path.suffix in (".py", ".txt") else len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_every_change_re_runs_exactly_the_steps_below_it_and_nothing_else(fleet: Fleet, tmp_path: Path) -> None:
    path = write_pipeline(tmp_path)
    first = run(fleet, path)
    assert first["state"] == "succeeded" and ran(first) == set(STEPS), states(first)
    again = run(fleet, path)
    assert ran(again) == set() and set(states(again).values()) == {"cached"}
    # one mutation at a time: each step's code, then each workdir input
    mutations = [(tmp_path / name / "step.py", {name} | BELOW[name]) for name in STEPS]
    mutations += [(tmp_path / "prepare" / "data" / "raw.csv", {"prepare"} | BELOW["prepare"]),
                  (tmp_path / "features" / "data" / "extra.csv", {"features"} | BELOW["features"])]
    for target, expected in mutations:
        flip_byte(target)
        shown = run(fleet, path)
        assert ran(shown) == expected, (target, states(shown))
        assert all(state == "cached" for step, state in states(shown).items() if step not in expected)
        why = fleet.cli_json("pipeline", "why", shown["run_id"], sorted(expected)[0])
        assert why["changes"], why  # it says which part of the key changed
    # each output is still a function of everything above it: the last run's files say so
    last = fleet.cli_json("pipeline", "show", shown["run_id"])
    assert all(len(s["outputs"]) == 1 and len(s["outputs"][0]["sha256"]) == 64 for s in last["steps"])


def test_a_deleted_output_is_a_miss_never_a_false_hit(fleet: Fleet, tmp_path: Path) -> None:
    path = write_pipeline(tmp_path)
    first = run(fleet, path)
    train = next(s for s in first["steps"] if s["step"] == "train")
    stored = fleet.home.data_dir / "pipeline-outputs" / train["outputs"][0]["sha256"]
    assert stored.is_dir(), list((fleet.home.data_dir / "pipeline-outputs").iterdir())
    for item in stored.iterdir():
        item.unlink()
    shown = run(fleet, path)
    assert ran(shown) == {"train"}, states(shown)  # its bytes came back the same: nothing below re-ran
    reasons = " ".join(next(s for s in shown["steps"] if s["step"] == "train")["reasons"])
    assert "is missing" in reasons, reasons


def test_a_controller_killed_mid_pipeline_resumes_without_re_running_finished_steps(fleet: Fleet,
                                                                                     tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, extra_env=", env: {STEP_SLEEP: '3'}")
    started = fleet.cli("pipeline", "run", str(path), "--json", check=True).json()
    run_id = started["run_id"]

    def midway() -> bool:  # some steps done, some running: the moment to kill it
        seen = set(states(fleet.cli_json("pipeline", "show", run_id)).values())
        return "succeeded" in seen and "running" in seen

    fleet.wait_for(midway, timeout=120, interval=0.1, what="the run to be midway")
    pid = fleet.controller_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    fleet.wait_for(lambda: fleet.controller_pid is None, timeout=20, what="the controller to be gone")
    fleet.cli("controller", "start", check=True)
    done = fleet.wait_for(lambda: (s := fleet.cli_json("pipeline", "show", run_id))["state"] != "running" and s,
                          timeout=120, what="the run to end")
    assert done["state"] == "succeeded", done
    jobs = fleet.cli_json("db", "query", "select name, count(*) from jobs group by name order by name")["rows"]
    assert {name: count for name, count in jobs} == {f"five-{s}": 1 for s in STEPS}, jobs


def test_an_unchanged_pipeline_on_another_host_runs_nothing_and_a_change_runs_there(ssh_fleet: SshFleet,
                                                                                     tmp_path: Path) -> None:
    fleet = ssh_fleet.fleet
    ssh_fleet.add("node-a")
    ssh_fleet.wait_up("node-a")
    fleet.cli("hosts", "drain", "local", check=True)
    path = write_pipeline(tmp_path)
    first = run(fleet, path)
    hosts = fleet.cli_json("db", "query", "select distinct host from jobs")["rows"]
    assert hosts == [["node-a"]], hosts
    # another machine: node-b only. Nothing runs: the cache lives with the controller, not with a host.
    ssh_fleet.add("node-b")
    ssh_fleet.wait_up("node-b")
    fleet.cli("hosts", "drain", "node-a", check=True)
    again = run(fleet, path)
    assert ran(again) == set() and first["state"] == "succeeded"
    # a change to evaluate runs it (and publish) on node-b, reading train's output made on node-a
    flip_byte(tmp_path / "evaluate" / "step.py")
    shown = run(fleet, path)
    assert ran(shown) == {"evaluate", "publish"}, states(shown)
    placed = fleet.cli_json("db", "query", "select name, host from jobs where host = 'node-b' order by name")["rows"]
    assert placed == [["five-evaluate", "node-b"], ["five-publish", "node-b"]], placed


def test_a_changed_lockfile_re_runs_the_step_that_builds_from_it_and_what_reads_it(fleet: Fleet,
                                                                                    tmp_path: Path) -> None:
    offline_wheels(fleet)  # train's environment is built offline from tiny wheels
    path = write_pipeline(tmp_path, locked="train")
    first = run(fleet, path)
    assert ran(first) == set(STEPS)
    lock = tmp_path / "train" / "requirements.txt"
    lock.write_text(lock.read_text().replace("tinypkg==1.0", "tinypkg==0.9"))  # a pin moved: 1.0 → 0.9
    shown = run(fleet, path)
    # train runs again in its new environment; it wrote the same bytes (its script does not read the lock),
    # so what reads its output is decided by content and stays cached
    assert ran(shown) == {"train"}, states(shown)
    changes = fleet.cli_json("pipeline", "why", shown["run_id"], "train")["changes"]
    assert any(c.startswith("environment changed") for c in changes), changes


def test_new_data_starts_a_run_by_itself_and_says_why(fleet: Fleet, tmp_path: Path) -> None:
    """on: data: the controller notices a file of the glob changed, starts a run, and audits the firing."""
    path = write_pipeline(tmp_path)
    text = path.read_text().replace("project: demo\n", "project: demo\non:\n  data: [prepare/data/*.csv]\n")
    path.write_text(text)
    first = run(fleet, path)  # a manual run arms the trigger (its baseline: the files as they are)
    assert first["trigger"] == "manual" and ran(first) == set(STEPS)
    flip_byte(tmp_path / "prepare" / "data" / "raw.csv")
    fired = fleet.wait_for(lambda: next((r for r in fleet.cli_json("pipeline", "list", "five")
                                         if r["trigger"] == "data"), None), timeout=60, what="a run started by data")
    done = fleet.wait_for(lambda: (s := fleet.cli_json("pipeline", "show", fired["run_id"]))["state"] != "running"
                          and s, timeout=120, what="the data run to end")
    assert done["state"] == "succeeded" and "raw.csv" in json.dumps(done["cause"]), done["cause"]
    assert ran(done) == {"prepare", "train", "evaluate", "publish"}  # features reads none of it
    history = fleet.cli_json("pipeline", "triggers", "five")["history"]
    assert [(h["trigger"], h["outcome"], h["run_id"]) for h in history][:1] == [("data", "started", fired["run_id"])]
    audit = fleet.cli_json("db", "query", "select action, target from audit where action = 'pipeline.trigger'")
    assert len(audit["rows"]) == 1, audit
