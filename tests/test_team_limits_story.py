"""A team's policy.yaml holds on a real controller: a project's GPU quota makes its next job wait (and only its own),
and residency keeps a project's jobs in their region, refused at submit and at placement, on the audit trail.

The fleet: the embedded host ``local`` in us-east and an SSH node ``node-a`` (real sshd on loopback) in eu-west,
two simulated H100s each.
"""

from __future__ import annotations

import os
import pwd
import json

import pytest
from conftest import Fleet, SshFleet

GPUS = "gpus:\n  - {name: NVIDIA H100 80GB HBM3, count: 2, memory_total: 80GiB}\n"
POLICY = """\
quotas:
  - {project: vision, gpus: 1}
residency:
  - {project: eu-health, regions: [eu-west]}
"""


def _two_regions(fleet: Fleet, ssh_fleet: SshFleet) -> None:
    gpus = fleet.root / "gpus.yaml"
    gpus.write_text(GPUS)
    (fleet.home.config_dir / "policy.yaml").write_text(POLICY)
    fleet.home.config_file.write_text("scheduler: {utilization_window: 1s}\n"
                                      f"local: {{simulate_gpus: {gpus}, labels: {{region: us-east}}}}\n")
    fleet.cli("controller", "start", check=True)
    ssh_fleet.add("node-a", "--simulate-gpus", str(gpus), "--label", "region=eu-west")
    for name in ("local", "node-a"):
        fleet.wait_for(lambda n=name: len((ssh_fleet.host(n)["telemetry"] or {}).get("gpus", [])) == 2, timeout=60,
                       what=f"{name}'s simulated GPUs")


def _submit(fleet: Fleet, name: str, project: str, constraints: str = "") -> str:
    spec = fleet.write_spec(name, f"name: {name}\nproject: {project}\nresources: {{gpus: 1}}\n{constraints}"
                                  "command: sleep 300\n")
    return fleet.cli("submit", str(spec), check=True).out.strip()


def _reason(fleet: Fleet, job_id: str, check: str) -> dict:
    return fleet.wait_for(lambda: next((r for r in fleet.job(job_id)["why_pending"] if r["check"] == check), None),
                          what=f"a {check} reason for {job_id}")


@pytest.mark.timeout(240)
def test_a_project_at_its_quota_waits_while_other_projects_run_and_starts_when_its_job_ends(
        fleet: Fleet, ssh_fleet: SshFleet) -> None:
    _two_regions(fleet, ssh_fleet)
    first = _submit(fleet, "vision-1", "vision")
    fleet.wait_state(first, {"running"})
    second = _submit(fleet, "vision-2", "vision")
    reason = _reason(fleet, second, "quota")
    assert reason["message"] == "project vision holds 1 of 1 GPUs (policy.yaml:2 (quotas[0]))"
    assert "quota: project vision holds 1 of 1 GPUs (policy.yaml:2 (quotas[0]))" in fleet.cli("jobs", "why", second).out
    other = _submit(fleet, "nlp-1", "nlp")  # behind vision-2 in the queue, free GPUs left: it does not wait for it
    fleet.wait_state(other, {"running"})
    assert fleet.job(second)["state"] == "pending"

    fleet.cli("jobs", "cancel", first, check=True)
    fleet.wait_state(second, {"running"})

    # The policy is the file as it is now: a user cap added while the controller runs holds from the next cycle.
    me = pwd.getpwuid(os.getuid()).pw_name
    (fleet.home.config_dir / "policy.yaml").write_text(
        f"quotas:\n  - {{project: vision, gpus: 1}}\n  - {{user: {me}, gpus: 2}}\n"
        "residency:\n  - {project: eu-health, regions: [eu-west]}\n")
    third = _submit(fleet, "nlp-2", "nlp")
    assert _reason(fleet, third, "quota")["message"] == f"{me} holds 2 of 2 GPUs (policy.yaml:3 (quotas[1]))"
    for job_id in (second, other, third):
        fleet.cli("jobs", "cancel", job_id)


