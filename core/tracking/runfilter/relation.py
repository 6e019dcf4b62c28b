"""Relations between numbers of two runs: ``metrics.acc.max >= champion.metrics.acc.max + 0.005``.

The filter language's fields and tokens, plus arithmetic (``+ - *``, numbers,
parentheses) and a scope before a field (``champion.``) that says which run it
is read from. A pipeline's gate (core/pipelines/gates.py) is a list of these.
Only numbers compare here (params and metric summaries): a relation is a
verdict on figures, and text has no "+ 0.005". Each mistake is one sentence
with its column, as in the runs filter.
"""

from __future__ import annotations

from mlfleet.core.tracking.runfilter.parse import _Parser
from mlfleet.core.tracking.runfilter.tree import (COMPARISONS, Arith, FilterError, Number, Operand, Relation, Term,
                                                  show_term)

MAX_TERMS = 64  # operands and numbers in one relation: a requirement is a line, not a program


class _RelationParser(_Parser):
    def __init__(self, text: str, label: str, scopes: tuple[str, ...], right_only: bool) -> None:
        super().__init__(text, label, arithmetic=True)
        self.scopes = scopes
        self.right_only = right_only
        self.side = "left"
        self.terms = 0

    def relation(self, text: str) -> Relation:
        left = self.expr()
        tok = self.tok
        if tok.kind != "op":
            raise self.fail(f"expected a comparison ({', '.join(COMPARISONS)}) after {show_term(left)}, found "
                            f"{self._found()}")
        self.take()
        self.side = "right"
        right = self.expr()
        if self.tok.kind != "end":
            if self.is_word("and", "or"):
                raise self.fail("a requirement is one comparison; write each as its own item of the list")
            raise self.fail(f"unexpected {self.tok.raw!r} after a complete comparison")
        return Relation(left, tok.text, right, text)

    def expr(self) -> Term:
        term = self.product()
        while True:
            tok = self.tok
            if tok.kind in ("+", "-"):
                self.take()
                term = Arith(tok.kind, term, self.product())
            elif tok.kind == "number" and tok.text[0] in "+-":  # "x -0.5": the tokenizer read a signed number
                self.take()
                term = Arith(tok.text[0], term, self._number(tok.text[1:], tok.column))
            else:
                return term

    def product(self) -> Term:
        term = self.factor()
        while self.tok.kind == "*":
            self.take()
            term = Arith("*", term, self.factor())
        return term

    def factor(self) -> Term:
        tok = self.tok
        if tok.kind not in ("-", "("):
            self.terms += 1
            if self.terms > MAX_TERMS:
                raise self.fail(f"a requirement may hold at most {MAX_TERMS} numbers and fields")
        if tok.kind == "number":
            self.take()
            return self._number(tok.text, tok.column)
        if tok.kind == "-":
            self.take()
            self.nest(tok)
            inner = self.factor()
            self.depth -= 1
            return Arith("-", Number(0.0, "0"), inner) if not isinstance(inner, Number) else \
                Number(-inner.value, "-" + inner.text)
        if tok.kind == "(":
            self.take()
            self.nest(tok)
            inner = self.expr()
            if self.tok.kind != ")":
                raise self.fail(f"expected ')' to close the '(' at column {tok.column}, found {self._found()}")
            self.take()
            self.depth -= 1
            return inner
        scope = None
        if tok.kind == "name" and tok.text.lower() in self.scopes and self.tokens[self.pos + 1].kind == ".":
            if self.right_only and self.side == "left":
                raise self.fail(f"the left side is the run being judged; put {tok.text.lower()}. fields on the right "
                                f"(e.g. metrics.acc.max >= {tok.text.lower()}.metrics.acc.max)")
            scope = tok.text.lower()
            self.take()
            self.take()
        start = self.tok
        if start.kind not in ("name", "qname"):
            raise self.fail(f"expected a number, params.KEY or metrics.KEY.SUMMARY, found {self._found()}")
        field = self.parse_field("a number, params.KEY or metrics.KEY.SUMMARY")
        if field.source not in ("params", "metrics"):
            raise self.fail(f"{field} is not a number a requirement can weigh; name params.KEY or "
                            "metrics.KEY.SUMMARY", start)
        return Operand(field, scope)

    def _number(self, text: str, column: int) -> Number:
        value = float(text)
        if value != value or value in (float("inf"), float("-inf")):
            raise FilterError(self.label, f"{text} is not a finite number", column)
        return Number(value, text.lstrip("+"))


def parse_relation(text: str, label: str = "require", scopes: tuple[str, ...] = ("champion",),
                   right_only: bool = True) -> Relation:
    """``text`` as a :class:`Relation`; raises FilterError (one sentence, with the column).

    ``scopes`` are the words that may stand before a field to read it from
    another run; with ``right_only`` they may stand only on the right side,
    so the left is always the run being judged.
    """
    if text is None or not str(text).strip():
        raise FilterError(label, "is empty; write a comparison like metrics.acc.max >= 0.9", 1)
    return _RelationParser(text, label, scopes, right_only).relation(text)
