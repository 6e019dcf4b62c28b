"""Reading an OpenSSH client config the way ``ssh`` does, for ``hosts import-ssh-config``.

Why our own reader: paramiko's crashed on ``Match`` and ignored ``Include``;
asyncssh's (``asyncssh.config``) is better but runs ``Match exec`` commands
with no time limit and cannot list a file's hosts. This one follows
ssh_config(5) for what an import needs and never runs anything:

* ``Host`` patterns (``*``, ``?``, ``!negation``, case-insensitive) and the
  first-value-wins rule; ``IdentityFile`` accumulates.
* ``Include`` with globs, ``~``, relative names under ``~/.ssh`` (as
  OpenSSH), conditional on the block it sits in, at most 16 deep.
* ``Match`` on ``all``, ``host``, ``originalhost``, ``user``,
  ``localuser``, ``canonical`` (false: no canonicalisation) and ``final``
  (true: this is the last pass). Any other criterion (``exec``,
  ``localnetwork``, ...) is a warning naming file:line, and its block
  applies to no host.
* ``%`` tokens in ``HostName``, ``IdentityFile`` and ``ProxyCommand``, and
  ``${VAR}`` in ``IdentityFile``, expanded once the host's options are known.

Every mistake in the file is a :class:`SpecError` with its file and line.
"""

from __future__ import annotations

import functools
import getpass
import glob
import os
import re
import shlex
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path

from mlfleet.core.base.errors import SpecError
from mlfleet.core.fleet.sshkeywords import OPENSSH_KEYWORDS, suggestion

MAX_INCLUDE_DEPTH = 16  # OpenSSH's READCONF_MAX_DEPTH
MAX_FILE_BYTES = 4 * 1024 * 1024
SUPPORTED_MATCH = {"all", "host", "originalhost", "user", "localuser", "canonical", "final"}


@dataclass(frozen=True)
class Line:
    keyword: str  # lower case
    args: list[str]
    raw: str  # the value as written (ProxyCommand keeps it whole)
    path: str
    number: int

    @property
    def where(self) -> str:
        return f"{self.path}:{self.number}"


@dataclass
class Block:
    """A Host or Match line and the lines under it (the lines before a file's first one have no header)."""

    header: Line | None
    body: list[Line] = field(default_factory=list)


@dataclass
class Blocks:
    """A file's blocks, indexed so that resolving one alias visits only the blocks that can apply to it.

    Without the index every alias walks every line: a 5,000-host config took minutes.
    """

    blocks: list[Block]
    by_name: dict[str, list[int]]  # lower-case literal Host name -> blocks naming it
    general: list[int]  # blocks without a header, Match blocks, Hosts with wildcards or negations


@dataclass
class Resolved:
    """One alias's options after the whole file was read, as ssh would use them."""

    alias: str
    options: dict[str, Line] = field(default_factory=dict)  # first value wins, by lower-case keyword
    identity_files: list[Line] = field(default_factory=list)

    def value(self, keyword: str) -> str | None:
        line = self.options.get(keyword)
        return line.raw if line else None


class TokenError(ValueError):
    """A ``%x`` token or ``${VAR}`` that cannot be expanded (the host is refused, by name)."""


