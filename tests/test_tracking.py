"""A job is tracked end to end: lineage, input hashes, artifacts, summaries (real controller, agent, jobs)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import Fleet
from mlfleet.core.base.errors import MlfleetError
from mlfleet.core.base.hello import PROTOCOL_VERSION
from mlfleet.core.base.protocol import Peer


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def _submit(fleet: Fleet, spec: Path, timeout: float = 120) -> dict:
    done = fleet.cli("submit", str(spec), "--wait", "--json", timeout=timeout)
    assert done.code == 0, done.out + done.err
    return fleet.cli_json("runs", "show", done.json()["run_id"])


def test_lineage_has_the_commit_and_says_when_the_tree_was_dirty(fleet: Fleet) -> None:
    repo = fleet.root / "repo"
    repo.mkdir()
    (repo / "train.py").write_text("print('training')\n")
    (repo / "job.yaml").write_text("name: lineage\ncommand: [python, train.py]\n")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "first")

    clean = _submit(fleet, repo / "job.yaml")
    lineage = clean["lineage"]
    assert lineage["git_commit"] == _git(repo, "rev-parse", "HEAD")
    assert lineage["git_dirty"] is False and lineage["diff_hash"] is None
    assert lineage["git_branch"] == "main" and Path(lineage["git_repo"]) == repo
    assert lineage["spec_hash"] == clean["spec_hash"] and len(clean["spec_hash"]) == 64
    assert lineage["host"] == "local" and lineage["gpu_hours"] == 0
    assert lineage["python"] and lineage["packages"] > 0
    assert len(lineage["packages_hash"]) == 64

    (repo / "train.py").write_text("print('training harder')\n")
    dirty = _submit(fleet, repo / "job.yaml")["lineage"]
    assert dirty["git_commit"] == lineage["git_commit"]
    assert dirty["git_dirty"] is True and len(dirty["diff_hash"]) == 64

    (repo / "notes.txt").write_text("an untracked file is part of what ran\n")
    untracked = _submit(fleet, repo / "job.yaml")["lineage"]
    assert untracked["git_dirty"] is True and untracked["diff_hash"] != dirty["diff_hash"]

    shown = fleet.cli("runs", "show", clean["run_id"])
    assert re.search(rf"\bgit +{lineage['git_commit'][:12]} on main \(clean\)", shown.out), shown.out


def test_a_workdir_outside_git_has_no_git_lineage(fleet: Fleet) -> None:
    run = _submit(fleet, fleet.write_spec("plain", "name: plain\ncommand: [true]\n"))
    assert run["lineage"]["git_repo"] is None and run["lineage"]["git_commit"] is None
    assert run["lineage"]["spec_hash"] == run["spec_hash"]


def test_inputs_are_hashed_at_start_and_a_big_file_is_read_once(fleet: Fleet) -> None:
    data = fleet.root / "specs" / "data"
    (data / "shards").mkdir(parents=True)
    big = data / "train.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024))
    (data / "shards" / "a.txt").write_text("a\n")
    (data / "shards" / "b.txt").write_text("b\n")
    spec = fleet.write_spec("inputs", "name: inputs\ncommand: [true]\n"
                                      "inputs: [data/train.bin, data/shards, 'data/shards/*.txt', missing.csv]\n")

    first = _submit(fleet, spec)["lineage"]
    inputs = {i["path"]: i for i in first["inputs"]}
    assert inputs["data/train.bin"]["sha256"] == hashlib.sha256(big.read_bytes()).hexdigest()
    assert inputs["data/train.bin"]["size"] == 3 * 1024 * 1024
    assert inputs["data/shards"]["files"] == 2 and inputs["data/shards"]["size"] == 4
    assert inputs["data/shards/a.txt"]["sha256"] == hashlib.sha256(b"a\n").hexdigest()
    assert inputs["missing.csv"]["error"] == "no such file or folder"
    assert first["hashed_bytes"] == 3 * 1024 * 1024 + 4

    # The cache holds the digest by (path, size, mtime_ns, inode); a relative input is hashed in the
    # snapshot the run was copied from. Plant a different digest there: if the second run reports it,
    # the file was not read again.
    shipped = fleet.home.local_agent_dir / "code" / first["code_hash"] / "data" / "train.bin"
    entry = fleet.home.local_agent_dir / "hash-cache" / \
        f"{hashlib.sha256(os.path.realpath(shipped).encode()).hexdigest()}.json"
    cached = json.loads(entry.read_text())
    assert cached["sha256"] == inputs["data/train.bin"]["sha256"] and cached["size"] == big.stat().st_size
    entry.write_text(json.dumps({**cached, "sha256": "0" * 64}))
    second = _submit(fleet, spec)["lineage"]
    assert second["hashed_bytes"] == 0
    assert {i["path"]: i for i in second["inputs"]}["data/train.bin"]["sha256"] == "0" * 64

    big.write_bytes(os.urandom(3 * 1024 * 1024))  # same size, new content and mtime: hashed again
    third = _submit(fleet, spec)["lineage"]
    assert {i["path"]: i for i in third["inputs"]}["data/train.bin"]["sha256"] == \
        hashlib.sha256(big.read_bytes()).hexdigest()
    assert third["hashed_bytes"] == 3 * 1024 * 1024 + 4  # a new snapshot is a new tree: its small files too


ARTIFACT_JOB = """\
import os
from mlfleet import track
track.summary("loss", "min")
track.summary("acc", mode="max")
for step, (loss, acc) in enumerate([(0.9, 0.2), (0.4, 0.7), (0.5, 0.6)]):
    track.log({"loss": loss, "acc": acc}, step=step)
