"""Where a shared controller is: ``ssh://[user@]host[:port][/abs/socket/path]``, and which setting said so.

Pure parsing (no I/O), in core/base because config.yaml's ``controller.url``
is checked with it when the settings are read (its line in the sentence),
as well as ``--controller`` and ``MLFLEET_CONTROLLER``. The connection
itself is core/controller/remote.py's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

ENV = "MLFLEET_CONTROLLER"  # set by the global --controller flag too (core/cli/main.py)
DEFAULT_SOCKET = "/run/mlfleet/controller.sock"  # controller serve --team's default (core/controller/team_socket.py)
EXAMPLE = "ssh://alice@head:22/run/mlfleet/controller.sock"


@dataclass(frozen=True)
class ControllerUrl:
    """A shared controller reached over SSH: the head node's sshd and the team socket on it."""

    url: str
    host: str
    port: int
    user: str | None
    socket_path: str

    @property
    def where(self) -> str:
        """``alice@head:2222`` as a sentence names it."""
        return f"{self.user + '@' if self.user else ''}{self.host}{'' if self.port == 22 else f':{self.port}'}"


def url_problem(url: str) -> str:
    """What is wrong with ``url`` as the end of a sentence ('' when nothing is)."""
    try:
        parse_url(url)
    except ValueError as exc:
        return str(exc)
    return ""


def parse_url(url: str) -> ControllerUrl:
    """The parts of ``ssh://[user@]host[:port][/abs/socket/path]``; a ValueError says what is wrong."""
    text = url.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r} is not an ssh:// URL ({exc}); write it like {EXAMPLE}") from None
    if parts.scheme != "ssh":
        raise ValueError(f"{url!r} must start with ssh:// (a shared controller is reached over SSH), "
                         f"like {EXAMPLE}")
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host; write it like {EXAMPLE}")
    if parts.password is not None:
        raise ValueError(f"{url!r} carries a password; mlfleet uses SSH keys (or ssh-agent), leave it out")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r} has a ?query or #fragment, which mean nothing here; write it like {EXAMPLE}")
    path = unquote(parts.path) or DEFAULT_SOCKET
    if path == "/":
        path = DEFAULT_SOCKET
    if "\0" in path or len(os.fsencode(path)) > 107:
        raise ValueError(f"{url!r}: the socket path is not a usable Unix socket path")
    return ControllerUrl(url=text, host=parts.hostname, port=port or 22,
                         user=unquote(parts.username) if parts.username else None, socket_path=path)
