"""Stories of runs handed to a real Slurm (tests/slurm.py: munged, slurmctld, slurmd, two fake GPUs).

The agent's supervisor is the one a login node's agent runs; its run folders
live on a filesystem the "compute node" shares (here: the same machine).
"""

from __future__ import annotations

import json
import sys
import time

import pytest

from mlfleet.agents import slurm
from mlfleet.agents.rundir import RunDir
from mlfleet.agents.supervisor import Supervisor
from mlfleet.core.base.models import LaunchRequest, SlurmPlan

import slurm as slurm_fixtures  # tests/slurm.py (tests/ is on sys.path, as for tests/sshd.py)

slurm_cluster = slurm_fixtures.slurm_cluster  # the real cluster, one per module


@pytest.fixture
def supervisor(slurm_cluster, tmp_path, monkeypatch):
    for key, value in slurm_cluster.env.items():
        monkeypatch.setenv(key, value)
    return Supervisor(tmp_path / "agent")


def _request(run_id: str, code: str, gres: str | None = "gpu:1", **plan) -> LaunchRequest:
    return LaunchRequest(run_id=run_id, job_id="job-" + run_id, argv=[sys.executable, "-c", code], workdir="/",
                         env={}, slurm=SlurmPlan(gres=gres, **plan))


def _wait(sup: Supervisor, run_id: str, state: str = "exited", within: float = 60.0):
    deadline = time.monotonic() + within
    while True:
        status = sup.status(run_id)
        if status.state == state or time.monotonic() > deadline:
            return status
        time.sleep(0.3)


def test_a_one_gpu_job_runs_with_slurms_gpus_and_its_metrics_are_read_once(supervisor, slurm_cluster):
    code = ("import os, json\nfrom mlfleet import track\n"
            "print('CVD=' + os.environ.get('CUDA_VISIBLE_DEVICES', '-'))\n"
            "for i in range(5): track.log({'loss': 1.0 / (i + 1)}, step=i)\n")
    status = supervisor.launch(_request("gpu1", code))
    assert status.state in ("starting", "running")
    again = supervisor.launch(_request("gpu1", code))  # a launch asked twice is one Slurm job
    assert again.run_id == "gpu1"
    status = _wait(supervisor, "gpu1")
    assert (status.state, status.exit_code, status.reason) == ("exited", 0, "exited"), status
    out = supervisor.read("gpu1", "stdout", 0).data
    assert "CVD=0" in out or "CVD=1" in out, out  # Slurm's choice, not the agent's ("" for an SSH host asked none)
    chunk = supervisor.read("gpu1", "metrics", 0)
    lines = [json.loads(line) for line in chunk.data.splitlines()]
    assert [line["step"] for line in lines if "loss" in line.get("metrics", line)] == [0, 1, 2, 3, 4]
    assert chunk.eof and supervisor.read("gpu1", "metrics", chunk.end).data == ""
    assert slurm_cluster.submitted_names().count("mlfleet-gpu1") == 1


def test_a_job_exiting_7_is_failed_with_exit_code_7(supervisor):
    supervisor.launch(_request("seven", "raise SystemExit(7)", gres=None))
    status = _wait(supervisor, "seven")
    assert (status.state, status.exit_code) == ("exited", 7), status


def test_a_job_that_cannot_fit_now_shows_slurms_reason_and_cancel_ends_it(supervisor, slurm_cluster):
    supervisor.launch(_request("hog", "import time; time.sleep(60)", gres="gpu:2"))
    assert _wait(supervisor, "hog", "running").state == "running"
    supervisor.launch(_request("waiter", "print('never')", gres="gpu:2"))
    time.sleep(3)
    supervisor.slurm_queue.forget()
    waiting = supervisor.status("waiter")
    assert waiting.state == "starting" and "Resources" in waiting.message, waiting
    assert "no node of the partition has what the job asks free now" in waiting.message
    for run_id in ("waiter", "hog"):
        supervisor.cancel(run_id)
    assert _wait(supervisor, "hog").reason == "cancelled"
    assert _wait(supervisor, "waiter").state == "exited"
    assert "never" not in supervisor.read("waiter", "stdout", 0).data


def test_a_job_slurm_can_never_start_is_failed_with_the_reason(supervisor):
    supervisor.launch(_request("toobig", "print('x')", gres="gpu:5"))
    status = _wait(supervisor, "toobig")
    assert status.state == "exited" and status.reason == "failed-to-start", status
    # 22.05 refuses it at sbatch; a Slurm that queues it ends it with BadConstraints: failed either way, with why
    assert "node configuration is not available" in status.message or "BadConstraints" in status.message, status


