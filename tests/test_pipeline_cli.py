"""A user checks, draws and starts pipelines from the terminal, and reads what the service answers.

``pipeline check`` and ``pipeline graph`` run the real CLI on real files and
need no controller: a good file prints its steps in order with their kinds
and edges, a broken one is one sentence per mistake at its file:line (exit
2), and a ``--force`` naming no step is refused before any controller is
started. What ``run``, ``list``, ``show``, ``why``, ``cancel`` and
``triggers`` print is core/pipelines/pages.py over the service's answers:
pinned here with answers written out in the contract's shapes
(tests/pipeline_answers.py); tests/test_pipeline_cli_story.py runs the same
commands against a real controller.
"""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path
from typing import Iterator

import pytest

import pipeline_answers as answers
from conftest import Fleet
from mlfleet.core.pipelines import pages

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "configs/pipelines/closed-loop.yaml"

SMALL = """\
name: small
project: demo
params: {rows: 10}
steps:
  prepare:
    job: {command: [python, prep.py, --rows, "{params.rows}"], workdir: .}
    outputs: {data: out/data.csv}
  train:
    job: {command: [python, train.py], workdir: .}
    inputs: [prepare.outputs.data]
  report:
    needs: [prepare]
    job: {command: [python, report.py], workdir: .}
"""


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Times are printed in local time: pin it so the pages read the same everywhere."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def write(fleet: Fleet, name: str, text: str) -> Path:
    path = fleet.files / name
    path.write_text(text)
    return path


def test_check_prints_the_steps_in_the_order_they_run_with_kinds_and_edges(fleet: Fleet) -> None:
    path = write(fleet, "small.yaml", SMALL)
    done = fleet.cli("pipeline", "check", str(path))
    assert done.code == 0, done.err
    assert done.out == textwrap.dedent(f"""\
        {path}: pipeline small (project demo) is valid: 3 steps
        params: rows=10
        STEP     KIND  WAITS FOR  INPUTS                OUTPUTS
        prepare  job   -          -                     data=out/data.csv
        train    job   prepare    prepare.outputs.data  -
        report   job   prepare    -                     -
        """)
    plain = fleet.cli_json("pipeline", "check", str(path), "--set", "params.rows=20")
    assert [s["step"] for s in plain["steps"]] == ["prepare", "train", "report"]
    assert plain["params"] == {"rows": 20} and plain["steps"][1]["upstream"] == ["prepare"]
    assert plain["steps"][0]["params"] == {"rows": 20}, "--set reached the step that names the param"
    example = fleet.cli_json("pipeline", "check", str(EXAMPLE))
    assert [(s["step"], s["kind"]) for s in example["steps"]] == [
        ("prepare", "job"), ("train", "job"), ("drift", "drift"), ("gate", "gate"), ("register", "register"),
        ("promote", "promote")]
    assert fleet.controller_pid is None, "check needs no controller"


def test_check_says_each_mistake_at_its_line_and_exits_2(fleet: Fleet) -> None:
    broken = SMALL.replace("inputs: [prepare.outputs.data]", "inputs: [prepare.outputs.date]") \
                  .replace("needs: [prepare]", "needs: [prepair]")
    path = write(fleet, "broken.yaml", broken)
    done = fleet.cli("pipeline", "check", str(path))
    assert done.code == 2 and done.out == "" and "Traceback" not in done.err
    lines = done.err.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"mlfleet: {path}:10: ") and "'date'" in lines[0], lines[0]
    assert lines[1].startswith(f"mlfleet: {path}:12: ") and "did you mean 'prepare'" in lines[1], lines[1]
    as_json = fleet.cli("pipeline", "check", str(path), "--json")
    assert as_json.code == 2 and json.loads(as_json.out)["error"]["exit_code"] == 2
    bad_set = fleet.cli("pipeline", "graph", str(EXAMPLE),
                        "--set", "steps.gate.gate.challenger=nobody")
    assert bad_set.code == 2 and bad_set.err.startswith("mlfleet: --set steps.gate.gate.challenger=nobody"), \
        bad_set.err
    missing = fleet.cli("pipeline", "check", str(fleet.files / "nowhere.yaml"))
    assert missing.code == 2 and "nowhere.yaml" in missing.err and "Traceback" not in missing.err
    assert fleet.controller_pid is None


