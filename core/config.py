"""Job specs from YAML into validated models, with errors at file:line:field.

Validation is msgspec's (types, ranges, unknown fields); this module turns
its error paths back into the YAML line the user has to fix, and adds the
checks that need the file system (``workdir`` must exist).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import msgspec

from . import units
from .errors import SpecError, SpecErrors
from .models import MAX_GPU_MEMORY, JobSpec, spec_dec_hook
from .yamlsource import Located, dotted, read_yaml

_PATH_RE = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_TOKEN_RE = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+|\.\.\.)\]")
_TYPE_WORDS = {
    "int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
    "array": "a list", "object": "a mapping", "null": "nothing (null)",
}


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def load_job_spec(path: str | Path) -> JobSpec:
    """Read, validate and resolve a job spec file (workdir made absolute).

    Every mistake found is reported, up to :data:`MAX_SPEC_ERRORS`, each one
    sentence at its line (a :class:`SpecErrors` when there are several), so a
    user fixes a spec in one pass rather than one error per submit.
    """
    located = read_yaml(path)
    if not isinstance(located.data, dict):
        raise SpecError(located.path, located.line_of(()), None, f"a job spec must be a YAML mapping, got {_describe(located.data)}",
                        "start with 'name:' and 'command:' (see configs/)")
    data = dict(located.data)
    # argv items and environment values are text: keep what was typed, not YAML's reading
    # of it (0.10 -> 0.1, 010 -> 8, yes -> True).
    if isinstance(data.get("command"), list):
        data["command"] = [located.as_typed(("command", i), v) for i, v in enumerate(data["command"])]
    for parts in (("env",), ("tags",), ("constraints", "labels")):
        mapping = _get(data, parts)
        if isinstance(mapping, dict):
            _put(data, parts, {k: located.as_typed(parts + (k,), v) for k, v in mapping.items()})
    spec, errors, removed = _validate(data, located)
    if spec is not None and len(errors) < MAX_SPEC_ERRORS and not _touches(("workdir",), removed):
        try:
            spec = _resolve(spec, Path(path), located)
        except SpecError as exc:
            errors.append(exc)
    _raise_if_any(errors)
    assert spec is not None  # no errors: it converted
    return spec


def _get(data: Any, parts: tuple[str, ...]) -> Any:
    for part in parts:
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _put(data: dict[str, Any], parts: tuple[str, ...], value: Any) -> None:
    for part in parts[:-1]:
        data[part] = dict(data[part])
        data = data[part]
    data[parts[-1]] = value


MAX_SPEC_ERRORS = 5  # "a few": more than this is one problem repeated, and the first ones say so
# Stand-ins for a required field found wrong, so that validation can go on to the rest of the spec.
_STAND_INS: dict[tuple[Any, ...], Any] = {("name",): "x", ("command",): ["x"]}


def validate_job_spec(data: dict[str, Any], located: Located | None = None) -> JobSpec:
    """msgspec validation plus the checks types cannot express; every mistake found, up to a few."""
    spec, errors, _ = _validate(data, located)
    _raise_if_any(errors)
    assert spec is not None
    return spec


def _raise_if_any(errors: list[SpecError]) -> None:
    if len(errors) == 1:
        raise errors[0]
    if errors:
        ordered = sorted(errors[:MAX_SPEC_ERRORS], key=lambda e: (e.line is None, e.line or 0))
        raise SpecErrors(ordered)


def _validate(data: dict[str, Any], located: Located | None) -> tuple[JobSpec | None, list[SpecError], set[tuple]]:
    """Convert, and on each error set the wrong value aside and convert again, so later errors are found too.

    Returns the spec (with defaults where values were set aside; None when
    that was not possible), the errors, and the paths set aside (checks that
    involve them are skipped: their value is not the user's).
    """
    display = located.path if located else "job spec"
    errors: list[SpecError] = []
    removed: set[tuple[Any, ...]] = set()
    while True:
        try:
            spec = msgspec.convert(data, JobSpec, dec_hook=spec_dec_hook, str_keys=True)
            break
        except msgspec.ValidationError as exc:
            parts, error = _validation_error(str(exc), data, located)
            errors.append(error)
            while parts and isinstance(parts[-1], int):  # a list item: set the whole list aside (indices stay true)
                parts = parts[:-1]
            missing = error.problem == "is required but missing"
            if len(errors) >= MAX_SPEC_ERRORS or not parts or parts in removed or (missing and parts not in _STAND_INS):
                return None, errors, removed
            removed.add(parts)
            data = _set_aside(data, parts, _STAND_INS.get(parts) if missing or parts in _STAND_INS else _ABSENT)
    errors.extend(_semantic_errors(spec, located, display, removed))
    return spec, errors, removed


_ABSENT = object()


def _set_aside(data: Any, parts: tuple[Any, ...], value: Any) -> Any:
    """A copy of ``data`` with the value at ``parts`` dropped (``_ABSENT``) or replaced."""
    copy = dict(data)
    if len(parts) == 1:
        if value is _ABSENT:
            copy.pop(parts[0], None)
        else:
            copy[parts[0]] = value
        return copy
    inner = copy.get(parts[0])
    if isinstance(inner, dict):
        copy[parts[0]] = _set_aside(inner, parts[1:], value)
    else:
        copy.pop(parts[0], None)
    return copy


def _touches(parts: tuple[Any, ...], removed: set[tuple[Any, ...]]) -> bool:
    return any(parts[:len(r)] == r or r[:len(parts)] == parts for r in removed)


def _semantic_errors(spec: JobSpec, located: Located | None, display: str,
                     removed: set[tuple[Any, ...]]) -> list[SpecError]:
    """The checks types cannot express, each found error one SpecError (none whose fields were set aside)."""
    errors: list[SpecError] = []

    def fail(parts: tuple[Any, ...], problem: str, hint: str = "", also: tuple[tuple[Any, ...], ...] = ()) -> None:
        if any(_touches(p, removed) for p in (parts, *also)):
            return
        line = located.line_of(parts) if located else None
        errors.append(SpecError(display, line, dotted(parts), problem, hint))

    if isinstance(spec.command, str) and not spec.command.strip():
        fail(("command",), "is empty", "give the program to run, e.g. [python, train.py]")
    if isinstance(spec.command, list):
        if not spec.command:
            fail(("command",), "is an empty list", "give the program to run, e.g. [python, train.py]")
        elif not spec.command[0].strip():
            fail(("command", 0), "the program name is empty")
    gpus = (("resources", "gpus"),)
    if spec.resources.gpu_memory is not None:
        if spec.resources.gpu_memory > MAX_GPU_MEMORY:
            fail(("resources", "gpu_memory"), f"{units.format_size(spec.resources.gpu_memory)} per GPU is more than any GPU has",
                 "gpu_memory is per GPU; 1 TiB at most")
        elif spec.resources.gpus == 0:
            fail(("resources", "gpu_memory"), "is set but resources.gpus is 0", "ask for gpus: 1 or more, or drop gpu_memory",
                 also=gpus)
    for i, name in enumerate(spec.resources.gpu_types):
        if not name.strip():
            where = ("resources", "gpu_type") if isinstance(spec.resources.gpu_type, str) else ("resources", "gpu_type", i)
            fail(where, "is empty", "name a GPU model like H100, or drop gpu_type")
            break
    else:
        if spec.resources.gpu_types and spec.resources.gpus == 0:  # it would be ignored: a job without GPUs
            fail(("resources", "gpu_type"), "is set but resources.gpus is 0, so it would have no effect",
                 "ask for gpus: 1 or more, or drop gpu_type", also=gpus)
    for key in spec.env:
        if not key or "=" in key or "\0" in key:
            fail(("env", key), "is not a valid environment variable name")
    if spec.tags and any(not k for k in spec.tags):
        fail(("tags",), "has an empty key")
    for i, path in enumerate(spec.inputs):
        if not path.strip() or "\0" in path:
            fail(("inputs", i), "is not a path", "give a file, folder or glob, relative to workdir (data/train.csv)")
    return errors


def _resolve(spec: JobSpec, path: Path, located: Located) -> JobSpec:
    workdir = Path(spec.workdir).expanduser()
    if not workdir.is_absolute():
        workdir = (path.parent / workdir).resolve()
    if not workdir.is_dir():
        line = located.line_of(("workdir",))
        problem = f"folder {str(workdir)!r} does not exist"
        raise SpecError(located.path, line, "workdir", problem, "a relative workdir is taken from the spec file's folder")
    return msgspec.structs.replace(spec, workdir=str(workdir))


def spec_error_from_validation(message: str, data: Any, located: Located | None,
                               structs: dict[tuple[Any, ...], type[msgspec.Struct]] | None = None) -> SpecError:
    """Turn msgspec's message into our sentence, pointing at the YAML line.

    ``structs`` maps a field path to the Struct found there, to suggest the
    known fields when one is unknown (job specs by default).
    """
    return _validation_error(message, data, located, structs)[1]


def _validation_error(message: str, data: Any, located: Located | None,
                      structs: dict[tuple[Any, ...], type[msgspec.Struct]] | None = None) -> tuple[tuple[Any, ...], SpecError]:
    """The field path msgspec's message points at, and our sentence for it."""
    display = located.path if located else "job spec"
    match = _PATH_RE.search(message)
    parts: tuple[Any, ...] = ()
    if match:
        parts = _parse_path(match.group("path"), data, structs)
        message = message[: match.start()]
    problem, hint = message, ""
    if m := re.match(r"Object contains unknown field `(.+)`", message):
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
        elif m2 := re.match(r"of length <= (\d+)", m.group(2)):
            problem = f"is too long: {m2.group(1)} characters at most"
        elif m2 := re.match(r"of length >= (\d+)", m.group(2)):
            problem = "is empty" if m2.group(1) == "1" else f"is too short: {m2.group(1)} characters at least"
    line = located.line_of(parts) if located else None
    return parts, SpecError(display, line, dotted(parts) or None, problem, hint)


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


def _known_fields(parts: tuple[Any, ...], structs: dict[tuple[Any, ...], type[msgspec.Struct]] | None) -> list[str]:
    from .models import Constraints, Resources

    table = structs or {(): JobSpec, ("resources",): Resources, ("constraints",): Constraints}
    struct = table.get(tuple("*" if isinstance(p, int) else p for p in parts))  # "*": any list item
    return list(struct.__struct_fields__) if struct else []
