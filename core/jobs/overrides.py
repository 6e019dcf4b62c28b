"""``--set PATH=VALUE`` and ``--name``: changes to a job spec made on the command line, before it is validated.

An override is applied to the spec's plain data, and the result goes through
the same schema as the file (core/jobs/spec.py), so a misspelt path gets the
same did-you-mean sentence as a misspelt field, only naming the ``--set``
that said it instead of a line. Sweeps apply each point the same way
(core/sweeps/children.py). Pure: text in, data out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from mlfleet.core.base.errors import SpecError, UsageError
from mlfleet.core.base.yamlsource import INT_MAX, INT_MIN, dotted

Path = tuple[Any, ...]  # ("resources", "gpus"), ("command", 1)

_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_WHOLE_PATH = re.compile(r"[^.\[\]]+(?:\.[^.\[\]]+|\[\d+\])*")
# Values that are text whatever they look like (argv items, environment, tags, labels): kept as typed.
_TEXT_AT = (("command",), ("env",), ("tags",), ("constraints", "labels"), ("environment", "python"),
            ("environment", "requirements"), ("environment", "setup"))  # python=3.10 is "3.10", as in a file
MAX_OVERRIDES = 200


@dataclass(frozen=True)
class Override:
    """One change: where (``path``), what (``value``), and how the user said it (``said``: ``--set a.b=1``)."""

    said: str
    path: Path
    value: Any


def parse_path(text: str, said: str) -> Path:
    """``resources.gpus`` -> ("resources", "gpus"); ``command[1]`` -> ("command", 1)."""
    if not _WHOLE_PATH.fullmatch(text):
        raise UsageError(f"{said}: {text!r} is not a spec path; write fields with dots and list items with "
                         "[N], e.g. params.lr or command[1]")
    return tuple(int(index) if index else name for name, index in _TOKEN.findall(text))


def parse_value(raw: str, said: str, path_text: str = "PATH") -> Any:
    """A YAML scalar or flow value: ``2`` an int, ``[a, b]`` a list, ``'0.1'`` text, empty: null."""
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise UsageError(f"{said}: the value is not valid YAML ({problem}); quote it to pass it as text, "
                         f"e.g. --set '{path_text}=\"{raw}\"'") from None
    _check_ints(value, said)
    return value


def _check_ints(value: Any, said: str, inside: tuple[int, ...] = ()) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int) and not INT_MIN <= value <= INT_MAX:
        raise UsageError(f"{said}: is an integer too large to carry (integers must be between -2**63 and 2**63-1); "
                         "quote it to keep it as text")
    if isinstance(value, (dict, list)):
        if id(value) in inside:  # &a [*a]: YAML allows a value that holds itself; it cannot be carried
            raise UsageError(f"{said}: the value holds itself (a YAML alias inside its own anchor); write it out")
        for item in value.values() if isinstance(value, dict) else value:
            _check_ints(item, said, inside + (id(value),))


def parse_set(text: str) -> Override:
    """One ``--set`` argument."""
    said = f"--set {text}"
    if "=" not in text:
        raise UsageError(f"{said}: expected PATH=VALUE, e.g. --set params.lr=0.1")
    path_text, raw = text.split("=", 1)
    path = parse_path(path_text.strip(), said)
    value = parse_value(raw, said, path_text.strip())
    if any(path[:len(p)] == p for p in _TEXT_AT) and value is not None and not isinstance(value, (str, list, dict)):
        value = raw.strip()  # env.SEED=010 stays "010", as in a spec file
    return Override(said, path, value)


def parse_overrides(sets: list[str] | None, name: str | None = None) -> list[Override]:
    """``--set`` arguments in order (a later one wins), then ``--name``."""
    sets = list(sets or [])
    if len(sets) > MAX_OVERRIDES:
        raise UsageError(f"--set is given {len(sets)} times, more than {MAX_OVERRIDES}; put the values in the spec")
    out = [parse_set(text) for text in sets]
    if name is not None:
        out.append(Override(f"--name {name}", ("name",), name))
    return out


def apply(data: dict[str, Any], overrides: list[Override]) -> dict[str, Any]:
    """A copy of the spec's data with each override set (the original is not changed)."""
    for override in overrides:
        data = set_path(data, override.path, override.value, override.said)
    return data


def set_path(data: Any, path: Path, value: Any, said: str, at: Path = ()) -> Any:
    """``data`` with ``value`` at ``path``, copying only the containers on the way."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    where = dotted(at) or "the spec"
    if isinstance(data, list):
        index = head if isinstance(head, int) else int(head) if str(head).isdigit() else None
        if index is None or index >= len(data):
            count = f"{len(data)} item{'s' if len(data) != 1 else ''}"
            raise UsageError(f"{said}: {where} is a list of {count}; name an item as {where}[0] .. "
                             f"{where}[{max(len(data) - 1, 0)}]" if data else f"{said}: {where} is an empty list")
        copy = list(data)
        copy[index] = set_path(data[index], rest, value, said, at + (index,))
        return copy
    if data is None:
        data = {}
    if not isinstance(data, dict) or isinstance(head, int):
        kind = "a list" if isinstance(data, list) else "a mapping" if isinstance(data, dict) else repr(data)
        raise UsageError(f"{said}: {where} is {kind}, so it has no {'item' if isinstance(head, int) else 'field'} "
                         f"{head!r}")
    copy = dict(data)
    copy[head] = set_path(data.get(head), rest, value, said, at + (head,))
    return copy


def blame_overrides(errors: list[SpecError], overrides: list[Override]) -> list[SpecError]:
    """Errors about an overridden path name the ``--set`` that put it there instead of a line of the file."""
    out = []
    for error in errors:
        said = _who_set(error.field, overrides)
        if said is None:
            out.append(error)
            continue
        override = next(o for o in reversed(overrides) if o.said == said)
        field = error.field if error.field and error.field != dotted(override.path) else None
        out.append(SpecError(said, None, field, error.problem, error.hint))
    return out


def _who_set(field: str | None, overrides: list[Override]) -> str | None:
    if not field:
        return None
    for override in reversed(overrides):  # the last one to set a path is the one that counts
        mine = dotted(override.path)
        if field == mine or field.startswith(mine + ".") or field.startswith(mine + "["):
            return override.said
    return None
