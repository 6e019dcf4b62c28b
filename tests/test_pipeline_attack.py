"""The adversary's corpus for pipelines: false cache hits, needless re-runs, hostile runs, the CLI's edges.

Each test is one attack on a promise of docs/pipelines.md, through the real
CLI, controller and local agent (or, for what a client could send that a
file cannot say, straight to the ``pipeline_run`` RPC). A finding stays
here as its regression test.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from conftest import Fleet

from mlfleet.core.base.models import to_plain
from mlfleet.core.pipelines.spec import load_pipeline_spec


def write_pipeline(root: Path, steps: dict[str, Any], name: str = "attack") -> Path:
    """A pipeline file (JSON is YAML) beside its step folders; each step's workdir is its own folder."""
    path = root / "pipeline.yaml"
    path.write_text(json.dumps({"name": name, "project": "demo", "steps": steps}, indent=1))
    return path


def sh(workdir: str, script: str, **extra: Any) -> dict[str, Any]:
    return {"workdir": workdir, "command": ["sh", "-c", script], **extra}


def run(fleet: Fleet, path: Path, *args: str, code: int | None = 0) -> dict[str, Any]:
    done = fleet.cli("pipeline", "run", str(path), "--wait", "--json", *args, timeout=120)
    if code is not None and done.code != code:
        raise AssertionError(f"exit {done.code}: {done.err}{done.out[:3000]}")
    return done.json()


def states(shown: dict[str, Any]) -> dict[str, str]:
    return {s["step"]: s["state"] for s in shown["steps"]}


def step_of(shown: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in shown["steps"] if s["step"] == name)


def stored_text(fleet: Fleet, shown: dict[str, Any], step: str) -> str:
    out = step_of(shown, step)["outputs"][0]
    return (fleet.home.data_dir / "pipeline-outputs" / out["sha256"] / Path(out["path"]).name).read_text()


def rpc(fleet: Fleet, method: str, **params: Any) -> Any:
    """One call to the controller as a client that skips the CLI's checks; an error comes back as its text."""
    from mlfleet.core.controller.client import connect

    async def go() -> Any:
        client = await connect(fleet.home, autostart=False)
        try:
            return await client.call(method, request_timeout=60, **params)
        except Exception as exc:  # the controller's one sentence
            return f"ERROR {type(exc).__name__}: {exc}"
        finally:
            await client.close()

    return asyncio.run(go())


# ---------------------------------------------------------------- false cache hits

def test_an_upstream_output_moved_to_another_path_re_runs_its_reader(fleet: Fleet, tmp_path: Path) -> None:
    """The reader finds an upstream output at the path its producer declared: that path is part of what it read.

    prepare writes the same bytes, first to out/a.txt, then to out/b.txt. train
    reads out/a.txt; after the move it would fail, so reusing its old result
    is a false hit.
    """
    for folder in ("prepare", "train"):
        (tmp_path / folder).mkdir()
    steps = {"prepare": {"job": sh("prepare", "mkdir -p out && echo same > out/a.txt"), "outputs": {"d": "out/a.txt"}},
             "train": {"job": sh("train", "cat out/a.txt > res.txt"), "inputs": ["prepare.outputs.d"],
                       "outputs": {"r": "res.txt"}}}
    path = write_pipeline(tmp_path, steps)
    assert states(run(fleet, path)) == {"prepare": "succeeded", "train": "succeeded"}
    steps["prepare"] = {"job": sh("prepare", "mkdir -p out && echo same > out/b.txt"), "outputs": {"d": "out/b.txt"}}
    path = write_pipeline(tmp_path, steps)
    shown = run(fleet, path, code=None)
    assert step_of(shown, "prepare")["state"] == "succeeded"
    assert step_of(shown, "train")["state"] != "cached", states(shown)


