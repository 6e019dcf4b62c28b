"""The idempotency key of a submit: what it may look like, and a fresh one.

A client makes one key per submit command (or takes the user's ``--key``)
and sends it with every attempt of that command, so a controller that
recorded the job but died before answering gives the same job back to the
retry instead of making a second one. Checked at both ends: the CLI says a
bad ``--key`` before anything starts, the controller refuses one from any
other client.
"""

from __future__ import annotations

import re
import secrets

from mlfleet.core.base.errors import UsageError

MAX_KEY_LENGTH = 128
# Safe to paste into a shell and after ``--key`` (no leading '-', no spaces or quotes).
_KEY = re.compile(r"[A-Za-z0-9_.:@+=][A-Za-z0-9_.:@+=/-]*")


def new_submit_key() -> str:
    """A random key (128 bits, hex: nothing a shell or argparse reads specially)."""
    return secrets.token_hex(16)


def check_submit_key(key: str) -> str:
    """``key`` if it is a usable key, else a UsageError that says what is allowed."""
    if not isinstance(key, str) or not key:
        raise UsageError("the submit key is empty; give --key a word such as ci-1234-train, or leave --key out")
    if len(key) > MAX_KEY_LENGTH:
        raise UsageError(f"the submit key is {len(key)} characters long; use at most {MAX_KEY_LENGTH}")
    if not _KEY.fullmatch(key):
        raise UsageError(f"the submit key {key!r} may only hold letters, digits and . _ : @ + = / - "
                         "(and may not start with -); e.g. ci-1234-train")
    return key
