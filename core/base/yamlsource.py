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

from mlfleet.core.base.errors import SpecError

_MAX_YAML_BYTES = 4 * 1024 * 1024
# Aliases may repeat what is written, but not multiply it: nine levels of nine aliases ("billion
# laughs") is a few hundred bytes that would build 387 million values and never finish. A file may
# hold this many values beyond the ones written in it; real specs and inventories use a handful.
MAX_ALIAS_EXPANSION = 100_000


@dataclass
class Located:
    """A YAML document as plain data plus a map from field path to line."""

    path: str
    data: Any
    lines: dict[tuple[Any, ...], int] = field(default_factory=dict)
    key_lines: dict[tuple[Any, ...], int] = field(default_factory=dict)
    raw: dict[tuple[Any, ...], str] = field(default_factory=dict)  # plain scalars as typed

    def as_typed(self, parts: tuple[Any, ...], value: Any) -> Any:
        """A plain scalar exactly as the user typed it (``0.10`` stays "0.10", ``2024-01-01`` stays text)."""
        if not isinstance(value, (str, list, dict)) and value is not None and parts in self.raw:
            return self.raw[parts]
        return value

    def under(self, prefix: tuple[Any, ...], data: Any = None) -> "Located":
        """The view of the value at ``prefix`` as a document of its own, lines still the file's.

        Why: a spec inside a spec (a pipeline step's inline ``job:``) is
        checked by its own validator, which asks for paths from its root;
        through this view its errors still land on the right line.
        """
        n = len(prefix)

        def rebased(table: dict[tuple[Any, ...], Any]) -> dict[tuple[Any, ...], Any]:
            return {k[n:]: v for k, v in table.items() if k[:n] == prefix}

        lines = rebased(self.lines)
        if prefix in self.key_lines:
            lines.setdefault((), self.key_lines[prefix])
        return Located(self.path, data, lines, rebased(self.key_lines), rebased(self.raw))

    def line_of(self, parts: tuple[Any, ...]) -> int | None:
        """The line of the deepest known node on ``parts`` (a key's line when it is a key)."""
        for n in range(len(parts), -1, -1):
            prefix = parts[:n]
            if prefix in self.key_lines:
                return self.key_lines[prefix]
            if prefix in self.lines:
                return self.lines[prefix]
        return None


def read_yaml(path: str | Path, allow_empty: bool = False) -> Located:
    """Parse one YAML document; every problem is a SpecError with a line."""
    display = str(path)
    p = Path(path)
    if not p.exists():
        raise SpecError(display, None, None, "file not found", "check the path")
    if p.is_dir():
        raise SpecError(display, None, None, "is a folder, not a YAML file", "pass the .yaml file itself")
    if not p.is_file():  # /dev/zero, a FIFO: no end, or no size to check
        raise SpecError(display, None, None, "is not a regular file", "pass the .yaml file itself")
    try:
        with open(p, "rb") as fh:
            raw = fh.read(_MAX_YAML_BYTES + 1)  # bounded whatever the file claims its size is
        if len(raw) > _MAX_YAML_BYTES:
            raise SpecError(display, None, None, "file is larger than 4 MiB, which is not a job spec", "check the path")
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(display, None, None, f"is not UTF-8 text (byte {exc.start})", "save it as UTF-8") from None
    except OSError as exc:
        raise SpecError(display, None, None, f"cannot be read: {exc.strerror}") from None
    try:
        return parse_yaml(text, display, allow_empty)
    except RecursionError:  # a self-referencing alias (a: &a [*a]) or thousands of nested brackets
        raise SpecError(display, None, None, "nests too deeply (or an alias refers to itself)",
                        "flatten the YAML") from None