os.makedirs("out", exist_ok=True)
with open("out/model.bin", "wb") as fh:
    fh.write(bytes(range(256)) * 12289)
print(track.log_artifact("out/model.bin"))
"""


def test_an_artifact_is_logged_listed_and_fetched_with_its_sha256_checked(fleet: Fleet) -> None:
    (fleet.root / "specs").mkdir(exist_ok=True)
    (fleet.root / "specs" / "job.py").write_text(ARTIFACT_JOB)
    run = _submit(fleet, fleet.write_spec("artifact", "name: artifact\ncommand: [python, job.py]\n"))
    model = fleet.home.local_agent_dir / "runs" / run["run_id"] / "work" / "out" / "model.bin"  # its own copy
    expected = hashlib.sha256(model.read_bytes()).hexdigest()
    assert run["summary"] == {"acc": {"mode": "max", "value": 0.7}, "loss": {"mode": "min", "value": 0.4}}

    listed = fleet.cli_json("runs", "artifacts", run["run_id"])
    assert [(a["path"], a["size"], a["sha256"]) for a in listed] == [(os.path.realpath(model), 256 * 12289, expected)]

    out = fleet.files / "fetched.bin"
    got = fleet.cli_json("runs", "artifact", "get", run["run_id"], "model.bin", "-o", str(out))
    assert got["verified"] is True and got["sha256"] == expected
    assert out.read_bytes() == model.read_bytes()

    # The file changed on the node after it was logged: nothing is kept, and the user is told why.
    model.write_bytes(b"not the model")
    changed = fleet.cli("runs", "artifact", "get", run["run_id"], "model.bin", "-o", str(fleet.files / "again.bin"))
    assert changed.code == 1 and "is not what the run logged" in changed.err and "Traceback" not in changed.err
    assert not (fleet.files / "again.bin").exists()
    assert not list(fleet.files.glob(".again.bin.*"))

    missing = fleet.cli("runs", "artifact", "get", run["run_id"], "/etc/passwd")
    assert missing.code == 4 and "has no artifact" in missing.err


def test_the_agent_serves_only_files_the_run_logged(fleet: Fleet) -> None:
    (fleet.root / "specs").mkdir(exist_ok=True)
    (fleet.root / "specs" / "job.py").write_text(ARTIFACT_JOB)
    run = _submit(fleet, fleet.write_spec("artifact", "name: artifact\ncommand: [python, job.py]\n"))

    async def ask(path: str) -> dict:
        reader, writer = await asyncio.open_unix_connection(str(fleet.home.local_agent_socket))
        peer = Peer(reader, writer, name="agent")
        peer.start()
        try:
            await peer.request("hello", protocol=PROTOCOL_VERSION, role="controller")
            return await peer.request("artifact_read", run_id=run["run_id"], path=path, offset=0, max_bytes=10)
        finally:
            await peer.close()

    with pytest.raises(MlfleetError, match="logged no artifact"):
        asyncio.run(ask(str(fleet.root / "specs" / "job.py")))
    logged = run["artifacts"][0]["path"]
    assert asyncio.run(ask(logged))["end"] == 10


def test_a_run_on_a_gpu_reports_gpu_hours_and_its_utilisation(fleet: Fleet) -> None:
    gpus = fleet.root / "gpus.yaml"
    gpus.write_text("gpus:\n  - name: NVIDIA H100 80GB HBM3\n    memory_total: 80GiB\n    memory_used: 10GiB\n"
                    "    utilization: 60\n")
    # busy_utilization 100: the simulated 60 % must not make the GPU look taken by someone else
    fleet.home.config_file.write_text(f"scheduler: {{busy_utilization: 100}}\nlocal: {{simulate_gpus: {gpus}}}\n")
    fleet.cli("controller", "start", check=True)
    fleet.wait_for(lambda: (fleet.cli_json("hosts", "list")[0]["telemetry"] or {}).get("gpus"), what="simulated GPUs")
    run = _submit(fleet, fleet.write_spec("gpu", "name: gpu\nresources: {gpus: 1}\ncommand: [sleep, '3']\n"))
    lineage = run["lineage"]
    assert lineage["gpus"] == [0]
    assert 2.5 / 3600 < lineage["gpu_hours"] < 10 / 3600
    assert lineage["gpu_util_mean"] == 60.0 and lineage["gpu_util_peak"] == 60.0
    assert lineage["gpu_mem_peak"] == 10 * 1024**3


def test_an_artifact_on_an_ssh_host_comes_back_through_its_agent(ssh_fleet) -> None:  # noqa: ANN001 - SshFleet
    fleet = ssh_fleet.fleet
    ssh_fleet.add("node-a")
    out_dir = fleet.root / "node-a-out"  # outside the run's folder and workdir: the host's config allows it
    with fleet.home.hosts_file.open("a") as fh:
        fh.write(f"    artifact_roots: [{out_dir}]\n")
    ssh_fleet.wait_up("node-a")
    data = fleet.root / "node-a-data.bin"
    data.write_bytes(os.urandom(100_000))
    (fleet.root / "specs").mkdir(exist_ok=True)
    (fleet.root / "specs" / "remote.py").write_text(
        "import os\nfrom mlfleet import track\n"
        f"os.makedirs({str(out_dir)!r}, exist_ok=True)\n"
        f"open({str(out_dir / 'weights.bin')!r}, 'wb').write(os.urandom(2_500_000))\n"
        f"track.log_artifact({str(out_dir)!r})\n")
    spec = fleet.write_spec("remote", f"name: remote\nconstraints: {{hosts: [node-a]}}\n"
                                      f"inputs: [{data}]\ncommand: [python, remote.py]\n")
    run = _submit(fleet, spec)
    assert run["host"] == "node-a"
    assert run["lineage"]["inputs"] == [{"path": str(data), "sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
                                         "size": 100_000}]
    target = fleet.files / "weights.bin"
    got = fleet.cli_json("runs", "artifact", "get", run["run_id"], "weights.bin", "-o", str(target))
    assert got["host"] == "node-a" and got["size"] == 2_500_000 and got["verified"] is True
    assert target.read_bytes() == (out_dir / "weights.bin").read_bytes()


HOSTILE_ARTIFACTS_JOB = """\
import json, os, sys
from mlfleet import track
allowed, outside = sys.argv[1], sys.argv[2]
cwd = os.getcwd()
up = os.path.relpath(outside)  # ../../../outside.txt from the run's own copy of the workdir
os.makedirs("out", exist_ok=True)
open("out/ok.bin", "wb").write(b"fine")
for make, where in ((lambda p: os.symlink("/etc/shadow", p), "shadow-link"),
                    (lambda p: os.symlink(os.path.relpath(outside, "out"), p), "out/escape.txt"), (os.mkfifo, "pipe")):
    if not os.path.lexists(where):
        make(where)
