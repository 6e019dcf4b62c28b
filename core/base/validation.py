"""msgspec's validation messages turned into our sentence at the YAML line, for every file mlfleet reads.

Job specs, hosts.yaml, config.yaml and drift configs are all validated by
msgspec; its message names a path like ``$.resources.gpus``. This module maps
that path back to the line the user has to fix and says the problem in plain
words (the known fields when one is unknown).
"""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any

import msgspec
import msgspec.inspect
from msgspec import Meta

from mlfleet.core.base.errors import SpecError, SpecErrors
from mlfleet.core.base.models import Constraints, Environment, JobSpec, Resources, spec_dec_hook
from mlfleet.core.base.sweep_models import Distribution, Objective, RandomSearch, SweepSpec
from mlfleet.core.base.yamlsource import Located, dotted

AbsolutePath = Annotated[str, Meta(min_length=1, max_length=4096)]  # checked by check_absolute_paths

_PATH_RE = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_KEY_PATH_RE = re.compile(r" - at `key` in `\$(?P<path>[^`]*)`$")
_TOKEN_RE = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+|\.\.\.)\]")
_TYPE_WORDS = {
    "int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
    "array": "a list", "object": "a mapping", "null": "nothing (null)",
}


def spec_error_from_validation(message: str, data: Any, located: Located | None,
                               structs: dict[tuple[Any, ...], type[msgspec.Struct]] | None = None) -> SpecError:
    """Turn msgspec's message into our sentence, pointing at the YAML line.

    ``structs`` maps a field path to the Struct found there, to suggest the
    known fields when one is unknown (job specs by default).
    """
    return validation_error(message, data, located, structs)[1]


def validation_error(message: str, data: Any, located: Located | None,
                      structs: dict[tuple[Any, ...], type[msgspec.Struct]] | None = None) -> tuple[tuple[Any, ...], SpecError]:
    """The field path msgspec's message points at, and our sentence for it."""
    display = located.path if located else "job spec"
    match = _PATH_RE.search(message)
    parts: tuple[Any, ...] = ()
    key_match = _KEY_PATH_RE.search(message)
    if key_match:  # a mapping's key is wrong (a step named "a.b"): point at that key
        parts = _parse_path(key_match.group("path"), data, structs)
        key = _first_bad_name(data, parts, structs)
        if key is not None:
            parts = parts + (key,)
        line = located.line_of(parts) if located else None
        problem = f"the name {key!r} " if key is not None else "a name here "
        if "matching regex" in message:
            problem += "must start with a letter or digit and hold only letters, digits, '_' and '-'"
        else:
            problem += message[: key_match.start()].replace("Expected `str`", "must be text").strip()
        return parts, SpecError(display, line, dotted(parts) or None, problem)
    if match:
        parts = _parse_path(match.group("path"), data, structs)
        message = message[: match.start()]
    problem, hint = message, ""
    if m := re.match(r"Invalid enum value (.+)$", message):
        choices = _choices(parts, structs)
        problem = f"{m.group(1)} is not one of {', '.join(choices)}" if choices else f"{m.group(1)} is not an allowed value"
    elif m := re.match(r"Object contains unknown field `(.+)`", message):
        key = m.group(1)
        parts = parts + (key,)
        known = _known_fields(parts[:-1], structs)
        close = difflib.get_close_matches(key, known, n=1)
        problem = "unknown field"
        hint = f"did you mean {close[0]!r}?" if close else (f"known fields are {', '.join(known)}" if known else "")
    elif m := re.match(r"Object missing required field `(.+)`", message):
        parts = parts + (m.group(1),)
        problem = "is required but missing"
        hint = "add it (see configs/ for examples)"
    elif m := re.match(r"Expected `([^`]+)`, got `([^`]+)`", message):
        got = _TYPE_WORDS.get(m.group(2), m.group(2))
        value = _value_at(data, parts)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool) and len(str(value)) <= 40:
            got = repr(value)
        problem = f"expected {_words(m.group(1))}, got {got}"
    elif m := re.match(r"Expected `([^`]+)` (.+)$", message):
        problem = f"must be {_words(m.group(1))} {m.group(2)}"
        if "matching regex" in message and parts and parts[-1] in ("name", "project"):
            problem = "must start with a letter or digit and hold only letters, digits, '.', '_' and '-'"
        elif (m2 := re.search(r"matching regex '(.+)'$", m.group(2))) and (words := pattern_words(m2.group(1))):
            problem = words
        elif m2 := re.match(r"of length <= (\d+)", m.group(2)):
            unit = "entries" if m.group(1) in ("array", "object") else "characters"  # a list or a mapping counts entries
            problem = f"is too long: {m2.group(1)} {unit} at most"
        elif m2 := re.match(r"of length >= (\d+)", m.group(2)):
            unit = "entries" if m.group(1) in ("array", "object") else "characters"
            problem = "is empty" if m2.group(1) == "1" else f"is too short: {m2.group(1)} {unit} at least"
    line = located.line_of(parts) if located else None
    return parts, SpecError(display, line, dotted(parts) or None, problem, hint)


