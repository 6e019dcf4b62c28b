"""The controller's live view of one host: its connection, state and telemetry.

A link reconnects with backoff and jitter; while it cannot reach the agent
the host is ``unreachable``, but nothing is killed or forgotten: runs keep
going on the node and are picked up again when the link comes back.

A link that stops answering without closing (a stalled SSH channel, a
frozen bridge process on the node) is torn down at the first request that
goes unanswered past its deadline, and connected again: it is never waited
on forever. Every new connection first runs ``on_connect`` (the controller
stops there the runs it has given up on) before anything else may use it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from typing import Any, Awaitable, Callable

import msgspec

from mlfleet.core.base.errors import HostUnreachableError, MlfleetError, NoAnswerError
from mlfleet.core.base.models import HostSample
from mlfleet.core.base.protocol import Peer
from mlfleet.core.fleet.transport.base import AgentTransport

log = logging.getLogger(__name__)

HISTORY = 300  # samples kept in memory for the clients' sparklines (5 min at 1 Hz)


OnConnect = Callable[["HostLink", Peer], Awaitable[None]]


class HostLink:
    def __init__(self, transport: AgentTransport, labels: dict[str, str] | None = None,
                 on_connect: OnConnect | None = None) -> None:
        self.transport = transport
        self.on_connect = on_connect
        self.name = transport.host
        self.labels = labels or {}
        self.peer: Peer | None = None
        self.state = "connecting"
        self.recorded_state = ""  # the state last written to the hosts table
        self.metrics_backlog = False  # the last poll left metric lines waiting: the next tick comes at once
        self.down_since: float | None = None  # wall time the host stopped answering (reset by an answered poll)
        self.message = ""
        self.info: dict[str, Any] = {}
        self.history: deque[HostSample] = deque(maxlen=HISTORY)
        self.telemetry_seq = 0
        self.agent_started_at: float | None = None
        self.last_seen: float | None = None
        self._backoff = 0.5
        self._next_try = 0.0
        self._connecting: asyncio.Task[None] | None = None
        self.held: str | None = None  # why the link stays down on purpose (its agent was stopped), or None

    @property
    def up(self) -> bool:
        return self.peer is not None and not self.peer.closed

    @property
    def latest(self) -> HostSample | None:
        return self.history[-1] if self.history else None

    async def ensure_connected(self) -> bool:
        """Connect if it is time to try; return whether the link is up."""
        if self.held is not None:
            self.state, self.message = "stopped", self.held
            return False
        if self.up:
            return True
        if self.peer is not None:
            self._lost("connection closed")
        now = time.monotonic()
        if now < self._next_try:
            return False
        peer: Peer | None = None
        try:
            peer = await self.transport.connect()
            info = await peer.request("info", request_timeout=10)
            if self.on_connect is not None:
                await self.on_connect(self, peer)  # before the link is published: nothing else runs first
        except Exception as exc:  # any failure to connect is "unreachable, with why", never a crash
            if peer is not None:
                await peer.close()
            self._backoff = min(self._backoff * 2, 30.0)
            self._next_try = now + self._backoff * random.uniform(0.5, 1.0)
            self.state = "unreachable"
            self.message = str(exc) if isinstance(exc, MlfleetError) else f"{type(exc).__name__}: {exc}"
            return False
        if self.held is not None:  # held while this connection was being made: it is not used
            await peer.close()
            return False
        self.peer, self.info = peer, info
        self.state, self.message = "up", ""
        self._backoff = 0.5
        log.info("connected to agent on %s", self.name)
        return True

    def mark_slow(self, why: str) -> None:
        if self.up:
            self.state, self.message = "unreachable", f"not answering: {why}"

    def mark_answering(self) -> None:
        self.last_seen = time.time()  # an answered poll: what "last seen" means (hostseen.py)
        if self.state != "up":
            self.state, self.message = "up", ""

    def retry_now(self) -> None:
        """Forget the backoff (after the user fixed something, like trusting a host key)."""
        self._backoff = 0.5
        self._next_try = 0.0

    async def hold(self, why: str) -> None:
        """Close the link and keep it closed (no reconnect starts the agent again) until :meth:`release`."""
        self.held = why
        await self.close()
        self.state, self.message = "stopped", why

    def release(self) -> None:
        """Connect again at the next tick (which starts the agent when none runs)."""
        self.held = None
        self.state, self.message = "connecting", ""
        self.retry_now()

    def tear_down(self, why: str) -> None:
        """Break a connection that stopped answering; the next tick connects again."""
        if self.peer is not None:
            log.warning("tearing down the link to %s: %s", self.name, why)
            self.peer.abort(why)
        self._lost(why)

    def _lost(self, why: str) -> None:
        self.peer = None
        self.state, self.message = "unreachable", why
        self._next_try = time.monotonic() + self._backoff * random.uniform(0.5, 1.0)

    async def request(self, method: str, request_timeout: float = 30.0, **params: Any) -> Any:
        if not self.up or self.peer is None:
            raise HostUnreachableError(self.name, self.message)
        peer = self.peer
        try:
            return await peer.request(method, request_timeout=request_timeout, **params)
        except NoAnswerError as exc:
            if self.peer is peer:
                self.tear_down(str(exc))
            raise
        except MlfleetError as exc:
            if self.peer is peer and peer.closed:
                self._lost(str(exc))
            raise

    def absorb_telemetry(self, samples: list[dict[str, Any]], agent_started_at: float) -> list[HostSample]:
        """Keep new samples; an agent restart resets the sequence."""
        if self.agent_started_at != agent_started_at:
            self.agent_started_at = agent_started_at
            self.telemetry_seq = 0
        fresh = [msgspec.convert(s, HostSample) for s in samples if s.get("seq", 0) > self.telemetry_seq]
        if fresh:
            self.telemetry_seq = fresh[-1].seq
            self.history.extend(fresh)
            self.last_seen = time.time()
        return fresh

    async def close(self) -> None:
        if self.peer is not None:
            await self.peer.close()
            self.peer = None

    def summary(self) -> dict[str, Any]:
        """What clients see of this host (``hosts list``)."""
        latest = self.latest
        return {
            "name": self.name,
            "kind": self.transport.kind,
            "address": self.transport.address,
            "labels": self.labels,
            "state": self.state,
            "message": self.message,
            "agent_version": self.info.get("version"),
            "simulated": bool(self.info.get("simulated_gpus")),
            "last_seen": self.last_seen,
            "info": self.info,
            "telemetry": msgspec.to_builtins(latest) if latest else None,
        }

    def history_series(self, points: int = 120) -> dict[str, list[float]]:
        samples = list(self.history)[-points:]
        return {
            "cpu_percent": [s.cpu_percent for s in samples],
            "memory_percent": [100.0 * s.memory_used / s.memory_total if s.memory_total else 0.0 for s in samples],
        }

