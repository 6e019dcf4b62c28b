"""Stories of a sweep handed to a real Slurm as one job array (tests/slurm.py: one node, two fake GPUs).

The agent side first (the supervisor a login node's agent runs), then the
whole way: a sweep submitted to a real controller that reaches the
cluster's login node over SSH.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from mlfleet.agents import slurm, slurm_array
from mlfleet.agents.rundir import RunDir
from mlfleet.agents.supervisor import Supervisor
from mlfleet.core.base.models import SlurmPlan

import slurm as slurm_fixtures  # tests/slurm.py (tests/ is on sys.path, as for tests/sshd.py)
import test_slurm
from test_slurm import _add_cluster, _request, _wait

slurm_cluster = slurm_fixtures.slurm_cluster  # the real cluster, one per module
supervisor = test_slurm.supervisor  # a login node's agent, its environment pointing at the cluster

LOG_INDEX = ("import os\nfrom mlfleet import track\n"
             "track.log({'task': int(os.environ['SLURM_ARRAY_TASK_ID']), 'x': %d}, step=0)\n")


def _arrays(cluster, prefix: str) -> dict[tuple[str, str], list[int]]:
    return {key: tasks for key, tasks in cluster.array_tasks().items() if key[0].startswith(prefix)}


def test_six_runs_go_as_one_array_each_task_its_own_run_and_asking_again_submits_nothing(supervisor, slurm_cluster):
    requests = [_request(f"six{i}", LOG_INDEX % i, gres=None) for i in range(6)]
    statuses = supervisor.launch_array(requests)
    assert [s.run_id for s in statuses] == [f"six{i}" for i in range(6)]
    records = [json.loads(RunDir(supervisor.runs_dir / f"six{i}").file(slurm.SLURM_FILE).read_text()) for i in range(6)]
    array_id = records[0]["array_job_id"]
    assert [r["job_id"] for r in records] == [f"{array_id}_{i}" for i in range(6)]
    assert supervisor.launch_array(requests) and supervisor.launch(requests[2]).run_id == "six2"  # asked again
    for i in range(6):
        status = _wait(supervisor, f"six{i}")
        assert (status.state, status.exit_code) == ("exited", 0), status
        (line,) = [json.loads(x) for x in supervisor.read(f"six{i}", "metrics", 0).data.splitlines()]
        assert (line.get("metrics", line)["task"], line.get("metrics", line)["x"]) == (i, i)  # task i ran run i
    assert _arrays(slurm_cluster, "mlfleet-array-six") == {("mlfleet-array-six0", array_id): list(range(6))}
    assert not [n for n in slurm_cluster.submitted_names() if n.startswith("mlfleet-six")]  # no single job


def test_each_task_waits_with_slurms_reason_cancel_ends_only_its_task_and_a_poll_asks_twice(supervisor, slurm_cluster):
    supervisor.launch(_request("hog", "import time; time.sleep(60)", gres="gpu:2"))
    assert _wait(supervisor, "hog", "running").state == "running"
    supervisor.launch_array([_request(f"wait{i}", "print('ran')", gres="gpu:1") for i in range(3)])
    time.sleep(3)
    supervisor.slurm_queue.forget()
    before = supervisor.slurm_queue.commands
    waiting = [supervisor.status(f"wait{i}") for i in range(3)]
    for status in waiting:
        assert status.state == "starting" and "Resources" in status.message, status
    assert supervisor.slurm_queue.commands - before == 1  # the hog and three tasks: one squeue -r
    supervisor.cancel("wait1")
    assert _wait(supervisor, "wait1").state == "exited"
    supervisor.cancel("hog")
    for run_id in ("wait0", "wait2"):
        status = _wait(supervisor, run_id)
        assert (status.state, status.exit_code) == ("exited", 0), status
        assert "ran" in supervisor.read(run_id, "stdout", 0).data
    assert "ran" not in supervisor.read("wait1", "stdout", 0).data
    assert _wait(supervisor, "hog").reason == "cancelled"
    time.sleep(4)  # every task left squeue (MinJobAge 2): what is left of them is scontrol's
    supervisor.slurm_queue.forget()
    before = supervisor.slurm_queue.commands
    for run_id in supervisor.run_ids():
        supervisor.status(run_id)
    assert supervisor.slurm_queue.commands - before <= 2


def test_an_agent_that_died_after_the_arrays_sbatch_never_submits_it_twice(supervisor, slurm_cluster):
    requests = [_request(f"died{i}", "import time; time.sleep(3)", gres=None) for i in range(3)]
    supervisor.launch_array(requests)
    name = slurm_array.array_name("died0")
    (supervisor.state_dir / slurm_array.ARRAYS_DIR / name / "submitted.json").unlink()
    for i in range(3):  # the agent died between sbatch and writing down its answer
        RunDir(supervisor.runs_dir / f"died{i}").file(slurm.SLURM_FILE).unlink()
    fresh = Supervisor(supervisor.state_dir)  # a restarted agent, asked again by a restarted controller
    fresh.launch_array(requests)
    for i in range(3):
        assert _wait(fresh, f"died{i}").exit_code == 0
    ((_, array_id), tasks), = _arrays(slurm_cluster, name).items()
    assert tasks == [0, 1, 2]
    assert json.loads(RunDir(fresh.runs_dir / "died1").file(slurm.SLURM_FILE).read_text())["job_id"] == f"{array_id}_1"


@pytest.mark.parametrize("died", ["after-the-intent", "inside-the-intent"])
def test_an_agent_that_died_before_the_arrays_sbatch_submits_it_once_when_asked_again(supervisor, slurm_cluster, died):
    prefix = "early" if died == "after-the-intent" else "half"
    requests = [_request(f"{prefix}{i}", "print('once')", gres=None) for i in range(2)]
    runs = []
    for request in requests:  # the runs prepared and the intent written, then the agent died before sbatch
        run = RunDir(supervisor.runs_dir / request.run_id)
        supervisor._prepare(run, request)
        runs.append(run)
    folder, _ = slurm_array.intend(supervisor.state_dir / slurm_array.ARRAYS_DIR, runs, SlurmPlan())
    if died == "inside-the-intent":  # each run's slurm-array.json written, the array's own array.json not yet
        (folder / "array.json").unlink()
    fresh = Supervisor(supervisor.state_dir)
    fresh.launch_array(requests)
    fresh.launch_array(requests)
    for i in range(2):
        assert _wait(fresh, f"{prefix}{i}").exit_code == 0
    assert list(_arrays(slurm_cluster, slurm_array.array_name(f"{prefix}0")).values()) == [[0, 1]]


def test_runs_that_differ_in_what_they_ask_slurm_are_refused_as_one_array(supervisor):
    from mlfleet.core.base.errors import UsageError

    with pytest.raises(UsageError, match="same sbatch options"):
        supervisor.launch_array([_request("a1", "print(1)", gres="gpu:1"), _request("a2", "print(1)", gres="gpu:2")])
    assert not (supervisor.runs_dir / "a1").exists()


# ------------------------------------------------------------------ pure: argv, script, parsers
def test_the_array_is_one_sbatch_of_n_tasks_with_the_runs_options(tmp_path):
    argv = slurm_array.array_argv(SlurmPlan(partition="gpu", gres="gpu:a100:1", time_limit_min=5), "mlfleet-array-r",
                                  tmp_path, 6)
    assert argv[:3] == ["sbatch", "--parsable", "--array=0-5"]
    assert "--job-name=mlfleet-array-r" in argv and "--partition=gpu" in argv and "--gres=gpu:a100:1" in argv
    assert "--output=slurm-%A_%a.out" in argv and argv[-1] == str(tmp_path / "batch.sh")
    assert not any(str(tmp_path) in a for a in argv[:-1])  # no path in an option: Slurm expands % and \\ there


def test_task_n_of_the_script_runs_the_run_folder_on_line_n_plus_one(tmp_path):
    (tmp_path / "runs.list").write_text(f"{tmp_path}/r0\n{tmp_path}/r 1\n")
    for sub in ("r0", "r 1"):
        (tmp_path / sub).mkdir()
    script = tmp_path / "batch.sh"
    script.write_text(slurm_array.array_script("mlfleet-array-r0", tmp_path, python="echo"))

    def task(index: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=10,
                              env={**os.environ, "SLURM_ARRAY_TASK_ID": str(index), "SLURM_ARRAY_JOB_ID": "77"})

    assert task(1).stdout.strip() == f"-m mlfleet.agents.runner {tmp_path}/r 1"
    assert (tmp_path / "job_id").read_text().strip() == "77"  # left for an agent whose sbatch answer was lost
    missing = task(2)
    assert missing.returncode == 2 and "no run folder for task 2" in missing.stderr


def test_squeue_and_scontrol_lines_of_an_arrays_tasks_map_to_their_runs():
    queued = slurm.parse_squeue("41_0|mlfleet-array-r0|RUNNING|None|debug|N/A|vm|41|0\n"
                                "41_1|mlfleet-array-r0|PENDING|Resources|debug|N/A||41|1\n"
                                "42|mlfleet-alone|PENDING|Priority|debug|N/A||42|N/A\n")
    assert sorted(queued) == ["mlfleet-alone", "mlfleet-array-r0_0", "mlfleet-array-r0_1"]
    assert (queued["mlfleet-array-r0_1"].job_id, queued["mlfleet-array-r0_1"].reason) == ("41_1", "Resources")
    assert queued["mlfleet-alone"].array_job_id == ""
    final = slurm.parse_scontrol_jobs(
        "JobId=43 ArrayJobId=41 ArrayTaskId=2 JobName=mlfleet-array-r0 JobState=CANCELLED Reason=None ExitCode=0:15\n"
        "JobId=41 ArrayJobId=41 ArrayTaskId=3-5 JobName=mlfleet-array-r0 JobState=PENDING Reason=Resources\n"
        "JobId=42 JobName=mlfleet-alone JobState=COMPLETED ExitCode=0:0\n")
    assert sorted(final) == ["mlfleet-alone", "mlfleet-array-r0_2"]  # a pending range is squeue's to tell
    assert final["mlfleet-array-r0_2"]["JobState"] == "CANCELLED"


def test_every_child_of_a_gpu_sweep_is_placed_on_a_cluster_in_the_same_tick():
    from mlfleet.core.jobs import scheduler
    from mlfleet.core.jobs.dispatch import slurm_view

    cluster = slurm.parse_sinfo("gpu*|up|0/2/0/2|gpu:a100:2|8|64000|2\n")
    view = slurm_view("hpc", True, {}, cluster, None, None)  # one node's worth: two GPUs
    children = [scheduler.QueuedJob(f"child{i}", gpus=1, hosts=("hpc",)) for i in range(6)]
    decision = scheduler.schedule([view], children)
    assert sorted(p.job_id for p in decision.placements) == [f"child{i}" for i in range(6)]  # one array, not three


# ------------------------------------------------------------------ the whole way: controller, SSH, Slurm
SWEEP = """name: {name}
constraints: {{hosts: [cluster]}}
command: [python, -c, "import sys\\nfrom mlfleet import track\\nx = int(sys.argv[1])\\n{body}track.log({{'x2': x * x}}, step=0); track.flush()", "{{params.x}}"]
sweep:
  grid:
    params.x: [{points}]
