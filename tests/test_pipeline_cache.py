"""The step cache over a real DuckDB file and real files: a run's steps are recorded with their keys, an
unchanged re-run reuses every step, flipping one input, the code or a param re-runs exactly the steps
that depend on it (0 false hits, 0 needless re-runs), a cached output deleted or changed is a miss, and
--force / --no-cache do what they say. The "jobs" are a small executor that writes real output files
whose bytes follow from the step's key, so the planner, the store and the output checks are all real.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import duckdb
import pytest

from mlfleet.core.base.errors import UsageError
from mlfleet.core.jobs.overrides import parse_overrides
from mlfleet.core.pipelines import graph, records
from mlfleet.core.pipelines.gates import RunSummary, decide
from mlfleet.core.pipelines.keys import StepFacts, StepKey
from mlfleet.core.pipelines.models import Pipeline
from mlfleet.core.pipelines.outputs import OutputError, hash_output, hash_outputs, verify_outputs
from mlfleet.core.pipelines.plan import Lookup, plan, plan_all
from mlfleet.core.pipelines.spec import load_pipeline_spec
from mlfleet.core.store import schema
from mlfleet.core.store.db import Store

FIVE = """\
name: five
params: {{lr: 0.1, rows: 10}}
steps:
  a:
    job: {{command: [python, a.py, "{{params.rows}}"], workdir: code}}
    inputs: [data/raw.csv]
    outputs: {{x: out/x.csv, y: out/y}}
  b:
    job: {{command: [python, b.py], workdir: code, params: {{lr: "{{params.lr}}"}}}}
    inputs: [a.outputs.x, {labels}]
    outputs: {{z: out/z.bin}}
  c:
    job: {{command: [python, c.py], workdir: code}}
    inputs: [a.outputs.y]
    outputs: {{w: out/w.bin}}
  d:
    job: {{command: [python, d.py], workdir: code}}
    inputs: [b.outputs.z, c.outputs.w]
    outputs: {{report: out/report.json}}
  e:
    needs: [c]
    job: {{command: [python, e.py], workdir: code}}
    inputs: [data/other.csv]
"""


class Fleet:
    """A checkout with code and data, a store, and an executor that 'runs' steps by writing their outputs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        code = root / "code"
        (code / "data").mkdir(parents=True)
        for name in "abcde":
            (code / f"{name}.py").write_text(f"print('step {name}')\n")
        (code / "data" / "raw.csv").write_text("x,y\n1,2\n")
        (code / "data" / "other.csv").write_text("k\n7\n")
        self.labels = root / "labels.csv"
        self.labels.write_text("label\n0\n")
        self.spec = root / "pipeline.yaml"
        self.spec.write_text(FIVE.format(labels=self.labels))
        self.store = Store(root / "mlfleet.duckdb")
        self.con = self.store.con
        self.ran: list[str] = []
        self.env: dict[str, str] = {}  # a step's env_hash (its resolved lockfile) when not the default

    def pipeline(self, sets: dict[str, str] | None = None) -> Pipeline:
        return load_pipeline_spec(self.spec, parse_overrides([f"{k}={v}" for k, v in (sets or {}).items()]))

    def facts(self, pipeline: Pipeline) -> dict[str, StepFacts]:
        """What the service measures: the code (the step's script) and each file input's content."""
        code = self.root / "code"
        out = {}
        for name, step in pipeline.steps.items():
            files = {}
            for item in step.inputs:
                if item.step is None:
                    path = Path(item.text) if item.kind == "host" else code / item.text
                    files[item.text] = hashlib.sha256(path.read_bytes()).hexdigest()
            out[name] = StepFacts(env_hash=self.env.get(name, "env1"), code_hash=hashlib.sha256((code / f"{name}.py").read_bytes())
                                  .hexdigest(), files=files)
        return out

    def lookup(self, project: str):  # noqa: ANN201 - the service's lookup: store, then the files
        def answer(step: str, key: StepKey) -> Lookup:
            hit = records.cached_step(self.con, project, key.key)
            return Lookup(hit=hit, problems=verify_outputs(hit.outputs) if hit else [])
        return answer

    def execute(self, run_id: str, name: str, key: StepKey, pipeline: Pipeline) -> None:
        """The job: writes each output with bytes that follow from the key (a deterministic step)."""
        self.ran.append(name)
        workdir = self.root / "runs" / run_id / name
        for output, path in pipeline.steps[name].outputs.items():
            target = workdir / path
            if output == "y":  # a folder output
                (target / "part").mkdir(parents=True, exist_ok=True)
                (target / "part" / "0.txt").write_text(f"{key.key} {output} 0")
                (target / "1.txt").write_text(f"{key.key} {output} 1")
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(f"{key.key} {output}")
        digests = hash_outputs(workdir, pipeline.steps[name].outputs)
        stored = {n: type(d)(name=d.name, path=d.path, sha256=d.sha256, size=d.size, files=d.files, host="local",
                             stored=str(workdir / d.path)) for n, d in digests.items()}
        records.succeed_step(self.con, run_id, name, stored)

    def run(self, pipeline: Pipeline, force: tuple[str, ...] = (), no_cache: bool = False) -> tuple[str, list[str]]:
        """A whole run the way the service will drive it: plan, act, plan again as steps end. Returns the run and
        the steps that ran, in order."""
        run_id = records.new_run(self.con, pipeline, "ann")
        facts = self.facts(pipeline)
        previous = {n: p for n in pipeline.steps
                    if (p := records.previous_parts(self.con, pipeline.project, pipeline.name, n, run_id)) is not None}
        self.ran = []
        while True:
            current = plan_all(pipeline, facts, self.lookup(pipeline.project), settled=records.settled(self.con, run_id),
                               previous=previous, force=force, no_cache=no_cache)
            acted = False
            for decision in current.decisions.values():
                if decision.settled:
                    continue
                if decision.state == "cached":
                    records.mark_cached(self.con, run_id, decision.step, decision.key, decision.hit,
                                        "; ".join(decision.reasons))
                    acted = True
                elif decision.state == "run":
                    records.set_step(self.con, run_id, decision.step, "running", key=decision.key,
                                     reason="; ".join(decision.reasons), forced=decision.forced)
                    self.execute(run_id, decision.step, decision.key, pipeline)
                    acted = True
                elif decision.state == "skipped":
                    records.set_step(self.con, run_id, decision.step, "skipped", reason="; ".join(decision.reasons))
                    acted = True
            if not acted:
                assert not current.named("waiting"), current
                records.end_run(self.con, run_id, "succeeded")
                return run_id, self.ran


