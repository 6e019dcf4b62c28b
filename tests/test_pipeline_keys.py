"""Step keys: a step re-runs exactly when something it depends on changed, and ``why`` says what.

The mutation story: a five-step pipeline, every fact its keys are made of
(each input's content hash, each step's code hash and env hash, each
output a step writes) changed by one byte in turn; the keys that change are
exactly those of the steps that depend on it, transitively, and no others:
0 false hits, 0 needless re-runs. Then the code hash itself: a workdir's
snapshot with the pipeline's data files excluded does not move when the data
does, and does move for any other change.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlfleet.core.jobs.snapshot import excluded, snapshot
from mlfleet.core.pipelines import graph
from mlfleet.core.pipelines.explain import explain
from mlfleet.core.pipelines.keys import (KeyParts, StepFacts, StepKey, canonical, canonical_bytes, pipeline_keys,
                                         step_key)
from mlfleet.core.pipelines.models import Pipeline
from mlfleet.core.pipelines.spec import code_excludes, load_pipeline_spec

# a reads raw data; b and c read different outputs of a; d reads b and c; e only waits for c (needs:).
FIVE = """\
name: five
params: {lr: 0.1, rows: 10}
steps:
  a:
    job: {command: [python, a.py, "{params.rows}"], workdir: code}
    inputs: [data/raw.csv]
    outputs: {x: out/x.csv, y: out/y.csv}
  b:
    job: {command: [python, b.py], workdir: code, params: {lr: "{params.lr}"}}
    inputs: [a.outputs.x, /srv/labels.csv]
    outputs: {z: out/z.bin}
  c:
    job: {command: [python, c.py], workdir: code}
    inputs: [a.outputs.y]
    outputs: {w: out/w.bin}
  d:
    job: {command: [python, d.py], workdir: code}
    inputs: [b.outputs.z, c.outputs.w]
    outputs: {report: out/report.json}
  e:
    needs: [c]
    job: {command: [python, e.py], workdir: code}
    inputs: [data/other.csv]
