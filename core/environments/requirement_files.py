"""A requirements.txt from the job's code snapshot, with its ``-r`` includes expanded from the snapshot too.

Resolution runs in a scratch folder on the workstation, so a ``-r base.txt``
left for uv to follow would be looked for there (and an absolute one would
read the workstation's files). The includes are read here, from the same
snapshot as the file, relative to the file that names them, never outside
it. Other options in the file (``--index-url``, ``-e``, ``-f``, ``-c`` ...)
are refused: the index is the controller's ``environments`` settings, the
same for every job, and an editable or constraints file would need files
this text does not carry.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Callable

MAX_INCLUDE_DEPTH = 10
_INCLUDE = re.compile(r"^(?:-r|--requirement)(?:\s*=\s*|\s+|(?=[^\s-]))(?P<path>\S+)\s*$")
_COMMENT = re.compile(r"(^|\s)#.*$")

Read = Callable[[str], str]  # a member of the snapshot by its path -> its text (raises when it is not there)
Refuse = Callable[[str], Exception]  # one sentence -> the error to raise


def expand(name: str, read: Read, refuse: Refuse) -> str:
    """The requirement lines of snapshot file ``name``, its includes in their place, options refused."""
    return "".join(_lines(_normalise(name, refuse), read, refuse, ()))


def _normalise(name: str, refuse: Refuse) -> str:
    parts: list[str] = []
    for part in PurePosixPath(name).parts:
        if part == "/":
            raise refuse(f"{name} is an absolute path: a requirements file and what it includes must be in the "
                          "job's workdir")
        if part == "..":
            if not parts:
                raise refuse(f"{name} is outside the job's workdir: a requirements file and what it includes must "
                             "be in it")
            parts.pop()
        elif part != ".":
            parts.append(part)
    return "/".join(parts)


def _lines(name: str, read: Read, refuse: Refuse, chain: tuple[str, ...]) -> list[str]:
    if name in chain:
        raise refuse(f"{name} includes itself (through {' -> '.join(chain + (name,))})")
    if len(chain) >= MAX_INCLUDE_DEPTH:
        raise refuse(f"{name}: requirements files include each other more than {MAX_INCLUDE_DEPTH} deep")
    out: list[str] = []
    for number, raw in enumerate(read(name).splitlines(), start=1):
        line = _COMMENT.sub("", raw).strip()
        if not line:
            continue
        if line.endswith("\\"):
            raise refuse(f"{name}:{number}: a line continued with a backslash; write the requirement on one line")
        include = _INCLUDE.match(line)
        if include:
            folder = PurePosixPath(name).parent
            target = _normalise(str(folder / include.group("path")), refuse)
            out += _lines(target, read, refuse, chain + (name,))
        elif line.startswith("-"):
            option = line.split()[0].split("=")[0]
            raise refuse(f"{name}:{number}: the option {option} is not taken in a job's requirements; the index "
                         "is the controller's environments settings (docs/environments.md), and only -r includes "
                         "are followed")
        else:
            out.append(line + "\n")
    return out
