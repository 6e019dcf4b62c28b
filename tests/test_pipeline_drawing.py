"""A user reads a pipeline's DAG in a terminal: small graphs look exactly so, large ones stay readable.

``pipeline graph`` and the TUI's Pipelines view draw with
core/pipelines/drawing.py. Small graphs are pinned as exact text (the
closed-loop example, a run with states, the indented fallback); for large
and random DAGs the properties hold at every width: every step appears
once as a box, every edge's two ends are named, no line is wider than the
terminal, and the same input draws the same text.
"""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from mlfleet.core.pipelines import drawing
from mlfleet.core.pipelines.spec import load_pipeline_spec

REPO = Path(__file__).resolve().parent.parent
LOOP = {"prepare": [], "train": ["prepare"], "drift": ["train"], "gate": ["drift", "train"],
        "register": ["gate", "train"], "promote": ["register", "gate"]}
BOX_LABEL = re.compile(r"│ (.+?) │|\[(.+?)\]")


def boxed_names(text: str) -> list[str]:
    """The names inside the boxes (and ``[chips]``) of a drawing, the symbol, when there is one, dropped."""
    names = []
    for label in (box or chip for box, chip in BOX_LABEL.findall(text)):
        names.append(label.split(" ", 1)[1] if label[:1] in {s for s, _ in drawing.SYMBOLS.values()} | {"?"}
                     else label)
    return names


def test_the_closed_loop_example_draws_as_layers_with_its_edges() -> None:
    pipeline = load_pipeline_spec(REPO / "configs/pipelines/closed-loop.yaml")
    assert drawing.draw_pipeline(pipeline, 80) == """\
┌─────────┐
│ prepare │
└─────────┘
  prepare ─▶ train
┌───────┐
│ train │
└───────┘
  train ─▶ drift
┌───────┐
│ drift │
└───────┘
  train, drift ─▶ gate
┌──────┐
│ gate │
└──────┘
  train, gate ─▶ register
┌──────────┐
│ register │
└──────────┘
  gate, register ─▶ promote
┌─────────┐
│ promote │
└─────────┘"""


def test_a_run_shows_each_state_with_its_symbol_and_a_legend() -> None:
    states = {"prepare": "cached", "train": "succeeded", "drift": "running", "gate": "queued"}
    text = drawing.draw({"prepare": [], "train": ["prepare"], "drift": ["train"], "gate": ["train"]}, 60,
                        states=states, kinds={"gate": "gate"})
    assert text == """\
┌───────────┐
│ ↺ prepare │
└───────────┘
  prepare ─▶ train
┌─────────┐
│ ✓ train │
└─────────┘
  train ─▶ drift, gate
┌─────────┐  ┌────────┐
│ ● drift │  │ ○ gate │
└─────────┘  └────────┘
○ queued  ● running  ✓ succeeded  ↺ cached"""


def test_a_gate_that_passed_and_one_that_failed_read_differently_from_a_job() -> None:
    text = drawing.draw({"train": [], "g1": ["train"], "g2": ["train"], "reg": ["g2"], "x": ["train"]}, 100,
                        states={"train": "succeeded", "g1": "succeeded", "g2": "gate-failed", "reg": "skipped",
                                "x": "cancelled"},
                        kinds={"train": "job", "g1": "gate", "g2": "gate", "reg": "register"})
    assert "│ ✓ train │" in text and "│ ✔ g1 │" in text and "│ ✘ g2 │" in text and "│ – reg │" in text
    assert "│ ⊘ x │" in text
    assert text.splitlines()[-1] == "✓ succeeded  ✔ gate passed  ✘ gate failed  – skipped  ⊘ cancelled"


def test_a_failed_step_and_an_unknown_state_are_both_said() -> None:
    text = drawing.draw({"a": [], "b": ["a"]}, 40, states={"a": "failed", "b": "paused"})
    assert "│ ✗ a │" in text and "│ ? b │" in text
    assert text.splitlines()[-1] == "✗ failed  ? unknown state"


