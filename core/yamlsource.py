"""Read YAML while keeping where every value came from.

PyYAML's composer gives us nodes with line marks; we build plain Python
values from them ourselves so that we can (a) refuse duplicate keys, which
PyYAML silently collapses, and (b) answer "which line is ``resources.gpus``
on" when validation fails later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import SpecError

_MAX_YAML_BYTES = 4 * 1024 * 1024


@dataclass
class Located:
    """A YAML document as plain data plus a map from field path to line."""

    path: str
    data: Any
    lines: dict[tuple[Any, ...], int] = field(default_factory=dict)
    key_lines: dict[tuple[Any, ...], int] = field(default_factory=dict)
    raw: dict[tuple[Any, ...], str] = field(default_factory=dict)  # plain scalars as typed

    def as_typed(self, parts: tuple[Any, ...], value: Any) -> Any:
        """A plain scalar exactly as the user typed it (``0.10`` stays "0.10", ``true`` stays "true")."""
        if isinstance(value, (int, float, bool)) and parts in self.raw:
            return self.raw[parts]
        return value

    def line_of(self, parts: tuple[Any, ...]) -> int | None:
        """The line of the deepest known node on ``parts`` (a key's line when it is a key)."""
        for n in range(len(parts), -1, -1):
            prefix = parts[:n]
            if prefix in self.key_lines:
                return self.key_lines[prefix]
            if prefix in self.lines:
                return self.lines[prefix]
        return None


def read_yaml(path: str | Path) -> Located:
    """Parse one YAML document; every problem is a SpecError with a line."""
    display = str(path)
    p = Path(path)
    if not p.exists():
        raise SpecError(display, None, None, "file not found", "check the path")
    if p.is_dir():
        raise SpecError(display, None, None, "is a folder, not a YAML file", "pass the .yaml file itself")
    if p.stat().st_size > _MAX_YAML_BYTES:
        raise SpecError(display, None, None, "file is larger than 4 MiB, which is not a job spec", "check the path")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(display, None, None, f"is not UTF-8 text (byte {exc.start})", "save it as UTF-8") from None
    except OSError as exc:
        raise SpecError(display, None, None, f"cannot be read: {exc.strerror}") from None
    return parse_yaml(text, display)


def parse_yaml(text: str, display: str) -> Located:
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = (exc.problem or exc.context or "invalid YAML").strip()
        raise SpecError(display, line, None, f"invalid YAML: {problem}", "fix the syntax at that line") from None
    except yaml.YAMLError as exc:
        raise SpecError(display, None, None, f"invalid YAML: {exc}") from None
    if not nodes or nodes[0] is None:
        raise SpecError(display, 1, None, "the file is empty", "write a YAML mapping (see configs/ for examples)")
    if len(nodes) > 1:
        line = nodes[1].start_mark.line + 1
        raise SpecError(display, line, None, "holds more than one YAML document", "keep one job per file")
    located = Located(display, None)
    located.data = _build(nodes[0], (), located)
    return located


def _build(node: yaml.Node, parts: tuple[Any, ...], located: Located) -> Any:
    located.lines[parts] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise SpecError(located.path, key_node.start_mark.line + 1, _dotted(parts) or None,
                                "YAML merge keys (<<) are not supported", "write the fields out")
            key = _build(key_node, parts + ("<key>",), located)
            if not isinstance(key, (str, int, float, bool)):
                raise SpecError(located.path, key_node.start_mark.line + 1, _dotted(parts) or None,
                                "a mapping key must be a plain value")
            if key in out:
                first = located.key_lines.get(parts + (key,))
                raise SpecError(located.path, key_node.start_mark.line + 1, _dotted(parts + (key,)),
                                f"appears twice (first on line {first})", "keep one of them")
            located.key_lines[parts + (key,)] = key_node.start_mark.line + 1
            out[key] = _build(value_node, parts + (key,), located)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(child, parts + (i,), located) for i, child in enumerate(node.value)]
    if isinstance(node, yaml.ScalarNode) and node.style is None:
        located.raw[parts] = node.value
    return yaml.SafeLoader(" ").construct_object(node, deep=True)


def _dotted(parts: tuple[Any, ...]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


dotted = _dotted
