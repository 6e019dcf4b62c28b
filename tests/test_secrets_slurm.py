"""A secret on a Slurm host: sbatch starts the runner, so the value waits in a 0600 file the runner deletes.

The run's journal (launch.json) names the key only; once the job has run,
no file under the agent's state dir (Slurm's own output files included)
holds the value, and the job's output shows it masked.
"""

from __future__ import annotations

import hashlib
import json
import secrets as pysecrets
import sys
import time

import pytest

from mlfleet.agents.supervisor import Supervisor
from mlfleet.core.base.models import LaunchRequest, SlurmPlan

import slurm as slurm_fixtures  # tests/slurm.py
from test_secrets import occurrences

slurm_cluster = slurm_fixtures.slurm_cluster  # the real cluster, one per module


@pytest.fixture
def supervisor(slurm_cluster, tmp_path, monkeypatch):
    for key, value in slurm_cluster.env.items():
        monkeypatch.setenv(key, value)
    return Supervisor(tmp_path / "agent")


def test_a_slurm_run_gets_its_secret_and_no_file_keeps_it(supervisor, tmp_path) -> None:
    canary = pysecrets.token_hex(16)
    code = ("import hashlib, os\nv = os.environ['TOK']\n"
            "print('sha', hashlib.sha256(v.encode()).hexdigest())\nprint('tok', v)\n")
    request = LaunchRequest(run_id="sec1", job_id="job-sec1", argv=[sys.executable, "-c", code], workdir="/",
                            env={"PLAIN": "1"}, secret_env={"TOK": canary}, slurm=SlurmPlan())
    supervisor.launch(request)
    journal = json.loads((tmp_path / "agent" / "runs" / "sec1" / "launch.json").read_text())
    assert journal["secret_keys"] == ["TOK"] and journal["secret_env"] == {} and "TOK" not in journal["env"]
    deadline = time.monotonic() + 60
    while (status := supervisor.status("sec1")).state != "exited" and time.monotonic() < deadline:
        time.sleep(0.3)
    assert (status.state, status.exit_code) == ("exited", 0), status
    out = supervisor.read("sec1", "stdout", 0).data
    assert out.splitlines() == [f"sha {hashlib.sha256(canary.encode()).hexdigest()}", "tok ***"]
    assert occurrences(tmp_path, canary.encode()) == []  # the 0600 hand-over file is gone too


def test_a_pending_slurm_run_cancelled_or_refused_leaves_no_secret_behind(supervisor, tmp_path) -> None:
    canary = pysecrets.token_hex(16)

    def request(run_id: str, code: str, **plan) -> LaunchRequest:
        return LaunchRequest(run_id=run_id, job_id="job-" + run_id, argv=[sys.executable, "-c", code], workdir="/",
                             env={}, secret_env={"TOK": canary}, slurm=SlurmPlan(**plan))

    supervisor.launch(request("hog", "import time; time.sleep(60)", gres="gpu:2"))
    supervisor.launch(request("waiter", "print('never')", gres="gpu:2"))  # pending: no GPU free for it
    waiter = tmp_path / "agent" / "runs" / "waiter"
    assert (waiter / "secret_env.json").stat().st_mode & 0o777 == 0o600  # waits for a runner Slurm has not started
    refused = supervisor.launch(request("nopart", "print('x')", partition="nosuchpartition"))
    assert refused.reason == "failed-to-start"
    for run_id in ("waiter", "hog"):
        supervisor.cancel(run_id)
    deadline = time.monotonic() + 60
    while {supervisor.status(r).state for r in ("hog", "waiter")} != {"exited"} and time.monotonic() < deadline:
        time.sleep(0.3)
    assert occurrences(tmp_path, canary.encode()) == []
