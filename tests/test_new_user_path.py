"""A new user tries mlfleet from a fresh clone: what the README promises is what happens (issue #13).

Each story drives the real CLI against a real controller and the real local
agent (and, where hosts matter, real sshd on loopback).
"""

from __future__ import annotations

import tarfile
import time
from concurrent.futures import ThreadPoolExecutor

from conftest import Fleet


def _snapshot_text(fleet: Fleet, code_hash: str, name: str) -> str:
    with tarfile.open(fleet.home.code_cache_dir / f"{code_hash}.tar.gz") as tar:
        member = tar.extractfile(name)
        assert member is not None
        return member.read().decode()


def test_a_local_job_runs_the_snapshot_taken_at_submit_not_the_file_edited_after(fleet: Fleet) -> None:
    project = fleet.root / "proj"
    project.mkdir()
    (project / "settings.txt").write_text("lr=0.5\n")
    spec = project / "job.yaml"
    spec.write_text("name: reads-late\ncommand: \"sleep 1.5; cat settings.txt\"\n")
    submitted = fleet.cli_json("submit", str(spec))
    (project / "settings.txt").write_text("lr=EDITED-AFTER-SUBMIT\n")  # the user keeps working
    job_id = submitted["job_id"]
    job = fleet.wait_state(job_id, {"succeeded", "failed"})
    assert job["state"] == "succeeded", job
    out = fleet.cli("jobs", "logs", job_id, check=True).out
    assert out == "lr=0.5\n"
    run = fleet.cli_json("runs", "show", job["run_id"])
    code_hash = run["lineage"]["code_hash"]
    assert code_hash == submitted["code_hash"]
    assert _snapshot_text(fleet, code_hash, "settings.txt") == out  # what the run records is what ran
    assert (project / "settings.txt").read_text() == "lr=EDITED-AFTER-SUBMIT\n"  # and the user's file is untouched


def test_two_runs_writing_the_same_relative_artifact_path_keep_both(fleet: Fleet) -> None:
    project = fleet.root / "proj"
    project.mkdir()
    (project / "train.py").write_text(
        "import os\n"
        "from mlfleet import track\n"
        "os.makedirs('out', exist_ok=True)\n"
        "with open('out/model.pkl', 'w') as fh:\n"
        "    fh.write('weights of ' + os.environ['MLFLEET_RUN_ID'])\n"
        "track.log_artifact('out/model.pkl')\n")
    spec = project / "job.yaml"
    spec.write_text("name: writes-model\ncommand: [python, train.py]\n")
    first = fleet.cli("submit", str(spec), "--wait", "--json", check=True).json()
    second = fleet.cli("submit", str(spec), "--wait", "--json", check=True).json()
    assert first["run_id"] != second["run_id"]
    for done in (first, second):
        fetched = fleet.cli("runs", "artifact", "get", done["run_id"], "model.pkl", "-o", "-", check=True)
        assert fetched.out == f"weights of {done['run_id']}"
    assert not (project / "out").exists()  # the runs wrote into their own copies, not into the user's folder


def test_the_specs_params_and_tags_are_part_of_the_run_and_the_job_may_refine_them(fleet: Fleet) -> None:
    project = fleet.root / "proj"
    project.mkdir()
    (project / "train.py").write_text("from mlfleet import track\ntrack.log_params({'lr': 0.5, 'steps': 10})\n"
                                      "track.set_tags({'stage': 'tried'})\n")
    spec = project / "job.yaml"
    spec.write_text("name: declared\ncommand: [python, train.py]\n"
                    "params: {purpose: quickstart, lr: 0.1, layers: [64, 32]}\n"
                    "tags: {owner-team: ml-platform, stage: draft}\n")
    done = fleet.cli("submit", str(spec), "--wait", "--json", check=True).json()
    run = fleet.cli_json("runs", "show", done["run_id"])
    # The spec's values, and where the job logged the same key, the job's (it knows what it used).
    assert run["params"] == {"purpose": "quickstart", "lr": 0.5, "layers": [64, 32], "steps": 10}
    assert run["tags"] == {"owner-team": "ml-platform", "stage": "tried"}
    found = fleet.cli_json("runs", "list", "--where", "params.purpose = 'quickstart' and tags.owner-team = 'ml-platform'")
    assert [r["run_id"] for r in found] == [done["run_id"]]


