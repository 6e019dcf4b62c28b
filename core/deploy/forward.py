"""``mlfleet deploy open``'s forwarder: one local port spread over a deployment's healthy replicas.

Like ``ssh -L``, but the far end moves: every NEW TCP connection goes to the
next endpoint of the latest list (round robin), refreshed every ``refresh``
seconds from the caller's ``endpoints`` function (the controller's
``deploy_endpoints`` RPC for the command). A connection already open keeps
its replica to the end, even after the replica leaves the list, so a
rollout's draining replicas finish what they were asked.

How an endpoint is reached is the caller's ``dial`` (core/deploy/dialers.py:
loopback for the local host, a direct-tcpip channel over one reused SSH
connection per remote host). A dial that fails moves on to the next
endpoint, so a replica that died between two refreshes costs no request.

Bytes are pumped in chunks of at most ``CHUNK`` with ``await drain()`` after
each write: a slow reader on either side stops us reading from the other
(backpressure), so a connection holds a few chunks of memory however much
passes through it. EOF is passed on as a half-close (``write_eof``) and the
other direction goes on until it ends too, as HTTP clients that shut down
their sending side expect.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol

CHUNK = 64 * 1024  # the most one read takes before its write is drained
DIAL_TIMEOUT_S = 15.0  # one endpoint's dial (an SSH connect is 10 s at most, core/fleet/transport/route.py)


@dataclass(frozen=True)
class Endpoint:
    """One healthy replica as ``deploy_endpoints`` names it (docs: /work DEPLOY.md, "RPCs")."""

    replica_id: str
    host: str
    port: int
    version: int
    local: bool

    @classmethod
    def from_rpc(cls, item: dict[str, Any]) -> "Endpoint":
        return cls(replica_id=str(item["replica_id"]), host=str(item["host"]), port=int(item["port"]),
                   version=int(item["version"]), local=bool(item["local"]))

    @property
    def label(self) -> str:
        """``gpu1:41233 (v2)``; the local host is ``local``."""
        return f"{'local' if self.local else self.host}:{self.port} (v{self.version})"


class Reader(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class Writer(Protocol):
    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def can_write_eof(self) -> bool: ...
    def write_eof(self) -> None: ...
    def close(self) -> None: ...


# How an endpoint is reached: a byte stream both ways (asyncio's streams, or asyncssh's SSHReader/SSHWriter).
Dialer = Callable[[Endpoint], Awaitable[tuple[Reader, Writer]]]


def change_line(name: str, endpoints: list[Endpoint]) -> str:
    """What is printed when the list changes (pure: the tests and the command share the words)."""
    if not endpoints:
        return f"no healthy replica of {name}; waiting"
    count = len(endpoints)
    return f"→ {count} replica{'s' if count != 1 else ''}: " + ", ".join(e.label for e in endpoints)


def _print(line: str) -> None:
    print(line, flush=True)


class _Forwarder:
    """The state one ``serve_forward`` call keeps: the latest list, the round-robin cursor, open pumps."""

    def __init__(self, dial: Dialer, name: str, say: Callable[[str], None]) -> None:
        self.dial = dial
        self.name = name
        self.say = say
        self.current: list[Endpoint] = []
        self.known = False  # no list has been read yet
        self.cursor = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self._fetch_problem: str | None = None
        self._dial_problems: dict[Endpoint, str] = {}  # said once each, until that endpoint answers again

    def update(self, endpoints: list[Endpoint]) -> None:
        if self._fetch_problem is not None:
            self._fetch_problem = None
        if self.known and set(endpoints) == set(self.current):
            return  # the same replicas, perhaps listed in another order: nothing to say, the turn goes on
        self.current, self.known = list(endpoints), True
        self.say(change_line(self.name, self.current))

    def fetch_failed(self, exc: BaseException) -> None:
        """The list could not be read: keep serving the last one, say so once per problem."""
        problem = str(exc) or type(exc).__name__
        if problem != self._fetch_problem:
            self._fetch_problem = problem
            self.say(f"cannot read the replicas of {self.name} ({problem}); "
                     f"keeping the last {len(self.current)}")

    def order(self) -> list[Endpoint]:
        """The endpoints to try for one new connection: the next in turn first, then the others."""
        snapshot = self.current
        if not snapshot:
            return []
        start = self.cursor % len(snapshot)
        self.cursor += 1
        return snapshot[start:] + snapshot[:start]

    async def handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            upstream = await self._dial_any(self.order())
            if upstream is None:
                return
            await pump_both(client_reader, client_writer, *upstream)
        except asyncio.CancelledError:
            # Only serve_forward cancels this task, on its way out; ending normally keeps asyncio's
            # start_server (3.11) from logging the cancelled handler as "Exception in callback".
            pass
        except Exception:  # one connection's failure never ends the forwarder
            pass
        finally:
            _close(client_writer)
            self.tasks.discard(task)

    async def _dial_any(self, candidates: list[Endpoint]) -> tuple[Reader, Writer] | None:
        for endpoint in candidates:
            try:
                stream = await asyncio.wait_for(self.dial(endpoint), DIAL_TIMEOUT_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # dead or unreachable: the next one takes this connection
                self._dial_failed(endpoint, exc)
                continue
            self._dial_problems.pop(endpoint, None)
            return stream
        return None

    def _dial_failed(self, endpoint: Endpoint, exc: BaseException) -> None:
        problem = str(exc) or type(exc).__name__
        if self._dial_problems.get(endpoint) != problem:
            self._dial_problems[endpoint] = problem
            self.say(f"cannot reach {endpoint.label}: {problem}")


async def pump(reader: Reader, writer: Writer) -> None:
    """Copy until EOF, one bounded chunk at a time, waiting for the writer to drain; then pass EOF on."""
    while True:
        data = await reader.read(CHUNK)
        if not data:
            break
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


async def pump_both(a_reader: Reader, a_writer: Writer, b_reader: Reader, b_writer: Writer) -> None:
    """Both directions until both reached EOF; an error in either ends both (and closes ``b``)."""
    up = asyncio.ensure_future(pump(a_reader, b_writer))
    down = asyncio.ensure_future(pump(b_reader, a_writer))
    try:
        pending: set[asyncio.Future[None]] = {up, down}
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(not f.cancelled() and f.exception() is not None for f in done):
                break  # a reset or a lost channel: the other direction cannot finish either
    finally:
        for f in (up, down):
            if not f.done():
                f.cancel()
        for f in (up, down):
            with contextlib.suppress(BaseException):
                await f
        _close(b_writer)


def _close(writer: Writer) -> None:
    with contextlib.suppress(Exception):
        writer.close()


async def serve_forward(endpoints: Callable[[], Awaitable[list[Endpoint]]], bind: str, port: int, dial: Dialer,
                        ready: Callable[[int], None] | None = None, refresh: float = 0.5, *,
                        name: str = "the deployment", say: Callable[[str], None] | None = None) -> None:
    """Listen on ``bind:port`` and forward each new connection until cancelled (Ctrl-C).

    ``ready`` gets the port actually bound (``port=0`` picks a free one) once
    the first list was read and connections are taken. ``say`` prints the
    lines a user watches (default: stdout); ``name`` is the deployment's.
    """
    forwarder = _Forwarder(dial, name, say or _print)
    try:
        forwarder.update(await endpoints())
    except Exception as exc:
        forwarder.fetch_failed(exc)
    server = await asyncio.start_server(forwarder.handle, bind, port, limit=CHUNK)
    try:
        bound = server.sockets[0].getsockname()[1]
        if ready is not None:
            ready(bound)
        while True:
            await asyncio.sleep(refresh)
            try:
                forwarder.update(await endpoints())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                forwarder.fetch_failed(exc)
    finally:
        server.close()
        for task in list(forwarder.tasks):
            task.cancel()
        for task in list(forwarder.tasks):
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(Exception):
            await server.wait_closed()
