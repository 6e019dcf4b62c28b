"""A gate judges a retrained model against the one in production, and writes down why.

Stories: a challenger that beats the champion by the margin passes; one that
only ties the margin passes ``>=`` and fails ``>`` (in decimal, as a person
reads the numbers, not as floats add them); a metric the champion never
logged fails with a sentence saying so; with no champion yet the first model
passes, recorded as "no champion"; a requirement that does not parse is one
sentence with its column.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlfleet.core.base.errors import UsageError
from mlfleet.core.pipelines.gates import GateDecision, RunSummary, decide

MARGIN = "metrics.val_accuracy.max >= champion.metrics.val_accuracy.max + 0.005"


def run(label: str, accuracy: float | None = None, loss: float | None = None, **params: object) -> RunSummary:
    metrics: dict[str, dict[str, float]] = {}
    if accuracy is not None:
        metrics["val_accuracy"] = {"max": accuracy, "last": accuracy - 0.01}
    if loss is not None:
        metrics["val_loss"] = {"min": loss}
    return RunSummary(label=label, params=dict(params), metrics=metrics)


CHAMPION = run("iris@production (version 3)", accuracy=0.9, loss=0.30, lr=0.5)


def test_a_challenger_that_beats_the_margin_passes_with_its_numbers() -> None:
    decision = decide([MARGIN, "metrics.val_loss.min <= champion.metrics.val_loss.min * 1.1"],
                      run("run 7f3a", accuracy=0.95, loss=0.31), CHAMPION)
    assert decision.passed and decision.champion == "iris@production (version 3)"
    first, second = decision.requirements
    assert (first.left, first.right, first.passed) == (0.95, 0.905, True)
    assert first.verdict == "holds: 0.95 >= 0.905 (champion.metrics.val_accuracy.max + 0.005)"
    assert (second.left, second.right) == (0.31, 0.33)  # 0.30 * 1.1, exactly
    assert decision.summary == "passed: 2 of 2 requirements hold"


def test_a_tie_on_the_margin_holds_for_at_least_and_fails_for_more_than() -> None:
    challenger = run("run tie", accuracy=0.905)  # 0.9 + 0.005 is 0.9050000000000001 in floats
    assert decide([MARGIN], challenger, CHAMPION).passed
    strictly = decide([MARGIN.replace(">=", ">")], challenger, CHAMPION)
    assert not strictly.passed
    assert strictly.requirements[0].verdict == \
        "fails: 0.905 is not > 0.905 (champion.metrics.val_accuracy.max + 0.005)"
    assert decide(["metrics.val_accuracy.max = champion.metrics.val_accuracy.max + 0.005"], challenger, CHAMPION).passed


def test_a_challenger_below_the_margin_fails_and_the_summary_says_which() -> None:
    decision = decide([MARGIN, "metrics.val_loss.min < 1"], run("run low", accuracy=0.903, loss=0.2), CHAMPION)
    assert not decision.passed
    assert [r.passed for r in decision.requirements] == [False, True]
    assert decision.summary.startswith(f"failed: 1 of 2 requirements did not hold ({MARGIN}: fails: 0.903 is not >= 0.905")


def test_a_metric_the_champion_never_logged_fails_and_says_so() -> None:
    decision = decide(["metrics.f1.max >= champion.metrics.f1.max"],
                      RunSummary(label="run x", metrics={"f1": {"max": 0.8}}), CHAMPION)
    result = decision.requirements[0]
    assert not decision.passed and result.left == 0.8 and result.right is None
    assert result.verdict == "fails: the champion (iris@production (version 3)) has no metric 'f1'"


def test_a_summary_the_challenger_lacks_fails_and_names_what_it_has() -> None:
    decision = decide(["metrics.val_accuracy.mean >= 0.9"], run("run y", accuracy=0.95), CHAMPION)
    assert decision.requirements[0].verdict == \
        "fails: the challenger (run y) has no mean of metric 'val_accuracy' (it has last, max)"


def test_a_nan_metric_is_no_number_to_pass_on() -> None:
    decision = decide([MARGIN], run("run nan", accuracy=float("nan")), CHAMPION)
    assert not decision.passed and "is NaN" in decision.requirements[0].verdict


def test_with_no_champion_the_first_model_passes_recorded_as_no_champion() -> None:
    decision = decide([MARGIN, "metrics.val_accuracy.max >= 0.8"], run("run first", accuracy=0.85), None)
    assert decision.passed and decision.champion is None
    assert decision.requirements[0].verdict == "no champion: holds (nothing to beat yet)"
    assert decision.requirements[1].verdict == "holds: 0.85 >= 0.8"  # a bar of its own is still judged
    assert decision.summary == "passed: 2 of 2 requirements hold (no champion: nothing to beat yet)"


def test_with_no_champion_a_bar_of_its_own_still_fails() -> None:
    assert not decide(["metrics.val_accuracy.max >= 0.9"], run("run weak", accuracy=0.85), None).passed


def test_params_weigh_too_and_text_params_are_not_numbers() -> None:
    challenger = run("run p", accuracy=0.9, lr="0.25", optimizer="adam")
    assert decide(["params.lr * 2 <= champion.params.lr"], challenger, CHAMPION).passed
    refused = decide(["params.optimizer >= 1"], challenger, CHAMPION)
    assert refused.requirements[0].verdict == "fails: the challenger's params.optimizer is 'adam', not a number"
    missing = decide(["params.seed >= 1"], challenger, CHAMPION)
    assert missing.requirements[0].verdict == "fails: the challenger (run p) has no param 'seed'"


def test_arithmetic_reads_as_written() -> None:
    challenger = run("run a", accuracy=0.5)
    assert decide(["metrics.val_accuracy.max - 0.1 * 2 = 0.3"], challenger, CHAMPION).passed  # * before -
    assert decide(["(metrics.val_accuracy.max - 0.1) * 2 = 0.8"], challenger, CHAMPION).passed
    assert decide(["metrics.val_accuracy.max >= -champion.metrics.val_accuracy.max"], challenger, CHAMPION).passed
    assert decide(["metrics.val_accuracy.max >= champion.metrics.val_accuracy.max-0.45"], challenger, CHAMPION).passed


def test_the_decision_is_a_record_that_travels() -> None:
    import msgspec
    decision = decide([MARGIN], run("run r", accuracy=0.95), CHAMPION)
    again = msgspec.json.decode(msgspec.json.encode(decision), type=GateDecision)
    assert again == decision


@pytest.mark.parametrize("text,sentence", [
    ("metrics.val_accuracy >= 1", "require[0]: say which summary of metric 'val_accuracy'"),
    ("metrics.val_accuracy.max >= champion.metrics.val_accuracy.max +", "found the end at column 64"),
    ("champion.metrics.val_accuracy.max <= metrics.val_accuracy.max", "put champion. fields on the right"),
    ("metrics.a.max >= 1 and metrics.b.min < 2", "a requirement is one comparison; write each as its own item of the list "
                                               "at column 20"),
    ("metrics.a.max", "expected a comparison"),
    ("tags.model = 1", "tags.model is not a number a requirement can weigh"),
    ("metrics.a.max >= 1e999", "is not a finite number at column 18"),
    ("metrics.a.max >= 1; drop table runs", "unexpected ';'"),
    ("metrics.a.max >= (1 + 2", "expected ')' to close the '(' at column 18"),
    ("metrics.a.max >= " + "(" * 100 + "1" + ")" * 100, "nests deeper than"),
    ("metrics.a.max >= " + " + ".join(["1"] * 70), "at most 64 numbers and fields"),
    ("", "is empty"),
])
def test_a_requirement_that_does_not_parse_is_one_sentence_with_its_column(text: str, sentence: str) -> None:
    with pytest.raises(UsageError) as caught:
        decide([text], run("run z", accuracy=0.9), CHAMPION)
    message = str(caught.value)
    assert sentence in message and "\n" not in message, message


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("metrics.params.champion.acc.max.min.last 0123456789+-*()<>=!'\"_ae")),
               max_size=120))
def test_any_text_either_parses_or_is_one_sentence(text: str) -> None:
    try:
        decision = decide([text], run("run f", accuracy=0.9, lr=0.1), CHAMPION)
    except UsageError as exc:
        assert "\n" not in str(exc) and " at column " in str(exc), str(exc)
    else:
        assert len(decision.requirements) == 1 and isinstance(decision.passed, bool)
