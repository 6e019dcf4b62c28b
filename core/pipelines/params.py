"""A pipeline's params filled into its steps: ``{params.KEY}`` anywhere in a step's text.

The placeholder is the job spec's (core/jobs/params.py), so a pipeline reads
like the jobs it runs. A value that is only a placeholder takes the param's
value and type (``lr: "{params.lr}"`` stays the number 0.1); inside longer
text it becomes the param's text. Filling happens once, when the pipeline is
read, so a step's resolved spec (and so its key) holds the values, and each
step records which params it named: a change to one re-runs only the steps
that read it. Pure: data in, data out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from mlfleet.core.jobs.params import PLACEHOLDER, lookup, text_of

_MISSING = lookup({}, "x")  # what lookup answers for a key no param has


@dataclass
class Filled:
    """What filling found: the params used (key -> value) and the placeholders no param answers (path, key)."""

    used: dict[str, Any] = field(default_factory=dict)
    unknown: list[tuple[tuple[Any, ...], str]] = field(default_factory=list)


def fill(value: Any, params: dict[str, Any], found: Filled, at: tuple[Any, ...] = (),
         text_at: Callable[[tuple[Any, ...]], bool] = lambda at: False) -> Any:
    """``value`` with every ``{params.KEY}`` the params answer replaced; others are left as written and noted.

    ``text_at(path)`` says where a value is text whatever it holds (an argv
    item, an environment value): there a whole placeholder becomes text too.
    """
    if isinstance(value, dict):
        return {k: fill(v, params, found, at + (k,), text_at) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, params, found, at + (i,), text_at) for i, v in enumerate(value)]
    if not isinstance(value, str) or "{params." not in value:
        return value
    whole = PLACEHOLDER.fullmatch(value)
    if whole and not text_at(at):
        answer = lookup(params, whole.group(1))
        if answer is _MISSING:
            found.unknown.append((at, whole.group(1)))
            return value
        found.used[whole.group(1)] = answer
        return answer

    def one(m: Any) -> str:
        answer = lookup(params, m.group(1))
        if answer is _MISSING:
            found.unknown.append((at, m.group(1)))
            return str(m.group(0))
        found.used[m.group(1)] = answer
        return text_of(answer)

    return PLACEHOLDER.sub(one, value)
