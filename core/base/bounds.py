"""What each RPC parameter may be, and the check that makes a bad one the caller's mistake.

The controller's ``rpc_*`` signatures use these types (``limit: ListLimit``),
and the CLI's flags use the same numbers, so a value the CLI lets through is
one the controller takes. :func:`usage_dispatcher` checks a request's
parameters against the method's type hints before it runs and turns a bad
value into a :class:`UsageError` (exit 2) with one sentence that names the
parameter, the rule and the value: a negative limit is the caller's mistake,
not an internal error and not an unavailable controller.
"""

from __future__ import annotations

import inspect
import re
import typing
from typing import Annotated, Any, Callable

import msgspec
from msgspec import Meta

from mlfleet.core.base.errors import UsageError
from mlfleet.core.base.protocol import Handler, Peer
from mlfleet.core.base.rpc import find_handler

MAX_LIST = 10_000  # rows in one list answer (jobs, audit, drift reports, runs): far below a frame's size
MAX_QUERY_ROWS = 100_000  # rows of one db query answer
MAX_CHUNK = 4 * 1024 * 1024  # bytes of one log or artifact chunk (what an agent reads at most)
MAX_OFFSET = 1 << 62
MAX_HISTORY = 3600  # telemetry samples per host in hosts_list (the hour a link keeps)
MAX_WAIT_S = 300.0
MAX_POINTS = 100_000  # buckets per curve in runs compare
MAX_COMPARE_RUNS = 100
MAX_NAME = 256  # an id, a prefix of one, a name

ListLimit = Annotated[int, Meta(ge=1, le=MAX_LIST)]
QueryRows = Annotated[int, Meta(ge=1, le=MAX_QUERY_ROWS)]
ChunkSize = Annotated[int, Meta(ge=1, le=MAX_CHUNK)]
Offset = Annotated[int, Meta(ge=0, le=MAX_OFFSET)]
History = Annotated[int, Meta(ge=0, le=MAX_HISTORY)]
WaitSeconds = Annotated[float, Meta(ge=0, le=MAX_WAIT_S)]
Points = Annotated[int, Meta(ge=1, le=MAX_POINTS)]
KeyCount = Annotated[int, Meta(ge=1, le=1_000_000)]  # metric keys asked for (each query caps it further)
Ident = Annotated[str, Meta(min_length=1, max_length=MAX_NAME)]
RunIds = Annotated[list[Ident], Meta(min_length=1, max_length=MAX_COMPARE_RUNS)]

_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def usage_dispatcher(obj: Any, dispatch: Handler, prefix: str = "rpc_") -> Handler:
    """``dispatch`` (a method_dispatcher over ``obj``, an object or a table), with each request's parameters checked first."""
    checkers: dict[str, type[msgspec.Struct] | None] = {}

    def checker(method: str) -> type[msgspec.Struct] | None:
        if method not in checkers:
            fn = find_handler(obj, method, prefix)
            checkers[method] = None if fn is None else _params_struct(method, fn)
        return checkers[method]

    async def handle(peer: Peer, method: str, params: dict[str, Any]) -> Any:
        struct = checker(method)
        if struct is not None:  # an unknown method is the dispatcher's to answer
            try:
                msgspec.convert(params, struct)
            except msgspec.ValidationError as exc:
                raise UsageError(_sentence(method, struct, params, str(exc))) from None
        return await dispatch(peer, method, params)

    return handle


def _params_struct(method: str, fn: Callable[..., Any]) -> type[msgspec.Struct]:
    hints = typing.get_type_hints(fn, include_extras=True)
    fields: list[Any] = []
    for name, p in list(inspect.signature(fn).parameters.items())[1:]:  # skip the peer
        kind = hints.get(name, Any)
        fields.append((name, kind) if p.default is inspect.Parameter.empty else (name, kind, p.default))
    return msgspec.defstruct(f"{method}_params", fields, forbid_unknown_fields=True)


def _sentence(method: str, struct: type[msgspec.Struct], params: dict[str, Any], message: str) -> str:
    """msgspec's "Expected `int` >= 1 - at `$.limit`" as "jobs_list: limit must be an int >= 1, got -5"."""
    known = ", ".join(struct.__struct_fields__) or "none"
    if m := re.match(r"Object contains unknown field `(.+)`", message):
        return f"{method} has no parameter {m.group(1)!r}; its parameters are {known}"
    if m := re.match(r"Object missing required field `(.+)`", message):
        return f"{method} needs the parameter {m.group(1)!r}"
    at = _AT.search(message)
    path = at.group("path").lstrip(".") if at else ""
    rule = message[: at.start()] if at else message
    rule = re.sub(r", got `[^`]*`$", "", rule)  # the value itself is said below
    rule = re.sub(r"^Invalid enum value .*", "is not one of the values it takes", rule)
    rule = re.sub(r"Expected `([^`]+)`", lambda m: "must be " + " or ".join(
        _WORDS.get(w.strip(), w.strip()) for w in m.group(1).split("|")), rule).replace("`", "")
    where = path or "parameters"
    value = _value_at(params, path)
    got = f", got {_short(value)}" if value is not _MISSING else ""
    return f"{method}: {where} {rule}{got}"


_MISSING = object()
_WORDS = {"int": "a whole number", "float": "a number", "str": "a text", "array": "a list", "object": "a mapping",
          "bool": "true or false", "null": "null"}


def _value_at(params: dict[str, Any], path: str) -> Any:
    value: Any = params
    for part in re.findall(r"[^.\[\]]+", path):
        try:
            value = value[int(part)] if isinstance(value, list) else value[part]
        except (KeyError, IndexError, ValueError, TypeError):
            return _MISSING
    return _MISSING if value is params else value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
