"""A new user tries mlfleet from a fresh clone: what the README promises is what happens (issue #13).

Each story drives the real CLI against a real controller and the real local
agent (and, where hosts matter, real sshd on loopback).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import time

from conftest import CONFIGS, Fleet


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
