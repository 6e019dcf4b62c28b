"""The CLI's argparse, made to speak like the rest of mlfleet: one sentence per mistake.

Plain argparse prints a usage dump and ``error: ...`` on two or more lines,
and for an unknown flag it names the *top-level* program (``mlfleet``), so
``mlfleet jobs logs J --jsn`` showed the usage of ``mlfleet`` itself. Here a
mistake is a :class:`ArgumentMistake` (a ``UsageError``, exit 2), told by
``main`` as one sentence that names the command that was meant and ends
with that command's usage on one line; with ``--json`` on the command line
the error object goes to stdout too, as for every other error.

Argparse also reads any word that starts with ``-`` as a flag, so
``--sort -metrics.val_loss.min`` failed with "expected one argument". A
flag that takes a value here takes a following word that starts with a
single ``-`` when that word is not one of the command's own flags
(``-metrics.x``, ``-name``); a word that starts with ``--`` stays a flag,
since it is far more often a flag than a value.
"""

from __future__ import annotations

import argparse
import difflib
import re
from typing import Any, NoReturn, Sequence

from mlfleet.core.base.errors import UsageError

_COMMAND = "_command_parser"  # the namespace attribute naming the deepest command parsed (removed before use)


class ArgumentMistake(UsageError):
    """A command line argparse refused, as one sentence: the command, what is wrong, its usage."""

    kind = "UsageError"  # what --json calls it: scripts need not know where the mistake was found

    def __init__(self, prog: str, problem: str, usage: str) -> None:
        self.prog = prog
        self.problem = problem
        self.usage = " ".join(usage.split()).removeprefix("usage: ")
        command = prog.removeprefix("mlfleet").strip()
        where = f"{command}: " if command else ""
        super().__init__(f"{where}{problem}; usage: {self.usage} (more with '{prog} --help')")


class CommandParser(argparse.ArgumentParser):
    """argparse whose mistakes are :class:`ArgumentMistake` and whose flags take values that start with '-'."""

    def error(self, message: str) -> NoReturn:
        raise ArgumentMistake(self.prog, _explain(message, self), self.format_usage())

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        if args is not None:
            args = self._join_dash_values(list(args))
        parsed, extras = super().parse_known_args(args, namespace)
        if not hasattr(parsed, _COMMAND):  # the deepest command sets it first (its namespace is copied up)
            setattr(parsed, _COMMAND, self)
        return parsed, extras

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        command: CommandParser = getattr(parsed, _COMMAND, self)
        delattr(parsed, _COMMAND)
        if extras:  # argparse reports these from the top; the user meant the command they typed
            words = " ".join(extras)
            what = "an argument it does not take" if len(extras) == 1 else "arguments it does not take"
            raise ArgumentMistake(command.prog, f"{words} is {what}" if len(extras) == 1
                                  else f"{words} are {what}", command.format_usage())
        return parsed

    def _join_dash_values(self, args: list[str]) -> list[str]:
        """``--sort -x`` as ``--sort=-x`` when ``-x`` is no flag of this command (see the module's doc)."""
        out: list[str] = []
        i = 0
        while i < len(args):
            word = args[i]
            out.append(word)
            i += 1
            if word == "--":
                out += args[i:]
                break
            action = self._option_string_actions.get(word) or self._abbreviated(word)
            if (action is None or action.nargs is not None or not action.option_strings
                    or i >= len(args) or not _single_dash(args[i])):
                continue
            known = self._parse_optional(args[i])  # 3.11: a tuple; 3.12 and later: a list of them
            first = known[0] if isinstance(known, list) and len(known) == 1 else known
            if isinstance(first, tuple) and first[0] is None:  # -x: argparse would call it an unknown flag
                out[-1] = f"{word}={args[i]}"
                i += 1
        return out


    def _abbreviated(self, word: str) -> argparse.Action | None:
        """The flag ``word`` abbreviates (``--so`` for ``--sort``), as argparse reads it; None unless just one."""
        if not word.startswith("--") or "=" in word:
            return None
        found = {a for name, a in self._option_string_actions.items() if name.startswith(word)}
        return found.pop() if len(found) == 1 else None


def _single_dash(word: str) -> bool:
    return len(word) > 1 and word[0] == "-" and word[1] != "-"


def _explain(message: str, parser: argparse.ArgumentParser) -> str:
    """argparse's message, with what to do where argparse leaves it out."""
    flag = re.fullmatch(r"argument (\S+): expected one argument", message)
    if flag:
        name = flag.group(1).split("/")[-1]
        return (f"{name} needs a value after it, e.g. {name} VALUE ({name}=VALUE when the value starts with '-' "
                "or looks like a flag)")
    choice = re.fullmatch(r"(argument \S+: invalid choice: '(.*)') \(choose from (.*)\)", message)
    if choice:
        head, given, options = choice.groups()
        close = difflib.get_close_matches(given, [o.strip().strip("'") for o in options.split(",")], n=1)
        return head + (f" (did you mean '{close[0]}'?)" if close else "") + f"; choose from {options}"
    return message


def asked_for_json(argv: Sequence[str] | None) -> bool:
    """Whether ``--json`` is on the command line (before any ``--``): how to tell a mistake found while parsing."""
    import sys

    words = list(sys.argv[1:] if argv is None else argv)
    return "--json" in (words[:words.index("--")] if "--" in words else words)


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every runnable command of the tree, as (words, its parser): what ``--json`` must work for."""
    found = []
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for group in groups:
        for name, sub in group.choices.items():
            found += commands(sub, (*path, name))
    if not groups and path:
        found.append((path, parser))
    return found