def test_a_layer_wider_than_the_terminal_wraps_onto_more_rows() -> None:
    upstream = {"src": [], **{f"step-{i}": ["src"] for i in range(6)}}
    assert drawing.draw(upstream, 40) == """\
┌─────┐
│ src │
└─────┘
  src ─▶ step-0, step-1, step-2, step-3,
         step-4, step-5
┌────────┐  ┌────────┐  ┌────────┐
│ step-0 │  │ step-1 │  │ step-2 │
└────────┘  └────────┘  └────────┘
┌────────┐  ┌────────┐  ┌────────┐
│ step-3 │  │ step-4 │  │ step-5 │
└────────┘  └────────┘  └────────┘"""


def test_a_layer_of_more_than_three_rows_of_boxes_is_drawn_as_chips_a_row_a_line() -> None:
    upstream = {"src": [], **{f"s{i}": ["src"] for i in range(10)}}
    assert drawing.draw(upstream, 24, states={"s0": "failed"}) == """\
┌─────┐
│ src │
└─────┘
  src ─▶ s0, s1, s2, s3,
         s4, s5, s6, s7,
         s8, s9
[✗ s0]  [s1]  [s2]  [s3]
[s4]  [s5]  [s6]  [s7]
[s8]  [s9]
✗ failed"""
    assert "│ s9 │" in drawing.draw(upstream, 60), "boxes while three rows hold the layer"
    many = {"src": [], **{f"step-{i:02d}": ["src"] for i in range(12)}}
    assert drawing.draw(many, 40) == """\
┌─────┐
│ src │
└─────┘
  src ─▶ the 12 steps below
[step-00]  [step-01]  [step-02]
[step-03]  [step-04]  [step-05]
[step-06]  [step-07]  [step-08]
[step-09]  [step-10]  [step-11]"""


def test_a_box_wider_than_the_terminal_falls_back_to_an_indented_list() -> None:
    upstream = {"prepare-the-data": [], "train-the-model": ["prepare-the-data"], "gate": ["train-the-model"]}
    assert drawing.draw(upstream, 21, states={"prepare-the-data": "succeeded"}) == """\
✓ prepare-the-data
  train-the-model
  ← prepare-the-data
    gate
    ← train-the-model
✓ succeeded"""
    assert drawing.draw(upstream, 40).splitlines()[1] == "│ prepare-the-data │", "boxes once they fit"
    assert drawing.draw(upstream, 17).splitlines()[:2] == ["prepare-the-data", "  train-the-model"]
    assert drawing.draw({"a-long-name": [], "b": ["a-long-name"], "c": ["b"]}, 14) == \
        "a-long-name\n  b\n  ← a-long-na…\n    c ← b", "a name wider than the terminal is cut, the rest stays whole"


def test_the_layers_are_the_depth_of_the_deepest_upstream_in_file_order() -> None:
    assert drawing.layers(LOOP) == [["prepare"], ["train"], ["drift"], ["gate"], ["register"], ["promote"]]
    assert drawing.layers({"b": ["a"], "a": [], "c": []}) == [["a", "c"], ["b"]]
    assert drawing.edges({"b": ["a", "a"], "a": [], "c": ["b", "a"]}) == [("a", "b"), ("a", "c"), ("b", "c")]


def test_a_run_as_pipeline_show_answers_it_is_drawn_with_its_states() -> None:
    run = {"run_id": "p1", "upstream": {"prepare": [], "train": ["prepare"]},
           "steps": [{"step": "prepare", "kind": "job", "state": "cached"},
                     {"step": "train", "kind": "job", "state": "running"}]}
    assert drawing.draw_run(run, 40) == drawing.draw({"prepare": [], "train": ["prepare"]}, 40,
                                                     states={"prepare": "cached", "train": "running"})


