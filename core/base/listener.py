"""A 0600 Unix socket server (or 0660 for one group) that never holds more connections than it was told.

The controller and every agent serve through this. Why an accept loop of
our own rather than ``asyncio.start_unix_server``: asyncio admits every
connection it can accept, and once the process runs out of descriptors its
accept loop logs a traceback per failed ``accept()`` and schedules a retry
per failure (a 100-fold storm per second: 200 MB of log in 40 s). Here:

- at most ``max_connections`` are held. A newcomer over the cap first
  evicts the oldest connection that has not said ``hello`` (a slowloris
  client, never a working one), else the greeted connection idle longest
  with nothing asked or answered in flight (a TUI reconnects; a client
  holding hundreds of idle connections cannot lock everyone out); a
  connection that has left an answer unread for a second goes first of
  all (asking and never reading locked everyone out too); only when every
  held connection is busy does the newcomer get one error frame
  (a non-blocking send: never waited for) and is closed at once, so its
  descriptor is released in the same loop iteration;
- the soft RLIMIT_NOFILE is raised (up to the hard limit) to leave room for
  the cap plus the daemon's own files; where it cannot be, the cap shrinks
  and that is said once in the log;
- out of descriptors anyway (other work used them), a reserved descriptor
  is freed to accept and refuse the waiting clients one by one, so they
  hear "busy" at once instead of timing out in the backlog;
- the backlog is 1024 (asyncio's default of 100 resets a burst);
- servers give their peers ``HELLO_DEADLINE_S`` to send a whole hello, so an
  idle or half-sent connection holds its place 10 s at most (and a begun
  frame after that must be whole within the protocol's frame deadline);
- refusals, evictions and descriptor trouble are logged when the state
  changes (full / accepting again, with counts), never once per client.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol

from mlfleet.core.base.frames import Frame, encode
from mlfleet.core.base.protocol import STALLED_AFTER_S

log = logging.getLogger(__name__)

BACKLOG = 1024
HELLO_DEADLINE_S = 10.0  # a new connection must have sent its hello whole by then (Peer's hello_deadline)
FD_HEADROOM = 512  # descriptors kept for the daemon's own work (DuckDB, SSH links, job logs, threads)
MIN_CONNECTIONS = 4
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_RETRY_ACCEPT_S = 0.5

OnConnect = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class GreetedPeer(Protocol):
    """What the listener reads of a protocol Peer to choose whom to evict."""

    writer: Any
    last_active: float

    @property
    def idle(self) -> bool: ...

    @property
    def stalled_for(self) -> float: ...


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    writer: asyncio.StreamWriter | None = None
    peer: GreetedPeer | None = None  # set once it said hello
    setting_up: bool = False  # its transport is being made: neither a bare socket nor a served one

    @property
    def greeted(self) -> bool:
        return self.peer is not None


def fd_budget(wanted: int) -> int:
    """How many connections this process can hold: ``wanted``, after raising the soft fd limit if needed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + FD_HEADROOM
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft == resource.RLIM_INFINITY or soft >= need:
        return wanted
    return max(MIN_CONNECTIONS, soft - FD_HEADROOM)