_CLASS_WORDS = {"A-Z": "", "a-z": "", "0-9": ""}


def pattern_words(pattern: str) -> str | None:
    """A simple name pattern in words (``^[A-Za-z0-9_.+-]+$``, optionally a comma list of them): users are
    told which characters are allowed, never shown a regular expression; None for any other pattern."""
    m = re.fullmatch(r"\^\[([^\]]+)\]\+(\(,\[\1\]\+\)\*)?\$", pattern)
    if m is None:
        return None
    rest = m.group(1)
    for span in _CLASS_WORDS:
        rest = rest.replace(span, "")
    others = ", ".join(repr(ch) for ch in rest.replace("\\", ""))
    allowed = "letters, digits" + (f" and {others}" if others else "")
    if m.group(2):
        return f"must be one name or several separated by commas, each of {allowed} only"
    return f"must hold only {allowed}"


def _value_at(data: Any, parts: tuple[Any, ...]) -> Any:
    for part in parts:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return None
    return data


def _words(type_text: str) -> str:
    alternatives = [t.strip() for t in type_text.split("|")]
    if {"str", "int", "float"} <= set(alternatives):
        return "a plain value (text or a number)"
    return " or ".join(_TYPE_WORDS.get(t, t) for t in alternatives)


def _parse_path(text: str, data: Any, structs: dict[tuple[Any, ...], type[msgspec.Struct]] | None) -> tuple[Any, ...]:
    """``.resources.gpu_type[0]`` -> ("resources", "gpu_type", 0); ``[...]`` finds the bad key."""
    parts: list[Any] = []
    node = data
    for name, index in _TOKEN_RE.findall(text):
        if name:
            parts.append(name)
            node = node.get(name) if isinstance(node, dict) else None
        elif index == "...":
            key = _first_bad_key(data, tuple(parts), node, structs)
            if key is None:
                break
            parts.append(key)
            node = node.get(key) if isinstance(node, dict) else None
        else:
            parts.append(int(index))
            node = node[int(index)] if isinstance(node, list) and int(index) < len(node) else None
    return tuple(parts)


def _first_bad_key(data: Any, parts: tuple[Any, ...], node: Any,
                   structs: dict[tuple[Any, ...], type[msgspec.Struct]] | None) -> Any:
    """msgspec says only "a value in this mapping"; find which, by validating each entry alone."""
    if not isinstance(node, dict):
        return None
    root = (structs or {}).get((), JobSpec)
    for key, value in node.items():
        trial = _replace_at(data, parts, {key: value})
        try:
            msgspec.convert(trial, root, dec_hook=spec_dec_hook, str_keys=True)
        except msgspec.ValidationError as exc:
            if "[...]" in str(exc):
                return key
    return next(iter(node), None)


def _replace_at(data: Any, parts: tuple[Any, ...], value: Any) -> Any:
    if not parts:
        return value
    copy = dict(data) if isinstance(data, dict) else data
    if isinstance(copy, dict):
        copy[parts[0]] = _replace_at(copy.get(parts[0]), parts[1:], value)
    return copy


def _first_bad_name(data: Any, parts: tuple[Any, ...], structs: dict[tuple[Any, ...], type[msgspec.Struct]] | None) -> Any:
    """msgspec says only "a key in this mapping"; find which, by validating each key alone."""
    node = _value_at(data, parts)
    if not isinstance(node, dict):
        return None
    root = (structs or {}).get((), JobSpec)
    for key, value in node.items():
        try:
            msgspec.convert(_replace_at(data, parts, {key: value}), root, dec_hook=spec_dec_hook, str_keys=True)
        except msgspec.ValidationError as exc:
            if "at `key` in" in str(exc):
                return key
    return None


def _choices(parts: tuple[Any, ...], structs: dict[tuple[Any, ...], type[msgspec.Struct]] | None) -> list[str]:
    """The values a Literal field allows (``concurrency``: queue, replace, skip), for the sentence that refuses one."""
    if not parts or not isinstance(parts[-1], str) or not _known_fields(parts[:-1], structs):
        return []
    table = structs or {(): JobSpec}
    key = tuple("*" if isinstance(p, int) else p for p in parts[:-1])
    struct = table.get(key) or next((st for pattern, st in table.items() if len(pattern) == len(key)
                                     and all(p == "*" or p == k for p, k in zip(pattern, key))), None)
    if struct is None:
        return []
    info = msgspec.inspect.type_info(struct)
    for field in getattr(info, "fields", ()):
        if field.name == parts[-1]:
            kinds = field.type.types if isinstance(field.type, msgspec.inspect.UnionType) else (field.type,)
            return [str(v) for t in kinds if isinstance(t, msgspec.inspect.LiteralType) for v in t.values]
    return []