def test_a_folder_input_replaced_by_a_file_with_the_same_hash_is_a_miss(fleet: Fleet, tmp_path: Path) -> None:
    """A folder's tree hash is the sha256 of its listing: a file holding that listing must not pass for it."""
    from mlfleet.core.pipelines.outputs import hash_output

    work = tmp_path / "w"
    (work / "data").mkdir(parents=True)
    (work / "data" / "a.csv").write_text("1\n")
    listing = b"a.csv\0" + hashlib.sha256(b"1\n").hexdigest().encode() + b"\n"
    steps = {"s": {"job": sh("w", "if [ -d data ]; then echo folder; else echo file; fi > res.txt"),
                   "inputs": ["data"], "outputs": {"r": "res.txt"}}}
    path = write_pipeline(tmp_path, steps)
    first = run(fleet, path)
    assert stored_text(fleet, first, "s") == "folder\n"
    folder_hash = hash_output(work, "data", "data").sha256
    (work / "data" / "a.csv").unlink()
    (work / "data").rmdir()
    (work / "data").write_bytes(listing)
    assert hash_output(work, "data", "data").sha256 == folder_hash  # the collision the key must not fall for
    second = run(fleet, path)
    assert step_of(second, "s")["state"] == "succeeded", states(second)
    assert stored_text(fleet, second, "s") == "file\n"