class SshConfig:
    """An ssh config file and what it includes, read once, resolved per alias."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.home = Path(os.path.expanduser("~"))
        self.local_user = _local_user()
        self.warnings: dict[str, str] = {}  # file:line -> sentence (once per line, not once per host)
        self._files: dict[str, list[Line]] = {}
        self._blocks: dict[str, Blocks] = {}
        self._globbed: dict[str, list[str]] = {}
        self.checked_keys: dict[Path, str | None] = {}  # identity file -> why it cannot be used (the import's memo)
        self._resolved: dict[tuple[str, str | None, str | None], Resolved] = {}
        self._lines(str(path), None)  # a missing or broken top file is an error at once

    # ------------------------------------------------------------- reading

    def _lines(self, path: str, included_at: Line | None) -> list[Line]:
        if path not in self._files:
            self._files[path] = _read(path, included_at)
        return self._files[path]

    def _indexed(self, path: str) -> Blocks:
        if path not in self._blocks:
            blocks = [Block(None)]
            for line in self._lines(path, None):
                if line.keyword in ("host", "match"):
                    blocks.append(Block(line))
                else:
                    blocks[-1].body.append(line)
            by_name: dict[str, list[int]] = {}
            general = []
            for i, block in enumerate(blocks):
                header = block.header
                if header is not None and header.keyword == "host" and not any(is_pattern(a) for a in header.args):
                    for name in dict.fromkeys(a.lower() for a in header.args):
                        by_name.setdefault(name, []).append(i)
                else:
                    general.append(i)
            self._blocks[path] = Blocks(blocks, by_name, general)
        return self._blocks[path]

    def _include_paths(self, line: Line) -> list[str]:
        """The files an Include names (globbed once per line, not once per host)."""
        if line.where not in self._globbed:
            self._globbed[line.where] = self._glob(line)
        return self._globbed[line.where]

    def _glob(self, line: Line) -> list[str]:
        out: list[str] = []
        for pattern in line.args:
            expanded = os.path.expanduser(pattern)
            if not os.path.isabs(expanded):
                expanded = str(self.home / ".ssh" / expanded)  # as OpenSSH does for a user's config
            out.extend(sorted(p for p in glob.glob(expanded) if not os.path.isdir(p)))
        return out

    def aliases(self) -> list[str]:
        """Every name written on a ``Host`` line, in file order (patterns included), across Includes."""
        seen: dict[str, None] = {}
        self._walk_aliases(str(self.path), 0, seen)
        return list(seen)

    def _walk_aliases(self, path: str, depth: int, seen: dict[str, None]) -> None:
        for line in self._lines(path, None):
            if line.keyword == "host":
                seen.update((name, None) for name in line.args)
            elif line.keyword == "include":
                self._check_depth(line, depth)
                for included in self._include_paths(line):
                    self._lines(included, line)
                    self._walk_aliases(included, depth + 1, seen)

    @staticmethod
    def _check_depth(line: Line, depth: int) -> None:
        if depth + 1 >= MAX_INCLUDE_DEPTH:
            raise SpecError(line.path, line.number, "Include", f"nests deeper than {MAX_INCLUDE_DEPTH} files "
                            "(does a file include itself?)", "break the loop")

    # ----------------------------------------------------------- resolving

    def resolve(self, alias: str, user: str | None = None, port: str | None = None) -> Resolved:
        """The options ssh would use for ``ssh [-l user] [-p port] alias`` (read once per question)."""
        key = (alias, user, port)
        if key not in self._resolved:
            resolved = Resolved(alias)
            if user:
                resolved.options["user"] = Line("user", [user], user, "<command line>", 0)
            if port:
                resolved.options["port"] = Line("port", [port], port, "<command line>", 0)
            self._apply(str(self.path), resolved, 0)
            self._resolved[key] = resolved
        return self._resolved[key]

    def _apply(self, path: str, resolved: Resolved, depth: int) -> None:
        """Each block that can apply, in file order; one whose header does not match is skipped whole."""
        indexed = self._indexed(path)
        for i in sorted({*indexed.general, *indexed.by_name.get(resolved.alias.lower(), ())}):
            block = indexed.blocks[i]
            header = block.header
            if header is None:
                active = True  # lines before a file's first Host/Match (an Include is only read when active)
            elif header.keyword == "host":
                active = host_matches(header.args, resolved.alias)
            else:
                active = self._match(header, resolved)
            if active:
                self._apply_lines(block.body, resolved, depth)

    def _apply_lines(self, lines: list[Line], resolved: Resolved, depth: int) -> None:
        for line in lines:
            if line.keyword == "include":
                self._check_depth(line, depth)
                for included in self._include_paths(line):
                    self._lines(included, line)
                    self._apply(included, resolved, depth + 1)
            elif line.keyword == "identityfile":
                resolved.identity_files.append(line)
            elif line.keyword not in resolved.options:
                resolved.options[line.keyword] = line

    def _match(self, line: Line, resolved: Resolved) -> bool:
        args = list(line.args)
        if not args:
            raise SpecError(line.path, line.number, "Match", "has no criteria", "write e.g. 'Match host gpu-*'")
        result = True
        while args:
            word = args.pop(0)
            negated = word.startswith("!")
            criterion = word[1:].lower() if negated else word.lower()
            if criterion not in SUPPORTED_MATCH:
                self.warnings[line.where] = (f"{line.where}: 'Match {criterion}' is not evaluated by the import "
                                             "(mlfleet never runs commands from an ssh config); the settings of "
                                             "this block are applied to no host")
                return False
            if criterion in ("all", "canonical", "final"):
                value = {"all": True, "canonical": False, "final": True}[criterion]
            else:
                if not args:
                    raise SpecError(line.path, line.number, "Match", f"'{criterion}' needs a pattern",
                                    f"write e.g. 'Match {criterion} gpu-*'")
                patterns = args.pop(0).split(",")
                subject = {"host": resolved.value("hostname") or resolved.alias,
                           "originalhost": resolved.alias,
                           "user": resolved.value("user") or self.local_user,
                           "localuser": self.local_user}[criterion]
                value = host_matches(patterns, subject)
            if value == negated:
                result = False
        return result

    # ----------------------------------------------------------- expanding

    def expand(self, text: str, resolved: Resolved, *, env: bool = False) -> str:
        """``%`` tokens (and ``${VAR}`` where ``env``) as ssh expands them once the options are final."""
        hostname = self.hostname(resolved)
        tokens = {"%": "%", "h": hostname, "n": resolved.alias, "p": resolved.value("port") or "22",
                  "r": resolved.value("user") or self.local_user, "u": self.local_user, "d": str(self.home),
                  "i": str(os.getuid()), "l": socket.gethostname(), "L": socket.gethostname().split(".")[0],
                  "k": resolved.value("hostkeyalias") or hostname}

        def token(match: re.Match[str]) -> str:
            if match.group(1) not in tokens:
                raise TokenError(f"%{match.group(1)} is not a token ssh knows")
            return tokens[match.group(1)]

        out = re.sub(r"%(.?)", token, text)
        if env:
            def variable(match: re.Match[str]) -> str:
                if match.group(1) not in os.environ:
                    raise TokenError(f"${{{match.group(1)}}} is not set in this environment")
                return os.environ[match.group(1)]
            out = re.sub(r"\$\{([^}]*)\}", variable, out)
        return out

    def hostname(self, resolved: Resolved) -> str:
        written = resolved.value("hostname")
        if written is None:
            return resolved.alias
        return written.replace("%%", "\0").replace("%h", resolved.alias).replace("\0", "%")


def host_matches(patterns: list[str], name: str) -> bool:
    """OpenSSH's rule: some positive pattern matches and no negated one does (case-insensitive)."""
    matched = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if _wildcard(pattern[1:] if negated else pattern, name):
            if negated:
                return False
            matched = True
    return matched


