"""Answering requests by name: a peer's ``method`` finds its handler in an object or a table.

A handler is ``async def handler(peer, **params)``; its parameters are
checked against its type hints first (a msgspec struct built once per
method), so a peer that sends the wrong shape gets "bad parameters" instead
of reaching our code with it. Handlers are an object's ``rpc_<method>``
methods (the agent) or a table ``{method: handler}`` (the controller, which
merges its capabilities' tables).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping
from typing import Any, Callable

import msgspec

from mlfleet.core.base.errors import ProtocolError
from mlfleet.core.base.protocol import Handler, Peer


def rpc_methods(obj: Any, prefix: str = "rpc_") -> dict[str, Callable[..., Any]]:
    """``obj``'s ``rpc_<method>`` methods as a table ``{method: bound method}``."""
    return {name[len(prefix):]: getattr(obj, name) for name in dir(obj)
            if name.startswith(prefix) and callable(getattr(obj, name))}


def find_handler(handlers: Any, method: str, prefix: str = "rpc_") -> Callable[..., Any] | None:
    """The handler of ``method`` in a table, or ``handlers.rpc_<method>``; None when there is none."""
    if not method.isidentifier():
        return None
    if isinstance(handlers, Mapping):
        return handlers.get(method)
    return getattr(handlers, prefix + method, None)


def method_dispatcher(obj: Any, prefix: str = "rpc_") -> Handler:
    """A Handler that calls ``obj.rpc_<method>(peer, **params)`` (or ``obj[method]`` of a table).

    Parameters are checked against the method's type hints first (a msgspec
    struct built once per method), so a peer that sends the wrong shape gets
    "bad parameters" instead of reaching our code with it.
    """
    param_types: dict[str, type[msgspec.Struct]] = {}

    def params_type(method: str, fn: Callable[..., Any]) -> type[msgspec.Struct]:
        if method not in param_types:
            hints = typing.get_type_hints(fn)
            fields: list[Any] = []
            for name, p in list(inspect.signature(fn).parameters.items())[1:]:  # skip the peer
                kind = hints.get(name, Any)
                fields.append((name, kind) if p.default is inspect.Parameter.empty else (name, kind, p.default))
            param_types[method] = msgspec.defstruct(f"{method}_params", fields, forbid_unknown_fields=True)
        return param_types[method]

    async def handle(peer: Peer, method: str, params: dict[str, Any]) -> Any:
        fn = find_handler(obj, method, prefix)
        if fn is None:
            raise ProtocolError(f"unknown method {method!r}")
        try:
            checked = msgspec.convert(params, params_type(method, fn))
        except msgspec.ValidationError as exc:
            raise ProtocolError(f"bad parameters for {method}: {exc}") from None
        return await fn(peer, **{f: getattr(checked, f) for f in checked.__struct_fields__})

    return handle