def test_a_spec_param_is_in_the_run_before_the_job_logs_anything(fleet: Fleet) -> None:
    spec = fleet.write_spec("quiet", "name: quiet\ncommand: [sleep, '30']\nparams: {purpose: quickstart}\n")
    job_id = fleet.cli("submit", str(spec), check=True).out.strip()
    job = fleet.wait_state(job_id, {"running"})
    assert fleet.cli_json("runs", "show", job["run_id"])["params"] == {"purpose": "quickstart"}
    fleet.cli("jobs", "cancel", job_id, check=True)


FAILS_FIRST = ("import os\n"
               "if os.environ['MLFLEET_RUN_ID'].endswith('-1'):\n"
               "    import numpy_that_this_host_lacks\n"
               "print('ran on attempt', os.environ['MLFLEET_RUN_ID'])\n")


def _two_host_job(ssh_fleet, name: str, retries: int):  # noqa: ANN001, ANN202 - SshFleet
    fleet = ssh_fleet.fleet
    ssh_fleet.add("node-a")
    ssh_fleet.wait_up("node-a")
    fleet.wait_for(lambda: all(h["state"] == "up" for h in fleet.cli_json("hosts", "list")), what="both hosts up")
    project = fleet.root / name
    project.mkdir()
    (project / "train.py").write_text(FAILS_FIRST)
    (project / "job.yaml").write_text(f"name: {name}\nretries: {retries}\ncommand: [python, train.py]\n")
    return fleet, project / "job.yaml"


def test_an_automatic_retry_goes_to_another_host_and_the_reason_names_the_missing_module(ssh_fleet) -> None:  # noqa: ANN001
    fleet, spec = _two_host_job(ssh_fleet, "auto", retries=1)
    done = fleet.cli("submit", str(spec), "--wait", "--json", timeout=120)
    assert done.code == 0, done.out + done.err
    job = fleet.job(done.json()["job_id"])
    first, second = job["runs"]
    assert first["state"] == "failed" and second["state"] == "succeeded"
    assert first["host"] != second["host"]
    said = next(e["reason"] for e in job["events"] if "retrying" in (e["reason"] or ""))
    assert "ModuleNotFoundError" in said and "no module 'numpy_that_this_host_lacks'" in said, said


def test_jobs_retry_after_a_failure_prefers_another_host_even_after_a_controller_restart(ssh_fleet) -> None:  # noqa: ANN001
    fleet, spec = _two_host_job(ssh_fleet, "manual", retries=0)
    failed = fleet.cli("submit", str(spec), "--wait", "--json", timeout=120)
    assert failed.code == 1
    job_id, first_host = failed.json()["job_id"], failed.json()["host"]
    reason = fleet.job(job_id)["reason"]
    assert reason.startswith("exited 1: ModuleNotFoundError: ") and "'numpy_that_this_host_lacks'" in reason, reason
    fleet.cli("controller", "stop", check=True)  # what the scheduler prefers is kept in the file, not in memory
    fleet.cli("jobs", "retry", job_id, check=True)
    job = fleet.wait_state(job_id, {"succeeded", "failed"})
    assert job["state"] == "succeeded"
    assert job["runs"][-1]["host"] != first_host


def test_retrying_a_succeeded_job_is_refused_unless_forced_and_its_time_is_the_new_attempts(fleet: Fleet) -> None:
    spec = fleet.write_spec("fine", "name: fine\ncommand: [sleep, '1']\n")
    done = fleet.cli("submit", str(spec), "--wait", "--json", check=True).json()
    refused = fleet.cli("jobs", "retry", done["job_id"])
    assert refused.code == 2 and "Traceback" not in refused.err
    assert refused.err.strip().count("\n") == 0 and "already succeeded" in refused.err and "--force" in refused.err
    assert fleet.job(done["job_id"])["state"] == "succeeded" and len(fleet.job(done["job_id"])["runs"]) == 1
    time.sleep(2)  # a gap between the attempts, that the job's elapsed time must not include
    fleet.cli("jobs", "retry", done["job_id"], "--force", check=True)
    job = fleet.wait_state(done["job_id"], {"succeeded", "failed"})
    assert job["state"] == "succeeded" and [r["attempt"] for r in job["runs"]] == [1, 2]
    assert job["started_at"] == job["runs"][1]["started_at"]  # not the first attempt's start
    listed = next(j for j in fleet.cli_json("jobs", "list") if j["job_id"] == done["job_id"])
    assert listed["started_at"] == job["runs"][1]["started_at"]