def test_sbatch_refusing_a_job_fails_it_with_slurms_words(supervisor):
    status = supervisor.launch(_request("nopart", "print('x')", gres=None, partition="nosuchpartition"))
    assert status.state == "exited" and status.reason == "failed-to-start"
    assert "partition" in status.message.lower(), status


def test_an_agent_that_died_after_sbatch_never_submits_twice(supervisor, slurm_cluster, tmp_path):
    supervisor.launch(_request("crash", "import time; time.sleep(5)", gres=None))
    run = RunDir(supervisor.runs_dir / "crash")
    run.file(slurm.SLURM_FILE).unlink()  # the agent died between sbatch and writing slurm.json
    fresh = Supervisor(supervisor.state_dir)  # a restarted agent, asked again by a restarted controller
    slurm.submit(run, SlurmPlan(), fresh.slurm_queue)
    assert _wait(fresh, "crash").exit_code == 0
    assert slurm_cluster.submitted_names().count("mlfleet-crash") == 1


def test_a_poll_of_many_runs_asks_slurm_at_most_twice(supervisor):
    for i in range(5):
        supervisor.launch(_request(f"many{i}", "print(1)", gres=None))
    for i in range(5):
        _wait(supervisor, f"many{i}")
    supervisor.slurm_queue.forget()
    before = supervisor.slurm_queue.commands
    for run_id in supervisor.run_ids():
        supervisor.status(run_id)
    assert supervisor.slurm_queue.commands - before <= 2


def test_the_cluster_is_described_by_partitions_nodes_and_gpus_by_type(slurm_cluster, monkeypatch):
    for key, value in slurm_cluster.env.items():
        monkeypatch.setenv(key, value)
    info = slurm.slurm_info()
    (part,) = info["partitions"]
    assert part["name"] == "debug" and part["default"] and part["up"]
    assert part["gpus_per_node"] == {"fake": 2} and part["nodes"]["total"] == 1


def test_parsers_take_what_slurm_prints():
    assert slurm.parse_sinfo("gpu*|up|3/1/1/5|gpu:a100:4(S:0-1),gpu:2|64|512000|5\n")["partitions"][0][
        "gpus_per_node"] == {"a100": 4, "gpu": 2}
    jobs = slurm.parse_squeue("12|mlfleet-r1|PENDING|QOSMaxGRESPerUser|gpu|gres:gpu:1|\n13|other|RUNNING|None\n")
    assert list(jobs) == ["mlfleet-r1"] and "GPUs per user" in slurm.reason_words(jobs["mlfleet-r1"].reason)


def test_adding_a_slurm_cluster_is_one_command_and_a_mistake_is_one_sentence(fleet):
    from mlfleet.core.fleet.inventory import load_inventory

    added = fleet.cli("hosts", "add-slurm", "cluster", "--login", "ml@login1.example.com", "--partition", "gpu",
                      "--account", "vision", "--qos", "normal")
    assert added.code == 0, added.err
    (path,) = list(fleet.root.rglob("hosts.yaml"))
    host = {h.name: h for h in load_inventory(path)}["cluster"]
    assert (host.kind, host.address, host.user, host.labels["backend"]) == ("slurm", "login1.example.com", "ml", "slurm")
    assert (host.slurm.partition, host.slurm.account, host.slurm.qos) == ("gpu", "vision", "normal")
    bad = fleet.cli("hosts", "add-slurm", "c2", "--login", "ml@")
    assert bad.code != 0 and "--login" in bad.err and "Traceback" not in bad.err


def test_the_scheduler_sees_a_cluster_as_its_biggest_node_and_never_counts_it_full():
    from mlfleet.core.jobs import scheduler
    from mlfleet.core.jobs.dispatch import slurm_view

    cluster = slurm.parse_sinfo("cpu*|up|0/10/0/10|(null)|64|256000|10\ngpu|up|8/0/0/8|gpu:a100:4|32|512000|8\n")
    view = slurm_view("hpc", True, {"backend": "slurm"}, cluster, "gpu", None)
    assert [g.name for g in view.gpus] == ["a100"] * 4 and view.cpu_count == 32
    # every node of the partition is allocated: the job is still placed, and waits in Slurm's queue, not ours
    jobs = [scheduler.QueuedJob("fits", gpus=2, gpu_types=("a100",), hosts=("hpc",)),
            scheduler.QueuedJob("never", gpus=5, hosts=("hpc",))]
    decision = scheduler.schedule([view], jobs)
    assert [p.job_id for p in decision.placements] == ["fits"]
    assert "need 5" in decision.short_reason("never"), decision.short_reason("never")
    # the next tick's view is the same however many runs went there: Slurm queues them
    again = slurm_view("hpc", True, {"backend": "slurm"}, cluster, "gpu", None)
    assert [p.job_id for p in scheduler.schedule([again], [scheduler.QueuedJob("next", gpus=4)]).placements] == ["next"]
    default = slurm_view("hpc", True, {}, cluster, None, None)
    assert default.gpus == () and default.cpu_count == 64  # the default partition (cpu*) without a partition named