@pytest.fixture
def fleet(tmp_path: Path):  # noqa: ANN201
    f = Fleet(tmp_path)
    yield f
    f.store.close()


def pipelines_version() -> int:
    return next(v for v, name, _ in schema.migrations() if name.endswith("_pipelines.sql"))


# ------------------------------------------------------------------ the migration

def test_the_migration_makes_the_tables_on_a_fresh_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "fresh.duckdb")
    try:
        assert store.version == schema.latest_version() >= pipelines_version()
        tables = {r[0] for r in store.con.execute("select table_name from information_schema.tables").fetchall()}
        assert {"pipeline_runs", "pipeline_steps", "pipeline_step_outputs", "pipeline_gate_decisions"} <= tables
    finally:
        store.close()


def test_the_migration_applies_on_a_store_at_the_version_before_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("create table schema_version (version integer primary key, name varchar, "
                "applied_at timestamptz default current_timestamp)")
    for version, name, sql in schema.migrations():
        if version < pipelines_version():
            con.execute(sql)
            con.execute("insert into schema_version (version, name) values (?, ?)", [version, name])
    con.execute("insert into audit (ts, actor, action, target, detail) values (now(), 'bob', 'job.submit', 'j1', '{}')")
    con.close()
    store = Store(path)
    try:
        assert store.version == schema.latest_version()
        assert store.con.execute("select count(*) from pipeline_steps").fetchall()[0][0] == 0
        assert store.con.execute("select count(*) from audit where actor = 'bob'").fetchall()[0][0] == 1
        applied = [r[0] for r in store.con.execute("select version from schema_version order by version").fetchall()]
        assert pipelines_version() in applied
    finally:
        store.close()


# ------------------------------------------------------------------ outputs