@pytest.mark.timeout(240)
def test_residency_refuses_contradicting_constraints_at_submit_and_keeps_jobs_in_their_region(
        fleet: Fleet, ssh_fleet: SshFleet) -> None:
    _two_regions(fleet, ssh_fleet)
    rule = "policy.yaml:4 (residency[0])"
    for name, constraints in (("pinned-us", "constraints: {hosts: [local]}\n"),
                              ("labelled-us", "constraints: {labels: {region: us-*}}\n")):
        spec = fleet.write_spec(name, f"name: {name}\nproject: eu-health\nresources: {{gpus: 1}}\n{constraints}"
                                      "command: sleep 300\n")
        refused = fleet.cli("submit", str(spec))
        assert refused.code == 6, refused
        assert refused.err.count("\n") == 1 and rule in refused.err and "Traceback" not in refused.err
        assert f"may not submit {name}: {rule} keeps its data in eu-west" in refused.err
    # A sweep's points are checked one by one: the point pinned to the us host refuses the whole sweep.
    sweep = fleet.write_spec("eu-sweep", "name: eu-sweep\nproject: eu-health\ncommand: sleep 1\n"
                                         "sweep: {grid: {constraints.hosts: [[node-a], [local]]}}\n")
    refused = fleet.cli("submit", str(sweep))
    assert refused.code == 6 and f"{rule} keeps its data in eu-west" in refused.err, refused
    assert fleet.cli_json("sweeps", "list") == []
    denied = [json.loads(e["detail"]) for e in fleet.cli_json("audit", "list", "--action", "policy.denied")]
    assert sorted(d["job"] for d in denied) == ["eu-sweep-1", "labelled-us", "pinned-us"]  # the point that went astray
    assert all(d["rule"] == rule and d["regions"] == ["eu-west"] for d in denied)

    # Both hosts empty: best fit would take "local" (ties go by name); the project's data may only go to eu-west.
    first = _submit(fleet, "eu-1", "eu-health")
    assert fleet.wait_state(first, {"running"})["host"] == "node-a"
    second = _submit(fleet, "eu-2", "eu-health")  # local is freer now (2 free against 1): still node-a
    assert fleet.wait_state(second, {"running"})["host"] == "node-a"
    third = _submit(fleet, "eu-3", "eu-health")  # node-a is full: waits, though local has two GPUs free
    reason = _reason(fleet, third, "residency")
    assert reason == {"host": "local", "check": "residency",
                      "message": f"region us-east; data may go to eu-west only ({rule})"}
    assert "region us-east; data may go to eu-west only" in fleet.cli("jobs", "why", third).out
    refused = fleet.wait_for(lambda: [json.loads(e["detail"]) for e in fleet.cli_json("audit", "list", "--action",
                                                                                          "scheduler.refuse")
                                      if e["target"] == third], what="the placement refusal audited")
    assert refused[0]["hosts"] == ["local"] and rule in refused[0]["reasons"][0]

    fleet.cli("jobs", "cancel", first, check=True)
    assert fleet.wait_state(third, {"running"})["host"] == "node-a"
    for job_id in (second, third):
        fleet.cli("jobs", "cancel", job_id)


@pytest.mark.timeout(300)
def test_a_models_replicas_stay_where_the_data_of_the_run_that_made_it_may_go(fleet: Fleet, ssh_fleet: SshFleet) -> None:
    from test_deploy_service import TRAIN, deploy_spec, replica_jobs

    _two_regions(fleet, ssh_fleet)
    folder = fleet.root / "specs"
    folder.mkdir(exist_ok=True)
    (folder / "train.py").write_text(TRAIN)
    train = fleet.write_spec("train", "name: train\nproject: eu-health\ncommand: [python, train.py, '1']\n")
    done = fleet.cli("submit", str(train), "--wait", "--json", timeout=120)
    assert done.code == 0 and done.json()["host"] == "node-a", done.out + done.err  # the run's data stays in eu-west
    fleet.cli_json("models", "register", "iris", "--run", done.json()["run_id"], "--artifact", "model.bin",
                   "--alias", "production")

    # The deployment is of project default: the residency it keeps is the run's, which made the model.
    pinned = deploy_spec(fleet, name="iris", replicas=1, extra="constraints: {hosts: [local]}\n")
    refused = fleet.cli("deploy", "apply", str(pinned))
    assert refused.code == 6 and "policy.yaml:4 (residency[0]) keeps its data in eu-west" in refused.err, refused
    assert "constraints.hosts are all outside it: local (us-east)" in refused.err
    assert fleet.cli_json("deploy", "list") == []
    denied = [json.loads(e["detail"]) for e in fleet.cli_json("audit", "list", "--action", "policy.denied")]
    assert [d["rule"] for d in denied] == ["policy.yaml:4 (residency[0])"]

    free = deploy_spec(fleet, name="iris", replicas=1)
    fleet.cli("deploy", "apply", str(free), check=True)
    replica = fleet.wait_for(lambda: next((j for j in replica_jobs(fleet) if j.get("host")), None),
                             what="the replica placed", timeout=60)
    assert replica["host"] == "node-a"  # both hosts empty: best fit alone would take local
    fleet.cli("deploy", "stop", "iris")
