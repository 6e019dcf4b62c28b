"""What a model name, an alias, a reference and a reason may be: pure checks, one sentence each.

Model names follow job names (``NAME_PATTERN``: letters, digits, ``.``,
``_``, ``-``, starting with a letter or digit), so a name never holds a
``/`` or starts with ``.``; the store's paths are built from sha256 and a
file's base name only, never from a name, but names also land in URLs,
deployment specs and audit rows, where a slash or ``..`` would mislead. An
alias must start with a letter, so ``iris@3`` can never be mistaken for
version 3.
"""

from __future__ import annotations

import re

from mlfleet.core.base.errors import UsageError
from mlfleet.core.base.models import NAME_PATTERN

MAX_NAME = 128
MAX_REASON = 1000  # a sentence or two; the details belong in a ticket the reason can name
MAX_VERSION = 2**31 - 1
_NAME = re.compile(NAME_PATTERN)
_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9._-]*$")


def _shown(text: str) -> str:
    shown = repr(text)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def check_name(name: str) -> str:
    if not isinstance(name, str) or not name or len(name) > MAX_NAME or not _NAME.match(name):
        raise UsageError(f"model name {_shown(str(name))} is not a name: use letters, digits, '.', '_' and '-' "
                         f"(starting with a letter or digit, at most {MAX_NAME} characters), e.g. iris-classifier")
    return name


def check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not alias or len(alias) > MAX_NAME or not _ALIAS.match(alias):
        raise UsageError(f"alias {_shown(str(alias))} is not an alias: use letters, digits, '.', '_' and '-', "
                         f"starting with a letter (at most {MAX_NAME} characters), e.g. production or staging")
    return alias


def check_reason(reason: str | None) -> str | None:
    if reason is None:
        return None
    if len(reason) > MAX_REASON:
        raise UsageError(f"the reason is {len(reason)} characters; keep it to {MAX_REASON} (a sentence or two, "
                         "naming a ticket for the details)")
    if any(not c.isprintable() and c not in " \t" for c in reason):
        raise UsageError("the reason has control characters (a newline, an escape); write it on one line")
    return reason.strip() or None


def check_version(version: int) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        raise UsageError(f"version must be a whole number from 1, got {version!r}")
    return version


def parse_ref(ref: str) -> tuple[str, str | None, int | None]:
    """``NAME@ALIAS`` -> (name, alias, None); ``NAME:3`` -> (name, None, 3); ``NAME`` -> (name, None, None)."""
    if not isinstance(ref, str) or not ref.strip():
        raise UsageError("give a model as NAME, NAME@ALIAS or NAME:VERSION")
    ref = ref.strip()
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return check_name(name), check_alias(alias), None
    if ":" in ref:
        name, number = ref.split(":", 1)
        if not number.isascii() or not number.isdigit():
            raise UsageError(f"{_shown(ref)}: the version after ':' must be a whole number, e.g. {name or 'iris'}:3")
        return check_name(name), None, check_version(int(number))
    return check_name(ref), None, None
