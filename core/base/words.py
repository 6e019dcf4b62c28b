"""Small English for messages: "1 run", "5 runs", "an ATTACH statement".

Why a module: messages built as ``f"{n} run(s)"`` or ``f"a {kind}"`` read
wrong for most values ("wrote 5 runs of 5 run(s)", "a ATTACH statement").
Pure functions, importable from anywhere in core (the store's messages too).
"""

from __future__ import annotations


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``1 run``, ``0 runs``, ``12,345 runs``; ``many`` for a noun whose plural is not noun + s."""
    word = noun if count == 1 else (many or noun + "s")
    return f"{count:,} {word}"


def article(word: str) -> str:
    """``a`` or ``an`` before ``word`` by how it is read: an ATTACH, an INSERT, a SELECT, an expression_list.

    By its first letter, the way SQL keywords and our names are spoken; a
    word in capitals that is spelt out letter by letter (an SQL, an FTS) is
    not worth a table here.
    """
    return "an" if word[:1].lower() in "aeiou" and word else "a"


def with_article(word: str) -> str:
    return f"{article(word)} {word}"