def test_a_job_in_its_cancel_grace_period_shows_cancelling(fleet: Fleet) -> None:
    spec = fleet.write_spec("stubborn", "name: stubborn\ncommand: \"trap 'echo ignoring TERM' TERM; "
                                        "echo up; while true; do sleep 0.2; done\"\n")
    job_id = fleet.cli("submit", str(spec), check=True).out.strip()
    fleet.wait_state(job_id, {"running"})
    fleet.wait_for(lambda: "up" in fleet.cli("jobs", "logs", job_id).out, what="the job to start its loop")
    answer = fleet.cli_json("jobs", "cancel", job_id)
    assert answer["state"] == "cancelling"
    fleet.wait_for(lambda: "ignoring TERM" in fleet.cli("jobs", "logs", job_id).out, what="the SIGTERM to arrive")
    # The four views at once, all inside the 10 s grace period (one after another they took longer than
    # that on a machine shared by the test workers).
    with ThreadPoolExecutor(4) as pool:
        shown = pool.submit(fleet.job, job_id)
        cancelling = pool.submit(fleet.cli_json, "jobs", "list", "--state", "cancelling")
        running = pool.submit(fleet.cli_json, "jobs", "list", "--state", "running")
        table = pool.submit(fleet.cli, "jobs", "list", check=True)
    assert shown.result()["state"] == "cancelling"  # it still runs: SIGKILL comes after the grace period
    assert [j["job_id"] for j in cancelling.result()] == [job_id]
    assert running.result() == []
    assert "cancelling" in table.result().out.splitlines()[1]
    assert fleet.wait_state(job_id, {"cancelled", "failed", "succeeded"}, timeout=40)["state"] == "cancelled"


def test_every_mistake_in_a_spec_is_reported_at_once_each_one_sentence_at_its_line(fleet: Fleet) -> None:
    spec = fleet.write_spec("many", "name: train\n"
                                    "command: [python, train.py]\n"
                                    "resourcs: {gpus: 1}\n"
                                    "priority: high\n"
                                    "retries: -1\n"
                                    "env: {'A=B': 1}\n"
                                    "resources: {gpu_type: H100}\n")
    refused = fleet.cli("submit", str(spec))
    assert refused.code == 2 and refused.out == "" and "Traceback" not in refused.err
    lines = refused.err.splitlines()
    assert [line.split(": ")[1:3] for line in lines] == [
        [f"{spec}:3", "resourcs"], [f"{spec}:4", "priority"], [f"{spec}:5", "retries"], [f"{spec}:6", "env.A=B"],
        [f"{spec}:7", "resources.gpu_type"]], refused.err
    assert all(line.startswith("mlfleet: ") and line.count("mlfleet") == 1 for line in lines)
    assert "did you mean 'resources'?" in lines[0] and "would have no effect" in lines[4]
    assert fleet.controller_pid is None  # refused before anything was submitted


def test_a_spec_with_a_flood_of_mistakes_reports_a_few_not_all(fleet: Fleet) -> None:
    body = "name: train\ncommand: [python, train.py]\n" + "".join(f"typo{i}: 1\n" for i in range(40))
    refused = fleet.cli("submit", str(fleet.write_spec("flood", body)))
    assert refused.code == 2 and len(refused.err.splitlines()) == 5, refused.err


def test_a_mistake_in_a_field_others_depend_on_is_not_reported_twice(fleet: Fleet) -> None:
    # gpus is wrong; gpu_memory's "set but gpus is 0" would be about the default, not what was written.
    spec = fleet.write_spec("dep", "name: train\ncommand: [true]\nresources: {gpus: lots, gpu_memory: 20GiB}\n")
    refused = fleet.cli("submit", str(spec))
    assert refused.code == 2 and len(refused.err.splitlines()) == 1 and "resources.gpus" in refused.err, refused.err


def test_the_readmes_example_spec_loads_as_written(tmp_path) -> None:  # noqa: ANN001
    from conftest import REPO
    from mlfleet.core.jobs.spec import load_job_spec

    readme = (REPO / "README.md").read_text()
    example = readme.split("A job spec is YAML", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "demo").mkdir()
    (tmp_path / "job.yaml").write_text(example)
    spec = load_job_spec(tmp_path / "job.yaml")
    assert spec.params == {"purpose": "quickstart"}
    if spec.resources.gpu_types or spec.resources.gpu_memory:
        assert spec.resources.gpus > 0