os.makedirs("folder/sub", exist_ok=True)
open(os.path.join(allowed, "model.bin"), "wb").write(b"a model kept with the others")
for label, name in [("/etc/shadow", "/etc/shadow"), ("shadow-link", "shadow-link"), ("out/escape.txt", "out/escape.txt"),
                    ("pipe", "pipe"), ("../outside.txt", up), ("out/../../outside.txt", "out/../" + up),
                    (os.path.join(allowed, "model.bin"), os.path.join(allowed, "model.bin"))]:
    try:
        track.log_artifact(name)
        print("logged", label)
    except track.ArtifactRefused as exc:
        print("refused", label, "|", exc)
track.log_artifact("out/ok.bin")
track.flush()
# What a hand-written line may claim: the agent refuses these when asked for them.
with open(os.devnull if sys.argv[3:] == ["polite"] else os.environ["MLFLEET_METRICS_FILE"], "a") as f:
    run_folder = os.path.dirname(os.environ["MLFLEET_METRICS_FILE"])
    for path in ["/etc/shadow", cwd + "/shadow-link", cwd + "/out/escape.txt", cwd + "/pipe", cwd + "/folder",
                 outside, os.path.join(allowed, "model.bin"), run_folder + "/launch.json", cwd + "/../launch.json"]:
        f.write(json.dumps({"artifact": {"path": path, "size": 1, "sha256": "0" * 64}}) + chr(10))
