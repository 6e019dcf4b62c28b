"""A user runs a pipeline end to end through the real CLI, a real controller and the local agent.

These are the stories of ``mlfleet pipeline run|list|show|why|cancel|triggers``
against the pipelines service (docs/pipelines.md, "The service"). They were
written with the CLI, before the service was merged: until it is, the
controller answers the pipeline RPCs with "unknown method" and these fail
(they are marked ``pipeline_service`` so they can be picked out with
``-m pipeline_service``).

* a two-step pipeline (prepare writes a file, train reads it at the path
  prepare declared and logs a metric) runs to success with ``--wait``
  (exit 0); ``list`` and ``show`` say so; the same file again is all cached;
  ``--set`` of a param only prepare reads re-runs prepare, and since prepare
  writes the same bytes, train stays cached; ``why`` says what changed;
* a gate on the challenger's metric that it cannot meet ends the gate
  "did not pass", skips the register below it, and ``--wait`` exits 1;
* ``--wait --timeout`` on a long step stops waiting (exit 1, naming the
  run), the run goes on, and ``pipeline cancel`` ends it;
* ``pipeline triggers`` answers its two lists, and a name nothing knows is
  not found (exit 4).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from conftest import Fleet

pytestmark = pytest.mark.pipeline_service

PREPARE_AND_TRAIN = """\
name: story
project: demo
params: {rows: 3, lr: 0.1}
steps:
  prepare:
    job:
      workdir: .
      command: [python, -c, "import os; os.makedirs('data', exist_ok=True);
                 open('data/rows.csv', 'w').write('x\\\\n' * min({params.rows}, 3))"]
    outputs: {data: data/rows.csv}
  train:
    job:
      workdir: .
      command: [python, -c, "from mlfleet import track; n = len(open('data/rows.csv').read().split());
                 track.log({'acc': 0.5 + n / 10}); track.flush()"]
      params: {lr: "{params.lr}"}
    inputs: [prepare.outputs.data]
"""

GATED = PREPARE_AND_TRAIN.replace("name: story", "name: gated") + textwrap.indent(textwrap.dedent("""\
    gate:
      gate:
        challenger: train
        champion: story-model@production
        require: ["metrics.acc.max >= 2"]
    register:
      needs: [gate]
      register: {model: story-model, step: train, artifact: data/rows.csv}
    """), "  ")

SLOW = """\
name: slow
project: demo
steps:
  nap:
    job: {workdir: ., command: "sleep 120"}
  after:
    needs: [nap]
    job: {workdir: ., command: "true"}
"""


def write(fleet: Fleet, name: str, text: str) -> Path:
    folder = fleet.files / name
    folder.mkdir(exist_ok=True)
    path = folder / "pipeline.yaml"
    path.write_text(text)
    return path


def states(run: dict) -> dict[str, str]:
    return {s["step"]: s["state"] for s in run["steps"]}


def test_a_pipeline_runs_then_is_cached_and_a_param_re_runs_only_what_reads_it(fleet: Fleet) -> None:
    path = write(fleet, "story", PREPARE_AND_TRAIN)
    first = fleet.cli("pipeline", "run", str(path), "--wait", "--timeout", "300", "--json", timeout=360)
    assert first.code == 0, first.err + first.out
    run = first.json()
    assert run["state"] == "succeeded" and states(run) == {"prepare": "succeeded", "train": "succeeded"}
    assert run["upstream"] == {"prepare": [], "train": ["prepare"]}
    assert [o["name"] for o in run["steps"][0]["outputs"]] == ["data"]

    listed = fleet.cli_json("pipeline", "list", "story")
    assert [r["run_id"] for r in listed] == [run["run_id"]] and listed[0]["steps"] == {"succeeded": 2}
    page = fleet.cli("pipeline", "show", run["run_id"], check=True).out
    assert f"pipeline run {run['run_id']} · story (project demo) · succeeded" in page
    assert page.count("✓ succeeded") == 2
    assert fleet.cli_json("pipeline", "show", "story")["run_id"] == run["run_id"], "a name shows its newest run"

    again = fleet.cli("pipeline", "run", str(path), "--wait", "--json", timeout=360)
    assert again.code == 0, again.err
    assert states(again.json()) == {"prepare": "cached", "train": "cached"}

    # rows=5 changes prepare's command, but it still writes 3 rows: the same bytes, so train stays cached
    changed = fleet.cli("pipeline", "run", str(path), "--set", "params.rows=5", "--wait", "--json", timeout=360)
    assert changed.code == 0, changed.err
    assert states(changed.json()) == {"prepare": "succeeded", "train": "cached"}
    why = fleet.cli_json("pipeline", "why", changed.json()["run_id"], "prepare")
    assert why["compared_with"] == again.json()["run_id"] or why["compared_with"] == run["run_id"]
    assert any("params.rows changed 3 → 5" in r for r in why["reasons"]), why
    said = fleet.cli("pipeline", "why", changed.json()["run_id"], "prepare", check=True).out
    assert "params.rows changed 3 → 5" in said

    forced = fleet.cli("pipeline", "run", str(path), "--force", "train", "--wait", "--json", timeout=360)
    assert forced.code == 0 and states(forced.json())["train"] == "succeeded"
    assert next(s for s in forced.json()["steps"] if s["step"] == "train")["forced"] is True


def test_a_gate_the_challenger_cannot_pass_skips_the_register_and_fails_the_wait(fleet: Fleet) -> None:
    path = write(fleet, "gated", GATED)
    done = fleet.cli("pipeline", "run", str(path), "--wait", "--timeout", "300", timeout=360)
    assert done.code == 1, done.err + done.out
    assert "gate did not pass: gate" in done.out
    assert "metrics.acc.max >= 2" in done.out, "the gate's requirement is printed with its numbers"
    shown = fleet.cli_json("pipeline", "show", "gated")
    assert states(shown) == {"prepare": "succeeded", "train": "succeeded", "gate": "gate-failed",
                             "register": "skipped"}
    gate = next(s for s in shown["steps"] if s["step"] == "gate")
    decision = gate["detail"].get("decision", gate["detail"])
    assert decision["passed"] is False and decision["requirements"][0]["left"] == pytest.approx(0.8)


def test_a_long_run_is_cancelled(fleet: Fleet) -> None:
    path = write(fleet, "slow", SLOW)
    waited = fleet.cli("pipeline", "run", str(path), "--wait", "--timeout", "3", timeout=120)
    assert waited.code == 1, waited.err
    assert "is still running after 3 s; it goes on" in waited.err, waited.err
    run_id = waited.err.split("pipeline run ")[1].split()[0]
    assert fleet.cli_json("pipeline", "show", run_id)["state"] == "running", "a wait that timed out leaves the run"
    fleet.wait_for(lambda: states(fleet.cli_json("pipeline", "show", run_id))["nap"] == "running", timeout=60,
                   what="the first step to run")
    cancelled = fleet.cli_json("pipeline", "cancel", run_id)
    assert cancelled["run_id"] == run_id and "nap" in cancelled["cancelled"]
    fleet.wait_for(lambda: fleet.cli_json("pipeline", "show", run_id)["state"] == "cancelled", timeout=60,
                   what="the run to end cancelled")
    assert states(fleet.cli_json("pipeline", "show", run_id))["after"] in ("cancelled", "skipped")
    listed = fleet.cli("pipeline", "list", "slow", check=True).out
    assert run_id in listed and "cancelled" in listed


def test_triggers_answer_their_two_lists_and_an_unknown_run_is_not_found(fleet: Fleet) -> None:
    answer = fleet.cli_json("pipeline", "triggers")
    assert set(answer) >= {"armed", "history"} and answer["armed"] == [] and answer["history"] == []
    assert fleet.cli("pipeline", "triggers", check=True).out == (
        "no triggers armed for any pipeline\n\nno trigger of any pipeline has fired yet\n")
    missing = fleet.cli("pipeline", "show", "pnosuchrun", "--json")
    assert missing.code == 4, missing.err
    assert fleet.cli("pipeline", "why", "pnosuchrun", "train").code == 4
