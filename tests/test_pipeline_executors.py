"""The steps a pipeline runs inside the controller (gate, register, promote, drift), on real parts.

A real controller runs in this test's event loop (core/controller/loop.py's
``Controller`` with the stock services, as ``mlfleet controller run`` starts
it), so the executors get its real ``ControllerContext``: the store, the
host links, the policy. Real jobs are submitted through the CLI (an async
subprocess, so the loop keeps serving) and run by the real local agent;
they log metrics and a model with mlfleet.track. The champion is a version
registered and aliased through the CLI. Drift reads real CSV files and a
real Parquet capture file. Nothing is mocked: a StepRun is the service's
view of a step, built here from those real runs and outputs.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from msgspec.structs import replace

from conftest import CliResult, Fleet, REPO
from mlfleet.core.base.settings import load_settings
from mlfleet.core.controller.loop import Controller
from mlfleet.core.controller.service import ControllerContext
from mlfleet.core.pipelines import records
from mlfleet.core.pipelines.executors import execute
from mlfleet.core.pipelines.keys import step_key
from mlfleet.core.pipelines.models import Pipeline
from mlfleet.core.pipelines.spec import load_pipeline_spec
from mlfleet.core.pipelines.state import CacheHit
from mlfleet.core.pipelines.step_run import StepOutcome, StepRun
from mlfleet.core.store.rows import rows

ME = getpass.getuser()

TRAIN = """\
import hashlib, os, sys
from mlfleet import track
acc = float(sys.argv[1])
track.summary("loss", "min")
for step, value in enumerate([acc - 0.1, acc, acc - 0.05]):
    track.log({"acc": value, "loss": 1 - value}, step=step)
track.log_params({"lr": 0.1})
os.makedirs("out", exist_ok=True)
with open("out/model.bin", "wb") as fh:
    fh.write(hashlib.sha256(sys.argv[1].encode()).digest() * 64)
track.log_artifact("out/model.bin")
"""

PIPELINE = """\
name: closed-loop
steps:
  train:
    job: {command: [python, train.py, "0.9"], workdir: code}
    outputs: {data: out/model.bin}
  gate:
    gate:
      challenger: train
      champion: iris@production
      require: ["metrics.acc.max >= champion.metrics.acc.max + 0.05", "params.lr <= 0.5",
                "metrics.loss.summary <= champion.metrics.loss.summary"]
  floor:
    gate: {challenger: train, champion: fresh@production, require: ["metrics.acc.max >= 0.85"]}
  f1:
    gate: {challenger: train, champion: iris@production, require: ["metrics.f1.max >= 0.5"]}
  register:
    register: {model: iris, step: train, artifact: model.bin}
  promote:
    promote: {alias: production, register: register, gate: gate, reason: "beats the champion, ML-17"}
  check:
    drift: {reference: data/reference.csv, current: data/shifted.csv}
  calm:
    drift: {reference: data/reference.csv, current: data/same.csv, fail_on_drift: true}
  strict:
    drift: {reference: data/reference.csv, current: data/shifted.csv, fail_on_drift: true}
  upstream:
    needs: [train]
    drift: {reference: data/reference.csv, current: train.outputs.data}
  traffic:
    drift: {reference: data/reference.csv, deployment: iris}