"""


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def five(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    folder = tmp_path_factory.mktemp("five")
    (folder / "code").mkdir()
    (folder / "pipeline.yaml").write_text(FIVE)
    return load_pipeline_spec(folder / "pipeline.yaml")


def base_facts(pipeline: Pipeline) -> dict[str, StepFacts]:
    """What the service would measure: one env and code hash per step, one content hash per file input."""
    return {name: StepFacts(env_hash=sha(f"env {name}"), code_hash=sha(f"code {name}"),
                            files={i.text: sha(f"file {name} {i.text}") for i in step.inputs if i.step is None})
            for name, step in pipeline.steps.items()}


def deterministic_outputs(changed: tuple[str, str] | None = None):  # noqa: ANN201 - an OutputsOf
    """A run writes bytes that follow from its key; ``changed`` (step, output) writes other bytes for one output."""
    def outputs_of(step: str, key: StepKey) -> dict[str, str]:
        out = {name: sha(f"{key.key} {name}") for name in FIVE_OUTPUTS[step]}
        if changed and changed[0] == step:
            out[changed[1]] = flip(out[changed[1]], 0, "f")
        return out
    return outputs_of


FIVE_OUTPUTS = {"a": ["x", "y"], "b": ["z"], "c": ["w"], "d": ["report"], "e": []}


def flip(digest: str, position: int, char: str | None = None) -> str:
    """``digest`` with one hex character changed (to ``char`` when it differs, else to the next one)."""
    old = digest[position]
    new = char if char and char != old else "0123456789abcdef"[("0123456789abcdef".index(old) + 1) % 16]
    return digest[:position] + new + digest[position + 1:]


def changed_keys(before: dict[str, StepKey], after: dict[str, StepKey]) -> set[str]:
    assert set(before) == set(after)
    return {name for name in before if before[name].key != after[name].key}


def targets(pipeline: Pipeline) -> list[tuple[str, str, str]]:
    """Every fact a key is made of: (what, step, which)."""
    out = []
    for name, step in pipeline.steps.items():
        out += [("env", name, ""), ("code", name, "")]
        out += [("file", name, i.text) for i in step.inputs if i.step is None]
        out += [("output", name, o) for o in step.outputs]
    return out


def mutated(pipeline: Pipeline, target: tuple[str, str, str], position: int) -> dict[str, StepKey]:
    what, step, which = target
    facts = base_facts(pipeline)
    fact = facts[step]
    if what == "env":
        facts[step] = StepFacts(env_hash=flip(fact.env_hash or "", position), code_hash=fact.code_hash, files=fact.files)
    elif what == "code":
        facts[step] = StepFacts(env_hash=fact.env_hash, code_hash=flip(fact.code_hash or "", position), files=fact.files)
    elif what == "file":
        facts[step] = StepFacts(env_hash=fact.env_hash, code_hash=fact.code_hash,
                                files={**fact.files, which: flip(fact.files[which], position)})
    return pipeline_keys(pipeline, facts, deterministic_outputs((step, which) if what == "output" else None))


def expected(pipeline: Pipeline, target: tuple[str, str, str]) -> set[str]:
    """Who must re-run: the step itself and all below it; for one output, only its readers and all below them."""
    what, step, which = target
    upstream = graph.upstream_of(pipeline)
    if what != "output":
        return {step} | graph.dependents(upstream, step)
    readers = {n for n, s in pipeline.steps.items() if any(i.step == step and i.output == which for i in s.inputs)}
    return readers | set().union(*(graph.dependents(upstream, r) for r in readers))


def test_every_fact_changes_exactly_the_keys_that_depend_on_it(five: Pipeline) -> None:
    baseline = pipeline_keys(five, base_facts(five), deterministic_outputs())
    assert list(baseline) == ["a", "b", "c", "d", "e"]  # every key known: every run "finished"
    assert len({k.key for k in baseline.values()}) == 5
    found = targets(five)
    assert len(found) == 5 * 2 + 3 + 5  # env and code of each, three file inputs (one on the host), five outputs
    for target in found:
        for position in (0, 31, 63):
            after = mutated(five, target, position)
            assert changed_keys(baseline, after) == expected(five, target), (target, position)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_one_byte_anywhere_in_any_fact_is_seen_by_its_dependents_only(five: Pipeline, data: st.DataObject) -> None:
    target = data.draw(st.sampled_from(targets(five)))
    position = data.draw(st.integers(0, 63))
    baseline = pipeline_keys(five, base_facts(five), deterministic_outputs())
    assert changed_keys(baseline, mutated(five, target, position)) == expected(five, target)


def test_the_example_dependents_are_what_a_reader_expects(five: Pipeline) -> None:
    upstream = graph.upstream_of(five)
    assert graph.dependents(upstream, "a") == {"b", "c", "d", "e"}
    assert graph.dependents(upstream, "b") == {"d"} and graph.dependents(upstream, "c") == {"d", "e"}
    assert expected(five, ("output", "a", "x")) == {"b", "d"}  # c reads a's other output: not re-run


def test_an_upstream_rerun_that_writes_the_same_bytes_reruns_nothing_below(five: Pipeline) -> None:
    facts = base_facts(five)

    def same_bytes(step: str, key: StepKey) -> dict[str, str]:
        return {name: sha(f"{step} {name}") for name in FIVE_OUTPUTS[step]}  # content, whatever the key

    before = pipeline_keys(five, facts, same_bytes)
    facts["a"] = StepFacts(env_hash=facts["a"].env_hash, code_hash=sha("a refactored"), files=facts["a"].files)
    assert changed_keys(before, pipeline_keys(five, facts, same_bytes)) == {"a"}


def test_a_param_re_runs_only_the_steps_that_name_it(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "pipeline.yaml").write_text(FIVE)
    from mlfleet.core.jobs.overrides import parse_overrides
    one = load_pipeline_spec(tmp_path / "pipeline.yaml")
    two = load_pipeline_spec(tmp_path / "pipeline.yaml", parse_overrides(["params.lr=0.2"]))
    before = pipeline_keys(one, base_facts(one), deterministic_outputs())
    after = pipeline_keys(two, base_facts(two), deterministic_outputs())
    assert changed_keys(before, after) == {"b", "d"}  # b names lr; d reads b's output
    assert "params.lr changed 0.1 → 0.2" in explain(before["b"].parts, after["b"].parts)
    assert explain(before["d"].parts, after["d"].parts)[0].startswith("input b.outputs.z changed (sha256 ")


def test_keys_wait_for_the_outputs_they_read(five: Pipeline) -> None:
    """Before a runs, only a's key is known; b and c wait for its outputs, d for theirs; e waits for c's key."""
    nothing_ran = pipeline_keys(five, base_facts(five), lambda step, key: None)
    assert list(nothing_ran) == ["a"]

    def only_a(step: str, key: StepKey) -> dict[str, str] | None:
        return {"x": sha("x"), "y": sha("y")} if step == "a" else None

    assert list(pipeline_keys(five, base_facts(five), only_a)) == ["a", "b", "c", "e"]


# ------------------------------------------------------------------ explain

def parts(**change: object) -> KeyParts:
    base = dict(spec=sha("spec"), params={"lr": 0.1, "layers": [64, 64]}, env=sha("env"), code=sha("code"),
                inputs={"prepare.outputs.data": sha("data"), "data/raw.csv": sha("raw")}, upstream={"c": sha("c")})
    base.update(change)
    return KeyParts(**base)  # type: ignore[arg-type]


def test_explain_says_each_part_that_changed_in_a_sentence() -> None:
    before = parts()
    after = parts(params={"lr": 0.2, "layers": [64, 64], "seed": 1}, code=sha("code 2"),
                  inputs={"prepare.outputs.data": sha("data 2"), "data/raw.csv": sha("raw")}, upstream={"c": sha("c2")})
    said = explain(before, after)
    data_before, data_after = sha("data")[:8], sha("data 2")[:8]
    assert said == [
        "params.lr changed 0.1 → 0.2",
        "params.seed added (1)",
        f"code changed (sha256 {sha('code')[:8]}… → {sha('code 2')[:8]}…)",
        f"input prepare.outputs.data changed (sha256 {data_before}… → {data_after}…)",
        f"upstream step c changed (key {sha('c')[:8]}… → {sha('c2')[:8]}…)",
    ]


def test_explain_shows_enough_of_a_hash_to_see_the_difference() -> None:
    digest = sha("env")
    said = explain(parts(), parts(env=flip(digest, 40)))
    assert said == [f"environment changed (env_hash {digest[:41]}… → {flip(digest, 40)[:41]}…)"]


def test_explain_new_forced_and_unchanged() -> None:
    assert explain(None, parts()) == ["new step"]
    assert explain(parts(), parts(), forced=True) == ["forced"]
    assert explain(parts(), parts()) == []
    assert explain(parts(), parts(spec=sha("spec 2")))[0].startswith("spec changed (sha256 ")
    assert explain(parts(env=None), parts()) == [f"environment added (env_hash {sha('env')[:8]}…)"]
    assert explain(parts(), parts(inputs={"data/raw.csv": sha("raw")})) == ["input prepare.outputs.data removed"]


# ---------------------------------------------------------- canonical bytes

def test_one_value_has_one_encoding() -> None:
    assert canonical_bytes({"b": 1.0, "a": [True, None, "x"]}) == b'{"a":[true,null,"x"],"b":1}'
    assert canonical_bytes({"lr": 1}) == canonical_bytes({"lr": 1.0})  # lr: 1 and lr: 1.0 are one number
    assert canonical_bytes({"on": True}) != canonical_bytes({"on": 1})  # a bool is never a number
    assert canonical_bytes({"x": 0.1}) == b'{"x":0.1}'  # the shortest text that reads back as the same float
    assert canonical(float("nan")) == {"float": "nan"} and canonical(float("-inf")) == {"float": "-inf"}
    with pytest.raises(TypeError):
        canonical({1: "x"})
    with pytest.raises(TypeError):
        canonical({"x": object()})


def test_the_pure_modules_do_no_io_and_read_no_clock() -> None:
    """docs/architecture.md: step keys and gate decisions are pure functions over plain data."""
    import ast
    forbidden = {"os", "pathlib", "subprocess", "time", "datetime", "random", "socket", "shutil", "io", "tempfile",
                 "asyncio", "duckdb", "glob"}
    folder = Path(__file__).resolve().parent.parent / "core" / "pipelines"
    for name in ("graph", "keys", "explain", "gates", "params", "cron", "models", "triggers"):
        # cron and triggers compute with times they are given (datetime values), never the clock's
        banned = forbidden - {"datetime"} if name in ("cron", "triggers") else forbidden
        tree = ast.parse((folder / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not {a.name.split(".")[0] for a in node.names} & banned, (name, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] not in banned, (name, node.lineno)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("open", "print", "input"), (name, node.lineno)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                assert node.func.attr not in ("now", "utcnow", "today", "time"), (name, node.lineno)


def test_the_key_moves_with_each_part_and_not_with_their_order() -> None:
    one = step_key({"kind": "job"}, {"lr": 0.1, "seed": 1}, "e", "c", {"a": "1", "b": "2"})
    two = step_key({"kind": "job"}, {"seed": 1, "lr": 0.1}, "e", "c", {"b": "2", "a": "1"})
    assert one.key == two.key and one.parts == two.parts and one.parts.params_hash == two.parts.params_hash
    assert len({one.key, step_key({"kind": "job"}, {"lr": 0.1, "seed": 1}, "e2", "c", {"a": "1", "b": "2"}).key,
                step_key({"kind": "job"}, {"lr": 0.1, "seed": 1}, "e", None, {"a": "1", "b": "2"}).key}) == 3


def test_where_and_when_a_job_runs_is_not_what_it_computes(five: Pipeline) -> None:
    """Another host (constraints), a higher priority or more retries keep the key; more memory does not."""
    import msgspec

    from mlfleet.core.base.models import Constraints
    from mlfleet.core.pipelines.keys import key_of_step

    step = five.steps["a"]
    assert step.job is not None
    base = key_of_step(step, StepFacts(), {}, {}).key
    for changed in ({"priority": 9}, {"retries": 3}, {"constraints": Constraints(hosts=["node-b"])}):
        moved = msgspec.structs.replace(step, job=msgspec.structs.replace(step.job, **changed))
        assert key_of_step(moved, StepFacts(), {}, {}).key == base, changed
    bigger = msgspec.structs.replace(step.job.resources, memory=(step.job.resources.memory or 0) + 2**30)
    grown = msgspec.structs.replace(step, job=msgspec.structs.replace(step.job, resources=bigger))
    assert key_of_step(grown, StepFacts(), {}, {}).key != base


# ------------------------------------------------ the code hash without data

def tree(folder: Path) -> Path:
    (folder / "data").mkdir(parents=True)
    (folder / "out").mkdir()
    (folder / "train.py").write_text("print('train')\n")
    (folder / "data" / "raw.csv").write_text("a,b\n1,2\n")
    (folder / "out" / "model.npz").write_bytes(b"\x00\x01")
    (folder / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(folder / "run.sh", 0o755)
    return folder


def test_a_snapshot_without_exclude_hashes_exactly_as_before(tmp_path: Path) -> None:
    # computed with core/jobs/snapshot.py as it was before exclude= existed (commit 8cbf25c)
    assert snapshot(tree(tmp_path / "w"), tmp_path / "cache").sha256 == \
        "1f7a19972ee3a89d17ba807372d228d349693d461425593d17b39134a4364123"


def test_a_changed_data_file_leaves_the_code_hash_and_any_other_change_moves_it(tmp_path: Path) -> None:
    work = tree(tmp_path / "w")
    cache = tmp_path / "cache"
    exclude = ("data/raw.csv", "out/")

    def code_hash() -> str:
        return snapshot(work, cache, exclude=exclude).sha256

    first = code_hash()
    assert first != snapshot(work, cache).sha256
    (work / "data" / "raw.csv").write_text("a,b\n1,2\n3,4\n")  # new data
    (work / "out" / "model.npz").write_bytes(b"\x00\x02")  # a new output, under an excluded folder
    (work / "out" / "extra.bin").write_bytes(b"more")
    assert code_hash() == first
    (work / "train.py").write_text("print('train!')\n")  # a code change
    second = code_hash()
    assert second != first
    (work / "data" / "other.csv").write_text("x\n")  # a data file no one declared is code, as for any job
    assert code_hash() != second
    (work / "data" / "other.csv").unlink()
    os.chmod(work / "run.sh", 0o644)  # a mode is part of the code too
    assert code_hash() != second
    snap = snapshot(work, cache, exclude=exclude)
    assert any("declared data file" in s for s in snap.skipped)


@pytest.mark.parametrize("rel,patterns,hit", [
    ("data/raw.csv", ("data/raw.csv",), True), ("data/raw.csv", ("./data/raw.csv",), True),
    ("data/raw.csv", ("data",), True), ("data/raw.csv", ("data/",), True), ("data/raw.csv", ("data/*.csv",), True),
    ("database.py", ("data",), False), ("data/raw.csv.bak", ("data/raw.csv",), False), ("train.py", (), False),
    ("train.py", ("",), False),
])
def test_what_an_exclude_pattern_covers(rel: str, patterns: tuple[str, ...], hit: bool) -> None:
    assert excluded(rel, patterns) is hit


def test_code_excludes_are_every_declared_data_path_in_the_workdir(five: Pipeline) -> None:
    assert code_excludes(five, "c") == ("data/raw.csv", "out/x.csv", "out/y.csv", "out/z.bin", "out/w.bin",
                                        "out/report.json", "data/other.csv")
