"""Why a step's key changed: two sets of key parts in, one sentence per part that differs.

``pipeline why RUN STEP`` will print these: a re-run a user did not expect
is answered with the input, param, code or environment that moved, never
with two opaque hashes. Hashes are shown short, but always long enough to
see that they differ (a one-character change deep in a sha256 is still
visible). Pure.
"""

from __future__ import annotations

import json
from typing import Any

from mlfleet.core.pipelines.keys import KeyParts

SHORT = 8  # characters of a hash shown when the two differ early


def explain(previous: KeyParts | None, current: KeyParts, forced: bool = False) -> list[str]:
    """The reasons ``current`` is not ``previous``, in a fixed order; empty when nothing differs.

    ``previous`` None: the step has no earlier run to compare with ("new
    step"). ``forced``: the user asked for a re-run whatever the key says.
    """
    out: list[str] = ["forced"] if forced else []
    if previous is None:
        return out + ["new step"]
    if previous.spec != current.spec:
        out.append(f"spec changed ({_pair('sha256', previous.spec, current.spec)})")
    out += _params(previous.params, current.params)
    if previous.env != current.env:
        out.append(_optional("environment", "env_hash", previous.env, current.env))
    if previous.code != current.code:
        out.append(_optional("code", "sha256", previous.code, current.code))
    out += _named("input", "sha256", previous.inputs, current.inputs)
    out += _named("upstream step", "key", previous.upstream, current.upstream)
    return out


def _params(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    out = []
    for key in sorted(set(before) | set(after)):
        if key not in before:
            out.append(f"params.{key} added ({_value(after[key])})")
        elif key not in after:
            out.append(f"params.{key} removed (was {_value(before[key])})")
        elif _value(before[key]) != _value(after[key]):
            out.append(f"params.{key} changed {_value(before[key])} → {_value(after[key])}")
    return out


def _named(what: str, label: str, before: dict[str, str], after: dict[str, str]) -> list[str]:
    out = []
    for name in sorted(set(before) | set(after)):
        if name not in before:
            out.append(f"{what} {name} added")
        elif name not in after:
            out.append(f"{what} {name} removed")
        elif before[name] != after[name]:
            out.append(f"{what} {name} changed ({_pair(label, before[name], after[name])})")
    return out


def _optional(what: str, label: str, before: str | None, after: str | None) -> str:
    if before is None:
        return f"{what} added ({label} {_short(after or '', '')})"
    if after is None:
        return f"{what} removed (was {label} {_short(before, '')})"
    return f"{what} changed ({_pair(label, before, after)})"


def _pair(label: str, before: str, after: str) -> str:
    return f"{label} {_short(before, after)} → {_short(after, before)}"


def _short(text: str, other: str) -> str:
    """``text`` cut after SHORT characters, or after the first character where it differs from ``other``."""
    differ = next((i for i, (a, b) in enumerate(zip(text, other)) if a != b), min(len(text), len(other)))
    keep = max(SHORT, differ + 1)
    return text if len(text) <= keep else text[:keep] + "…"


def _value(value: Any) -> str:
    """A param as the user wrote it: text quoted only when it could be read as something else."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(", ", ": "))
