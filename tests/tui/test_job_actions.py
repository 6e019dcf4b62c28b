"""The CLI twins of the TUI's job actions: ``jobs priority ID N`` and ``jobs retry ID``.

They go through the same controller methods the jobs view calls
(``job_set_priority``, ``job_retry``), against a real controller and agent.
"""

from __future__ import annotations

import sys

from conftest import Fleet


def test_priority_changes_a_queued_job_and_is_audited(fleet: Fleet) -> None:
    # A job that can never be placed (more GPUs than the local host has) stays queued.
    spec = fleet.write_spec("big", f"name: big\ncommand: [{sys.executable!r}, -c, 'pass']\nresources:\n  gpus: 64\n")
    job_id = fleet.cli("submit", str(spec), "--queue-anyway", check=True).out.strip()
    answer = fleet.cli_json("jobs", "priority", job_id, "9")
    assert answer == {**answer, "job_id": job_id, "priority": 9, "previous": 0, "changed": True}
    assert fleet.job(job_id)["priority"] == 9 and fleet.job(job_id)["state"] == "pending"
    # Negative priorities are allowed (below everything else).
    assert fleet.cli_json("jobs", "priority", job_id[:5], "-3")["priority"] == -3
    audit = fleet.cli_json("audit", "list", "--action", "job.priority")
    assert [a["target"] for a in audit][:2] == [job_id, job_id]

    bad = fleet.cli("jobs", "priority", "nope-no-such-job", "1")
    assert bad.code == 4 and "no job" in bad.err


def test_retry_requeues_an_ended_job_for_one_more_attempt(fleet: Fleet) -> None:
    spec = fleet.write_spec("fails", f"name: fails\ncommand: [{sys.executable!r}, -c, 'import sys; sys.exit(3)']\n")
    job_id = fleet.cli("submit", str(spec), "--wait").out.split()[0]
    assert fleet.job(job_id)["state"] == "failed"

    answer = fleet.cli_json("jobs", "retry", job_id)
    assert answer["job_id"] == job_id and answer["previous"] == "failed" and answer["attempt"] == 2
    job = fleet.wait_for(lambda: (j := fleet.job(job_id))["state"] == "failed" and j["attempt"] == 2 and j,
                         60, what="the second attempt to fail")
    assert job["attempt"] == 2 and job["max_attempts"] == 2
    assert [r["run_id"] for r in job["runs"]] == [f"{job_id}-1", f"{job_id}-2"]
    assert any(e["reason"] and "retried by" in e["reason"] for e in job["events"])

    # A job still queued or running cannot be retried: cancel it first.
    sleeper = fleet.write_spec("sleeper", f"name: sleeper\ncommand: [{sys.executable!r}, -c, 'import time; time.sleep(60)']\n")
    running = fleet.cli("submit", str(sleeper), check=True).out.strip()
    refused = fleet.cli("jobs", "retry", running)
    assert refused.code == 2 and "only an ended job" in refused.err
    fleet.cli("jobs", "cancel", running, check=True)