class UnixListener:
    """Serve ``on_connect(reader, writer)`` on a 0600 (or ``mode``/``group``) Unix socket, holding at most ``max_connections``."""

    def __init__(self, path: Path, on_connect: OnConnect, *, max_connections: int, name: str,
                 setting: str = "", backlog: int = BACKLOG, limit: int = 64 * 1024,
                 mode: int = 0o600, group: int | None = None) -> None:
        """``mode`` and ``group`` (a gid) open the socket to a group: a team controller's 0660 socket."""
        self.path = path
        self.mode = mode
        self.group = group
        self.on_connect = on_connect
        self.name = name
        self.setting = setting  # where the cap is configured, for the sentences
        self.wanted = max_connections
        self.max_connections = max_connections
        self.backlog = backlog
        self.limit = limit
        self.refused = 0  # since start
        self.evicted = 0
        self._open: dict[_Connection, None] = {}  # oldest first
        self._by_writer: dict[asyncio.StreamWriter, _Connection] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sock: socket.socket | None = None
        self._reserve: int | None = None
        self._full_since_refused: int | None = None  # refusals when the cap was reached (None: not full)
        self._starved = False  # out of descriptors, accept paused
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> "UnixListener":
        """Bind (born 0600: no window where others may connect), give it its group and mode, then accept."""
        self._loop = asyncio.get_running_loop()
        self.max_connections = fd_budget(self.wanted)
        if self.max_connections < self.wanted:
            log.warning("%s: the open-file limit allows %d connections, not the %d asked%s; raise 'ulimit -n'",
                        self.name, self.max_connections, self.wanted, f" ({self.setting})" if self.setting else "")
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old)
        try:
            if self.group is not None:
                os.chown(self.path, -1, self.group)  # the group first: the mode then opens it to that group only
            os.chmod(self.path, self.mode)
        except OSError:
            sock.close()
            raise
        sock.listen(self.backlog)
        sock.setblocking(False)
        self._sock = sock
        self._reserve = os.open(os.devnull, os.O_RDONLY)
        self._loop.add_reader(sock.fileno(), self._accept_ready)
        return self

    def close(self) -> None:
        """Stop accepting; held connections stay until their owners close them."""
        if self._sock is None:
            return
        assert self._loop is not None
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None

    async def wait_closed(self) -> None:
        """Kept for the asyncio.Server shape: closing is immediate."""

    # -------------------------------------------------------------- facts
    @property
    def open_count(self) -> int:
        return len(self._open)

    def greeted(self, peer: GreetedPeer) -> None:
        """``peer`` said hello: a newcomer evicts it only when it is idle, and the idlest first."""
        conn = self._by_writer.get(peer.writer)
        if conn is not None:
            conn.peer = peer

    def facts(self) -> dict[str, Any]:
        return {"connections": self.open_count, "max_connections": self.max_connections,
                "refused": self.refused, "evicted": self.evicted}

    # ------------------------------------------------------------ accepting
    def _accept_ready(self) -> None:
        for _ in range(self.backlog):  # bounded work per wake-up; the rest comes next iteration
            if self._sock is None:
                return
            try:
                sock, _addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in _OUT_OF_FDS:
                    self._out_of_descriptors(exc)
                else:
                    log.error("%s: accept failed: %s", self.name, exc)
                return
            if self._starved:
                self._starved = False
                log.warning("%s: file descriptors are free again; accepting connections", self.name)
            self._admit(sock)

    def _admit(self, sock: socket.socket) -> None:
        if len(self._open) >= self.max_connections and not self._evict_one():
            if self._full_since_refused is None:
                self._full_since_refused = self.refused
                log.warning("%s: %d connections held; refusing new ones until some close", self.name,
                            len(self._open))
            self._refuse(sock, f"{self.name} is busy: it holds its limit of {self.max_connections} connections"
                               f"{f' ({self.setting})' if self.setting else ''}; try again in a moment")
            return
        sock.setblocking(False)
        conn = _Connection(sock)
        self._open[conn] = None
        assert self._loop is not None
        task = self._loop.create_task(self._serve(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _evict_one(self) -> bool:
        """Make room: the oldest connection that has not said hello, else the idlest greeted one; False if none."""
        victim = next((c for c in self._open if not c.greeted and not c.setting_up), None)
        if victim is None:
            peers = [c for c in self._open if c.peer is not None]
            # A peer that leaves its answers unread (a stalled or hostile reader) goes before an idle one.
            stalled = [c for c in peers if c.peer.stalled_for >= STALLED_AFTER_S]  # type: ignore[union-attr]
            idle = [c for c in peers if c.peer.idle]  # type: ignore[union-attr]
            victim = (max(stalled, key=lambda c: c.peer.stalled_for) if stalled  # type: ignore[union-attr]
                      else min(idle, key=lambda c: c.peer.last_active, default=None))  # type: ignore[union-attr]
            if victim is None:
                return False
            self._tell(victim.sock, f"{self.name} closed this idle connection to make room for a new one "
                                    f"(it holds {self.max_connections}"
                                    f"{f', {self.setting}' if self.setting else ''}); connect again")
        self._forget(victim)
        if victim.writer is not None:
            victim.writer.transport.abort()  # off the selector now; asyncio closes the socket only on the next turn
        # Closed now, not on the loop's next turn: one wake-up to a backlog past the cap evicts every held
        # connection, and deferred closes would hold twice the cap until it returns (closing again is a no-op).
        victim.sock.close()
        self.evicted += 1
        return True

    @staticmethod
    def _tell(sock: socket.socket, message: str) -> None:
        """One error frame, one non-blocking try: the peer learns why, and nothing here waits for it."""
        frame = encode(Frame(error={"kind": "UnavailableError", "message": message, "exit_code": 5}))
        with contextlib.suppress(OSError):
            sock.send(frame)

    def _refuse(self, sock: socket.socket, message: str) -> None:
        self.refused += 1
        try:
            sock.setblocking(False)
            self._tell(sock, message)  # the frame fits an empty socket buffer
        finally:
            sock.close()

    def _log_recovered(self) -> None:
        assert self._full_since_refused is not None
        log.warning("%s: taking connections again (%d refused while full)", self.name,
                    self.refused - self._full_since_refused)
        self._full_since_refused = None

    def _out_of_descriptors(self, exc: OSError) -> None:
        """No descriptor for accept(): free the reserve to refuse the waiting clients, then pause."""
        if not self._starved:
            self._starved = True
            log.error("%s: out of file descriptors (%s; %d connections held): refusing new connections "
                      "until descriptors are free", self.name, exc.strerror, len(self._open))
        refused = 0
        while self._sock is not None and self._reserve is not None and refused < self.backlog:
            os.close(self._reserve)
            self._reserve = None
            try:
                sock, _addr = self._sock.accept()
            except OSError:
                break
            finally:
                with contextlib.suppress(OSError):
                    self._reserve = os.open(os.devnull, os.O_RDONLY)
            self._refuse(sock, f"{self.name} is out of file descriptors; try again in a moment")
            refused += 1
        assert self._loop is not None
        if self._sock is not None:  # accept again a little later, once (never a retry per failure)
            self._loop.remove_reader(self._sock.fileno())
            self._loop.call_later(_RETRY_ACCEPT_S, self._resume)

    def _resume(self) -> None:
        if self._sock is None:
            return
        if self._reserve is None:
            with contextlib.suppress(OSError):
                self._reserve = os.open(os.devnull, os.O_RDONLY)
        assert self._loop is not None
        self._loop.add_reader(self._sock.fileno(), self._accept_ready)
        self._accept_ready()

    # -------------------------------------------------------------- serving
    async def _serve(self, conn: _Connection) -> None:
        assert self._loop is not None
        if conn not in self._open:  # evicted before it was served (its socket is closed)
            return
        conn.setting_up = True
        try:
            reader = asyncio.StreamReader(limit=self.limit)
            protocol = asyncio.StreamReaderProtocol(reader)
            transport, _ = await self._loop.connect_accepted_socket(lambda: protocol, sock=conn.sock)
            writer = asyncio.StreamWriter(transport, protocol, reader, self._loop)
        except OSError:
            self._forget(conn)
            conn.sock.close()
            return
        if conn not in self._open:  # evicted or closed while the transport was being made
            transport.abort()
            return
        conn.writer = writer
        conn.setting_up = False
        self._by_writer[writer] = conn
        try:
            await self.on_connect(reader, writer)
        finally:
            self._forget(conn)
            if not transport.is_closing():
                transport.abort()
            if self._full_since_refused is not None and len(self._open) < self.max_connections:
                self._log_recovered()

    def _forget(self, conn: _Connection) -> None:
        self._open.pop(conn, None)
        if conn.writer is not None:
            self._by_writer.pop(conn.writer, None)
