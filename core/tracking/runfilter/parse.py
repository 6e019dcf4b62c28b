"""Text to tree: a hand-written tokenizer and a recursive-descent parser, one sentence per mistake."""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass

from mlfleet.core.tracking.runfilter.tree import (MAX_DEPTH, MAX_FIELDS, MAX_LENGTH, METRIC_SUMMARIES, RUN_COLUMNS, And,
                                         Compare, Field, FilterError, Node, Not, Or, SortKey, Value, name_char, name_start)

_SOURCES = {"params": "params", "param": "params", "tags": "tags", "tag": "tags",
            "metrics": "metrics", "metric": "metrics", "env": "env"}
_WORD = {"params": "param", "tags": "tag", "metrics": "metric", "env": "package"}
_KEYWORDS = {"and", "or", "not", "in", "like", "ilike", "is", "null", "true", "false"}


@dataclass(frozen=True)
class _Token:
    kind: str  # name, qname, string, number, op, ( ) , . - end
    text: str  # the value (unquoted for strings and quoted names)
    column: int  # 1-based
    raw: str  # as written, for messages


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_OPS = ("<=", ">=", "!=", "<>", "==", "=", "<", ">")




def _tokens(text: str, label: str, arithmetic: bool = False) -> list[_Token]:
    """The filter's tokens; ``arithmetic`` adds ``+`` and ``*`` and ends a name at a ``-`` that a letter does not follow
    (``max-0.005`` is a subtraction there, ``val-loss`` still a name)."""
    out: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        col = i + 1
        if ch.isspace():
            i += 1
            continue
        if ch in "'\"":
            value, end = _quoted(text, i, label)
            out.append(_Token("string" if ch == "'" else "qname", value, col, text[i:end]))
            i = end
            continue
        if ch in "()," or (ch == "." and not text[i + 1:i + 2].isdigit()):
            out.append(_Token(ch, ch, col, ch))
            i += 1
            continue
        if ch in "<>=!":
            op = next((o for o in _OPS if text.startswith(o, i)), None)
            if op is None:
                raise FilterError(label, f"unexpected {ch!r} (did you mean '!='?)", col)
            out.append(_Token("op", {"<>": "!=", "==": "="}.get(op, op), col, op))
            i += len(op)
            continue
        match = _NUMBER.match(text, i)
        if match and (ch.isdigit() or ch == "." or (ch in "+-" and match.end() > i + 1)):
            out.append(_Token("number", match.group(), col, match.group()))
            i = match.end()
            if i < n and name_char(text[i]) and text[i] != "-":
                raise FilterError(label, f"unexpected {text[i]!r} after the number {match.group()}", i + 1)
            continue
        if ch == "-" or (arithmetic and ch in "+*"):
            out.append(_Token(ch, ch, col, ch))
            i += 1
            continue
        if name_start(ch):
            end = i + 1
            while end < n and name_char(text[end]) and not (
                    arithmetic and text[end] == "-" and not name_start(text[end + 1:end + 2] or " ")):
                end += 1
            out.append(_Token("name", text[i:end], col, text[i:end]))
            i = end
            continue
        if ch == ";":
            raise FilterError(label, "unexpected ';' (a filter is one expression, not statements)", col)
        raise FilterError(label, f"unexpected character {ch!r}", col)
    out.append(_Token("end", "", n + 1, "the end"))
    return out


def _quoted(text: str, start: int, label: str) -> tuple[str, int]:
    """A '...' string or "..." name; the quote is doubled to write it inside."""
    quote = text[start]
    parts, i = [], start + 1
    while True:
        j = text.find(quote, i)
        if j < 0:
            what = "text" if quote == "'" else "name"
            raise FilterError(label, f"the quoted {what} that starts here is never closed", start + 1)
        parts.append(text[i:j])
        if text.startswith(quote * 2, j):
            parts.append(quote)
            i = j + 2
            continue
        return "".join(parts), j + 1


# ---------------------------------------------------------------- parser

