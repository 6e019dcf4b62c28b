"""Gates: does the challenger's run beat the champion's? Requirements in, a decision record out.

A requirement is a relation of the runs filter language with arithmetic and
``champion.`` on the right (core/tracking/runfilter/relation.py):
``metrics.val_accuracy.max >= champion.metrics.val_accuracy.max + 0.005``.
Each is evaluated against two summaries (the challenger's run, and the run
behind the champion alias's version) into its left and right numbers and a
verdict; the gate passes when every requirement holds.

Decisions, written down because a promotion rests on them:

* Arithmetic is decimal on the numbers as written or as logged (a float's
  shortest text), so ``0.905 >= 0.9 + 0.005`` is the tie a reader sees, and a
  tie holds for ``>=``/``<=``/``=`` and fails for ``>``/``<``.
* No champion (the alias points at no version yet): a requirement that names
  ``champion.`` holds, recorded as "no champion": the first model has nothing
  to beat. Requirements on the challenger alone are still judged.
* A metric or param missing on either side, or NaN, fails its requirement
  with a sentence that says which side lacks what: a gate never passes on
  numbers it could not read.

Pure: summaries in, a record out; the service reads the summaries from the
store and records the decision with the run.
"""

from __future__ import annotations

import decimal
import math
from decimal import Decimal
from typing import Any

import msgspec

from mlfleet.core.tracking.runfilter import Arith, Number, Operand, Relation, Term, parse_relation, show_term

_CONTEXT = decimal.Context(prec=50)
_HOLDS = {"=": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
          "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}


class RunSummary(msgspec.Struct, frozen=True, kw_only=True):
    """What a gate reads of one run: its params and its metrics' summaries (``{"val_accuracy": {"max": 0.93}}``)."""

    label: str  # how the run is named in sentences: "run 7f3a…" or "iris@production (version 3, run 51c2…)"
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = msgspec.field(default_factory=dict)


class RequirementResult(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    passed: bool
    left: float | None  # the numbers compared; None where one could not be read
    right: float | None
    verdict: str  # one sentence


class GateDecision(msgspec.Struct, frozen=True, kw_only=True):
    passed: bool
    challenger: str
    champion: str | None  # None: there was no champion
    requirements: list[RequirementResult]
    summary: str


class _Unreadable(Exception):
    """A value a requirement names is not there (or not a number); the message says which and where."""


def parse_requirements(texts: list[str], label: str = "require") -> list[Relation]:
    """Each requirement's relation; raises FilterError (a UsageError: one sentence) naming the item and the column."""
    return [parse_relation(text, f"{label}[{i}]") for i, text in enumerate(texts)]


def decide(require: list[str], challenger: RunSummary, champion: RunSummary | None) -> GateDecision:
    """The gate's decision: every requirement judged, passed when all hold."""
    results = [judge(relation, challenger, champion) for relation in parse_requirements(require)]
    passed = all(r.passed for r in results)
    failed = [r for r in results if not r.passed]
    if failed:
        summary = f"failed: {len(failed)} of {len(results)} requirement{'s' if len(results) != 1 else ''} " \
                  f"did not hold ({failed[0].text}: {failed[0].verdict})"
    else:
        summary = f"passed: {len(results)} of {len(results)} requirement{'s hold' if len(results) != 1 else ' holds'}"
        if champion is None:
            summary += " (no champion: nothing to beat yet)"
    return GateDecision(passed=passed, challenger=challenger.label, champion=champion.label if champion else None,
                        requirements=results, summary=summary)


def judge(relation: Relation, challenger: RunSummary, champion: RunSummary | None) -> RequirementResult:
    """One requirement: its two numbers and whether the relation holds between them."""
    if champion is None and _names_scope(relation.right):
        return RequirementResult(text=relation.text, passed=True, left=_try(relation.left, challenger, None),
                                 right=None, verdict="no champion: holds (nothing to beat yet)")
    try:
        left = _value(relation.left, challenger, champion)
        right = _value(relation.right, challenger, champion)
    except _Unreadable as exc:
        return RequirementResult(text=relation.text, passed=False, left=_try(relation.left, challenger, champion),
                                 right=_try(relation.right, challenger, champion), verdict=f"fails: {exc}")
    holds = _HOLDS[relation.op](left, right)
    source = "" if isinstance(relation.right, Number) else f" ({show_term(relation.right)})"  # where the bar came from
    verdict = f"holds: {_show(left)} {relation.op} {_show(right)}{source}" if holds else \
        f"fails: {_show(left)} is not {relation.op} {_show(right)}{source}"
    return RequirementResult(text=relation.text, passed=holds, left=float(left), right=float(right), verdict=verdict)


def _names_scope(term: Term) -> bool:
    if isinstance(term, Operand):
        return term.scope is not None
    if isinstance(term, Arith):
        return _names_scope(term.left) or _names_scope(term.right)
    return False


def _try(term: Term, challenger: RunSummary, champion: RunSummary | None) -> float | None:
    try:
        return float(_value(term, challenger, champion))
    except _Unreadable:
        return None


def _value(term: Term, challenger: RunSummary, champion: RunSummary | None) -> Decimal:
    if isinstance(term, Number):
        return Decimal(term.text)
    if isinstance(term, Arith):
        left, right = _value(term.left, challenger, champion), _value(term.right, challenger, champion)
        op = {"+": _CONTEXT.add, "-": _CONTEXT.subtract, "*": _CONTEXT.multiply}[term.op]
        return op(left, right)
    run = champion if term.scope == "champion" else challenger
    who = "the champion" if term.scope == "champion" else "the challenger"
    if run is None:
        raise _Unreadable(f"{term}: there is no champion")
    field = term.field
    if field.source == "metrics":
        summaries = run.metrics.get(field.key)
        if summaries is None:
            raise _Unreadable(f"{who} ({run.label}) has no metric {field.key!r}")
        if field.summary not in summaries or summaries[field.summary] is None:
            have = ", ".join(sorted(summaries)) or "none"
            raise _Unreadable(f"{who} ({run.label}) has no {field.summary} of metric {field.key!r} (it has {have})")
        return _number(summaries[field.summary], f"{who}'s {term}")
    value = _param(run.params, field.key)
    if value is _NO_PARAM:
        raise _Unreadable(f"{who} ({run.label}) has no param {field.key!r}")
    return _number(value, f"{who}'s {term}")


_NO_PARAM = object()


def _param(params: dict[str, Any], key: str) -> Any:
    if key in params:
        return params[key]
    head, _, rest = key.partition(".")
    if rest and isinstance(params.get(head), dict):
        return _param(params[head], rest)
    return _NO_PARAM


def _number(value: Any, what: str) -> Decimal:
    """A logged value as an exact decimal: a float by its shortest text, a numeric string as written."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _Unreadable(f"{what} is {value!r}, not a number")
    if isinstance(value, float):
        if math.isnan(value):
            raise _Unreadable(f"{what} is NaN")
        return Decimal(repr(value)) if math.isfinite(value) else Decimal(value)
    try:
        number = Decimal(str(value).strip())
    except decimal.InvalidOperation:
        raise _Unreadable(f"{what} is {value!r}, not a number") from None
    if number.is_nan():
        raise _Unreadable(f"{what} is NaN")
    return number


def _show(value: Decimal) -> str:
    text = format(value.normalize(), "f") if value.is_finite() else str(value)
    return text if len(text) <= 24 else f"{float(value):.6g}"
