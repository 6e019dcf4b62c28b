"""Stories of a controller that runs on a Slurm cluster's login node itself (no ``--login``, no SSH).

Real parts: the controller started by the CLI, the cluster's agent started
by it on this machine (hosts.yaml ``transport: local``), and a real one-node
Slurm (tests/slurm.py) whose "compute node" shares this filesystem, so the
agent's state dir under the installation plays the shared home folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import slurm as slurm_fixtures  # tests/slurm.py
from conftest import Fleet
from test_environment_jobs import offline_wheels
from test_slurm import _gpu_job_through_a_controller_sigkill

slurm_cluster = slurm_fixtures.slurm_cluster  # the real cluster, one per module


def _add_local_cluster(fleet: Fleet, slurm_cluster) -> Path:
    """``mlfleet hosts add-slurm cluster --partition debug``, with no --login; the cluster's state dir."""
    fleet.env["SLURM_CONF"] = str(slurm_cluster.conf)  # this login node's Slurm (a real one has /etc/slurm)
    state = fleet.root / "shared-home" / "cluster"
    added = fleet.cli("hosts", "add-slurm", "cluster", "--partition", slurm_cluster.partition,
                      "--state-dir", str(state))
    assert added.code == 0, added.err
    assert "starts on this machine" in added.out and "trust" not in added.out
    return state


def _host(fleet: Fleet, name: str) -> dict:
    return next(h for h in fleet.cli_json("hosts", "list") if h["name"] == name)


def _wait_cluster_up(fleet: Fleet) -> dict:
    return fleet.wait_for(lambda: (h := _host(fleet, "cluster"))["state"] == "up" and h["info"].get("slurm") and h,
                          60, what="the cluster to be up with its sinfo")


def _submit(fleet: Fleet, name: str, text: str) -> str:
    return fleet.cli("submit", str(fleet.write_spec(name, text)), check=True).out.strip()


def test_a_job_exiting_7_on_a_cluster_whose_login_node_runs_the_controller_is_failed_with_exit_code_7(
        fleet, slurm_cluster):
    state = _add_local_cluster(fleet, slurm_cluster)
    host = _wait_cluster_up(fleet)
    (part,) = host["info"]["slurm"]["partitions"]
    assert part["name"] == "debug" and part["gpus_per_node"] == {"fake": 2}
    assert host["labels"]["backend"] == "slurm" and host["kind"] == "slurm"
    assert host["address"] is None  # reached without SSH: the controller started its agent here
    table = fleet.cli("hosts", "list", check=True).out
    assert any(line.split()[:3] == ["cluster", "slurm", "up"] for line in table.splitlines()), table

    job_id = _submit(fleet, "seven", "name: seven\nconstraints: {hosts: [cluster]}\n"
                                     "command: [python, -c, 'raise SystemExit(7)']\n")
    job = fleet.wait_state(job_id, {"succeeded", "failed"}, timeout=90)
    assert (job["state"], job["host"], job["exit_code"]) == ("failed", "cluster", 7), job
    row = fleet.cli_json("db", "query", f"select state, exit_code, host from runs where run_id = '{job['run_id']}'")
    assert row["rows"] == [["failed", 7, "cluster"]]
    # submitted with sbatch by the agent started here, its run folder in the state dir given
    recorded = json.loads((state / "runs" / job["run_id"] / "slurm.json").read_text())
    assert slurm_cluster.submitted_names().count(f"mlfleet-{job['run_id']}") == 1 and recorded["job_id"]
    assert not fleet.home.local_agent_dir.joinpath("runs", job["run_id"]).exists()  # not the embedded host's


def test_a_failed_first_attempt_is_requeued_by_mlfleet_and_the_second_succeeds_on_the_cluster(fleet, slurm_cluster):
    _add_local_cluster(fleet, slurm_cluster)
    _wait_cluster_up(fleet)
    marker = fleet.root / "shared-home" / "attempted"
    code = (f"import pathlib, sys\nm = pathlib.Path({str(marker)!r})\n"
            "if not m.exists():\n    m.write_text('1'); print('first attempt fails'); sys.exit(3)\nprint('second works')\n")
    job_id = _submit(fleet, "flaky", f"name: flaky\nconstraints: {{hosts: [cluster]}}\nretries: 1\n"
                                     f"command: [python, -c, {json.dumps(code)}]\n")
    job = fleet.wait_state(job_id, {"succeeded", "failed"}, timeout=120)
    assert job["state"] == "succeeded" and job["host"] == "cluster", job
    runs = fleet.cli_json("db", "query", f"select run_id, attempt, state, exit_code, host from runs "
                                         f"where job_id = '{job_id}' order by attempt")["rows"]
    assert [r[1:] for r in runs] == [[1, "failed", 3, "cluster"], [2, "succeeded", 0, "cluster"]], runs
    names = slurm_cluster.submitted_names()
    assert [names.count(f"mlfleet-{r[0]}") for r in runs] == [1, 1]  # one Slurm job per attempt, none twice
    assert "second works" in fleet.cli("jobs", "logs", job_id).out


def test_a_gpu_job_on_the_login_node_cluster_survives_a_controller_sigkill_once(fleet, slurm_cluster):
    _add_local_cluster(fleet, slurm_cluster)
    _wait_cluster_up(fleet)
    _gpu_job_through_a_controller_sigkill(fleet, slurm_cluster)  # every point once, one sbatch


