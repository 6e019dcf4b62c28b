"""The filter language's tree: what a filter can name, and the nodes the parser builds from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from mlfleet.core.base.errors import UsageError

MAX_LENGTH = 10_000  # characters of filter text
MAX_DEPTH = 64  # nested parentheses and nots
MAX_FIELDS = 32  # distinct params/tags/metrics a filter (and sort) may name

# Run columns a filter may name, by kind: text, number or time.
RUN_COLUMNS: dict[str, str] = {
    "run_id": "text", "job_id": "text", "name": "text", "project": "text", "owner": "text", "host": "text",
    "state": "text", "end_reason": "text", "code_hash": "text", "env_hash": "text", "sweep": "text",
    "attempt": "number", "exit_code": "number", "signal": "number",
    "created_at": "time", "started_at": "time", "finished_at": "time",
}
# Run fields that are not a column of runs: the SQL that gives each (``sweep``: the name of the sweep
# the run's job is a child of, core/sweeps/; NULL for a job of its own).
DERIVED_COLUMNS: dict[str, str] = {
    "sweep": "(select s.name from sweep_jobs sj join sweeps s on s.sweep_id = sj.sweep_id where sj.job_id = r.job_id)",
}
# What a metric is summed up by: all over the run's points, NaN points left out
# (count counts every point; last is the last point by line, NaN as missing;
# summary is the min, max or last the run declared with track.summary, else missing).
METRIC_SUMMARIES = ("min", "max", "last", "mean", "count", "summary")
COMPARISONS = ("=", "!=", "<", "<=", ">", ">=")

Value = Union[str, float, bool]


class FilterError(UsageError):
    """A filter or sort that does not parse; ``column`` is 1-based."""

    def __init__(self, label: str, problem: str, column: int) -> None:
        self.label = label
        self.problem = problem
        self.column = column
        super().__init__(f"{label}: {problem} at column {column}")


@dataclass(frozen=True)
class Field:
    """What a comparison looks at: a run column, a param, a tag or a metric summary."""

    source: str  # run | params | tags | metrics | env (a package of the run's environment: its version)
    key: str  # the column name, or the param/tag/metric key as logged
    summary: str | None = None  # metrics only: one of METRIC_SUMMARIES

    @property
    def kind(self) -> str:
        """text, number, time or param (a param compares as a number or as text, by the value)."""
        if self.source == "run":
            return RUN_COLUMNS[self.key]
        return {"params": "param", "tags": "text", "metrics": "number", "env": "text"}[self.source]

    def __str__(self) -> str:
        if self.source == "run":
            return self.key
        text = f"{self.source}.{show_key(self.key)}"
        return f"{text}.{self.summary}" if self.summary else text


@dataclass(frozen=True)
class Compare:
    """``field op value``; op is one of COMPARISONS, or in, like, ilike, is null.

    For ``in`` the value is a tuple of values; for ``is null`` it is None.
    Times are compared as Unix seconds (a float).
    """

    field: Field
    op: str
    value: Value | tuple[Value, ...] | None


@dataclass(frozen=True)
class And:
    items: tuple["Node", ...]


@dataclass(frozen=True)
class Or:
    items: tuple["Node", ...]


@dataclass(frozen=True)
class Not:
    item: "Node"


Node = Union[Compare, And, Or, Not]


@dataclass(frozen=True)
class Number:
    """A number written in an arithmetic term, with its text (``0.005``): exact arithmetic starts from the text."""

    value: float
    text: str


@dataclass(frozen=True)
class Operand:
    """A field of one of the runs a relation compares: ``scope`` None is the run itself, else e.g. ``champion``."""

    field: Field
    scope: str | None = None

    def __str__(self) -> str:
        return f"{self.scope}.{self.field}" if self.scope else str(self.field)


@dataclass(frozen=True)
class Arith:
    """``left op right`` with op one of + - *."""

    op: str
    left: "Term"
    right: "Term"


Term = Union[Number, Operand, Arith]


@dataclass(frozen=True)
class Relation:
    """``left op right`` between two arithmetic terms (op one of COMPARISONS): one requirement of a gate."""

    left: Term
    op: str
    right: Term
    text: str  # as written


def show_term(term: Term) -> str:
    """A term as text, parenthesised where the reading needs it."""
    if isinstance(term, Number):
        return term.text
    if isinstance(term, Operand):
        return str(term)
    left, right = show_term(term.left), show_term(term.right)
    if term.op == "*":
        left = f"({left})" if isinstance(term.left, Arith) and term.left.op != "*" else left
        right = f"({right})" if isinstance(term.right, Arith) and term.right.op != "*" else right
    elif term.op == "-" and isinstance(term.right, Arith) and term.right.op != "*":
        right = f"({right})"
    return f"{left} {term.op} {right}"


@dataclass(frozen=True)
class SortKey:
    field: Field
    descending: bool = False


def name_start(ch: str) -> bool:
    return ch == "_" or ch.isalpha()


def name_char(ch: str) -> bool:
    return ch in "_-/" or ch.isalnum()


def show_key(key: str) -> str:
    return key if key and all(name_char(c) or c == "." for c in key) and name_start(key[0]) else \
        '"' + key.replace('"', '""') + '"'


def fields_of(node: Node | None) -> list[Field]:
    """Every field a filter names, in order, each once."""
    seen: dict[Field, None] = {}

    def walk(n: Node) -> None:
        if isinstance(n, Compare):
            seen.setdefault(n.field)
        elif isinstance(n, Not):
            walk(n.item)
        else:
            for item in n.items:
                walk(item)

    if node is not None:
        walk(node)
    return list(seen)