def test_an_output_edited_in_the_controllers_store_never_reaches_a_reader(fleet: Fleet, tmp_path: Path) -> None:
    """A stored output changed in place (same size) is a miss for its step, and its re-run's bytes are the ones read.

    The store's ``has`` looks at the size only; when prepare re-runs and writes
    the right bytes again, the tampered copy must not be what train is shipped.
    """
    for folder in ("prepare", "train"):
        (tmp_path / folder).mkdir()
    steps = {"prepare": {"job": sh("prepare", "mkdir -p out && echo hello > out/a.txt"), "outputs": {"d": "out/a.txt"}},
             "train": {"job": sh("train", "cat out/a.txt > res.txt"), "inputs": ["prepare.outputs.d"],
                       "outputs": {"r": "res.txt"}}}
    path = write_pipeline(tmp_path, steps)
    first = run(fleet, path)
    out = step_of(first, "prepare")["outputs"][0]
    stored = fleet.home.data_dir / "pipeline-outputs" / out["sha256"] / "a.txt"
    os.chmod(stored, 0o600)
    stat = stored.stat()
    stored.write_text("HELLO\n")
    os.utime(stored, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    steps["train"]["job"] = sh("train", "cat out/a.txt > res.txt; true")  # train runs again, reading prepare's
    second = run(fleet, write_pipeline(tmp_path, steps))
    assert states(second) == {"prepare": "succeeded", "train": "succeeded"}, states(second)
    assert stored_text(fleet, second, "train") == "hello\n"
    assert stored.read_text() == "hello\n"


def test_a_step_with_a_memory_size_and_a_timeout_runs_and_survives_a_controller_restart(fleet: Fleet,
                                                                                           tmp_path: Path) -> None:
    """Sizes and durations (``memory: 64MiB``, ``timeout: 1h``: the shipped closed loop has one) decode everywhere."""
    import signal

    (tmp_path / "w").mkdir()
    steps = {"s": {"job": sh("w", "sleep 2; echo ok > res.txt", resources={"cpus": 1, "memory": "64MiB"},
                             timeout="1h"), "outputs": {"r": "res.txt"}}}
    started = fleet.cli("pipeline", "run", str(write_pipeline(tmp_path, steps)), "--json")
    assert started.code == 0, started.err
    run_id = started.json()["run_id"]
    pid = fleet.controller_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    fleet.wait_for(lambda: fleet.controller_pid is None, timeout=20, what="the controller to be gone")
    fleet.cli("controller", "start", check=True)
    done = fleet.wait_for(lambda: (s := fleet.cli_json("pipeline", "show", run_id))["state"] != "running" and s,
                          timeout=60, what="the run to end")
    assert done["state"] == "succeeded", done


# ---------------------------------------------------------------- needless re-runs

def test_reordering_a_steps_inputs_re_runs_nothing(fleet: Fleet, tmp_path: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    (work / "a.txt").write_text("a\n")
    (work / "b.txt").write_text("b\n")
    steps = {"s": {"job": sh("w", "cat a.txt b.txt > res.txt"), "inputs": ["a.txt", "b.txt"],
                   "outputs": {"r": "res.txt"}}}
    run(fleet, write_pipeline(tmp_path, steps))
    steps["s"]["inputs"] = ["b.txt", "a.txt"]
    again = run(fleet, write_pipeline(tmp_path, steps))
    assert states(again) == {"s": "cached"}, step_of(again, "s")["reasons"]


def test_a_recursive_glob_input_is_data_not_code_for_its_neighbours(fleet: Fleet, tmp_path: Path) -> None:
    """``data/**/*.csv`` matches data/x.csv (glob's ``**`` is zero or more folders); it must leave the code hash too."""
    work = tmp_path / "w"
    (work / "data" / "sub").mkdir(parents=True)
    (work / "data" / "x.csv").write_text("1\n")
    (work / "data" / "sub" / "y.csv").write_text("2\n")
    steps = {"reader": {"job": sh("w", "cat data/x.csv data/sub/y.csv > res.txt"), "inputs": ["data/**/*.csv"],
                        "outputs": {"r": "res.txt"}},
             "other": {"job": sh("w", "echo other > other.txt"), "outputs": {"o": "other.txt"}}}
    path = write_pipeline(tmp_path, steps)
    run(fleet, path)
    (work / "data" / "x.csv").write_text("3\n")
    again = run(fleet, path)
    assert states(again) == {"reader": "succeeded", "other": "cached"}, \
        (states(again), step_of(again, "other")["reasons"])


def test_a_stale_copy_where_an_upstream_output_lands_is_not_the_readers_code(fleet: Fleet, tmp_path: Path) -> None:
    """train's checkout holds an old out/a.txt where prepare's output is put: the bundle replaces it, so it is data."""
    for folder in ("prepare", "train/out"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "train" / "out" / "a.txt").write_text("stale from a local run\n")
    steps = {"prepare": {"job": sh("prepare", "mkdir -p out && echo fresh > out/a.txt"), "outputs": {"d": "out/a.txt"}},
             "train": {"job": sh("train", "cat out/a.txt > res.txt"), "inputs": ["prepare.outputs.d"],
                       "outputs": {"r": "res.txt"}}}
    path = write_pipeline(tmp_path, steps)
    first = run(fleet, path)
    assert stored_text(fleet, first, "train") == "fresh\n"
    (tmp_path / "train" / "out" / "a.txt").write_text("another stale copy\n")
    again = run(fleet, path)
    assert states(again) == {"prepare": "cached", "train": "cached"}, step_of(again, "train")["reasons"]


def test_moving_the_checkout_renaming_the_file_touching_and_reordering_re_run_nothing(fleet: Fleet,
                                                                                        tmp_path: Path) -> None:
    first_root = tmp_path / "one"
    for folder in ("prepare", "train"):
        (first_root / folder).mkdir(parents=True)
    (first_root / "prepare" / "raw.csv").write_text("1,2\n")
    steps = {"prepare": {"job": sh("prepare", "mkdir -p out && cat raw.csv > out/a.txt", env={"A": "1", "B": "2"}),
                         "inputs": ["raw.csv"], "outputs": {"d": "out/a.txt"}},
             "train": {"job": sh("train", "cat out/a.txt > res.txt"), "inputs": ["prepare.outputs.d"],
                       "outputs": {"r": "res.txt"}}}
    path = write_pipeline(first_root, steps)
    assert set(states(run(fleet, path)).values()) == {"succeeded"}
    moved = tmp_path / "two"
    os.rename(first_root, moved)
    os.rename(moved / "pipeline.yaml", moved / "renamed.yaml")
    for item in moved.rglob("*"):
        os.utime(item, (1, 1))
    text = json.loads((moved / "renamed.yaml").read_text())
    text["steps"] = dict(reversed(list(text["steps"].items())))  # keys in another order
    text["steps"]["prepare"]["job"] = dict(reversed(list(text["steps"]["prepare"]["job"].items())))
    text["steps"]["prepare"]["job"]["env"] = {"B": "2", "A": "1"}
    text = dict(reversed(list(text.items())))
    (moved / "renamed.yaml").write_text(json.dumps(text))
    again = run(fleet, moved / "renamed.yaml")
    assert states(again) == {"prepare": "cached", "train": "cached"}, [s["reasons"] for s in again["steps"]]


def test_a_controller_killed_again_and_again_runs_every_step_exactly_once(fleet: Fleet, tmp_path: Path) -> None:
    """SIGKILL the controller three times at moments spread over a five-step run; it ends succeeded, one job a step."""
    import random
    import signal
    import time

    from test_pipeline_story import STEPS
    from test_pipeline_story import write_pipeline as five_steps

    path = five_steps(tmp_path, extra_env=", env: {STEP_SLEEP: '0.7'}")
    started = fleet.cli("pipeline", "run", str(path), "--json", check=True).json()
    run_id = started["run_id"]
    chance = random.Random(int(os.environ.get("ATTACK_SEED", "17")))
    for _ in range(3):
        time.sleep(chance.uniform(0.3, 2.5))
        pid = fleet.controller_pid
        if pid is None:
            break
        os.kill(pid, signal.SIGKILL)
        fleet.wait_for(lambda: fleet.controller_pid is None, timeout=20, what="the controller to be gone")
        fleet.cli("controller", "start", check=True)
    done = fleet.wait_for(lambda: (s := fleet.cli_json("pipeline", "show", run_id))["state"] != "running" and s,
                          timeout=150, what="the run to end")
    assert done["state"] == "succeeded", (done["reason"], [(s["step"], s["state"], s["reasons"])
                                                          for s in done["steps"]])
    jobs = fleet.cli_json("db", "query", "select name, count(*) from jobs group by name order by name")["rows"]
    assert {name: count for name, count in jobs} == {f"five-{s}": 1 for s in STEPS}, jobs


def test_an_agent_killed_while_it_packs_outputs_is_asked_again_once_it_is_back(fleet: Fleet, tmp_path: Path) -> None:
    """The job succeeded; its host went away while packing its output. Collect again when it is back, never re-run."""
    import signal
    import time

    (tmp_path / "w").mkdir()
    steps = {"big": {"job": sh("w", "mkdir -p out && head -c 200000000 /dev/zero > out/big.bin"),
                     "outputs": {"b": "out/big.bin"}},
             "after": {"job": sh("w", "ls -l out/big.bin > res.txt"), "inputs": ["big.outputs.b"],
                       "outputs": {"r": "res.txt"}}}
    started = fleet.cli("pipeline", "run", str(write_pipeline(tmp_path, steps)), "--json", check=True).json()
    deadline = time.monotonic() + 60
    packing = []
    while not packing and time.monotonic() < deadline:
        packing = list(fleet.home.local_agent_dir.rglob("outputs/.b.*.tmp"))
        time.sleep(0.02)
    assert packing, "the agent was never seen packing the output"
    pid = fleet.agent_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    fleet.wait_for(lambda: fleet.agent_pid is None, timeout=20, what="the agent to be gone")
    fleet.cli("hosts", "start-agent", "local", check=True)
    done = fleet.wait_for(lambda: (s := fleet.cli_json("pipeline", "show", started["run_id"]))["state"] != "running"
                          and s, timeout=120, what="the run to end")
    assert done["state"] == "succeeded", [(s["step"], s["state"], s["reasons"]) for s in done["steps"]]
    jobs = fleet.cli_json("db", "query", "select name, count(*) from jobs group by name order by name")["rows"]
    assert jobs == [["attack-after", 1], ["attack-big", 1]], jobs


def test_cancel_while_outputs_wait_for_their_host_ends_the_run_and_wait_exits_1(fleet: Fleet, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "w").mkdir()
    steps = {"big": {"job": sh("w", "mkdir -p out && head -c 200000000 /dev/zero > out/big.bin"),
                     "outputs": {"b": "out/big.bin"}}}
    path = write_pipeline(tmp_path, steps)
    fleet.cli("controller", "start", check=True)
    waiting = subprocess.Popen([str(Path(sys.executable).with_name("mlfleet")), "pipeline", "run", str(path),
                                "--wait", "--json"], env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        deadline = time.monotonic() + 60
        while not list(fleet.home.local_agent_dir.rglob("outputs/.b.*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.02)
        pid = fleet.agent_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        run_id = fleet.cli_json("pipeline", "list")[0]["run_id"]
        cancelled = fleet.cli("pipeline", "cancel", run_id, "--json")
        assert cancelled.code == 0 and "Traceback" not in cancelled.err, cancelled
        assert cancelled.json()["state"] == "cancelled", cancelled.out
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 1, (waiting.returncode, err, out[:500])
    finally:
        waiting.kill()
    shown = fleet.cli_json("pipeline", "show", run_id)
    assert states(shown) == {"big": "cancelled"} and shown["state"] == "cancelled", shown


def test_two_runs_of_one_file_at_once_both_succeed_and_a_third_is_all_cached(fleet: Fleet, tmp_path: Path) -> None:
    import subprocess
    import sys

    for folder in ("prepare", "train"):
        (tmp_path / folder).mkdir()
    steps = {"prepare": {"job": sh("prepare", "mkdir -p out && sleep 1 && echo x > out/a.txt"),
                         "outputs": {"d": "out/a.txt"}},
             "train": {"job": sh("train", "cat out/a.txt > res.txt"), "inputs": ["prepare.outputs.d"],
                       "outputs": {"r": "res.txt"}}}
    path = write_pipeline(tmp_path, steps)
    fleet.cli("controller", "start", check=True)
    both = [subprocess.Popen([str(Path(sys.executable).with_name("mlfleet")), "pipeline", "run", str(path),
                              "--wait", "--json"], env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    answers = [p.communicate(timeout=90) for p in both]
    assert [p.returncode for p in both] == [0, 0], answers
    assert all(json.loads(out)["state"] == "succeeded" for out, _ in answers)
    third = run(fleet, path)
    assert states(third) == {"prepare": "cached", "train": "cached"}, states(third)


def test_a_cancel_racing_the_end_leaves_one_consistent_answer(fleet: Fleet, tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    path = write_pipeline(tmp_path, {"a": {"job": sh("w", "echo a > a.txt"), "outputs": {"o": "a.txt"}},
                                     "b": {"job": sh("w", "cat a.txt > b.txt"), "inputs": ["a.outputs.o"],
                                           "outputs": {"o": "b.txt"}}})
    for _ in range(3):
        started = fleet.cli("pipeline", "run", str(path), "--json", "--no-cache", check=True).json()
        answer = fleet.cli("pipeline", "cancel", started["run_id"], "--json")
        assert answer.code == 0, answer
        shown = fleet.cli_json("pipeline", "show", started["run_id"])
        assert shown["state"] in ("cancelled", "succeeded"), shown
        left = {s["state"] for s in shown["steps"]}
        assert not left & {"queued", "running"}, shown
        if shown["state"] == "succeeded":
            assert left == {"succeeded"}, shown
    listed = fleet.cli_json("pipeline", "list")
    assert all(r["state"] != "running" for r in listed), listed


# ---------------------------------------------------------------- hostile runs, straight to the RPC

def _plain(tmp_path: Path, steps: dict[str, Any]) -> dict[str, Any]:
    return to_plain(load_pipeline_spec(write_pipeline(tmp_path, steps)))


def test_the_rpc_refuses_what_a_file_could_not_say(fleet: Fleet, tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    fleet.cli("controller", "start", check=True)
    base = _plain(tmp_path, {"a": {"job": sh("w", "true")}, "b": {"job": sh("w", "true"), "needs": ["a"]}})

    def send(change: Any) -> Any:
        data = json.loads(json.dumps(base))
        change(data)
        return rpc(fleet, "pipeline_run", pipeline=data)

    def many(data: dict[str, Any]) -> None:
        one = data["steps"]["a"]
        data["steps"] = {f"s{i}": {**one, "name": f"s{i}"} for i in range(10_000)}

    def cycle(data: dict[str, Any]) -> None:
        data["steps"]["a"]["needs"] = ["b"]

    def unknown(data: dict[str, Any]) -> None:
        data["steps"]["b"]["needs"] = ["nosuch"]

    def relative(data: dict[str, Any]) -> None:
        data["steps"]["a"]["job"]["workdir"] = "w"

    def bad_name(data: dict[str, Any]) -> None:
        data["steps"]["a/../x y"] = {**data["steps"].pop("a"), "name": "a/../x y"}
        data["steps"]["b"]["needs"] = ["a/../x y"]

    def bad_output(data: dict[str, Any]) -> None:
        data["steps"]["a"]["outputs"] = {"../up": "x.txt"}

    def two_kinds(data: dict[str, Any]) -> None:
        data["steps"]["a"]["kind"] = "gate"

    def fake_input(data: dict[str, Any]) -> None:
        data["steps"]["a"]["inputs"] = [{"text": "b.outputs.x", "kind": "step"}]

    for change, words in [(two_kinds, "kind"), (fake_input, "b.outputs.x"), (many, "200"), (cycle, "cycle"), (unknown, "not a step"), (relative, "absolute"),
                          (bad_name, "a/../x y"), (bad_output, "../up")]:
        answer = send(change)
        assert isinstance(answer, str) and answer.startswith("ERROR ") and words in answer, \
            (change.__name__, str(answer)[:300])
        assert "\n" not in answer
    listed = rpc(fleet, "pipeline_list")
    assert listed == [], listed  # nothing was recorded for any of them


def test_hostile_outputs_fail_their_step_with_a_sentence_and_nothing_is_kept(fleet: Fleet, tmp_path: Path) -> None:
    """An output that is a link to /etc/shadow, a FIFO, or a path leaving the work folder: the step fails, says why."""
    (tmp_path / "w").mkdir()
    steps = {"link": {"job": sh("w", "ln -s /etc/shadow secret"), "outputs": {"s": "secret"}},
             "fifo": {"job": sh("w", "mkfifo pipe"), "outputs": {"p": "pipe"}},
             "linkdir": {"job": sh("w", "mkdir -p d && ln -s /etc d/etc"), "outputs": {"d": "d"}}}
    shown = run(fleet, write_pipeline(tmp_path, steps), code=1)
    for name, words in [("link", "link"), ("fifo", "FIFO"), ("linkdir", "link")]:
        step = step_of(shown, name)
        assert step["state"] == "failed" and words in " ".join(step["reasons"]), step
    base = _plain(tmp_path, {"up": {"job": sh("w", "true"), "outputs": {"o": "x"}}})
    for path in ("../../../etc/shadow", "/etc/shadow"):
        base["steps"]["up"]["outputs"] = {"o": path}
        started = rpc(fleet, "pipeline_run", pipeline=base)
        done = rpc(fleet, "pipeline_wait", run_id=started["run_id"], timeout=60)
        assert done["state"] == "failed", done
        reasons = " ".join(step_of(done, "up")["reasons"])
        assert "could not be kept" in reasons or "refused" in reasons.lower() or "path" in reasons, reasons
    kept = list((fleet.home.data_dir / "pipeline-outputs").glob("*/*")) \
        if (fleet.home.data_dir / "pipeline-outputs").exists() else []
    assert not any(p.name in ("secret", "shadow", "pipe", "d") for p in kept), kept


# ---------------------------------------------------------------- the CLI's edges

def test_cli_mistakes_are_one_sentence_with_no_traceback(fleet: Fleet, tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    path = write_pipeline(tmp_path, {"a": {"job": sh("w", "true")}})
    cases = [("pipeline", "show", "nosuchrun"), ("pipeline", "why", "nosuchrun", "a"),
             ("pipeline", "cancel", "nosuchrun"), ("pipeline", "run", str(tmp_path / "missing.yaml")),
             ("pipeline", "run", str(path), "--force", "nosuch"), ("pipeline", "run", str(path), "--set", "=="),
             ("pipeline", "run", str(path), "--bogus")]
    for args in cases:
        for extra in ((), ("--json",)):
            done = fleet.cli(*args, *extra)
            assert done.code not in (0, 1) or args[-1] == "--bogus", (args, done)
            assert done.code != 0, (args, done)
            assert "Traceback" not in done.err + done.out, (args, done.err)
            words = done.err.strip()
            assert words and len(words.splitlines()) <= 3, (args, extra, done.err)
    first = run(fleet, path)
    why = fleet.cli("pipeline", "why", first["run_id"], "nosuchstep", "--json")
    assert why.code != 0 and "Traceback" not in why.err and "nosuchstep" in why.err, why


# ---------------------------------------------------------------- a second OS user (team mode)

def test_a_team_member_can_neither_cancel_anothers_run_nor_run_job_steps_as_the_controller(
        fleet: Fleet, team_users: Any, request: Any) -> None:
    operators = team_users.group("o")
    (fleet.root / "policy.yaml").write_text(f"roles:\n  - {{group: {operators}, role: operator}}\n")
    head = request.getfixturevalue("head")
    member = head.joined(team_users, groups=(operators,))
    work = fleet.files / "w"
    work.mkdir()
    path = write_pipeline(fleet.files, {"slow": {"job": sh(str(work), "sleep 30")}})
    started = fleet.cli("pipeline", "run", str(path), "--json", check=True).json()
    try:
        refused = member.cli("pipeline", "cancel", started["run_id"], "--json")
        assert refused.code != 0 and "Traceback" not in refused.err and "may not" in refused.err, refused
        assert member.cli_json("pipeline", "show", started["run_id"])["state"] == "running"
        theirs = member.write("p/pipeline.yaml", json.dumps({"name": "mine", "project": "demo", "steps": {
            "s": {"job": {"workdir": ".", "command": ["id"]}}}}))
        ran = member.cli("pipeline", "run", str(theirs), "--json")
        assert ran.code != 0 and "Traceback" not in ran.err and ran.err.strip(), ran
        assert all(r["name"] != "mine" for r in fleet.cli_json("pipeline", "list")), "a member's job steps ran"
    finally:
        fleet.cli("pipeline", "cancel", started["run_id"])