def test_outputs_hash_files_and_folders_canonically_and_refuse_links_and_escapes(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    for root, order in ((one, ["b", "a/x", "a.txt"]), (two, ["a.txt", "a/x", "b"])):
        for rel in order:  # the same tree written in another order
            (root / "out" / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / "out" / rel).write_text(rel)
    first, second = hash_output(one, "m", "out"), hash_output(two, "m", "out")
    assert first.sha256 == second.sha256 and first.files == 3 and first.size == len("ba/xa.txt")
    lines = b"".join(f"{p}\0{hashlib.sha256(p.encode()).hexdigest()}\n".encode() for p in sorted(["b", "a/x", "a.txt"]))
    assert first.sha256 == hashlib.sha256(lines).hexdigest()
    assert hash_output(one, "f", "out/b").files is None
    os.symlink("/etc/passwd", one / "out" / "link")
    with pytest.raises(OutputError, match="symbolic link"):
        hash_output(one, "m", "out")
    os.symlink(one / "out", tmp_path / "via")
    with pytest.raises(OutputError, match="symbolic link"):
        hash_output(tmp_path, "m", "via/b")
    os.mkfifo(two / "out" / "pipe")
    with pytest.raises(OutputError, match="neither a file nor a folder"):
        hash_output(two, "m", "out")
    for bad in ("../one/out/b", "/etc/passwd", "."):
        with pytest.raises(OutputError):
            hash_output(one, "m", bad)
    with pytest.raises(OutputError, match=r"output m \(out/none\) is missing"):
        hash_output(one, "m", "out/none")


# ------------------------------------------------------------------ the cache, end to end

def test_an_unchanged_rerun_reuses_every_step_and_the_store_says_so(fleet: Fleet) -> None:
    pipeline = fleet.pipeline()
    first, ran = fleet.run(pipeline)
    assert sorted(ran) == list("abcde")
    second, ran = fleet.run(pipeline)
    assert ran == []
    steps = {s["step"]: s for s in records.run_steps(fleet.con, second)}
    assert {s["state"] for s in steps.values()} == {"cached"} and steps["a"]["source_run"] == first
    assert records.outputs_of(fleet.con, second, "a")["y"].files == 2
    hit = records.cached_step(fleet.con, pipeline.project, steps["d"]["key"])
    assert hit is not None and hit.run_id == first and set(hit.outputs) == {"report"}
    assert records.cached_step(fleet.con, "other-project", steps["d"]["key"]) is None


def mutations(fleet: Fleet) -> list[tuple[str, object, set[str]]]:
    """Every fact of the five steps: (what, how to flip it, the steps it must re-run)."""
    up = graph.upstream_of(fleet.pipeline())

    def below(step: str) -> set[str]:
        return {step} | graph.dependents(up, step)

    code = fleet.root / "code"
    out: list[tuple[str, object, set[str]]] = []
    for name in "abcde":
        out.append((f"code of {name}", code / f"{name}.py", below(name)))
    out += [("data/raw.csv", code / "data" / "raw.csv", below("a")),
            ("data/other.csv", code / "data" / "other.csv", below("e")),
            ("labels", fleet.labels, below("b"))]
    out += [("params.lr", {"params.lr": "0.2"}, below("b")), ("params.rows", {"params.rows": "11"}, below("a"))]
    out += [(f"environment of {name}", ("env", name), below(name)) for name in "abcde"]
    return out


def flip_byte(path: Path) -> bytes:
    before = path.read_bytes()
    path.write_bytes(before[:-2] + bytes([before[-2] ^ 1]) + before[-1:])
    return before


def test_flipping_each_input_the_code_or_a_param_reruns_exactly_its_dependents(fleet: Fleet) -> None:
    fleet.run(fleet.pipeline())
    for what, how, expected in mutations(fleet):
        if isinstance(how, Path):
            before = flip_byte(how)
            _, ran = fleet.run(fleet.pipeline())
            how.write_bytes(before)
        elif isinstance(how, tuple):
            fleet.env[how[1]] = "env2"
            _, ran = fleet.run(fleet.pipeline())
            fleet.env.clear()
        else:
            _, ran = fleet.run(fleet.pipeline(how))
        assert set(ran) == expected and len(ran) == len(expected), (what, ran, expected)
        _, again = fleet.run(fleet.pipeline())  # back as it was: the first run's outputs serve again
        assert again == [], (what, again)


def test_why_a_step_ran_names_the_part_of_its_key_that_changed(fleet: Fleet) -> None:
    fleet.run(fleet.pipeline())
    run_id, _ = fleet.run(fleet.pipeline({"params.lr": "0.3"}))
    steps = {s["step"]: s for s in records.run_steps(fleet.con, run_id)}
    assert "params.lr changed 0.1 → 0.3" in steps["b"]["reason"]
    assert "input b.outputs.z changed" in steps["d"]["reason"]
    assert steps["a"]["state"] == "cached" and "outputs checked unchanged" in steps["a"]["reason"]


def test_a_cached_output_deleted_or_changed_is_a_miss_never_a_false_hit(fleet: Fleet) -> None:
    first, _ = fleet.run(fleet.pipeline())
    z = Path(records.outputs_of(fleet.con, first, "b")["z"].stored or "")
    z.unlink()
    run_id, ran = fleet.run(fleet.pipeline())
    assert ran == ["b"]  # b writes the same bytes again: d is still cached (early cut-off)
    reason = {s["step"]: s for s in records.run_steps(fleet.con, run_id)}["b"]["reason"]
    assert "cannot be reused" in reason and "is missing" in reason
    part = Path(records.outputs_of(fleet.con, run_id, "a")["y"].stored or "") / "part" / "0.txt"
    part.write_text("tampered")  # a file inside a cached folder output
    run_id, ran = fleet.run(fleet.pipeline())
    assert ran == ["a"]
    reason = {s["step"]: s for s in records.run_steps(fleet.con, run_id)}["a"]["reason"]
    assert "output y" in reason and "changed (sha256" in reason


def test_force_runs_one_step_and_no_cache_runs_them_all(fleet: Fleet) -> None:
    fleet.run(fleet.pipeline())
    run_id, ran = fleet.run(fleet.pipeline(), force=("c",))
    assert ran == ["c"]  # same bytes out: nothing below it re-runs
    step = {s["step"]: s for s in records.run_steps(fleet.con, run_id)}["c"]
    assert step["forced"] and step["reason"].startswith("forced")
    _, ran = fleet.run(fleet.pipeline(), no_cache=True)
    assert sorted(ran) == list("abcde")
    with pytest.raises(UsageError, match="did you mean 'c'"):
        plan(fleet.pipeline(), {}, {}, force=("cc",))


def test_steps_below_a_running_step_wait_and_below_a_failed_one_are_skipped(fleet: Fleet) -> None:
    pipeline = fleet.pipeline()
    facts = fleet.facts(pipeline)
    first = plan(pipeline, facts, {})
    assert first.named("lookup") == ["a"] and set(first.named("waiting")) == set("bcde")
    assert "waits for a (being looked up)" in first.decisions["b"].reasons
    missed = plan(pipeline, facts, {first.decisions["a"].key.key: Lookup()})
    assert missed.named("run") == ["a"] and "new step" in missed.decisions["a"].reasons
    run_id = records.new_run(fleet.con, pipeline, "ann")
    records.set_step(fleet.con, run_id, "a", "running", key=missed.decisions["a"].key)
    assert plan(pipeline, facts, {}, settled=records.settled(fleet.con, run_id)).decisions["b"].reasons == [
        "waits for a (running)"]
    records.set_step(fleet.con, run_id, "a", "failed", reason="exit code 1")
    after = plan(pipeline, facts, {}, settled=records.settled(fleet.con, run_id))
    assert set(after.named("skipped")) == set("bcde")
    assert after.decisions["b"].reasons == ["upstream step a failed"]


GATED = """\
name: gated
steps:
  train:
    job: {command: [python, train.py], workdir: code}
    outputs: {model: out/model.npz}
  gate:
    gate: {challenger: train, champion: iris@production, require: ["metrics.acc.max >= champion.metrics.acc.max"]}
  register:
    register: {model: iris, step: train, artifact: model.npz}
  promote:
    promote: {alias: production, register: register, gate: gate}
"""


def test_a_gate_that_does_not_pass_is_recorded_and_stops_promotion(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "gated.yaml").write_text(GATED)
    pipeline = load_pipeline_spec(tmp_path / "gated.yaml")
    store = Store(tmp_path / "mlfleet.duckdb")
    try:
        con = store.con
        run_id = records.new_run(con, pipeline, "ann", trigger="drift", cause={"deployment": "iris"})
        facts = {"train": StepFacts(code_hash="c" * 64)}
        first = plan(pipeline, facts, {}, settled=records.settled(con, run_id))
        key = first.decisions["train"].key
        train = plan(pipeline, facts, {key.key: Lookup()}, settled=records.settled(con, run_id)).decisions["train"]
        assert train.state == "run"
        records.set_step(con, run_id, "train", "running", key=train.key, job_id="j1")
        (tmp_path / "code" / "out").mkdir()
        (tmp_path / "code" / "out" / "model.npz").write_bytes(b"weights")
        records.succeed_step(con, run_id, "train", hash_outputs(tmp_path / "code", pipeline.steps["train"].outputs))
        now = plan(pipeline, facts, {}, settled=records.settled(con, run_id))
        assert now.named("lookup") == ["gate"] and now.named("waiting") == ["promote"]
        assert now.named("run") == ["register"] and "acts on the registry" in now.decisions["register"].reasons[0]
        decision = decide(["metrics.acc.max >= champion.metrics.acc.max"],
                          RunSummary(label="run r2", metrics={"acc": {"max": 0.8}}),
                          RunSummary(label="iris@production (version 3)", metrics={"acc": {"max": 0.9}}))
        records.set_step(con, run_id, "gate", "running", key=now.decisions["gate"].key)
        records.record_gate(con, run_id, "gate", "iris@production", decision, challenger_run="r2",
                            champion_version=3, champion_run="r1")
        after = plan(pipeline, facts, {}, settled=records.settled(con, run_id))
        assert after.decisions["gate"].state == "gate-failed" and after.named("skipped") == ["promote"]
        assert after.decisions["promote"].reasons == ["gate gate did not pass"]
        kept = records.gate_decision(con, run_id, "gate")
        assert kept is not None and kept["passed"] is False and kept["champion_version"] == 3
        assert kept["decision"]["requirements"][0]["left"] == 0.8
        assert records.get_run(con, run_id)["cause"] == {"deployment": "iris"}
        assert con.execute("select count(*) from audit where action = 'pipeline.run' and target = ?",
                           [run_id]).fetchall()[0][0] == 1
    finally:
        store.close()
