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

    for change, words in [(many, "200"), (cycle, "cycle"), (unknown, "not a step"), (relative, "absolute"),
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