GPU_JOB = """name: on-slurm
constraints: {{hosts: [cluster]}}
resources: {{gpus: 1}}
command: [python, -c, "import os, time\\nfrom mlfleet import track\\nprint('CVD=' + os.environ['CUDA_VISIBLE_DEVICES'])\\nfor s in range(30):\\n    track.log({{'loss': 1.0 / (s + 1)}}, step=s); track.flush(); time.sleep({pause})"]
"""


def test_a_cluster_behind_its_login_node_runs_a_gpu_job_once_through_a_controller_sigkill(ssh_fleet, slurm_cluster):
    fleet = _add_cluster(ssh_fleet, slurm_cluster)
    host = fleet.wait_for(lambda: (h := ssh_fleet.host("cluster"))["state"] == "up" and h["info"].get("slurm") and h,
                          60, what="the cluster to be up with its sinfo")
    (part,) = host["info"]["slurm"]["partitions"]
    assert part["gpus_per_node"] == {"fake": 2} and part["nodes"]["total"] == 1
    _gpu_job_through_a_controller_sigkill(fleet, slurm_cluster)


def _add_cluster(ssh_fleet, slurm_cluster):
    fleet, server = ssh_fleet.fleet, ssh_fleet.servers["node-a"]
    fleet.cli("hosts", "add-slurm", "cluster", "--login", f"{server.user}@127.0.0.1", "--port", str(server.port),
              "--identity", str(ssh_fleet.user_key), "--state-dir", str(ssh_fleet.state_dir("node-a")),
              "--agent-command", f"env SLURM_CONF={slurm_cluster.conf} {sys.executable} -m mlfleet", check=True)
    fleet.cli("hosts", "trust", "cluster", "--yes", check=True)
    return fleet


def _gpu_job_through_a_controller_sigkill(fleet, slurm_cluster):
    import os
    import signal

    job_id = fleet.cli("submit", str(fleet.write_spec("gpu", GPU_JOB.format(pause=0.3))), check=True).out.strip()
    fleet.wait_state(job_id, {"running"}, timeout=90)
    os.kill(fleet.controller_pid, signal.SIGKILL)  # mid-job: the next command starts a new controller
    job = fleet.wait_state(job_id, {"succeeded", "failed"}, timeout=120)
    assert job["state"] == "succeeded" and job["host"] == "cluster", job
    points = fleet.cli_json("db", "query", f"select step, count(*) from metrics where run_id = '{job['run_id']}' "
                                           "group by step order by step")["rows"]
    assert points == [[step, 1] for step in range(30)]
    assert any(line in fleet.cli("jobs", "logs", job_id).out for line in ("CVD=0", "CVD=1"))
    assert slurm_cluster.submitted_names().count(f"mlfleet-{job['run_id']}") == 1


def test_jobs_why_shows_slurms_reason_for_a_job_queued_there_and_cancel_reaches_slurm(ssh_fleet, slurm_cluster):
    fleet = _add_cluster(ssh_fleet, slurm_cluster)
    spec = "name: {name}\nconstraints: {{hosts: [cluster]}}\nresources: {{gpus: 2}}\ncommand: [sleep, '120']\n"
    hog = fleet.cli("submit", str(fleet.write_spec("hog", spec.format(name="hog"))), check=True).out.strip()
    fleet.wait_state(hog, {"running"}, timeout=90)
    waiter = fleet.cli("submit", str(fleet.write_spec("waiter", spec.format(name="waiter"))), check=True).out.strip()
    why = fleet.wait_for(lambda: "Resources" in (out := fleet.cli("jobs", "why", waiter).out) and out, 60,
                         what="Slurm's reason in jobs why")
    assert "waiting for resources" in why and "cluster" in why
    for job_id in (waiter, hog):
        fleet.cli("jobs", "cancel", job_id, check=True)
    assert fleet.wait_state(hog, {"cancelled", "failed", "succeeded"}, timeout=90)["state"] == "cancelled"
    assert fleet.wait_state(waiter, {"cancelled", "failed", "succeeded"}, timeout=90)["state"] == "cancelled"
    fleet.wait_for(lambda: "mlfleet-" not in slurm_cluster.run("squeue", "-h", "-o", "%j"), 30,
                   what="the Slurm jobs to leave the queue")