def _assert_readable(upstream: dict[str, list[str]], width: int, states: dict[str, str] | None = None) -> str:
    text = drawing.draw(upstream, width, states=states)
    assert text == drawing.draw(upstream, width, states=states), "the same input draws the same text"
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines), max(lines, key=len)
    if any(line.startswith(("┌", "[")) for line in lines):
        names = boxed_names(text)
        assert sorted(names) == sorted(upstream), "every step appears once, as a box"
    else:  # the indented fallback: every step once at the start of its line
        starts = [line.strip().split(" ← ")[0] for line in lines if not line.strip().startswith("←")]
        assert sorted(s.split(" ", 1)[-1] for s in starts if s.split(" ", 1)[-1] in upstream) == sorted(upstream)
    edge_text = "\n".join(line for line in lines if "─▶" in line or not line.startswith(("┌", "│", "└", "[")))
    layer_of = {name: depth for depth, layer in enumerate(drawing.layers(upstream)) for name in layer}
    for source, target in drawing.edges(upstream):
        # each end by its name, or as the whole layer next to the other end ("the 198 steps above")
        above = f"the {sum(1 for d in layer_of.values() if d == layer_of[source])} steps above"
        below = f"the {sum(1 for d in layer_of.values() if d == layer_of[target])} steps below"
        assert (re.search(rf"(?<![\w-]){re.escape(source)}(?![\w-])", edge_text)
                or (above in edge_text and layer_of[source] == layer_of[target] - 1)), (source, target)
        assert (re.search(rf"(?<![\w-]){re.escape(target)}(?![\w-])", edge_text)
                or (below in edge_text and layer_of[source] == layer_of[target] - 1)), (source, target)
    return text


def test_a_200_step_fan_out_and_fan_in_stays_readable_at_every_width() -> None:
    upstream = {"prepare": [], **{f"shard-{i:03d}": ["prepare"] for i in range(198)},
                "merge": [f"shard-{i:03d}" for i in range(198)]}
    assert len(upstream) == 200
    heights = {}
    for width in (40, 80, 120, 200):
        text = _assert_readable(upstream, width, states={n: "succeeded" for n in upstream})
        heights[width] = len(text.splitlines())
    # a row of steps a line, and the 396 edges in two: an 80-column terminal shows it all in 50 lines
    assert heights[40] > heights[80] > heights[120] > heights[200] and heights[80] < 50, heights
    text = drawing.draw(upstream, 100, states={n: "succeeded" for n in upstream})
    lines = text.splitlines()
    assert lines[3] == "  prepare ─▶ the 198 steps below"
    assert lines[4].startswith("[✓ shard-000]  [✓ shard-001]  ") and "  the 198 steps above ─▶ merge" in lines


def test_a_200_step_chain_is_one_box_a_layer() -> None:
    upstream = {f"s{i}": ([f"s{i - 1}"] if i else []) for i in range(200)}
    text = _assert_readable(upstream, 60)
    assert len(drawing.layers(upstream)) == 200 and text.count("┌") == 200


@st.composite
def dags(draw: st.DrawFn) -> dict[str, list[str]]:
    """A DAG of up to 200 steps: each step's upstream drawn from the steps before it in the file."""
    n = draw(st.integers(1, 200))
    names = [f"{draw(st.sampled_from(['prep', 'train', 'eval', 'gate', 'x']))}-{i}" for i in range(n)]
    upstream: dict[str, list[str]] = {}
    for i, name in enumerate(names):
        ups = draw(st.lists(st.integers(0, i - 1), max_size=min(i, 4), unique=True)) if i else []
        upstream[name] = [names[j] for j in ups]
    return upstream


@settings(max_examples=60, deadline=None)
@given(dags(), st.integers(30, 220), st.data())
def test_any_dag_draws_every_step_once_every_edge_named_within_the_width(upstream: dict[str, list[str]], width: int,
                                                                          data: st.DataObject) -> None:
    states = data.draw(st.dictionaries(st.sampled_from(sorted(upstream)), st.sampled_from(sorted(drawing.SYMBOLS))))
    _assert_readable(upstream, width, states)
