"""A user writes pipeline.yaml: a good one loads as written, each mistake is one sentence at its line.

Stories: the closed-loop example validates; params fill into steps and
``--set`` changes them; a job step is checked by the jobs' own rules at the
pipeline's lines, or read from a job spec file; and every kind of mistake
(unknown field, wrong kind, unknown step or output, a cycle, a bad gate
requirement, a bad cron) is reported where it was written, all in one pass.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mlfleet.core.base.errors import SpecError, SpecErrors
from mlfleet.core.jobs.overrides import parse_overrides
from mlfleet.core.pipelines import graph
from mlfleet.core.pipelines.cron import cron_problem
from mlfleet.core.pipelines.spec import code_excludes, load_pipeline_spec

REPO = Path(__file__).resolve().parent.parent

GOOD = """\
name: loop
project: demo
params: {lr: 0.1, rows: 100, model: iris}
on:
  schedule: ["0 3 * * *", "@hourly"]
  data: [data/*.csv]
  drift: {deployment: iris}
  after: nightly-etl
concurrency: replace
steps:
  prepare:
    job:
      command: [python, prep.py, --rows, "{params.rows}"]
      workdir: code
    inputs: [data/raw.csv, /srv/shared/labels.csv]
    outputs: {data: out/data.csv}
  train:
    job:
      command: [python, train.py]
      workdir: code
      params: {lr: "{params.lr}", seed: 1}
    inputs: [prepare.outputs.data]
    outputs: {model: out/model.npz, reference: out/ref.csv}
  check:
    drift: {reference: train.outputs.reference, current: prepare.outputs.data}
  gate:
    needs: [check]
    gate:
      challenger: train
      champion: "{params.model}@production"
      require: ["metrics.acc.max >= champion.metrics.acc.max + 0.005"]
  register:
    register: {model: "{params.model}", step: train, artifact: model.npz}
  promote:
    promote: {alias: production, register: register, gate: gate}
"""


def write(tmp_path: Path, text: str, name: str = "pipeline.yaml") -> Path:
    (tmp_path / "code").mkdir(exist_ok=True)
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def line(text: str, snippet: str) -> int:
    """The 1-based line of the first line of ``text`` holding ``snippet``."""
    return next(i for i, row in enumerate(textwrap.dedent(text).splitlines(), 1) if snippet in row)


def errors(path: Path, overrides: list[str] | None = None) -> list[SpecError]:
    with pytest.raises(SpecError) as caught:
        load_pipeline_spec(path, parse_overrides(overrides))
    exc = caught.value
    return exc.errors if isinstance(exc, SpecErrors) else [exc]


def only_error(path: Path, overrides: list[str] | None = None) -> SpecError:
    found = errors(path, overrides)
    assert len(found) == 1, [str(e) for e in found]
    return found[0]


def mistake(tmp_path: Path, old: str, new: str) -> tuple[Path, str]:
    assert old in GOOD, old
    text = GOOD.replace(old, new, 1)
    return write(tmp_path, text), text


# ----------------------------------------------------------------- good files

def test_the_closed_loop_example_validates_in_the_order_it_reads() -> None:
    pipeline = load_pipeline_spec(REPO / "configs/pipelines/closed-loop.yaml")
    order = graph.topological_order(graph.upstream_of(pipeline))
    assert order == ["prepare", "train", "drift", "gate", "register", "promote"]
    assert {name: step.kind for name, step in pipeline.steps.items()} == {
        "prepare": "job", "train": "job", "drift": "drift", "gate": "gate", "register": "register", "promote": "promote"}
    train = pipeline.steps["train"].job
    assert train is not None and train.params["lr"] == 0.5 and train.params["epochs"] == 300  # set: from params
    assert train.workdir == str(REPO / "configs/deploy/iris")  # the job file's workdir, relative to the job file
    assert code_excludes(pipeline, "train") == ("data/labelled/*.csv", "data/iris.csv", "out/model.npz",
                                                "out/reference.csv")  # every data path of its workdir


def test_a_good_pipeline_resolves_params_inputs_and_triggers(tmp_path: Path) -> None:
    pipeline = load_pipeline_spec(write(tmp_path, GOOD))
    assert pipeline.name == "loop" and pipeline.concurrency == "replace"
    assert pipeline.on.schedule == ["0 3 * * *", "@hourly"] and pipeline.on.after == ["nightly-etl"]
    prepare, train = pipeline.steps["prepare"], pipeline.steps["train"]
    assert prepare.job is not None and prepare.job.command == ["python", "prep.py", "--rows", "100"]
    assert prepare.job.name == "loop-prepare" and prepare.job.project == "demo"  # named after the pipeline
    assert prepare.job.workdir == str(tmp_path / "code")  # relative to the pipeline file
    assert prepare.params == {"rows": 100} and train.params == {"lr": 0.1}  # each step records what it named
    assert train.job is not None and train.job.params == {"lr": 0.1, "seed": 1}  # a whole placeholder keeps its type
    assert [(i.kind, i.text) for i in prepare.inputs] == [("workdir", "data/raw.csv"), ("host", "/srv/shared/labels.csv")]
    assert [(i.step, i.output) for i in train.inputs] == [("prepare", "data")]
    gate = pipeline.steps["gate"]
    assert gate.gate is not None and gate.gate.champion == "iris@production"
    assert graph.upstream_of(pipeline)["gate"] == ["check", "train"]
    assert sorted(graph.dependents(graph.upstream_of(pipeline), "prepare")) == \
        ["check", "gate", "promote", "register", "train"]


def test_set_overrides_a_param_and_only_the_steps_that_name_it_see_it(tmp_path: Path) -> None:
    pipeline = load_pipeline_spec(write(tmp_path, GOOD), parse_overrides(["params.lr=0.2"]))
    assert pipeline.steps["train"].job.params["lr"] == 0.2
    assert pipeline.steps["train"].params == {"lr": 0.2} and pipeline.steps["prepare"].params == {"rows": 100}


def test_a_job_from_a_spec_file_takes_set_changes(tmp_path: Path) -> None:
    (tmp_path / "train.yaml").write_text("name: t\ncommand: [python, train.py]\nworkdir: code\nparams: {lr: 0.5}\n")
    text = GOOD.replace("""      command: [python, train.py]
      workdir: code
      params: {lr: "{params.lr}", seed: 1}""", """      spec: train.yaml
      set: {params.lr: "{params.lr}"}""")
    pipeline = load_pipeline_spec(write(tmp_path, text))
    assert pipeline.steps["train"].job.params == {"lr": 0.1} and pipeline.steps["train"].job.name == "t"


# ------------------------------------------------------------------- mistakes

@pytest.mark.parametrize("old,new,at,field,words", [
    ("concurrency: replace", "concurency: replace", "concurency", "concurency", "did you mean 'concurrency'"),
    ("concurrency: replace", "concurrency: sometimes", "concurrency", "concurrency",
     "concurrency: 'sometimes' is not one of queue, replace, skip"),
    ("    needs: [check]", "    need: [check]", "need:", "steps.gate.need", "did you mean 'needs'"),
    ("      workdir: code\n    inputs: [data", "      workdir: code\n      comand: x\n    inputs: [data", "comand",
     "steps.prepare.job.comand", "did you mean 'command'"),
    ("      params: {lr:", "      resources: {gpus: -1}\n      params: {lr:", "gpus: -1",
     "steps.train.job.resources.gpus", ">= 0"),
    ("    needs: [check]", "    needs: [chek]", "needs: [chek]", "steps.gate.needs[0]", "did you mean 'check'"),
    ("    inputs: [prepare.outputs.data]", "    inputs: [prepare.outputs.dta]", "prepare.outputs.dta",
     "steps.train.inputs[0]", "did you mean prepare.outputs.data"),
    ("    inputs: [prepare.outputs.data]", "    inputs: [prepare.output.data]", "prepare.output.data",
     "steps.train.inputs[0]", "did you mean prepare.outputs.data"),
    ("    inputs: [prepare.outputs.data]", "    inputs: [prepair.outputs.data]", "prepair.outputs",
     "steps.train.inputs[0]", "did you mean 'prepare'"),
    ("    inputs: [data/raw.csv,", "    inputs: [../raw.csv,", "../raw.csv", "steps.prepare.inputs[0]", "leaves the workdir"),
    ("    outputs: {data: out/data.csv}", "    outputs: {data: out/*.csv}", "out/*.csv", "steps.prepare.outputs.data",
     "is a pattern"),
    ("    outputs: {data: out/data.csv}", "    outputs: {data: /tmp/data.csv}", "/tmp/data.csv",
     "steps.prepare.outputs.data", "inside the workdir"),
    ("    drift: {reference: train.outputs.reference, current: prepare.outputs.data}",
     "    drift: {reference: train.outputs.reference, current: prepare.outputs.data}\n    outputs: {r: report.json}",
     "report.json", "steps.check.outputs", "writes no files"),
    ("    drift: {reference: train.outputs.reference, current: prepare.outputs.data}",
     "    drift: {reference: train.outputs.reference}", "drift: {reference", "steps.check.drift", "neither"),
    ("    register: {model: \"{params.model}\", step: train,", "    register: {model: \"{params.model}\", step: gate,",
     "step: gate", "steps.register.register.step", "is a gate step, not a job step"),
    ('      champion: "{params.model}@production"', "      champion: iris", "champion: iris",
     "steps.gate.gate.champion", "names no alias"),
    ('      require: ["metrics.acc.max >= champion.metrics.acc.max + 0.005"]',
     '      require: ["metrics.acc >= champion.metrics.acc.max + 0.005"]', "require:", "steps.gate.gate.require[0]",
     "at column 1"),
    ('      require: ["metrics.acc.max >= champion.metrics.acc.max + 0.005"]',
     '      require: ["metrics.acc.max >= champion.metrics.acc.max + + 0.005"]', "require:",
     "steps.gate.gate.require[0]", "found '+' at column 47"),
    ('      require: ["metrics.acc.max >= champion.metrics.acc.max + 0.005"]',
     '      require: ["champion.metrics.acc.max <= metrics.acc.max"]', "require:",
     "steps.gate.gate.require[0]", "put champion. fields on the right"),
    ('  schedule: ["0 3 * * *", "@hourly"]', '  schedule: ["0 25 * * *", "@hourly"]', "schedule:",
     "on.schedule[0]", "the hour field '25': 25 is outside 0-23"),
    ('  schedule: ["0 3 * * *", "@hourly"]', '  schedule: "0 3 * *"', "schedule:", "on.schedule", "not 5"),
    ("  after: nightly-etl", "  after: loop", "after: loop", "on.after", "names this pipeline itself"),
    ("    register: {model: \"{params.model}\",", "    register: {model: \"{params.modle}\",", "register: {model",
     "steps.register.register.model", "{params.modle} names no param"),
    ("  promote:\n    promote:", "  promote:\n    job: {command: [x]}\n    promote:", "promote: {alias",
     "steps.promote.promote", "is a second kind for this step (it is already a job step)"),
    ("  promote:\n    promote: {alias: production, register: register, gate: gate}", "  promote:\n    needs: [gate]",
     "  promote:", "steps.promote", "has no kind"),
])
def test_each_mistake_is_one_sentence_at_its_line(tmp_path: Path, old: str, new: str, at: str, field: str,
                                                  words: str) -> None:
    path, text = mistake(tmp_path, old, new)
    error = only_error(path)
    assert (error.path, error.line, error.field) == (str(path), line(text, at), field), str(error)
    assert words in str(error), str(error)
    assert "\n" not in str(error) and "Traceback" not in str(error)


def test_a_misspelt_required_field_says_did_you_mean(tmp_path: Path) -> None:
    path, text = mistake(tmp_path, "      challenger: train", "      challenjer: train")
    found = [str(e) for e in errors(path)]
    assert any(f":{line(text, 'challenjer')}: steps.gate.gate.challenjer: unknown field; did you mean 'challenger'?" in e
               for e in found), found


def test_a_cycle_is_named_at_the_line_that_closes_it(tmp_path: Path) -> None:
    path, text = mistake(tmp_path, "    inputs: [data/raw.csv,", "    needs: [gate]\n    inputs: [data/raw.csv,")
    error = only_error(path)
    assert error.line == line(text, "needs: [gate]") and error.field == "steps.prepare.needs[0]"
    assert "makes a cycle: prepare → gate → check → train → prepare (each waits for the next)" in str(error)


def test_a_step_that_waits_for_itself_is_a_cycle_too(tmp_path: Path) -> None:
    path, text = mistake(tmp_path, "    needs: [check]", "    needs: [gate]")
    error = only_error(path)
    assert error.line == line(text, "needs: [gate]") and "gate → gate" in str(error)


def test_a_step_reading_its_own_output_is_a_cycle(tmp_path: Path) -> None:
    path, text = mistake(tmp_path, "    inputs: [prepare.outputs.data]", "    inputs: [train.outputs.model]")
    error = only_error(path)
    assert error.line == line(text, "train.outputs.model") and "train → train" in str(error)


def test_every_mistake_comes_in_one_pass_ordered_by_line(tmp_path: Path) -> None:
    text = GOOD.replace("concurrency: replace", "concurrency: never").replace("    needs: [check]", "    needs: [chek]") \
        .replace("    register: {model: \"{params.model}\", step: train,", "    register: {model: x, step: trian,")
    found = errors(write(tmp_path, text))
    assert [e.line for e in found] == [line(text, "concurrency"), line(text, "needs: [chek]"), line(text, "step: trian")]
    assert all(e.path.endswith("pipeline.yaml") for e in found)


def test_a_job_spec_file_mistake_is_at_the_job_files_line(tmp_path: Path) -> None:
    (tmp_path / "train.yaml").write_text("name: t\ncommand: [python, train.py]\nworkdir: code\nretries: many\n")
    text = GOOD.replace("""      command: [python, train.py]
      workdir: code
      params: {lr: "{params.lr}", seed: 1}""", "      spec: train.yaml")
    error = only_error(write(tmp_path, text))
    assert (error.path, error.line, error.field) == (str(tmp_path / "train.yaml"), 4, "retries")


def test_a_missing_job_spec_file_is_at_the_pipelines_line(tmp_path: Path) -> None:
    text = GOOD.replace("""      command: [python, train.py]
      workdir: code
      params: {lr: "{params.lr}", seed: 1}""", "      spec: nowhere.yaml")
    error = only_error(write(tmp_path, text))
    assert error.line == line(text, "spec: nowhere.yaml") and "'nowhere.yaml' is not a file" in str(error)


def test_a_bad_set_on_a_job_file_names_the_set(tmp_path: Path) -> None:
    (tmp_path / "train.yaml").write_text("name: t\ncommand: [python, train.py]\nworkdir: code\n")
    text = GOOD.replace("""      command: [python, train.py]
      workdir: code
      params: {lr: "{params.lr}", seed: 1}""", "      spec: train.yaml\n      set: {resources.gpu: 1}")
    error = only_error(write(tmp_path, text))
    assert str(error).startswith(f"{tmp_path / 'pipeline.yaml'}:{line(text, 'set: {resources.gpu')}: steps.train.job.set")
    assert "did you mean 'gpus'" in str(error)


def test_a_bad_set_on_the_command_line_names_the_set(tmp_path: Path) -> None:
    error = only_error(write(tmp_path, GOOD), ["concurrency=always"])
    assert error.path == "--set concurrency=always" and error.line is None


def test_an_inline_job_missing_its_workdir_is_at_its_line(tmp_path: Path) -> None:
    path, text = mistake(tmp_path, "      workdir: code\n    inputs: [data", "      workdir: nowhere\n    inputs: [data")
    error = only_error(path)
    assert error.line == line(text, "workdir: nowhere") and error.field == "steps.prepare.job.workdir"


def test_an_inline_job_may_name_its_own_params_in_its_command(tmp_path: Path) -> None:
    path, _ = mistake(tmp_path, "      command: [python, train.py]", '      command: [python, train.py, "{params.seed}"]')
    assert load_pipeline_spec(path).steps["train"].job.command == ["python", "train.py", "{params.seed}"]


def test_an_inline_job_placeholder_no_one_answers_is_the_jobs_error(tmp_path: Path) -> None:
    path, text = mistake(tmp_path, "      command: [python, train.py]", '      command: [python, train.py, "{params.sed}"]')
    error = only_error(path)
    assert error.line == line(text, "{params.sed}") and "{params.sed} names no param" in str(error)


@pytest.mark.parametrize("text,words", [
    ("[1, 2]", "must be a YAML mapping"),
    ("name: x\n", "steps: is required but missing"),
    ("name: x\nsteps: {}\n", "steps: is empty"),
    ("name: x\nsteps:\n  a.b: {job: {command: [x]}}\n", "steps.a.b"),
])
def test_hostile_files_are_one_sentence(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as caught:
        load_pipeline_spec(path)
    assert words in str(caught.value), str(caught.value)


@pytest.mark.parametrize("text", ["*/15 * * * *", "0 9-17 * * mon-fri", "0 0 1,15 * *", "30 2 * jan,jul 0", "@weekly",
                                  "0 0 * * 7"])