def is_pattern(name: str) -> bool:
    return any(ch in name for ch in "*?!")


def _wildcard(pattern: str, name: str) -> bool:
    if "*" not in pattern and "?" not in pattern:
        return pattern.lower() == name.lower()
    return _compiled(pattern.lower()).fullmatch(name.lower()) is not None


@functools.lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern), re.DOTALL)


def _read(path: str, included_at: Line | None) -> list[Line]:
    """The lines of one file: bounded, regular files only, errors at the place that named the file."""
    where = (included_at.path, included_at.number) if included_at else (path, None)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        if included_at is None and exc.errno == 2:
            raise SpecError(path, None, None, "file not found", "pass --file with your ssh config") from None
        raise SpecError(*where, None, f"cannot read {path}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a folder, a device, a FIFO: before any read
            raise SpecError(*where, None, f"{path} is not a regular file", "name an ssh config file")
        data = os.read(fd, MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise SpecError(*where, None, f"cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise SpecError(*where, None, f"{path} is larger than {MAX_FILE_BYTES // 2**20} MiB; it is not an ssh config")
    if b"\0" in data:
        raise SpecError(*where, None, f"{path} holds binary data; it is not an ssh config")
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark (Windows editors) is not part of the first keyword
        data = data[3:]
    lines = []
    ignore_unknown: list[str] = []  # IgnoreUnknown patterns seen so far in this file
    for number, encoded in enumerate(data.splitlines(), 1):
        try:
            text = encoded.decode("utf-8").strip()
        except UnicodeDecodeError as exc:  # never guess: a replaced byte in a HostName is a wrong address
            raise SpecError(path, number, None, f"is not UTF-8 text (byte {exc.start + 1} of the line)",
                            "save the file as UTF-8") from None
        if not text or text.startswith("#"):
            continue
        m = re.match(r"([^\s=]+)\s*(?:=\s*)?(.*)$", text)
        if m is None:
            raise SpecError(path, number, None, "is not 'Keyword value'", "see ssh_config(5)")
        keyword, raw = m.group(1).lower(), m.group(2).strip()
        if keyword not in OPENSSH_KEYWORDS:
            if host_matches(ignore_unknown, keyword):
                continue
            raise SpecError(path, number, m.group(1), "is not an ssh_config keyword, so ssh itself refuses this "
                            "file", suggestion(m.group(1)))
        if keyword == "proxycommand":
            args = [raw] if raw else []
        else:
            try:
                args = shlex.split(raw, comments=True)
            except ValueError as exc:
                raise SpecError(path, number, m.group(1), f"cannot be read: {exc}", "check its quotes") from None
            raw = " ".join(args)
        if not args:
            raise SpecError(path, number, m.group(1), "has no value", "see ssh_config(5)")
        if keyword == "ignoreunknown":
            ignore_unknown.extend(p for a in args for p in a.split(","))
        lines.append(Line(keyword, args, raw, path, number))
    return lines


def _local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