def _known_fields(parts: tuple[Any, ...], structs: dict[tuple[Any, ...], type[msgspec.Struct]] | None) -> list[str]:
    table = structs or {(): JobSpec, ("resources",): Resources, ("constraints",): Constraints,
                        ("environment",): Environment, ("sweep",): SweepSpec,
                        ("sweep", "random"): RandomSearch, ("sweep", "objective"): Objective,
                        ("sweep", "random", "space", "*"): Distribution}
    key = tuple("*" if isinstance(p, int) else p for p in parts)  # "*": any list item
    struct = table.get(key) or (table.get(key[:-1] + ("*",)) if key else None)  # or any key of a mapping
    if struct is None:  # "*" for a mapping's key anywhere on the path (steps.*.gate: any step's gate)
        struct = next((s for pattern, s in table.items() if len(pattern) == len(key)
                       and all(p == "*" or p == k for p, k in zip(pattern, key))), None)
    return list(struct.__struct_fields__) if struct else []


def check_absolute_paths(located: Located, parts: tuple, field: str, paths: list[str]) -> None:
    """Folders on a node must be written in full: a relative one would depend on the agent's cwd."""
    for j, folder in enumerate(paths):
        if not folder.startswith("/"):
            raise SpecError(located.path, located.line_of((*parts, j)), f"{field}[{j}]",
                            f"{folder!r} is not an absolute path", "write the folder's full path on the node, "
                            "e.g. /data/models")


# ------------------------------------------------ every mistake in one pass

_ABSENT = object()


def collect_errors(data: dict[str, Any], kind: type[msgspec.Struct], located: Located | None, *, display: str,
                   max_errors: int, structs: dict[tuple[Any, ...], type[msgspec.Struct]] | None = None,
                   stand_ins: dict[tuple[Any, ...], Any] | None = None,
                   dec_hook: Any = spec_dec_hook) -> tuple[Any, list[SpecError], set[tuple[Any, ...]], dict[str, Any]]:
    """Convert ``data`` to ``kind``; on each error set the wrong value aside and convert again.

    Why: a user fixes a file in one pass only if every mistake is reported,
    but msgspec stops at the first. Each wrong value is dropped (its default
    takes its place) or, for a required field, replaced by its stand-in, and
    conversion goes on, up to ``max_errors``. Job specs, deployment specs and
    pipeline specs share this loop, so they agree on what "all the errors" is.

    Returns the converted value (None when no stand-in could take a required
    field's place, or too many errors), the errors, the field paths set
    aside (checks that involve them should be skipped, their value is not the
    user's: :func:`touches`) and the data that converted.
    """
    stand_ins = stand_ins or {}
    errors: list[SpecError] = []
    removed: set[tuple[Any, ...]] = set()
    while True:
        try:
            return msgspec.convert(data, kind, dec_hook=dec_hook, str_keys=True), errors, removed, data
        except msgspec.ValidationError as exc:
            parts, error = validation_error(str(exc), data, located, structs)
            if error.problem == "is required but missing" and parts in removed:
                return None, errors, removed, data  # missing because it was set aside: the first error said why
            if located is None and error.path != display:
                error = SpecError(display, None, error.field, error.problem, error.hint)
            errors.append(error)
            while parts and isinstance(parts[-1], int):  # a list item: set the whole list aside (indices stay true)
                parts = parts[:-1]
            missing = error.problem == "is required but missing"
            if len(errors) >= max_errors or not parts or parts in removed or (missing and parts not in stand_ins):
                return None, errors, removed, data
            removed.add(parts)
            data = set_aside(data, parts, stand_ins.get(parts) if missing or parts in stand_ins else _ABSENT)


def set_aside(data: Any, parts: tuple[Any, ...], value: Any = _ABSENT) -> Any:
    """A copy of ``data`` with the value at ``parts`` dropped (no ``value``) or replaced; the original is kept."""
    copy = dict(data)
    if len(parts) == 1:
        if value is _ABSENT:
            copy.pop(parts[0], None)
        else:
            copy[parts[0]] = value
        return copy
    inner = copy.get(parts[0])
    if isinstance(inner, dict):
        copy[parts[0]] = set_aside(inner, parts[1:], value)
    else:
        copy.pop(parts[0], None)
    return copy


def touches(parts: tuple[Any, ...], removed: set[tuple[Any, ...]]) -> bool:
    """Whether ``parts`` is, holds or lies inside a path that was set aside."""
    return any(parts[:len(r)] == r or r[:len(parts)] == parts for r in removed)


def raise_collected(errors: list[SpecError], max_errors: int) -> None:
    """Nothing when there are no errors; one SpecError alone; several as SpecErrors, by line, at most ``max_errors``."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        ordered = sorted(errors[:max_errors], key=lambda e: (e.line is None, e.line or 0))
        raise SpecErrors(ordered)
