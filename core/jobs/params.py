"""How a job's ``params`` reach its program: ``{params.lr}`` in ``command``, ``MLFLEET_PARAM_LR``, ``track.params()``.

Pure: a spec in, the argv and environment out. The controller renders the
command at dispatch (the run records what really ran) and the launch sets
the environment; the spec keeps the placeholders, so ``jobs show`` says
what was written. A string command runs through ``/bin/sh -c``, so a value
put into it is shell-quoted for where it stands (outside quotes, inside
'...' or inside "..."), so a value never becomes shell syntax however the
command quotes the placeholder; an argv item gets the value's text as it is.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from mlfleet.core.base.models import JobSpec

PLACEHOLDER = re.compile(r"\{params\.([A-Za-z0-9_][A-Za-z0-9_.-]*)\}")
PARAMS_ENV = "MLFLEET_PARAMS"  # all params as one JSON object: what track.params() returns
_MISSING = object()


def text_of(value: Any) -> str:
    """A param as the program reads it: text as it is, true/false, numbers and lists as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), default=str)


def lookup(params: dict[str, Any], key: str) -> Any:
    """``lr``, or ``optimizer.lr`` inside the param ``optimizer`` (a key with dots as written wins)."""
    if key in params:
        return params[key]
    head, _, rest = key.partition(".")
    inner = params.get(head, _MISSING)
    if rest and isinstance(inner, dict):
        return lookup(inner, rest)
    return _MISSING


def unknown_placeholders(command: list[str] | str, params: dict[str, Any], also: set[str] = frozenset()) -> \
        list[tuple[tuple[Any, ...], str]]:
    """``(path in the spec, key)`` for each ``{params.KEY}`` no param answers (``also``: keys a sweep will set)."""
    found = []
    pieces = [(("command",), command)] if isinstance(command, str) else [(("command", i), c) for i, c in enumerate(command)]
    for parts, text in pieces:
        for m in PLACEHOLDER.finditer(text):
            key = m.group(1)
            if key not in also and lookup(params, key) is _MISSING:
                found.append((parts, key))
    return found


def render_argv(spec: JobSpec) -> list[str]:
    """The argv with every ``{params.KEY}`` replaced (shell-quoted inside a string command)."""
    if not spec.params:
        return spec.argv

    def value(m: re.Match[str]) -> str:
        found = lookup(spec.params, m.group(1))
        if found is _MISSING:  # refused at submit; a spec from before is left as written
            return m.group(0)
        return text_of(found)

    if isinstance(spec.command, str):
        return ["/bin/sh", "-c", _render_shell(spec.command, spec.params)]
    return [PLACEHOLDER.sub(value, item) for item in spec.command]


def _render_shell(command: str, params: dict[str, Any]) -> str:
    """``command`` with each placeholder quoted for the shell context it is in.

    WHY: shlex.quote alone is right only outside quotes: inside '...' its
    quotes close and reopen the user's, leaving ``$(...)`` in a value bare.
    """
    out: list[str] = []
    done = 0
    for m in PLACEHOLDER.finditer(command):
        found = lookup(params, m.group(1))
        if found is _MISSING:  # refused at submit; a spec from before is left as written
            continue
        text = text_of(found)
        state = _quote_state(command, m.start())
        if state == "'":
            text = text.replace("'", "'\\''")
        elif state == '"':
            text = re.sub(r'([\\$`"])', r"\\\1", text)
        else:
            text = shlex.quote(text)
        out += [command[done:m.start()], text]
        done = m.end()
    return "".join(out) + command[done:]


def _quote_state(command: str, end: int) -> str:
    """The quote open at ``end`` in POSIX sh: "'", '"' or "" (none); a backslash escapes outside '...'."""
    state, i = "", 0
    while i < end:
        c = command[i]
        if state == "'":
            state = "" if c == "'" else state
        elif c == "\\":
            i += 1
        elif state == '"':
            state = "" if c == '"' else state
        elif c in "'\"":
            state = c
        i += 1
    return state


def env_name(key: str) -> str:
    """``MLFLEET_PARAM_`` and the key upper-cased, every character but letters and digits as ``_``."""
    return "MLFLEET_PARAM_" + re.sub(r"[^A-Z0-9]", "_", key.upper())


def env_collisions(params: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(first key, second key, variable)`` for keys that would set one ``MLFLEET_PARAM_`` variable (lr, LR)."""
    seen: dict[str, str] = {}
    out = []
    for key in params:
        name = env_name(key)
        if name in seen:
            out.append((seen[name], key, name))
        else:
            seen[name] = key
    return out


def param_env(spec: JobSpec) -> dict[str, str]:
    """``MLFLEET_PARAM_<KEY>`` per param and ``MLFLEET_PARAMS`` (JSON) for all; the spec's own ``env`` wins."""
    if not spec.params:
        return {}
    env = {env_name(key): text_of(value) for key, value in spec.params.items()}
    env[PARAMS_ENV] = json.dumps(spec.params, separators=(",", ":"), default=str)
    return env
