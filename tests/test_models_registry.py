"""The model registry end to end: a real controller and local agent, a real job that logs its model with
mlfleet.track, registered through the CLI (docs/models.md)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

from conftest import CliResult, Fleet, REPO

TRAIN = """\
import os
from mlfleet import track
track.summary("loss", "min")
for step, loss in enumerate([0.9, 0.4, 0.5]):
    track.log({"loss": loss, "acc": 1 - loss}, step=step)
os.makedirs("out", exist_ok=True)
with open("out/model.bin", "wb") as fh:
    fh.write(os.urandom(5 * 1024 * 1024 + 17))  # more than one 4 MiB chunk
track.log_artifact("out/model.bin")
"""


def _train(fleet: Fleet) -> dict:
    """A finished run that logged out/model.bin, trained on data.csv."""
    specs = fleet.root / "specs"
    specs.mkdir(exist_ok=True)
    (specs / "train.py").write_text(TRAIN)
    (specs / "data.csv").write_text("x,y\n1,2\n3,4\n")
    spec = fleet.write_spec("train", "name: train\ncommand: [python, train.py]\ninputs: [data.csv]\n")
    done = fleet.cli("submit", str(spec), "--wait", "--json", timeout=120)
    assert done.code == 0, done.out + done.err
    return fleet.cli_json("runs", "show", done.json()["run_id"])


def _node_copy(fleet: Fleet, run: dict) -> Path:
    return fleet.home.local_agent_dir / "runs" / run["run_id"] / "work" / "out" / "model.bin"


def _one_sentence(result: CliResult, code: int, *words: str) -> None:
    assert result.code == code, (result.code, result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlfleet: ") and "Traceback" not in result.err, result.err
    for word in words:
        assert word in result.err, result.err


def _register(fleet: Fleet, name: str, run: dict, *extra: str) -> dict:
    return fleet.cli_json("models", "register", name, "--run", run["run_id"], "--artifact", "model.bin", *extra)


def test_a_registered_model_is_numbered_kept_in_the_store_and_outlives_its_node_copy(fleet: Fleet) -> None:
    run = _train(fleet)
    node_copy = _node_copy(fleet, run)
    sha = hashlib.sha256(node_copy.read_bytes()).hexdigest()

    first = _register(fleet, "iris", run, "--alias", "staging")
    assert (first["version"], first["sha256"], first["size"], first["copied"]) == (1, sha, 5 * 1024 * 1024 + 17, True)
    stored = fleet.home.model_store_dir / sha / "model.bin"
    assert Path(first["store_path"]) == stored
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == sha
    assert not [p for p in stored.parent.iterdir() if p.name != "model.bin"]  # no temporary file left behind
    assert first["alias_moved"]["to_version"] == 1

    second = _register(fleet, "iris", run)
    assert second["version"] == 2 and second["copied"] is False  # the same bytes: not copied again

    # The lineage came with it: the run's job, hashes, the data it read, its metrics and who registered it.
    version = fleet.cli_json("models", "show", "iris:1")["version"]
    assert version["run_id"] == run["run_id"] and version["job_id"] == run["job_id"]
    assert version["code_hash"] == run["code_hash"] and version["spec_hash"] == run["spec_hash"]
    data = {i["path"]: i for i in version["inputs"]}
    assert data["data.csv"]["sha256"] == hashlib.sha256(b"x,y\n1,2\n3,4\n").hexdigest()
    assert version["metrics"]["loss"] == {"last": 0.5, "min": 0.4, "max": 0.9, "summary": 0.4, "mode": "min"}
    assert version["packages"] and version["created_by"] and version["created_at"]
    assert version["aliases"] == ["staging"]

    # The node's copy is wiped: the model is still there, and a new version is made from the store.
    node_copy.unlink()
    assert fleet.cli_json("models", "show", "iris@staging")["version"]["version"] == 1
    third = _register(fleet, "iris", run)
    assert third["version"] == 3 and third["copied"] is False
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == sha

    listed = fleet.cli_json("models", "list")
    assert [(m["name"], m["versions"], m["latest"], m["aliases"]) for m in listed] == [("iris", 3, 3, {"staging": 1})]
    assert [v["version"] for v in fleet.cli_json("models", "versions", "iris")] == [1, 2, 3]
    text = fleet.cli("models", "versions", "iris", check=True).out
    assert "v1" in text and "staging" in text and sha[:12] in text
    shown = fleet.cli("models", "show", "iris", check=True).out
    assert "version 3" in shown and "data.csv" in shown

    actions = [(a["action"], a["target"]) for a in fleet.cli_json("audit", "list")]
    assert ("model.register", "iris:1") in actions and ("model.register", "iris:3") in actions
    assert ("model.alias", "iris@staging") in actions


def test_an_artifact_changed_after_it_was_logged_is_refused_and_nothing_is_registered(fleet: Fleet) -> None:
    run = _train(fleet)
    node_copy = _node_copy(fleet, run)
    logged = hashlib.sha256(node_copy.read_bytes()).hexdigest()
    raw = bytearray(node_copy.read_bytes())
    raw[4 * 1024 * 1024 + 3] ^= 0xFF  # one byte in the second chunk, same size
    node_copy.write_bytes(bytes(raw))

    refused = fleet.cli("models", "register", "iris", "--run", run["run_id"], "--artifact", "model.bin")
    _one_sentence(refused, 1, "is not what the run logged", "nothing was registered")
    assert fleet.cli_json("models", "list") == []
    folder = fleet.home.model_store_dir / logged
    assert not folder.exists() or not list(folder.iterdir())  # neither the model nor a temporary file

    node_copy.write_bytes(b"short")  # shorter, and then longer than logged: refused too
    _one_sentence(fleet.cli("models", "register", "iris", "--run", run["run_id"], "--artifact", "model.bin"), 1,
                  "is not what the run logged")
    node_copy.write_bytes(bytes(raw) + bytes(9 * 1024 * 1024))
    _one_sentence(fleet.cli("models", "register", "iris", "--run", run["run_id"], "--artifact", "model.bin"), 1,
                  "is not what the run logged")
    assert fleet.cli_json("models", "list") == []


def _between(a: str, b: str) -> float:
    return (dt.datetime.fromisoformat(a).timestamp() + dt.datetime.fromisoformat(b).timestamp()) / 2


def test_an_alias_moves_with_its_history_and_history_at_says_where_it_pointed(fleet: Fleet) -> None:
    run = _train(fleet)
    for _ in range(3):
        _register(fleet, "iris", run)
    assert fleet.cli_json("models", "history", "iris")["moves"] == []

    moved = []
    for version, reason in ((1, "first one"), (3, "v3 beats v1, ML-7"), (2, "v3 regressed on sensor B")):
        moved.append(fleet.cli_json("models", "alias", "iris", "production", str(version), "--reason", reason))
        time.sleep(0.3)
    fleet.cli_json("models", "alias", "iris", "staging", "3")
    assert [(m["from_version"], m["to_version"]) for m in moved] == [(None, 1), (1, 3), (3, 2)]
    same = fleet.cli_json("models", "alias", "iris", "production", "2")
    assert same["changed"] is False  # no row for a move that moves nothing

    moves = fleet.cli_json("models", "history", "iris", "--alias", "production")["moves"]
    assert [(m["from_version"], m["to_version"], m["reason"]) for m in moves] == [
        (3, 2, "v3 regressed on sensor B"), (1, 3, "v3 beats v1, ML-7"), (None, 1, "first one")]
    assert all(m["actor"] for m in moves)
    at = [m["moved_at"] for m in reversed(moves)]  # oldest first

    def production_at(when: str) -> dict:
        answer = fleet.cli_json("models", "history", "iris", "--at", when)
        return {a["alias"]: a for a in answer["aliases"]}, answer["unset"]

    before, unset = production_at(f"@{dt.datetime.fromisoformat(at[0]).timestamp() - 0.1}")
    assert before == {} and sorted(unset) == ["production", "staging"]
    for (lo, hi), expected in (((at[0], at[1]), 1), ((at[1], at[2]), 3)):
        shown, _ = production_at(f"@{_between(lo, hi)}")
        assert shown["production"]["version"] == expected
        assert shown["production"]["run_id"] == run["run_id"]
        assert shown["production"]["inputs"][0]["path"] == "data.csv"
    iso = dt.datetime.fromtimestamp(_between(at[0], at[1]), dt.timezone.utc).isoformat()  # an ISO time works too
    assert production_at(iso)[0]["production"]["version"] == 1
    now, _ = production_at("now")
    assert now["production"]["version"] == 2 and now["staging"]["version"] == 3
    assert production_at("1h")[0] == {}  # an hour ago nothing was set

    text = fleet.cli("models", "history", "iris", "--at", f"@{_between(at[1], at[2])}", "--alias", "production",
                     check=True).out
    assert "production = v3" in text and "data.csv" in text and "staging" not in text

    # The same answer as one SQL query, the one docs/models.md shows.
    stamp = dt.datetime.fromtimestamp(_between(at[1], at[2]), dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")
    sql = ("select h.to_version as version, h.moved_at as since, h.actor, h.reason, v.run_id, v.sha256, v.code_hash, "
           "v.env_hash, v.inputs from model_alias_history h join model_versions v on v.name = h.name and "
           "v.version = h.to_version where h.name = 'iris' and h.alias = 'production' "
           f"and h.moved_at <= timestamptz '{stamp}' order by h.moved_at desc, h.id desc limit 1")
    assert sql.split(" from ")[0] in " ".join((REPO / "docs" / "models.md").read_text().split())
    answer = fleet.cli_json("db", "query", sql)
    assert [r[0] for r in answer["rows"]] == [3] and answer["rows"][0][4] == run["run_id"]

    assert fleet.cli_json("models", "show", "iris@production")["version"]["version"] == 2
    _one_sentence(fleet.cli("models", "show", "iris@canary"), 4, "has no alias 'canary'")
    _one_sentence(fleet.cli("models", "alias", "iris", "production", "9"), 4, "has no version 9")
    _one_sentence(fleet.cli("models", "history", "iris", "--at", "last tuesday"), 2, "is not a time")


def test_registers_at_the_same_moment_get_distinct_versions(fleet: Fleet) -> None:
    run = _train(fleet)
    fleet.cli("controller", "start", check=True)
    procs = [subprocess.Popen([str(Path(sys.executable).with_name("mlfleet")), "models", "register", "iris", "--run",
                               run["run_id"], "--artifact", "model.bin", "--json"], env=fleet.env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(5)]
    answers = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), answers
    assert sorted(json.loads(out)["version"] for out, _ in answers) == [1, 2, 3, 4, 5]
    stored = fleet.home.model_store_dir / json.loads(answers[0][0])["sha256"]
    assert [p.name for p in stored.iterdir()] == ["model.bin"]


def test_hostile_input_is_one_sentence(fleet: Fleet) -> None:
    run = _train(fleet)
    for name in ("a/b", "..", "../etc", ".hidden", "x" * 200, "iris\nrm"):
        _one_sentence(fleet.cli("models", "register", name, "--run", run["run_id"], "--artifact", "model.bin"), 2,
                      "is not a name")
    _one_sentence(fleet.cli("models", "register", "iris", "--run", "nosuchrun", "--artifact", "model.bin"), 4,
                  "no run 'nosuchrun'")
    _one_sentence(fleet.cli("models", "register", "iris", "--run", run["run_id"], "--artifact", "/etc/passwd"), 4,
                  "has no artifact")
    _one_sentence(fleet.cli("models", "register", "iris", "--run", run["run_id"], "--artifact", "model.bin",
                            "--alias", "3"), 2, "is not an alias")
    assert fleet.cli_json("models", "list") == []
    _register(fleet, "iris", run)
    _one_sentence(fleet.cli("models", "alias", "iris", "production", "1", "--reason", "x" * 5000), 2,
                  "keep it to 1000")
    _one_sentence(fleet.cli("models", "alias", "iris", "production", "1", "--reason", "a\x1b[2Jb"), 2,
                  "control characters")
    _one_sentence(fleet.cli("models", "alias", "iris", "../prod", "1"), 2, "is not an alias")
    _one_sentence(fleet.cli("models", "alias", "iris", "production", "0"), 2, "must be 1 or more")
    _one_sentence(fleet.cli("models", "show", "nosuch"), 4, "no model named 'nosuch'")
    _one_sentence(fleet.cli("models", "show", "iris:x"), 2, "must be a whole number")
    _one_sentence(fleet.cli("models", "versions", "a/b"), 2, "is not a name")
    assert fleet.cli_json("models", "history", "iris")["moves"] == []
    error = fleet.cli("models", "show", "nosuch", "--json")
    assert error.code == 4 and error.json()["error"]["kind"] == "NotFoundError"
