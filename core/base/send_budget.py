"""One bound on the answers a server has made and its peers have not read, all connections together."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlfleet.core.base.protocol import Peer

# Answers a server has made and its peers have not read yet, for all of its connections together: past
# this the connection holding the most is closed, so peers that ask and never read cannot grow the server.
SERVER_UNSENT_LIMIT = 64 * 1024 * 1024

log = logging.getLogger(__name__)


class SendBudget:
    """The unsent answers of a server's connections, bounded together (``SERVER_UNSENT_LIMIT``).

    Why one budget per server and not per connection: a per-connection bound
    times the connection cap is still gigabytes, and a client that asks and
    never reads is a bug or an attack, never a user to wait for.
    """

    def __init__(self, limit: int = SERVER_UNSENT_LIMIT) -> None:
        self.limit = limit
        self.peers: set["Peer"] = set()
        self.closed = 0  # connections closed for it, since start

    def enforce(self) -> None:
        total = sum(p.unsent for p in self.peers)
        while total > self.limit and self.peers:
            worst = max(self.peers, key=lambda p: p.unsent)
            held = worst.unsent
            self.peers.discard(worst)
            self.closed += 1
            log.warning("%s: closing a connection holding %d bytes of answers it has not read", worst.name, held)
            worst.abort(f"the other side read none of {held} bytes of answers; closed to keep the server's memory")
            total -= held