def test_a_cron_people_write_is_taken(text: str) -> None:
    assert cron_problem(text) is None


@pytest.mark.parametrize("text,problem", [
    ("*/0 * * * *", "the minute field '*/0': the step '0' is not a whole number from 1 up"),
    ("0 17-9 * * *", "the hour field '17-9': the range '17-9' runs backwards"),
    ("0 0 * foo *", "the month field 'foo': 'foo' is not a number or a name"),
    ("0 0 0 * *", "the day of month field '0': 0 is outside 1-31"),
    ("@sometimes", "'@sometimes' is not a cron shorthand"),
    ("* * * * * *", "has 6 fields, not 5"),
])
def test_a_cron_that_would_never_fire_says_which_field(text: str, problem: str) -> None:
    assert problem in (cron_problem(text) or ""), cron_problem(text)


def test_a_long_chain_that_closes_on_itself_is_named_short(tmp_path: Path) -> None:
    rows = ["name: chain", "steps:"] + [f"  s{i}: {{needs: [s{(i + 1) % 150}], job: {{command: [x]}}}}" for i in range(150)]
    error = only_error(write(tmp_path, "\n".join(rows) + "\n"))
    assert error.line == 3 and "makes a cycle: s0 → s1 → s2 → s3 → … (143 more) → s147 → s148 → s149 → s0" in str(error)
    assert len(str(error)) < 300


def test_too_many_steps_is_said_in_steps(tmp_path: Path) -> None:
    rows = ["name: many", "steps:"] + [f"  s{i}: {{job: {{command: [x]}}}}" for i in range(201)]
    error = only_error(write(tmp_path, "\n".join(rows) + "\n"))
    assert "steps: is too long: 200 entries at most" in str(error)


def test_a_pipeline_sent_as_data_is_checked_the_same_without_lines(tmp_path: Path) -> None:
    from mlfleet.core.base.yamlsource import parse_yaml
    from mlfleet.core.pipelines.spec import validate_pipeline_spec
    (tmp_path / "code").mkdir()
    data = parse_yaml(textwrap.dedent(GOOD), "x").data
    assert validate_pipeline_spec(data, tmp_path).steps["prepare"].job.workdir == str(tmp_path / "code")
    data["steps"]["gate"]["needs"] = ["chek"]
    with pytest.raises(SpecError) as caught:
        validate_pipeline_spec(data, tmp_path)
    assert str(caught.value) == "pipeline spec: steps.gate.needs[0]: names no step 'chek'; did you mean 'check'?"
    with pytest.raises(SpecError, match="must be a mapping"):
        validate_pipeline_spec(["x"], tmp_path)