"""


async def cli(fleet: Fleet, *args: str, timeout: float = 120) -> CliResult:
    """``mlfleet ARGS`` without blocking the loop the controller serves on."""
    proc = await asyncio.create_subprocess_exec(str(Path(sys.executable).with_name("mlfleet")), *args, env=fleet.env,
                                                cwd=REPO, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return CliResult(proc.returncode or 0, out.decode(), err.decode())


async def cli_json(fleet: Fleet, *args: str) -> Any:
    done = await cli(fleet, *args, "--json")
    assert done.code == 0, (args, done.out, done.err)
    return json.loads(done.out)


class Loop:
    """A controller serving in this event loop, a pipeline file beside its code and data, and its runs."""

    def __init__(self, fleet: Fleet, ctx: ControllerContext) -> None:
        self.fleet, self.ctx = fleet, ctx
        folder = fleet.files / "pipeline"
        (folder / "code").mkdir(parents=True)
        (folder / "data").mkdir()
        (folder / "code" / "train.py").write_text(TRAIN)
        (folder / "pipeline.yaml").write_text(PIPELINE)
        self.folder = folder
        self.pipeline: Pipeline = load_pipeline_spec(folder / "pipeline.yaml")
        self.jobs: dict[str, str] = {}  # step -> tracking run
        self.outputs: dict[tuple[str, str], Path] = {}
        self.outcomes: dict[str, StepOutcome] = {}
        self.run_id = ""

    async def start_run(self) -> str:
        self.run_id = await self.ctx.store.run(records.new_run, self.pipeline, ME)
        self.outcomes = {}
        return self.run_id

    async def train(self, acc: str) -> dict[str, Any]:
        """A real job that logs acc (max = ``acc``) and out/model.bin (bytes that follow from ``acc``)."""
        spec = self.folder / "code" / f"train-{acc}.yaml"
        spec.write_text(f"name: train\ncommand: [python, train.py, '{acc}']\n")
        done = await cli(self.fleet, "submit", str(spec), "--wait", "--json", timeout=180)
        assert done.code == 0, done.out + done.err
        return json.loads(done.out)

    async def step(self, name: str, actor: str = ME) -> StepOutcome:
        run = StepRun(ctx=self.ctx, run_id=self.run_id, pipeline=self.pipeline, step=self.pipeline.steps[name],
                      actor=actor, job_run=self.jobs.get, output_path=lambda s, o: self.outputs.get((s, o)),
                      outcome_of=self.outcomes.get)
        await self.ctx.store.run(records.set_step, self.run_id, name, "running")
        outcome = await execute(run)
        self.outcomes[name] = outcome
        json.dumps(outcome.details)  # plain data: what pipeline show prints
        return outcome

    async def read(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        return await self.ctx.store.read(rows, sql, params or [])


@pytest.fixture
async def loop(fleet: Fleet):
    home = fleet.home
    home.ensure()
    # A policy in force, so a pipeline's actor is checked as a user is: the controller's user is an admin,
    # mallory an operator (who may run pipelines but not register models or move production by hand).
    (fleet.root / "policy.yaml").write_text("roles:\n  - {user: mallory, role: operator}\n")
    controller = Controller(home, load_settings(home.config_file))
    ready = asyncio.Event()
    serving = asyncio.create_task(controller.run(ready))
    waiting = asyncio.create_task(ready.wait())
    await asyncio.wait([serving, waiting], timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if serving.done():
        serving.result()  # the start failed: say why
    assert ready.is_set(), "the controller did not start within 60 s"
    try:
        yield Loop(fleet, controller.ctx)
    finally:
        controller.stop(ME)
        await asyncio.wait_for(serving, 60)


async def test_a_gate_judges_the_challenger_against_the_champion_and_records_the_numbers(loop: Loop) -> None:
    fleet = loop.fleet
    champion = await loop.train("0.8")
    v1 = await cli_json(fleet, "models", "register", "iris", "--run", champion["run_id"], "--artifact", "model.bin",
                        "--alias", "production")
    assert v1["version"] == 1
    await loop.start_run()

    # A challenger that beats the champion by the margin passes, both requirements judged from the store.
    winner = await loop.train("0.9")
    loop.jobs["train"] = winner["run_id"]
    passed = await loop.step("gate")
    assert passed.state == "succeeded", passed
    assert passed.reason == "passed: 3 of 3 requirements hold"
    assert passed.details["champion_version"] == 1 and passed.details["champion_run"] == champion["run_id"]
    first = passed.details["decision"]["requirements"][0]
    assert (first["left"], first["right"]) == (0.9, 0.85) and "holds: 0.9 >= 0.85" in first["verdict"]
    kept = await loop.ctx.store.read(records.gate_decision, loop.run_id, "gate")
    assert kept["passed"] is True and kept["challenger_run"] == winner["run_id"] and kept["champion_version"] == 1
    assert (await loop.read("select state, reason from pipeline_steps where run_id = ? and step = 'gate'",
                            [loop.run_id]))[0] == {"state": "succeeded", "reason": passed.reason}

    # One that does not: gate-failed (not an error of the run), with both numbers recorded and said.
    await loop.start_run()
    loser = await loop.train("0.82")
    loop.jobs["train"] = loser["run_id"]
    failed = await loop.step("gate")
    assert failed.state == "gate-failed", failed
    assert failed.reason.startswith("failed: 1 of 3 requirements did not hold") and "0.82 is not >= 0.85" in failed.reason
    kept = await loop.ctx.store.read(records.gate_decision, loop.run_id, "gate")
    assert kept["passed"] is False
    numbers = [(r["left"], r["right"], r["passed"]) for r in kept["decision"]["requirements"]]
    assert numbers[:2] == [(0.82, 0.85, False), (0.1, 0.5, True)]
    # loss.summary: the min the run declared with track.summary (1 - 0.82 against the champion's 1 - 0.8).
    assert numbers[2] == (pytest.approx(0.18), pytest.approx(0.2), True)
    state = await loop.read("select state from pipeline_steps where run_id = ? and step = 'gate'", [loop.run_id])
    assert state == [{"state": "gate-failed"}]
    # Both decisions are on the audit chain, with who ran the pipeline and the numbers compared.
    gates = await loop.read("select actor, target, detail from audit where action = 'pipeline.gate' order by id")
    assert [(g["actor"], g["target"].endswith("/gate")) for g in gates] == [(ME, True), (ME, True)]
    assert '"passed": false' in gates[-1]["detail"] and "0.82" in gates[-1]["detail"]

    # No champion yet (a model never registered): champion. requirements hold, a floor is still judged.
    floor = await loop.step("floor")
    assert floor.state == "gate-failed" and floor.details["champion_version"] is None
    assert "0.82 is not >= 0.85" in floor.reason
    loop.jobs["train"] = winner["run_id"]
    floor = await loop.step("floor")
    assert floor.state == "succeeded" and floor.reason == "passed: 1 of 1 requirement holds (no champion: nothing to beat yet)"

    # A metric the challenger never logged fails the gate with a sentence that names it (never a pass).
    f1 = await loop.step("f1")
    assert f1.state == "gate-failed"
    assert f"the challenger (run {winner['run_id']}) has no metric 'f1'" in f1.reason
    assert f1.details["decision"]["requirements"][0]["left"] is None

    # A challenger step without a run is the user's to fix: failed, one sentence.
    loop.jobs.pop("train")
    none = await loop.step("gate")
    assert none.state == "failed" and none.reason == "the challenger step train has no tracking run to judge"


async def test_register_is_idempotent_and_promote_moves_the_alias_on_the_audit_trail(loop: Loop) -> None:
    fleet = loop.fleet
    champion = await loop.train("0.8")
    await cli_json(fleet, "models", "register", "iris", "--run", champion["run_id"], "--artifact", "model.bin",
                   "--alias", "production")
    await loop.start_run()
    winner = await loop.train("0.9")
    loop.jobs["train"] = winner["run_id"]

    # Register: a new version through the registry's own path (its permission: not for mallory, an operator;
    # copied into the model store, audited as the pipeline's actor).
    denied = await loop.step("register", actor="mallory")
    assert denied.state == "failed" and denied.reason == ("mallory (operator, policy.yaml:2 (roles[0])) may not "
                                                          "register models in default: that needs maintainer in default")
    made = await loop.step("register")
    assert made.state == "succeeded", made
    assert (made.details["model"], made.details["version"], made.details["reused"]) == ("iris", 2, False)
    stored = fleet.home.model_store_dir / made.details["sha256"] / "model.bin"
    assert stored.is_file()
    again = await loop.step("register")
    assert again.state == "succeeded" and again.details["version"] == 2 and again.details["reused"] is True
    assert "reused" in again.reason
    versions = await cli_json(fleet, "models", "versions", "iris")
    assert [v["version"] for v in versions] == [1, 2]  # no duplicate version for the same bytes from the same run
    audit = await loop.read("select actor, action, target from audit where action = 'model.register' order by id")
    assert [(a["actor"], a["target"]) for a in audit] == [(ME, "iris:1"), (ME, "iris:2")]

    # Promote after a passed gate: the alias moves 1 -> 2, with the reason and the pipeline run in its history.
    assert (await loop.step("gate")).state == "succeeded"
    passed_in = loop.run_id
    # Not for a pipeline run by someone who may not move production by hand: refused as the RPC refuses them.
    denied = await loop.step("promote", actor="mallory")
    assert denied.state == "failed" and denied.reason.startswith("mallory (operator, policy.yaml:2 (roles[0])) "
                                                                 "may not move protected aliases (iris@production)")
    assert (await cli_json(fleet, "models", "show", "iris@production"))["version"]["version"] == 1
    denials = await loop.read("select target from audit where action = 'policy.denied' and actor = 'mallory' "
                              "order by id")
    assert denials == [{"target": "default"}, {"target": "iris@production"}]  # the register, then the promote
    moved = await loop.step("promote")
    assert moved.state == "succeeded", moved
    assert moved.details == {"model": "iris", "alias": "production", "from_version": 1, "to_version": 2,
                             "changed": True, "deployments": []}
    shown = await cli_json(fleet, "models", "show", "iris@production")
    assert shown["version"]["version"] == 2
    history = (await cli_json(fleet, "models", "history", "iris"))["moves"]
    assert history[0]["from_version"] == 1 and history[0]["to_version"] == 2 and history[0]["actor"] == ME
    assert history[0]["reason"] == f"beats the champion, ML-17 (pipeline closed-loop run {loop.run_id}, step promote)"
    alias_audit = await loop.read("select actor, detail from audit where action = 'model.alias' and "
                                  "target = 'iris@production' order by id")
    assert alias_audit[-1]["actor"] == ME and json.loads(alias_audit[-1]["detail"])["to_version"] == 2

    # A gate that did not pass: promote refuses (the service skips it, but the step checks too) and nothing moves.
    await loop.start_run()
    loser = await loop.train("0.82")
    loop.jobs["train"] = loser["run_id"]
    assert (await loop.step("gate")).state == "gate-failed"
    assert (await loop.step("register")).details["version"] == 3
    refused = await loop.step("promote")
    assert refused.state == "failed" and refused.reason == "gate gate did not pass, so production was not moved"
    assert (await cli_json(fleet, "models", "show", "iris@production"))["version"]["version"] == 2

    # A gate whose outcome the service did not hand over is read from the store: here the failed one of this run,
    loop.outcomes.pop("gate")
    refused = await loop.step("promote")
    assert refused.state == "failed" and refused.reason == "gate gate did not pass, so production was not moved"
    # and a cached gate from the decision its source run recorded (the run where it passed).
    await loop.start_run()
    key = step_key({"gate": "cached"}, {}, None, None, {})
    hit = CacheHit(run_id=passed_in, step="gate", key=key.key, parts=key.parts)
    await loop.ctx.store.run(records.mark_cached, loop.run_id, "gate", key, hit, "reused")
    loop.jobs["train"] = winner["run_id"]  # a cached gate's challenger is the cached train step's run
    assert (await loop.step("register")).details == {"model": "iris", "version": 2, "sha256": made.details["sha256"],
                                                     "run_id": winner["run_id"], "artifact": made.details["artifact"],
                                                     "reused": True}
    same = await loop.step("promote")
    assert same.state == "succeeded" and same.reason == "iris@production already names version 2"
    assert same.details["changed"] is False
    assert len((await cli_json(fleet, "models", "history", "iris"))["moves"]) == 2  # nothing appended

    # An artifact the run never logged is a sentence, not a traceback.
    step = loop.pipeline.steps["register"]
    loop.pipeline.steps["register"] = replace(step, register=replace(step.register, artifact="weights.pt"))
    missing = await loop.step("register")
    assert missing.state == "failed" and f"run {winner['run_id']} has no artifact 'weights.pt'" in missing.reason


async def test_a_drift_step_reports_a_shifted_feature_and_stores_the_report(loop: Loop) -> None:
    data = loop.folder / "data"
    reference = "x,colour\n" + "".join(f"{i / 400:.4f},{'red' if i % 3 else 'blue'}\n" for i in range(400))
    shifted = "x,colour\n" + "".join(f"{5 + i / 400:.4f},{'red' if i % 3 else 'blue'}\n" for i in range(400))
    (data / "reference.csv").write_text(reference)
    (data / "same.csv").write_text(reference)
    (data / "shifted.csv").write_text(shifted)
    await loop.start_run()

    found = await loop.step("check")
    assert found.state == "succeeded", found  # fail_on_drift is false: the drift is recorded, the step goes on
    assert found.details["drifted"] is True and found.details["drifted_features"] == ["x"]
    assert found.details["verdict"].startswith("DRIFT: 1 of 2 compared columns drifted")
    assert found.reason.endswith(f"(report {found.details['report_id']})")
    report = await cli_json(loop.fleet, "drift", "show", found.details["report_id"])
    # saved as the pipeline run's, so its own check never fires its own drift trigger
    assert report["drifted"] is True and report["actor"] == f"pipeline:{loop.run_id}"
    assert {c["column"]: c["drifted"] for c in report["columns"]} == {"x": True, "colour": False}
    audit = await loop.read("select actor from audit where action = 'drift.check' and target = ?",
                            [found.details["report_id"]])
    assert audit == [{"actor": f"pipeline:{loop.run_id}"}]

    calm = await loop.step("calm")
    assert calm.state == "succeeded" and calm.details["drifted"] is False and calm.details["drifted_features"] == []
    strict = await loop.step("strict")
    assert strict.state == "failed" and strict.reason.startswith("DRIFT: ")

    # An upstream step's output, where the controller keeps it.
    kept = loop.fleet.files / "outputs" / "shifted.csv"
    kept.parent.mkdir()
    kept.write_text(shifted)
    missing = await loop.step("upstream")
    assert missing.state == "failed" and "step train has no stored output data in this run" in missing.reason
    loop.outputs[("train", "data")] = kept
    upstream = await loop.step("upstream")
    assert upstream.state == "succeeded" and upstream.details["drifted_features"] == ["x"]

    # A deployment's captured inputs (the Parquet files the controller writes): the reference's features only.
    none = await loop.step("traffic")
    assert none.state == "failed" and "no captured inputs" in none.reason
    day = loop.fleet.home.capture_dir / "iris" / "2026-12-03"
    day.mkdir(parents=True)
    capture = day / "c1.parquet"
    (data / "captured.csv").write_text(shifted)
    import duckdb

    with duckdb.connect() as con:  # the columns core/deploy/capture_rows.py writes beside the inputs
        con.execute(f"""copy (select now() as ts, 1 as version, 'r1' as replica_id, 'run1' as run_id, 0 as output, *
                              from read_csv('{data / "captured.csv"}')) to '{capture}' (format parquet)""")
    traffic = await loop.step("traffic")
    assert traffic.state == "succeeded", traffic
    assert traffic.details["drifted_features"] == ["x"] and traffic.details["deployment"] == "iris"
    assert [f["column"] for f in traffic.details["features"]] == ["x", "colour"]
    linked = await loop.read("select deployment from drift_reports where report_id = ?",
                             [traffic.details["report_id"]])
    assert linked == [{"deployment": "iris"}]

    (data / "reference.csv").unlink()
    gone = await loop.step("check")
    assert gone.state == "failed" and gone.reason == f"reference data/reference.csv ({data / 'reference.csv'}) does not exist"


SERVER = '''\
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
port = int(sys.argv[sys.argv.index("--port") + 1])
version = os.environ.get("MLFLEET_MODEL_VERSION", "?")


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        body = json.dumps({"version": version}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
'''


async def until(what: str, check: Any, timeout: float = 90) -> Any:
    """Poll ``await check()`` without blocking the controller's loop, until it answers something true."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


