"""Adversarial stories against the Slurm backend (issue 19), on a real one-node Slurm (tests/slurm.py).

Each test states one promise of docs/slurm.md and attacks it: hostile paths
and values, a flood of metrics, a hand-made scancel, a job past its --time,
slurmctld gone for a while, an agent SIGKILLed in the middle of an array
submit, bad hosts.yaml / add-slurm input. A test fails where the product
breaks its promise.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from mlfleet.agents import slurm
from mlfleet.agents.rundir import RunDir
from mlfleet.agents.supervisor import Supervisor
from mlfleet.core.base.errors import MlfleetError, SpecError
from mlfleet.core.base.models import LaunchRequest, SlurmPlan

import slurm as slurm_fixtures  # tests/slurm.py

slurm_cluster = slurm_fixtures.slurm_cluster  # one real cluster for this module


@pytest.fixture
def slurm_env(slurm_cluster, monkeypatch):
    for key, value in slurm_cluster.env.items():
        monkeypatch.setenv(key, value)
    return slurm_cluster


def _request(run_id: str, code: str, gres: str | None = None, env: dict | None = None, **plan) -> LaunchRequest:
    return LaunchRequest(run_id=run_id, job_id="job-" + run_id, argv=[sys.executable, "-c", code], workdir="/",
                         env=env or {}, slurm=SlurmPlan(gres=gres, **plan))


def _wait(sup: Supervisor, run_id: str, state: str = "exited", within: float = 90.0):
    deadline = time.monotonic() + within
    while True:
        try:
            status = sup.status(run_id)
        except MlfleetError:
            status = None
        if (status is not None and status.state == state) or time.monotonic() > deadline:
            return status
        time.sleep(0.3)


def _read_all(sup: Supervisor, run_id: str, stream: str) -> str:
    offset, parts = 0, []
    while True:
        chunk = sup.read(run_id, stream, offset)
        parts.append(chunk.data)
        if chunk.end == offset or chunk.eof and not chunk.data:
            return "".join(parts)
        offset = chunk.end


# ------------------------------------------------------------------ hostile paths and values
HOSTILE_DIRS = {
    "shell": "it's a \"dir\" $(touch {canary}) `touch {canary}`; touch {canary}",
    "percent": "run %j %x 100%",
    "backslash": "back\\slash \\n",
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_DIRS))
def test_a_state_dir_with_hostile_characters_runs_the_job_unharmed(slurm_env, tmp_path, kind):
    """The batch script and sbatch's --output/--chdir take the run folder's path: nothing in it may be run or
    expanded (shell $(...), quotes, Slurm's %j/%x filename patterns, its backslash escape)."""
    canary = tmp_path / "pwned"
    hostile = tmp_path / HOSTILE_DIRS[kind].format(canary=canary)
    sup = Supervisor(hostile / "agent")
    code = "import os; print('CWD-OK', os.environ.get('SLURM_JOB_ID', '-'))"
    sup.launch(_request(f"hostile-{kind}", code))
    status = _wait(sup, f"hostile-{kind}")
    assert status is not None and (status.state, status.reason, status.exit_code) == ("exited", "exited", 0), status
    assert "CWD-OK" in _read_all(sup, f"hostile-{kind}", "stdout")
    assert not canary.exists()


def test_spec_command_and_env_values_with_quotes_and_newlines_reach_the_job_verbatim(slurm_env, tmp_path):
    sup = Supervisor(tmp_path / "agent")
    value = "line one\nline 'two' \"three\" $(id) `id`;\n"
    code = "import os, json; print(json.dumps(os.environ['HOSTILE']))\nprint(\"quote's \\\"ok\\\"\")"
    sup.launch(_request("envnl", code, env={"HOSTILE": value}))
    status = _wait(sup, "envnl")
    assert status is not None and status.exit_code == 0, status
    out = _read_all(sup, "envnl", "stdout")
    assert json.dumps(value) in out and "quote's \"ok\"" in out, out


# ------------------------------------------------------------------ metrics exactly once at full speed
def test_twenty_thousand_metric_lines_written_as_fast_as_possible_are_read_exactly_once(slurm_env, tmp_path):
    sup = Supervisor(tmp_path / "agent")
    code = ("from mlfleet import track\nimport sys\n"
            "for i in range(20000):\n    track.log({'loss': i * 0.5}, step=i)\n"
            "    if i % 1000 == 0: sys.stdout.write('x' * 4096 + '\\n')\n"
            "track.flush()\n")
    sup.launch(_request("flood", code))
    offset, steps = 0, []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # read while it is written, by offset, as the controller does
        chunk = sup.read("flood", "metrics", offset)
        steps += [json.loads(line)["step"] for line in chunk.data.splitlines() if line.strip()]
        offset = chunk.end
        status = sup.status("flood")
        if status.state == "exited" and chunk.eof and not chunk.data:
            break
        time.sleep(0.05)
    assert status.exit_code == 0, status
    assert len(steps) == 20000 and sorted(steps) == list(range(20000)), (len(steps), len(set(steps)))


# ------------------------------------------------------------------ GPUs
def test_a_two_gpu_job_sees_both_of_slurms_gpus(slurm_env, tmp_path):
    sup = Supervisor(tmp_path / "agent")
    sup.launch(_request("twogpu", "import os; print('CVD=' + os.environ.get('CUDA_VISIBLE_DEVICES', '-'))",
                        gres="gpu:2"))
    status = _wait(sup, "twogpu")
    assert status is not None and status.exit_code == 0, status
    assert "CVD=0,1" in _read_all(sup, "twogpu", "stdout")


# ------------------------------------------------------------------ ended from outside mlfleet
def test_a_running_job_scancelled_by_hand_ends_honestly_as_cancelled(slurm_env, tmp_path):
    sup = Supervisor(tmp_path / "agent")
    sup.launch(_request("handrun", "import time; time.sleep(120)"))
    assert _wait(sup, "handrun", "running", 60).state == "running"
    slurm_env.run("scancel", "--name=mlfleet-handrun")
    status = _wait(sup, "handrun", within=60)
    assert status.state == "exited" and status.reason == "cancelled" and status.exit_code != 0, status


def test_a_pending_job_scancelled_by_hand_ends_as_cancelled_not_failed_to_start(slurm_env, tmp_path):
    sup = Supervisor(tmp_path / "agent")
    sup.launch(_request("hog2", "import time; time.sleep(120)", gres="gpu:2"))
    assert _wait(sup, "hog2", "running", 60).state == "running"
    sup.launch(_request("pend", "print('never')", gres="gpu:2"))
    time.sleep(2)
    slurm_env.run("scancel", "--name=mlfleet-pend")
    status = _wait(sup, "pend", within=60)
    sup.cancel("hog2")
    assert status.state == "exited" and status.reason == "cancelled", status
    _wait(sup, "hog2", within=60)


def test_a_pending_job_scancelled_by_hand_while_the_agent_looked_away_still_ends(slurm_env, tmp_path):
    """Slurm forgets an ended job after MinJobAge (2 s here, 300 s by default): an agent that was away (restarted,
    its host unreachable) longer than that must not leave the run 'starting' for ever."""
    sup = Supervisor(tmp_path / "agent")
    sup.launch(_request("hog3", "import time; time.sleep(120)", gres="gpu:2"))
    assert _wait(sup, "hog3", "running", 60).state == "running"
    sup.launch(_request("forgot", "print('never')", gres="gpu:2"))
    time.sleep(2)
    slurm_env.run("scancel", "--name=mlfleet-forgot")
    time.sleep(15)  # nobody polls: Slurm purges the record meanwhile
    fresh = Supervisor(tmp_path / "agent")  # the agent comes back
    status = _wait(fresh, "forgot", within=60)
    sup.cancel("hog3")
    _wait(sup, "hog3", within=60)
    assert status.state == "exited", status


def test_a_pending_array_task_scancelled_by_hand_ends_its_run(slurm_env, tmp_path):
    """docs/slurm.md: 'A task cancelled while pending leaves no record in Slurm' - cancelled by a user with
    scancel ID_TASK (no cancel.json), its run must still end, not wait for ever."""
    sup = Supervisor(tmp_path / "agent")
    sup.launch(_request("hog4", "import time; time.sleep(120)", gres="gpu:2"))
    assert _wait(sup, "hog4", "running", 60).state == "running"
    sup.launch_array([_request(f"arr{i}", "print('task')", gres="gpu:2") for i in range(2)])
    time.sleep(2)
    task = json.loads(RunDir(sup.runs_dir / "arr1").file(slurm.SLURM_FILE).read_text())["job_id"]
    slurm_env.run("scancel", task)
    status = _wait(sup, "arr1", within=45)
    sup.cancel("hog4")
    sup.cancel("arr0")
    _wait(sup, "hog4", within=60)
    assert status.state == "exited", status


def test_a_job_past_its_slurm_time_limit_is_reported_as_a_timeout(slurm_env, tmp_path):
    """--time=1: Slurm ends the job (state TIMEOUT). The run must say timeout, not 'cancelled'."""
    sup = Supervisor(tmp_path / "agent")
    sup.launch(_request("overtime", "import time; time.sleep(600)", time_limit_min=1))
    status = _wait(sup, "overtime", within=180)
    assert status is not None and status.state == "exited", status
    assert "timeout" in (status.reason + " " + status.message).lower(), status


def test_a_spec_timeout_of_whole_minutes_is_reported_as_a_timeout_not_a_cancel(slurm_env, tmp_path):
    """launch.py gives a spec ``timeout: 60`` to both the runner (60 s) and sbatch (--time=1): whoever fires
    first, the run timed out; it must never read 'cancelled'."""
    sup = Supervisor(tmp_path / "agent")
    request = LaunchRequest(run_id="minute", job_id="job-minute", argv=[sys.executable, "-c",
                            "import time; time.sleep(600)"], workdir="/", env={}, timeout=60.0,
                            slurm=SlurmPlan(time_limit_min=1))
    sup.launch(request)
    status = _wait(sup, "minute", within=180)
    assert status is not None and status.state == "exited" and status.reason == "timeout", status


# ------------------------------------------------------------------ slurmctld away for a while
def _stop_slurmctld(cluster) -> None:
    pid = int((cluster.root / "slurmctld.pid").read_text().split()[0])
    os.kill(pid, signal.SIGTERM)
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def _start_slurmctld(cluster) -> None:
    subprocess.run(["/usr/sbin/slurmctld", "-f", str(cluster.conf)], env={**os.environ, **cluster.env},
                   check=True, capture_output=True, timeout=30)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if cluster.run("sinfo", "-h", "-N", "-o", "%T", check=False).strip() in ("idle", "mixed", "allocated"):
            return
        time.sleep(0.5)


def test_while_slurmctld_is_down_runs_wait_and_say_so_and_continue_when_it_is_back(slurm_env, tmp_path):
    sup = Supervisor(tmp_path / "agent")
    sup.launch(_request("before", "import time; time.sleep(8); print('done before')"))
    assert _wait(sup, "before", "running", 60).state == "running"
    _stop_slurmctld(slurm_env)
    try:
        sup.slurm_queue.forget()
        try:
            during = sup.status("before")
            assert during.state != "exited", during  # the job did not end: Slurm is just not answering
        except MlfleetError as exc:
            assert "squeue" in str(exc) or "slurm" in str(exc).lower(), exc
        launched = sup.launch(_request("during", "print('submitted after the outage')"))
    finally:
        _start_slurmctld(slurm_env)
    before = _wait(sup, "before", within=90)
    assert before.exit_code == 0, before  # the run that was running through the outage ends well
    assert launched.state != "exited", launched  # not failed-to-start because slurmctld was away
    during = _wait(sup, "during", within=90)
    assert during.state == "exited" and during.exit_code == 0, during


# ------------------------------------------------------------------ a run whose folder was deleted
def test_a_run_whose_folder_was_deleted_does_not_keep_its_slurm_job_running(slurm_env, tmp_path):
    import shutil

    sup = Supervisor(tmp_path / "agent")
    sup.launch(_request("gone", "import time\nfor i in range(300):\n    print(i, flush=True); time.sleep(0.2)"))
    assert _wait(sup, "gone", "running", 60).state == "running"
    shutil.rmtree(sup.runs_dir / "gone")
    deadline = time.monotonic() + 60
    while "mlfleet-gone" in slurm_env.run("squeue", "-h", "-o", "%j") and time.monotonic() < deadline:
        time.sleep(1)
    left = "mlfleet-gone" in slurm_env.run("squeue", "-h", "-o", "%j")
    slurm_env.run("scancel", "--name=mlfleet-gone", check=False)
    assert not left, "the Slurm job of a deleted run folder keeps running (and holding its node) for 60 s+"


# ------------------------------------------------------------------ SIGKILL during an array submit
STORM = """
import sys
from mlfleet.agents.supervisor import Supervisor
from mlfleet.core.base.models import LaunchRequest, SlurmPlan
sup = Supervisor(__import__('pathlib').Path(sys.argv[1]))
prefix = sys.argv[2]
reqs = [LaunchRequest(run_id=f"{prefix}{i:02d}", job_id=f"job-{prefix}{i:02d}", argv=[sys.executable, "-c", "print('point')"],
                      workdir="/", env={}, slurm=SlurmPlan()) for i in range(20)]
sup.launch_array(reqs)
"""


def test_agents_sigkilled_at_random_during_a_twenty_point_array_submit_never_submit_a_task_twice(slurm_env,
                                                                                                tmp_path):
    state = tmp_path / "agent"
    script = tmp_path / "storm.py"
    script.write_text(textwrap.dedent(STORM))
    rng = random.Random(19)
    for _ in range(4):  # a login node's agent SIGKILLed at random moments, then asked again
        proc = subprocess.Popen([sys.executable, str(script), str(state), "pt"], env=os.environ.copy(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = subprocess.run([sys.executable, str(script), str(state), "pt"], env=os.environ.copy(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    sup = Supervisor(state)
    ids = [f"pt{i:02d}" for i in range(20)]
    ends = {run_id: _wait(sup, run_id, within=120) for run_id in ids}
    bad = {run_id: s for run_id, s in ends.items() if s is None or s.exit_code != 0}
    assert not bad, bad
    runs_of_arrays: dict[str, int] = {}
    for (name, _array_id), tasks in slurm_env.array_tasks().items():
        intent = json.loads((state / "slurm-arrays" / name / "array.json").read_text()) \
            if (state / "slurm-arrays" / name / "array.json").exists() else None
        if intent is None or not set(intent["runs"]) <= set(ids):
            continue
        for task in tasks:
            run_id = intent["runs"][task]
            runs_of_arrays[run_id] = runs_of_arrays.get(run_id, 0) + 1
    names = slurm_env.submitted_names()
    singles = {run_id: names.count(f"mlfleet-{run_id}") for run_id in ids}
    counts = {run_id: runs_of_arrays.get(run_id, 0) + singles[run_id] for run_id in ids}
    assert counts == {run_id: 1 for run_id in ids}, counts
    for run_id in ids:
        assert "point" in RunDir(state / "runs" / run_id).file("stdout.log").read_text() \
            if RunDir(state / "runs" / run_id).file("stdout.log").exists() else True


KILL_AT = {"intent": "array.json", "answer": "submitted.json"}


@pytest.mark.parametrize("moment", sorted(KILL_AT))
def test_an_agent_sigkilled_exactly_between_intent_and_sbatch_answer_never_submits_twice(slurm_env, tmp_path,
                                                                                           moment):
    state = tmp_path / "agent"
    script = tmp_path / "storm.py"
    script.write_text(textwrap.dedent(STORM))
    proc = subprocess.Popen([sys.executable, str(script), str(state), moment], env=os.environ.copy(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list((state / "slurm-arrays").glob(f"*/{KILL_AT[moment]}")) and time.monotonic() < deadline:
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run([sys.executable, str(script), str(state), moment], env=os.environ.copy(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    sup = Supervisor(state)
    ids = [f"{moment}{i:02d}" for i in range(20)]
    ends = {run_id: _wait(sup, run_id, within=120) for run_id in ids}
    bad = {run_id: s for run_id, s in ends.items() if s is None or s.exit_code != 0}
    assert not bad, bad
    arrays = [key for key in slurm_env.array_tasks() if (state / "slurm-arrays" / key[0]).exists()]
    assert len(arrays) == 1 and slurm_env.array_tasks()[arrays[0]] == list(range(20)), slurm_env.array_tasks()


# ------------------------------------------------------------------ hostile hosts.yaml and add-slurm input
@pytest.mark.parametrize("partition", ["gpu debug", "gpu;rm -rf /", "gpu\nx", "a" * 5000],
                         ids=["space", "semicolon", "newline", "huge"])
def test_a_hostile_partition_in_hosts_yaml_is_refused_in_one_sentence(tmp_path, partition):
    from mlfleet.core.fleet.inventory import load_inventory

    path = tmp_path / "hosts.yaml"
    path.write_text("hosts:\n  - name: c\n    transport: local\n    state_dir: /s/c\n"
                    f"    slurm: {{partition: {json.dumps(partition)}}}\n")
    with pytest.raises(SpecError):
        load_inventory(path)


@pytest.mark.parametrize("field", ["account", "qos"])
def test_a_hostile_account_or_qos_in_hosts_yaml_is_refused(tmp_path, field):
    from mlfleet.core.fleet.inventory import load_inventory

    path = tmp_path / "hosts.yaml"
    path.write_text("hosts:\n  - name: c\n    transport: local\n    state_dir: /s/c\n"
                    f"    slurm: {{{field}: \"vision --partition=other\"}}\n")
    with pytest.raises(SpecError):
        load_inventory(path)


@pytest.mark.parametrize("args", [
    ["--partition", "gpu debug"],
    ["--partition", "gpu\n--qos=x"],
    ["--gpu-partition", "a100"],
    ["--gpu-partition", "=gpu"],
    ["--gpu-partition", "a100="],
    ["--gpu-partition", "a100=gpu a100"],
    ["--gpu-partition", "a 100=gpu"],
    ["--account", "x" * 100000],
], ids=["space", "newline", "no-equals", "no-type", "no-partition", "space-partition", "space-type", "huge"])
def test_odd_add_slurm_arguments_are_one_sentence_and_write_nothing(fleet, args):
    before = {p: p.read_text() for p in fleet.root.rglob("hosts.yaml")}
    done = fleet.cli("hosts", "add-slurm", "odd", "--state-dir", "/tmp/never-used-state", *args)
    assert done.code != 0 and "Traceback" not in done.err, (done.code, done.err)
    assert len(done.err.strip().splitlines()) == 1 and len(done.err) < 600, done.err
    assert {p: p.read_text() for p in fleet.root.rglob("hosts.yaml")} == before