class _AliasRecordingLoader(yaml.SafeLoader):
    """SafeLoader that remembers where each alias (``*name``) is used, so a refusal can name its line.

    PyYAML's composer hands back the anchored node itself for an alias, losing the alias's own mark.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.alias_uses: dict[int, tuple[str, int]] = {}  # id(anchored node) -> (name, line of first use)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)
            self.alias_uses.setdefault(id(node), (event.anchor, event.start_mark.line + 1))
            return node
        return super().compose_node(parent, index)


def _compose_all(text: str) -> tuple[list[yaml.Node], dict[int, tuple[str, int]]]:
    loader = _AliasRecordingLoader(text)
    try:
        nodes = []
        while loader.check_node():
            nodes.append(loader.get_node())
        return nodes, loader.alias_uses
    finally:
        loader.dispose()


def parse_yaml(text: str, display: str, allow_empty: bool = False) -> Located:
    try:
        composed, alias_uses = _compose_all(text)
        nodes = [n for n in composed if not _is_empty(n)]
    except yaml.MarkedYAMLError as exc:
        line, problem, hint = _explain_syntax_error(exc)
        raise SpecError(display, line, None, problem, hint) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise SpecError(display, line, None, f"character #x{exc.character:04x} is not allowed in YAML",
                        "remove it (control characters are not text)") from None
    except yaml.YAMLError as exc:
        raise SpecError(display, None, None, f"invalid YAML: {' '.join(str(exc).split())}") from None
    if not nodes and allow_empty:
        return Located(display, None)
    if not nodes:
        raise SpecError(display, 1, None, "the file is empty", "write a YAML mapping (see configs/ for examples)")
    if len(nodes) > 1:
        raise SpecError(display, _second_document_line(text), None, "holds more than one YAML document",
                        "keep one job per file")
    if alias_uses:
        _check_alias_expansion(nodes[0], alias_uses, display)
    located = Located(display, None)
    located.data = _build(nodes[0], (), located)
    return located


def _check_alias_expansion(root: yaml.Node, alias_uses: dict[int, tuple[str, int]], display: str) -> None:
    """Refuse a document whose aliases would build far more values than it spells out, before building any.

    Sizes are counted once per distinct node (memoised), so this costs what the text costs, not what the
    expansion would; an alias inside the value it names (``a: &a [*a]``) is refused here too.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            name, line = alias_uses.get(key, ("?", node.start_mark.line + 1))
            raise SpecError(display, line, None, f"the alias *{name} refers to the value it is inside",
                            "an alias can only repeat a value defined before and outside it")
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        open_nodes.discard(key)
        sizes[key] = total
        return total

    expanded = size(root)
    written = len(sizes)
    if expanded - written <= MAX_ALIAS_EXPANSION:
        return
    biggest = max((k for k in alias_uses if k in sizes), key=lambda k: sizes[k])
    name, line = alias_uses[biggest]
    raise SpecError(display, line, None,
                    f"aliases expand this file to {expanded:,} values (the alias *{name} here alone is "
                    f"{sizes[biggest]:,}), more than {MAX_ALIAS_EXPANSION:,} beyond what is written",
                    "write the values out, or repeat fewer of them")


def _is_empty(node: yaml.Node | None) -> bool:
    return node is None or (isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null") and not node.value)


def _second_document_line(text: str) -> int | None:
    """The line of the ``---`` that starts the second non-empty document."""
    seen = 0
    start_line = None
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.DocumentStartEvent):
            start_line = event.start_mark.line + 1
        elif isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent, yaml.ScalarEvent)):
            if start_line is not None:
                seen += 1
                if seen == 2:
                    return start_line
                start_line = None
    return None


def _explain_syntax_error(exc: yaml.MarkedYAMLError) -> tuple[int | None, str, str]:
    """PyYAML's parser words, turned into what a person fixes, with the line to look at."""
    problem = " ".join((exc.problem or exc.context or "invalid YAML").split())
    context = " ".join((exc.context or "").split())
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark else None
    if ("end of stream" in problem or "stream end" in problem) and exc.context_mark is not None:
        what, hint = {"while scanning a quoted scalar": ("the quoted text", "add the closing quote"),
                      "while parsing a flow sequence": ("the '[' list", "add the closing ']'"),
                      "while parsing a flow mapping": ("the '{' mapping", "add the closing '}'"),
                      }.get(context, ("what starts here", "close it"))
        return exc.context_mark.line + 1, f"invalid YAML: {what} that starts on this line is not closed", hint
    if r"'\t'" in problem or "\t" in problem:
        return line, "invalid YAML: a tab is used for indentation", "indent with spaces, not tabs"
    if "<block end>" in problem or "block mapping" in problem or "indentation" in problem:
        return line, f"invalid YAML: the indentation does not line up ({problem})", \
            "indent keys of one mapping by the same number of spaces"
    return line, f"invalid YAML: {problem}", "fix the syntax at that line"


def _build(node: yaml.Node, parts: tuple[Any, ...], located: Located) -> Any:
    located.lines[parts] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise SpecError(located.path, key_node.start_mark.line + 1, _dotted(parts) or None,
                                "YAML merge keys (<<) are not supported", "write the fields out")
            key = _build(key_node, parts + ("<key>",), located)
            if isinstance(key_node, yaml.ScalarNode) and not isinstance(key, str):
                key = key_node.value  # a key is a name: "1", "on" and "2024-01-01" stay as typed
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
    if node.tag == _INT_TAG:
        return _build_int(node, parts, located)
    return yaml.SafeLoader(" ").construct_object(node, deep=True)


_INT_TAG = "tag:yaml.org,2002:int"
# Every value mlfleet reads from YAML travels in a msgpack frame or a DuckDB BIGINT: 64 bits, signed.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


def _build_int(node: yaml.ScalarNode, parts: tuple[Any, ...], located: Located) -> Any:
    """An integer the wire and the store can carry, refused at its line otherwise.

    Caught here, while the line is known, rather than as "cannot encode a frame" after the job is
    half-submitted; a key stays its text (keys are names), so only values are refused.
    """
    is_key = bool(parts) and parts[-1] == "<key>"
    try:
        value = yaml.SafeLoader(" ").construct_object(node, deep=True)
    except ValueError:  # more digits than Python converts (4300): far past 64 bits anyway
        value = None
    if isinstance(value, int) and INT_MIN <= value <= INT_MAX:
        return value
    if is_key:
        return node.value
    raise SpecError(located.path, node.start_mark.line + 1, _dotted(parts) or None,
                    "is an integer too large to carry (integers must be between -2**63 and 2**63-1)",
                    "quote it to keep it as text")


def _dotted(parts: tuple[Any, ...]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


dotted = _dotted