"""


def test_a_six_run_sweep_on_a_cluster_is_one_job_array_and_each_run_lands_once(ssh_fleet, slurm_cluster):
    fleet = _add_cluster(ssh_fleet, slurm_cluster)
    fleet.wait_for(lambda: ssh_fleet.host("cluster")["state"] == "up", 60, what="the cluster to be up")
    spec = fleet.write_spec("six", SWEEP.format(name="six", body="", points="1, 2, 3, 4, 5, 6"))
    done = fleet.cli("submit", str(spec), "--wait", "--json", timeout=240)
    assert done.code == 0, done.err + done.out
    assert done.json()["progress"]["succeeded"] == 6
    run_ids = {run["run_id"] for run in fleet.cli_json("runs", "list", "--where", "sweep = 'six'")}
    arrays = {key: tasks for key, tasks in slurm_cluster.array_tasks().items()
              if key[0].removeprefix(slurm_array.ARRAY_PREFIX) in run_ids}
    assert len(run_ids) == 6 and list(arrays.values()) == [list(range(6))], arrays  # one array of six tasks
    assert not run_ids & {n.removeprefix(slurm.JOB_PREFIX) for n in slurm_cluster.submitted_names()}  # no job alone
    rows = fleet.cli_json("db", "query", "select p.value_num, m.value, count(*) from params p join metrics m "
                                         "on m.run_id = p.run_id where p.key = 'x' and m.key = 'x2' group by all "
                                         "order by 1")["rows"]
    assert rows == [[x, x * x, 1] for x in range(1, 7)]  # each run has its point's param, and its metric once


def test_a_sweep_waiting_in_slurm_says_why_per_task_and_cancels_one_child_then_all(ssh_fleet, slurm_cluster):
    fleet = _add_cluster(ssh_fleet, slurm_cluster)
    fleet.wait_for(lambda: ssh_fleet.host("cluster")["state"] == "up", 60, what="the cluster to be up")
    body = "import time\\ntime.sleep(120)\\n"
    spec = fleet.write_spec("wide", SWEEP.format(name="wide", body=body, points="1, 2, 3, 4").replace(
        "sweep:", "resources: {gpus: 1}\nsweep:"))
    assert fleet.cli("submit", str(spec)).code == 0
    children = {c["name"]: c["job_id"] for c in fleet.cli_json("sweeps", "show", "wide")["children"]}
    fleet.wait_for(lambda: sum(fleet.job(j)["state"] == "running" for j in children.values()) == 2, 120,
                   what="two children running on the two GPUs")
    waiting = [j for j in children.values() if fleet.job(j)["state"] != "running"]
    why = fleet.wait_for(lambda: "Resources" in (out := fleet.cli("jobs", "why", waiting[0]).out) and out, 60,
                         what="Slurm's reason for a waiting task")
    assert "waiting for resources" in why and "cluster" in why
    fleet.cli("jobs", "cancel", waiting[1], check=True)
    assert fleet.wait_state(waiting[1], {"cancelled", "failed", "succeeded"}, timeout=60)["state"] == "cancelled"
    others = [j for j in children.values() if j != waiting[1]]
    assert all(fleet.job(j)["state"] in ("running", "dispatched", "preparing") for j in others)
    names = set(slurm_cluster.run("squeue", "-h", "-r", "-o", "%j").split())
    assert len(names) == 1, names  # the four children are one array
    (array,) = names
    assert len(slurm_cluster.run("squeue", "-h", "-r", "-o", "%i").split()) == 3  # only its task left the queue
    fleet.cli("sweeps", "cancel", "wide", check=True)
    fleet.wait_for(lambda: fleet.cli_json("sweeps", "show", "wide")["progress"]["cancelled"] == 4, 90,
                   what="every child cancelled")
    fleet.wait_for(lambda: array not in slurm_cluster.run("squeue", "-h", "-o", "%j"), 30,
                   what="the array to leave Slurm's queue")
