"""How the controller reaches an agent: something that yields a protocol Peer.

The local transport talks to an agent on this machine through its Unix
socket (starting the agent if needed); the SSH transport (later) opens the
same socket through an SSH channel. The controller only sees Peers.
"""

from __future__ import annotations

from typing import Protocol

from mlfleet.core.base.protocol import Peer


class AgentTransport(Protocol):
    host: str
    kind: str
    address: str | None
    on_this_machine: bool  # the agent runs here: files reach it by link or copy, never by upload

    async def connect(self) -> Peer:
        """A Peer that has said hello; raises UnavailableError when the agent cannot be reached."""
        ...

    async def stop_agent(self) -> dict:
        """Stop the agent (its runs go on); ``was_running`` and ``pid`` say what there was to stop."""
        ...