async def test_a_promote_rolls_out_the_deployments_that_follow_the_alias_on_the_next_tick(loop: Loop) -> None:
    fleet = loop.fleet
    champion = await loop.train("0.8")
    await cli_json(fleet, "models", "register", "iris", "--run", champion["run_id"], "--artifact", "model.bin",
                   "--alias", "production")
    serve = loop.folder / "serve"
    serve.mkdir()
    (serve / "server.py").write_text(SERVER)
    (serve / "iris.yaml").write_text("""\
name: iris
model: iris@production
command: [python, server.py, --port, "{port}"]
replicas: 1
health: {path: /health, interval: 0.3s, timeout: 0.25s, failures: 2}
rollout: {max_surge: 1, max_unavailable: 0, ready_timeout: 20s, drain: 0.3s}
""")
    await cli_json(fleet, "deploy", "apply", str(serve / "iris.yaml"))

    async def serving(version: int) -> Any:
        d = await cli_json(fleet, "deploy", "show", "iris")
        eps = d["endpoints"]
        return d if d["phase"] == "stable" and [e["version"] for e in eps] == [version] else None

    await until("v1 to serve", lambda: serving(1))

    await loop.start_run()
    winner = await loop.train("0.9")
    loop.jobs["train"] = winner["run_id"]
    assert (await loop.step("gate")).state == "succeeded"
    assert (await loop.step("register")).details["version"] == 2
    moved = await loop.step("promote")
    assert moved.state == "succeeded" and moved.details["deployments"] == ["iris"]
    assert moved.reason == "moved iris@production from version 1 to version 2; iris will roll out on the next tick"

    # Nothing else is called: the deploy service's tick sees the alias name another version and rolls out.
    await until("v2 to serve", lambda: serving(2))
    history = await cli_json(fleet, "deploy", "history", "iris")
    rollout = [e for e in history if e["kind"] == "rollout"][-1]
    assert rollout["detail"]["cause"] == "alias production moved 1\u21922" and rollout["version"] == 2