def test_graph_draws_the_dag_within_the_width_and_gives_layers_and_edges_as_json(fleet: Fleet) -> None:
    path = write(fleet, "small.yaml", SMALL)
    done = fleet.cli("pipeline", "graph", str(path), "--width", "40")
    assert done.code == 0, done.err
    assert done.out == textwrap.dedent("""\
        ┌─────────┐
        │ prepare │
        └─────────┘
          prepare ─▶ train, report
        ┌───────┐  ┌────────┐
        │ train │  │ report │
        └───────┘  └────────┘
        """)
    plain = fleet.cli_json("pipeline", "graph", str(EXAMPLE))
    assert plain["layers"] == [["prepare"], ["train"], ["drift"], ["gate"], ["register"], ["promote"]]
    assert ["train", "gate"] in plain["edges"] and ["gate", "promote"] in plain["edges"]
    assert len(plain["edges"]) == 8 and "│ promote │" in plain["text"]


def test_run_refuses_a_bad_file_or_a_force_naming_no_step_before_any_controller_starts(fleet: Fleet) -> None:
    wrong = fleet.cli("pipeline", "run", str(EXAMPLE), "--force", "trian")
    assert wrong.code == 2 and wrong.err == ("mlfleet: --force trian: pipeline iris-closed-loop has no step 'trian'; "
                                             "did you mean 'train'?\n"), wrong.err
    broken = write(fleet, "broken.yaml", SMALL.replace("needs: [prepare]", "needs: [prepair]"))
    assert fleet.cli("pipeline", "run", str(broken), "--wait").code == 2
    assert fleet.cli("pipeline", "run", str(EXAMPLE), "--wait", "--timeout", "0").code == 2
    alone = fleet.cli("pipeline", "run", str(EXAMPLE), "--timeout", "60")
    assert alone.code == 2 and alone.err == "mlfleet: --timeout is how long --wait waits: give --wait with it\n"
    assert fleet.controller_pid is None, "nothing was started for a run that was refused"


# -------------------------------------------------------------- the service's answers, in words

def test_a_run_page_shows_each_step_and_the_gate_s_numbers() -> None:
    assert pages.show_text(answers.RUN) == textwrap.dedent("""\
        pipeline run p7f3a9c01 · iris-closed-loop (project demo) · succeeded
        trigger schedule (schedule=0 3 * * *) by ana; started 2026-12-01 03:00:00, ended 2026-12-01 03:04:10 after 4m10s
        STEP      KIND      STATE          REASON                                                        JOB        KEY
        prepare   job       ↺ cached       cached: no part of its key changed; outputs of run p0a0a0a01  -          3f9a0c1d2e4b
        train     job       ✓ succeeded    params.lr changed 0.5 → 0.3                                   ja1b2c3d4  9e8d7c6b5a4f
        drift     drift     ✓ succeeded    always runs: it reads a deployment's live traffic             -          c0ffee001122
        gate      gate      ✘ gate-failed  upstream step train changed (key 1a2b3c4d → 9e8d7c6b)         -          deadbeef0011
        register  register  – skipped      gate gate did not pass                                        -          -
        promote   promote   – skipped      gate gate did not pass                                        -          -

        gate gate: did not pass (run ja1b2c3d4-1 against iris@production (version 3, run j0ff1ce00-1)): 1 of 2 requirements failed: metrics.val_accuracy.max >= champion.metrics.val_accuracy.max + 0.005
          ✗ metrics.val_accuracy.max >= champion.metrics.val_accuracy.max + 0.005: 0.93 vs 0.935 (0.93 >= 0.935 fails)
          ✓ metrics.val_loss.min <= champion.metrics.val_loss.min * 1.1: 0.21 vs 0.2310000000000001 (0.21 <= 0.231 holds)

        drift: report d0007, drifted false, share 0.0

        outputs:
          prepare.outputs.data  data/iris.csv  sha256 ab12cd34ef56  60.0 KiB
          train.outputs.model  out/model.npz  sha256 77aa88bb99cc  2.0 KiB""")