"""


def test_an_artifact_outside_the_runs_folders_is_refused_at_log_time_and_at_read_time(fleet: Fleet) -> None:
    allowed = fleet.root / "models"
    allowed.mkdir()
    (fleet.root / "outside.txt").write_text("not for sharing\n")
    (fleet.root / "specs").mkdir(exist_ok=True)
    (fleet.root / "specs" / "job.py").write_text(HOSTILE_ARTIFACTS_JOB)
    spec = fleet.write_spec("hostile", f"name: hostile\ncommand: [python, job.py, '{allowed}', "
                                       f"'{fleet.root / 'outside.txt'}']\n")
    done = fleet.cli("submit", str(spec), "--wait", "--json", timeout=120)
    assert done.code == 0, fleet.cli("jobs", "logs", done.json()["job_id"], "--stderr").out
    run_id, job_id = done.json()["run_id"], done.json()["job_id"]

    said = {}
    for line in fleet.cli("jobs", "logs", job_id).out.splitlines():
        verdict, rest = line.split(" ", 1)
        said[rest.split(" | ")[0]] = (verdict, rest.split(" | ")[1] if " | " in rest else "")
    assert {name: verdict for name, (verdict, _) in said.items()} == {
        "/etc/shadow": "refused", "shadow-link": "refused", "out/escape.txt": "refused", "pipe": "refused",
        "../outside.txt": "refused", "out/../../outside.txt": "refused", str(allowed / "model.bin"): "refused"}
    assert "is outside the run's folder and its workdir" in said["/etc/shadow"][1]
    assert "is not a regular file" in said["pipe"][1]

    def refused(path: str, why: str) -> None:
        target = fleet.files / "fetched"
        got = fleet.cli("runs", "artifact", "get", run_id, path, "-o", str(target))
        assert got.code == 2, (path, got.out, got.err)
        assert why in got.err and got.err.strip().count("\n") == 0 and "Traceback" not in got.err, got.err
        assert not target.exists() and not list(fleet.files.glob(".fetched.*"))

    workdir = os.path.realpath(fleet.home.local_agent_dir / "runs" / run_id / "work")  # the run's own copy
    outside = "is outside the run's folder and its workdir on its node, so it is not served"
    refused("/etc/shadow", outside)
    refused(f"{workdir}/shadow-link", outside)
    refused(f"{workdir}/out/escape.txt", outside)
    refused(str(fleet.root / "outside.txt"), outside)
    refused(f"{workdir}/../launch.json", "is the agent's own record of the run")  # the copy sits in the run's folder
    refused(f"{workdir}/pipe", "is a FIFO, not a regular file")
    refused(f"{workdir}/folder", "is a folder, not a regular file")
    refused(str(allowed / "model.bin"), outside)  # not allowed on this host (yet)
    refused(str(fleet.home.local_agent_dir / "runs" / run_id / "launch.json"), "is the agent's own record of the run")

    ok = fleet.cli_json("runs", "artifact", "get", run_id, "ok.bin", "-o", str(fleet.files / "ok.bin"))
    assert ok["verified"] is True and (fleet.files / "ok.bin").read_bytes() == b"fine"

    # Once the host allows its model folder, a new run may log a file there, and it is served.
    fleet.cli("controller", "stop", check=True)
    fleet.home.config_file.write_text(f"local:\n  artifact_roots: [{allowed}]\n")
    polite = fleet.write_spec("polite", f"name: polite\ncommand: [python, job.py, '{allowed}', "
                                        f"'{fleet.root / 'outside.txt'}', polite]\n")
    again = fleet.cli("submit", str(polite), "--wait", "--json", timeout=120)
    assert again.code == 0, again.out + again.err
    logs = fleet.cli("jobs", "logs", again.json()["job_id"]).out
    assert f"logged {allowed / 'model.bin'}" in logs and "logged /etc/shadow" not in logs
    got = fleet.cli_json("runs", "artifact", "get", again.json()["run_id"], str(allowed / "model.bin"),
                         "-o", str(fleet.files / "model.bin"))
    assert got["verified"] is True and (fleet.files / "model.bin").read_bytes() == b"a model kept with the others"