def test_no_login_with_ssh_options_or_a_local_host_with_ssh_fields_is_one_sentence(fleet, tmp_path):
    from mlfleet.core.base.errors import SpecError
    from mlfleet.core.fleet.inventory import load_inventory

    bad = fleet.cli("hosts", "add-slurm", "c2", "--identity", str(tmp_path / "key"))
    assert bad.code != 0 and "give --login too" in bad.err and "Traceback" not in bad.err
    path = tmp_path / "hosts.yaml"
    path.write_text("hosts:\n  - name: c3\n    transport: local\n    slurm: {partition: gpu}\n"
                    "    proxy_jump: [{address: bastion}]\n")
    with pytest.raises(SpecError, match="proxy_jump only says how to reach a host over SSH"):
        load_inventory(path)
    path.write_text("hosts:\n  - name: c4\n    transport: local\n")
    with pytest.raises(SpecError, match="transport: local is for a Slurm cluster"):
        load_inventory(path)
    path.write_text("hosts:\n  - {name: a, transport: local, state_dir: /s/x, slurm: {}}\n"
                    "  - {name: b, transport: local, state_dir: /s/x, slurm: {}}\n")
    with pytest.raises(SpecError, match="same state dir /s/x"):
        load_inventory(path)


ENV_JOB = """name: {name}
constraints: {{hosts: [cluster]}}
command: [python, -c, "import sys, tinypkg; print('value', tinypkg.VALUE, sys.prefix)"]
environment:
  requirements: [tinypkg]
"""


@pytest.fixture
def wheels_beside(fleet):
    """Tiny wheels, no index: nothing reaches PyPI (their folder beside the installation is removed after)."""
    offline_wheels(fleet)
    yield
    shutil.rmtree(fleet.files, ignore_errors=True)


def test_an_environment_is_built_once_on_the_shared_filesystem_and_slurm_jobs_run_inside_it(fleet, slurm_cluster,
                                                                                             wheels_beside):
    state = _add_local_cluster(fleet, slurm_cluster)
    _wait_cluster_up(fleet)
    outputs = []
    for name in ("env-one", "env-two"):
        job_id = _submit(fleet, name, ENV_JOB.format(name=name))
        job = fleet.wait_state(job_id, {"succeeded", "failed"}, timeout=180)
        logs = fleet.cli("jobs", "logs", job_id).out
        assert (job["state"], job["host"]) == ("succeeded", "cluster"), logs
        assert slurm_cluster.submitted_names().count(f"mlfleet-{job['run_id']}") == 1  # a Slurm job each
        outputs.append(logs)
    env_hashes = fleet.cli_json("db", "query", "select env_hash from runs order by created_at")["rows"]
    assert len(env_hashes) == 2 and env_hashes[0] == env_hashes[1]
    (env_hash,) = env_hashes[0]
    built = [p.name for p in (state / "envs").iterdir() if not p.name.startswith(".")]
    assert built == [env_hash]  # once per hash, in the cluster agent's state dir
    for logs in outputs:  # the Slurm job's python is the environment's
        assert f"value 42 {state / 'envs' / env_hash}" in logs, logs
    assert "reusing it" in outputs[1]


def test_a_run_slurm_ends_before_the_runner_starts_says_what_slurms_own_output_file_says(slurm_cluster, tmp_path,
                                                                                          monkeypatch):
    import sys
    import time

    from mlfleet.agents import slurm
    from mlfleet.agents.supervisor import Supervisor
    from mlfleet.core.base.models import LaunchRequest, SlurmPlan

    for key, value in slurm_cluster.env.items():
        monkeypatch.setenv(key, value)
    # The compute node lacks the login node's interpreter (a python on a login node's local disk): the batch
    # script's exec fails in Slurm's shell, before the runner exists, and only slurm-JOBID.out says why.
    monkeypatch.setattr(slurm, "batch_script",
                        lambda run: f"#!/bin/sh\nexec /login-node-only/bin/python3 -m mlfleet.agents.runner {run.root}\n")
    supervisor = Supervisor(tmp_path / "agent")
    supervisor.launch(LaunchRequest(run_id="nopython", job_id="job-nopython", argv=[sys.executable, "-c", "1"],
                                    workdir="/", env={}, slurm=SlurmPlan()))
    deadline = time.monotonic() + 60
    while (status := supervisor.status("nopython")).state != "exited" and time.monotonic() < deadline:
        time.sleep(0.3)
    assert status.reason == "failed-to-start" and "Slurm ended the job before it started: FAILED" in status.message
    assert ".out ends: " in status.message and "/login-node-only/bin/python3" in status.message, status.message
    assert "not found" in status.message.lower(), status.message


def test_the_hosts_files_in_docs_slurm_md_load_as_written(tmp_path):
    """Every hosts.yaml shown in docs/slurm.md loads, so the page cannot rot."""
    import re

    from mlfleet.core.fleet.inventory import load_inventory

    page = (Path(__file__).resolve().parent.parent / "docs" / "slurm.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", page, re.S) if b.startswith("hosts:")]
    assert len(blocks) == 2
    kinds = []
    for i, block in enumerate(blocks):
        path = tmp_path / f"hosts-{i}.yaml"
        path.write_text(block)
        kinds += [(h.kind, h.transport) for h in load_inventory(path)]
    assert kinds == [("slurm", "ssh"), ("slurm", "local")]