class _Parser:
    def __init__(self, text: str, label: str, arithmetic: bool = False) -> None:
        if len(text) > MAX_LENGTH:
            raise FilterError(label, f"the text is longer than {MAX_LENGTH} characters", MAX_LENGTH + 1)
        self.label = label
        self.tokens = _tokens(text, label, arithmetic)
        self.pos = 0
        self.depth = 0
        self.fields: set[Field] = set()

    @property
    def tok(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        tok = self.tokens[self.pos]
        if tok.kind != "end":
            self.pos += 1
        return tok

    def is_word(self, *words: str) -> bool:
        return self.tok.kind == "name" and self.tok.text.lower() in words

    def fail(self, problem: str, tok: _Token | None = None) -> FilterError:
        return FilterError(self.label, problem, (tok or self.tok).column)

    def nest(self, tok: _Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"the filter nests deeper than {MAX_DEPTH} levels", tok)

    # expr := or ; or := and ('or' and)* ; and := not ('and' not)* ; not := 'not' not | primary
    def parse_or(self) -> Node:
        items = [self.parse_and()]
        while self.is_word("or"):
            self.take()
            items.append(self.parse_and())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def parse_and(self) -> Node:
        items = [self.parse_not()]
        while self.is_word("and"):
            self.take()
            items.append(self.parse_not())
        return items[0] if len(items) == 1 else And(tuple(items))

    def parse_not(self) -> Node:
        if self.is_word("not"):
            tok = self.take()
            self.nest(tok)
            node = Not(self.parse_not())
            self.depth -= 1
            return node
        if self.tok.kind == "(":
            tok = self.take()
            self.nest(tok)
            node = self.parse_or()
            if self.tok.kind != ")":
                raise self.fail(f"expected ')' to close the '(' at column {tok.column}, found {self._found()}")
            self.take()
            self.depth -= 1
            return node
        return self.parse_compare()

    def _found(self) -> str:
        tok = self.tok
        return "the end" if tok.kind == "end" else repr(tok.raw)

    def parse_field(self, what: str = "a field") -> Field:
        first = self.tok
        if first.kind not in ("name", "qname") or (first.kind == "name" and first.text.lower() in _KEYWORDS):
            raise self.fail(f"expected {what} (e.g. params.lr, metrics.loss.min, state), found {self._found()}")
        parts = [self.take()]
        while self.tok.kind == ".":
            dot = self.take()
            if self.tok.kind not in ("name", "qname"):
                raise self.fail(f"expected a name after '.' at column {dot.column}, found {self._found()}")
            parts.append(self.take())
        field = self._resolve(parts)
        if field.source != "run":
            self.fields.add(Field(field.source, field.key))
            if len(self.fields) > MAX_FIELDS:
                raise self.fail(f"name at most {MAX_FIELDS} different params, tags and metrics", first)
        return field

    def _resolve(self, parts: list[_Token]) -> Field:
        head, rest = parts[0], parts[1:]
        source = _SOURCES.get(head.text.lower()) if head.kind == "name" else _SOURCES.get(head.text)
        if source is None:
            if len(parts) == 1 and head.text.lower() in RUN_COLUMNS:
                return Field("run", head.text.lower())
            raise self.fail(f"unknown field {_show_parts(parts)!r}; use params.KEY, tags.KEY, env.PACKAGE, "
                            f"metrics.KEY.{'|'.join(METRIC_SUMMARIES)} or one of {', '.join(RUN_COLUMNS)}", head)
        if source == "metrics":
            if len(rest) < 2 or rest[-1].kind != "name" or rest[-1].text.lower() not in METRIC_SUMMARIES:
                key = _show_parts(rest) or "KEY"
                raise self.fail(f"say which summary of metric {key!r}: metrics.{key}."
                                f"{', .'.join(METRIC_SUMMARIES)}", head)
            summary = rest[-1].text.lower()
            rest = rest[:-1]
        else:
            summary = None
            if not rest:
                raise self.fail(f"say which {_WORD[source]}: {source}.{'PACKAGE' if source == 'env' else 'KEY'}", head)
        key = ".".join(t.text for t in rest)
        if not key or any(not t.text for t in rest):
            raise self.fail(f"a {_WORD[source]} key cannot be empty", head)
        if source == "env":  # a package name as recorded: normalised (PEP 503), so env.Scikit_Learn finds it
            key = re.sub(r"[-_.]+", "-", key).lower()
        return Field(source, key, summary)

    def parse_value(self, after: _Token) -> tuple[Value, _Token]:
        tok = self.tok
        if tok.kind in ("string", "qname"):
            self.take()
            return tok.text, tok
        if tok.kind == "number":
            self.take()
            return float(tok.text), tok
        if self.is_word("true", "false"):
            self.take()
            return tok.text.lower() == "true", tok
        if tok.kind == "name" and tok.text.lower() not in _KEYWORDS:
            raise self.fail(f"expected a value after {after.raw!r}, found the name {tok.raw!r} "
                            f"(put text in single quotes: '{tok.text}')")
        raise self.fail(f"expected a value after {after.raw!r}, found {self._found()}")

    def parse_compare(self) -> Compare:
        field = self.parse_field()
        tok = self.tok
        if tok.kind == "op":
            self.take()
            value, vtok = self.parse_value(tok)
            return Compare(field, tok.text, self._check(field, tok.text, value, vtok))
        negate = False
        if self.is_word("not"):
            self.take()
            negate = True
            if not self.is_word("in", "like", "ilike"):
                raise self.fail(f"expected in, like or ilike after 'not', found {self._found()}")
        if self.is_word("in"):
            word = self.take()
            if self.tok.kind != "(":
                raise self.fail(f"expected '(' after 'in', found {self._found()}")
            after = self.take()
            values = []
            while True:
                value, vtok = self.parse_value(after)
                values.append(self._check(field, "=", value, vtok))
                if self.tok.kind == ",":
                    after = self.take()
                    continue
                if self.tok.kind != ")":
                    raise self.fail(f"expected ',' or ')' in the list after 'in' at column {word.column}, "
                                    f"found {self._found()}")
                self.take()
                break
            node = Compare(field, "in", tuple(values))
            return Not(node) if negate else node  # type: ignore[return-value]
        if self.is_word("like", "ilike"):
            word = self.take()
            op = word.text.lower()
            value, vtok = self.parse_value(word)
            if not isinstance(value, str):
                raise self.fail(f"{op} takes a quoted pattern, e.g. name {op} 'resnet%'", vtok)
            if field.kind not in ("text", "param"):
                raise self.fail(f"{field} is a {field.kind}; {op} works on text", word)
            node = Compare(field, op, value)
            return Not(node) if negate else node  # type: ignore[return-value]
        if self.is_word("is"):
            self.take()
            op = "is null"
            if self.is_word("not"):
                self.take()
                op = "is not null"
            if not self.is_word("null"):
                raise self.fail(f"expected null after 'is', found {self._found()}")
            self.take()
            node = Compare(field, "is null", None)
            return Not(node) if op == "is not null" else node  # type: ignore[return-value]
        raise self.fail(f"expected a comparison (=, !=, <, <=, >, >=, in, like, is null) after {field}, "
                        f"found {self._found()}")

    def _check(self, field: Field, op: str, value: Value, tok: _Token) -> Value:
        """Refuse comparisons that could never be true, and read times as Unix seconds."""
        kind = field.kind
        if isinstance(value, bool):
            if kind != "param":
                raise self.fail(f"{field} is a {kind}, not true or false", tok)
            if op not in ("=", "!="):
                raise self.fail("true and false compare only with = and !=", tok)
            return value
        if isinstance(value, float) and math.isnan(value):
            raise self.fail("NaN is not a value to compare with", tok)
        if kind == "number" and not isinstance(value, float):
            raise self.fail(f"{field} is a number; compare it with a number, not {tok.raw}", tok)
        if kind == "text" and not isinstance(value, str):
            raise self.fail(f"{field} is text; put the value in quotes: '{tok.raw}'", tok)
        if kind == "time":
            return value if isinstance(value, float) else self._time(value, tok)
        return value

    def _time(self, text: str, tok: _Token) -> float:
        try:
            stamp = dt.datetime.fromisoformat(text.strip())
        except ValueError:
            raise self.fail(f"{tok.raw} is not a date-time; write e.g. '2026-11-28' or '2026-11-28 14:30' "
                            "(local time unless it has an offset) or Unix seconds", tok) from None
        try:
            if stamp.tzinfo is None:
                stamp = stamp.astimezone()  # a naive time is this machine's local time, as the CLI shows them
            return stamp.timestamp()
        except (ValueError, OverflowError, OSError):
            raise self.fail(f"{tok.raw} is out of the range of dates this machine can convert; "
                            "use a date after 1970", tok) from None


def _show_parts(parts: list[_Token]) -> str:
    return ".".join(t.raw for t in parts)


def parse_filter(text: str, label: str = "--where") -> Node | None:
    """The filter's tree, or None for an empty filter; raises FilterError."""
    if text is None or not text.strip():
        return None
    parser = _Parser(text, label)
    node = parser.parse_or()
    if parser.tok.kind != "end":
        tok = parser.tok
        hint = " (join conditions with and / or)" if tok.kind in ("name", "qname") else ""
        raise parser.fail(f"unexpected {tok.raw!r} after a complete condition{hint}")
    return node


def parse_sort(text: str | None, label: str = "--sort") -> list[SortKey]:
    """``[-]FIELD [asc|desc], ...``: a leading ``-`` or a trailing ``desc`` sorts largest first."""
    if text is None or not text.strip():
        return []
    parser = _Parser(text, label)
    keys: list[SortKey] = []
    while True:
        descending = False
        if parser.tok.kind == "-":
            parser.take()
            descending = True
        field = parser.parse_field("a field to sort by")
        if parser.is_word("asc", "desc"):
            if descending:
                raise parser.fail("use either a leading '-' or asc/desc, not both")
            descending = parser.take().text.lower() == "desc"
        keys.append(SortKey(field, descending))
        if parser.tok.kind == ",":
            parser.take()
            continue
        if parser.tok.kind != "end":
            raise parser.fail(f"expected ',' or the end after the sort field {field}, found {parser._found()}")
        return keys