def test_a_gate_decision_under_decision_reads_the_same_and_a_forced_step_says_so() -> None:
    gate = {**answers.RUN["steps"][3], "detail": {"decision": answers.GATE_DECISION}}
    assert pages.gate_lines(gate) == pages.gate_lines(answers.RUN["steps"][3])
    assert pages.step_rows(answers.RUNNING)[0][3] == "forced"
    assert "running for" in pages.show_text(answers.RUNNING) and "reason: new labels" in pages.show_text(answers.RUNNING)


def test_wait_exits_0_only_for_a_run_that_succeeded_with_every_gate_passed() -> None:
    assert not pages.run_passed(answers.RUN), "a gate that did not pass fails a --wait even though the run succeeded"
    assert pages.run_outcome(answers.RUN) == "pipeline run p7f3a9c01 (iris-closed-loop) succeeded (gate did not pass: gate)"
    passed = {**answers.RUN, "steps": [{**s, "state": "succeeded"} for s in answers.RUN["steps"]]}
    assert pages.run_passed(passed)
    failed = {**answers.RUN, "state": "failed",
              "steps": [{**s, "state": "failed"} if s["step"] == "train" else s for s in answers.RUN["steps"]]}
    assert not pages.run_passed(failed) and "failed: train" in pages.run_outcome(failed)
    assert not pages.run_passed({**passed, "state": "cancelled"})


def test_the_list_why_cancel_and_triggers_pages() -> None:
    listed = pages.list_text(answers.LIST).splitlines()
    assert listed[0].split() == ["RUN", "NAME", "PROJECT", "STATE", "TRIGGER", "STEPS", "ACTOR", "STARTED", "ELAPSED"]
    assert "1 running, 1 succeeded" in listed[1]
    assert listed[2].endswith("2 succeeded, 1 cached, 1 gate-failed, 2 skipped  ana    2026-12-01 03:00:00  4m10s")
    assert pages.list_text([], "iris") == "no runs of pipeline iris yet: mlfleet pipeline run FILE (docs/pipelines.md)"
    assert pages.why_text(answers.WHY, "p7f3a9c01") == textwrap.dedent("""\
        train in run p7f3a9c01: succeeded, key 9e8d7c6b5a4f; compared with run p0a0a0a01:
          params.lr changed 0.5 → 0.3
          code changed (sha256 0a1b2c3d → 4e5f6a7b)""")
    assert pages.why_text({**answers.WHY, "reasons": []}, "p7f3a9c01").endswith(
        "nothing changed since run p0a0a0a01 (the same key)")
    assert "no earlier run" in pages.why_text({**answers.WHY, "compared_with": None, "reasons": ["new step"]}, "p1")
    assert pages.cancel_text(answers.CANCEL) == "pipeline run p8b4c0d12 is cancelled: 1 step cancelled (train)"
    assert pages.triggers_page(answers.TRIGGERS) == textwrap.dedent("""\
        NAME              PROJECT  ON                                 CONCURRENCY  NEXT                          ARMED                BY
        iris-closed-loop  demo     schedule 0 3 * * *; drift of iris  skip         schedule 2026-12-03 03:00:00  2026-11-30 12:00:00  ana

        history:
        AT                   NAME              TRIGGER   CAUSE               OUTCOME  RUN
        2026-12-02 03:00:00  iris-closed-loop  schedule  schedule=0 3 * * *  skipped  -
        2026-12-01 03:00:00  iris-closed-loop  schedule  schedule=0 3 * * *  started  p7f3a9c01""")
    assert pages.triggers_page({"armed": [], "history": []}, "x") == \
        "no triggers armed for pipeline x\n\nno trigger of pipeline x has fired yet"
