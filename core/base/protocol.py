"""The versioned frame protocol spoken between clients, controller and agents.

Every message is one **frame**: a 4-byte big-endian length, then that many
bytes of msgpack (msgspec). The same bytes travel over a Unix socket and over
an SSH channel to one. A request is ``{"id", "method", "params"}``; its
answer is ``{"id", "result"}`` or ``{"id", "error"}``. The first request on
every connection is ``hello``, which carries the protocol version; a peer of
another version is refused with a clear sentence. ``docs/protocol.md`` is the
written contract.

Why length-prefixed binary rather than JSON lines: a frame is read whole
(``readexactly``) or not at all, whatever the transport buffers. asyncssh's
``readline()`` hands back a partial line once its buffer reaches the channel
window, and a reader that takes a fragment for a frame loses the answer and
stalls the link for good. Metric chunks (text) also travel unescaped.

Frames are bounded (``MAX_FRAME``): a longer frame, or one that stops
arriving part way (``frame_deadline``), breaks the connection, which the
owner re-establishes; a frame that arrives whole but is not a request (bad
msgpack, nesting too deep, wrong shape) gets an error answer and the
connection carries on. A bad frame never takes a daemon down.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import traceback
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from mlfleet.core.base.errors import MlfleetError, NoAnswerError, ProtocolError, RemoteError, UnavailableError
from mlfleet.core.base.frames import FRAME_DEADLINE_S, MAX_FRAME, BrokenFrame, Frame, decode, encode, read_frame
from mlfleet.core.base.hello import PROTOCOL_VERSION, hello_problem

if TYPE_CHECKING:
    from mlfleet.core.base.send_budget import SendBudget

# What a server takes from the peers that connect to it: requests are small (a spec, a query, a launch),
# so a server reads at most this much per frame, a begun frame must be whole sooner, and one connection
# has at most this many requests in flight (it is read no further until one is answered: backpressure).
SERVER_MAX_REQUEST = 4 * 1024 * 1024
SERVER_FRAME_DEADLINE_S = 15.0
MAX_IN_FLIGHT = 64
STALLED_AFTER_S = 1.0  # an answer the other side has not taken for this long: a reader that stalled

log = logging.getLogger(__name__)


Handler = Callable[["Peer", str, dict[str, Any]], Awaitable[Any]]


class Peer:
    """One end of a protocol connection: it sends requests and answers the other side's.

    ``handler(peer, method, params)`` answers incoming requests; a peer
    without a handler only makes requests. ``hello_deadline`` (for servers)
    is how long a new connection may take to send its first frame whole.
    """

    def __init__(self, reader: Any, writer: Any, handler: Handler | None = None, name: str = "peer", *,
                 max_frame: int = MAX_FRAME, frame_deadline: float | None = FRAME_DEADLINE_S,
                 hello_deadline: float | None = None, max_incoming: int | None = None,
                 max_in_flight: int = MAX_IN_FLIGHT, require_hello: bool = False,
                 send_budget: SendBudget | None = None) -> None:
        self.reader = reader
        self.writer = writer
        self.handler = handler
        self.name = name
        self.max_frame = max_frame  # the largest frame we send
        self.max_incoming = max_incoming or max_frame  # the largest frame we read
        self._in_flight = asyncio.Semaphore(max_in_flight)  # requests of the other side being answered
        self.frame_deadline = frame_deadline
        self.hello_deadline = hello_deadline
        # Servers: nothing is answered before a hello was; a connection that asks anything else first is closed.
        self.require_hello = require_hello
        self.greeted = False  # the other side's hello was answered
        self.last_active = time.monotonic()  # a frame read or an answer sent (the listener evicts the idlest)
        self._answering = 0
        self._send_lock = asyncio.Lock()  # answers go out one at a time, each taken before the next is written
        self._queued = 0  # bytes of answers made and waiting for the send lock
        self._stalled_since: float | None = None  # when the answer being drained was written
        self.send_budget = send_budget
        if send_budget is not None:
            send_budget.peers.add(self)
        self._hello_by = (time.monotonic() + hello_deadline) if hello_deadline is not None else None
        self.close_reason = ""
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = asyncio.Event()
        self._reader_task: asyncio.Task[None] | None = None
        self._on_close: list[Callable[[], Any]] = []
        self.info: dict[str, Any] = {}

    # ----------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start reading frames in the background."""
        if self._reader_task is None:
            self._reader_task = asyncio.get_running_loop().create_task(self._read_loop())

    def on_close(self, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` once the connection has closed (e.g. to close the SSH link under it)."""
        self._on_close.append(callback)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def idle(self) -> bool:
        """Nothing asked of us unanswered and nothing we asked unanswered: closing it loses no request."""
        return self._answering == 0 and not self._pending

    @property
    def unsent(self) -> int:
        """Bytes of answers made for the other side and not yet taken by it (queued or in the transport)."""
        try:
            buffered = self.writer.transport.get_write_buffer_size()
        except (AttributeError, RuntimeError):
            buffered = 0
        return self._queued + buffered

    @property
    def stalled_for(self) -> float:
        """How long the other side has left an answer untaken (0: it reads); the listener evicts such peers."""
        return 0.0 if self._stalled_since is None else time.monotonic() - self._stalled_since

    async def close(self, reason: str = "connection closed") -> None:
        if self._reader_task and self._reader_task is not asyncio.current_task():
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
        self._shutdown(reason)
        with contextlib.suppress(Exception):
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 2)

    def abort(self, reason: str) -> None:
        """Break the connection now, without waiting (a stalled link is torn down, not waited on)."""
        self._shutdown(reason)
        with contextlib.suppress(Exception):
            self.writer.close()
        if self._reader_task and self._reader_task is not asyncio.current_task():
            self._reader_task.cancel()

    def _shutdown(self, reason: str) -> None:
        if self._closed.is_set():
            return
        self.close_reason = reason
        self._closed.set()
        if self.send_budget is not None:
            self.send_budget.peers.discard(self)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(UnavailableError(f"{self.name}: {reason}"))
        self._pending.clear()
        for task in list(self._tasks):
            task.cancel()
        for callback in self._on_close:
            try:
                callback()
            except Exception:  # closing must never fail the caller
                log.debug("close callback failed", exc_info=True)

    # ------------------------------------------------------------- sending
    async def request(self, method: str, request_timeout: float | None = 60.0, **params: Any) -> Any:
        """Send a request and wait for its answer (raising the remote error, typed).

        ``request_timeout`` is ours; every other keyword is a parameter of the method.
        """
        if self.closed:
            raise UnavailableError(f"{self.name}: connection is closed ({self.close_reason})")
        request_id = next(self._ids)
        frame = encode(Frame(id=request_id, method=method, params=params), self.max_frame)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = fut
        try:
            self._send(frame)
            await self.writer.drain()
            return await asyncio.wait_for(fut, request_timeout)
        except asyncio.TimeoutError:
            raise NoAnswerError(f"{self.name}: no answer to {method} within {request_timeout:.0f} s") from None
        except (ConnectionError, RuntimeError, BrokenPipeError) as exc:
            self._shutdown(f"connection lost ({exc})")
            raise UnavailableError(f"{self.name}: connection lost ({exc})") from None
        finally:
            self._pending.pop(request_id, None)
            if fut.done() and not fut.cancelled():
                fut.exception()  # retrieved: an error set by _shutdown that we raised our own way

    async def hello(self, role: str, timeout: float = 10.0) -> dict[str, Any]:
        """Open the conversation: both sides must speak PROTOCOL_VERSION."""
        info = await self.request("hello", request_timeout=timeout, protocol=PROTOCOL_VERSION, role=role)
        if not isinstance(info, dict) or info.get("protocol") != PROTOCOL_VERSION:
            raise ProtocolError(f"{self.name} speaks protocol {info.get('protocol') if isinstance(info, dict) else '?'}, "
                                f"this mlfleet speaks {PROTOCOL_VERSION}; install the same mlfleet version on both sides")
        self.info = info
        return info

    def _send(self, frame: bytes) -> None:
        if self.writer.is_closing():
            raise ConnectionError("connection is closing")
        self.writer.write(frame)

    # ------------------------------------------------------------ receiving
    async def _read_loop(self) -> None:
        reason = "connection closed by the other side"
        first = True
        try:
            while True:
                # Until a hello was answered, the connection's own deadline runs (servers): frames that are
                # not a hello, garbage included, never buy a connection more time.
                waiting_hello = self._hello_by is not None and (first or (self.require_hello and not self.greeted))
                try:
                    async with asyncio.timeout_at(self._loop_deadline() if waiting_hello else None):
                        payload = await read_frame(self.reader, self.max_incoming, self.frame_deadline)
                except TimeoutError:
                    reason = (f"no frame within {self.hello_deadline:.0f} s of connecting" if first else
                              f"no hello within {self.hello_deadline:.0f} s of connecting")
                    break
                except BrokenFrame as exc:
                    reason = str(exc)
                    await self._reply_error(None, ProtocolError(f"{exc}; closing the connection"))
                    break
                if payload is None:
                    break
                first = False
                self.last_active = time.monotonic()
                try:
                    frame = decode(payload)
                except ProtocolError as exc:
                    await self._reply_error(None, exc)
                    continue
                if frame.method is not None and self.require_hello and not self.greeted:
                    if frame.method != "hello":
                        reason = f"{frame.method!r} asked before hello"
                        await self._reply_error(frame.id, ProtocolError(
                            f"the first request on a connection must be hello (protocol {PROTOCOL_VERSION}), "
                            f"not {frame.method!r}; closing the connection"))
                        break
                    await self._answer(frame)  # whole before anything else is read: it decides the rest
                    continue
                if frame.method is not None:
                    await self._in_flight.acquire()  # a peer that pipelines without reading waits here
                    self._spawn(self._answer(frame)).add_done_callback(lambda _: self._in_flight.release())
                elif frame.id is not None and frame.id in self._pending:
                    fut = self._pending[frame.id]
                    if not fut.done():
                        if frame.error is not None:
                            fut.set_exception(_remote_error(frame.error))
                        else:
                            fut.set_result(frame.result)
        except (ConnectionError, OSError) as exc:
            reason = f"connection lost ({exc})"
        except asyncio.CancelledError:
            reason = "connection closed"
            raise
        except Exception as exc:  # whatever the transport raises, the link is broken, not the daemon
            reason = f"connection lost ({type(exc).__name__}: {exc})"
        finally:
            self._shutdown(reason)
            if reason.startswith(("a frame", "the connection ended", "no frame")):
                with contextlib.suppress(Exception):
                    self.writer.close()

    def _loop_deadline(self) -> float:
        """``_hello_by`` (time.monotonic) on the event loop's clock, for asyncio.timeout_at."""
        assert self._hello_by is not None
        loop = asyncio.get_running_loop()
        return loop.time() + (self._hello_by - time.monotonic())

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _answer(self, frame: Frame) -> None:
        self._answering += 1
        try:
            await self._answer_one(frame)
        finally:
            self._answering -= 1
            self.last_active = time.monotonic()

    async def _answer_one(self, frame: Frame) -> None:
        if frame.method == "hello":
            problem = hello_problem(frame.params or {})
            if problem:
                await self._reply_error(frame.id, ProtocolError(problem))
                return
        if self.handler is None:
            await self._reply_error(frame.id, ProtocolError(f"{self.name} does not take requests"))
            return
        try:
            result = await self.handler(self, frame.method or "", frame.params or {})
            answer = encode(Frame(id=frame.id, result=result), self.max_frame)
        except MlfleetError as exc:
            await self._reply_error(frame.id, exc)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug on our side: keep the daemon up, log it, say so
            log.error("request %s failed:\n%s", frame.method, traceback.format_exc())
            await self._reply_error(frame.id, exc)
            return
        if await self._send_answer(answer) and frame.method == "hello":
            self.greeted = True

    async def _send_answer(self, answer: bytes) -> bool:
        """Write one answer once the previous one was taken; close a peer that takes none within the deadline."""
        self._queued += len(answer)
        queued = True
        try:
            if self.send_budget is not None:
                self.send_budget.enforce()  # may close this very connection (the one holding the most)
            async with self._send_lock:
                self._queued -= len(answer)
                queued = False
                if self.closed:
                    return False
                self._send(answer)
                self._stalled_since = time.monotonic()
                try:
                    async with asyncio.timeout(self.frame_deadline):
                        await self.writer.drain()
                except TimeoutError:
                    self.abort(f"the other side took no answer for {self.frame_deadline:.0f} s")
                    return False
                finally:
                    self._stalled_since = None
            return True
        except (ConnectionError, RuntimeError, OSError):
            self._shutdown("connection lost while answering")
            return False
        finally:
            if queued:
                self._queued -= len(answer)

    async def _reply_error(self, request_id: int | None, exc: BaseException) -> None:
        if isinstance(exc, MlfleetError):
            error = {"kind": type(exc).__name__ if not isinstance(exc, RemoteError) else exc.kind,
                     "message": str(exc), "exit_code": exc.exit_code}
        else:
            error = {"kind": "InternalError", "message": f"internal error: {type(exc).__name__}: {exc}", "exit_code": 1}
        with contextlib.suppress(ConnectionError, RuntimeError, OSError, ProtocolError):
            self._send(encode(Frame(id=request_id, error=error), self.max_frame))
            await self.writer.drain()


def _remote_error(error: dict[str, Any]) -> RemoteError:
    return RemoteError(str(error.get("kind", "Error")), str(error.get("message", "unknown error")),
                       int(error.get("exit_code", 1)) if isinstance(error.get("exit_code", 1), int) else 1)


async def open_unix_peer(path: str, name: str, handler: Handler | None = None) -> Peer:
    """Connect to a Unix socket and start reading; raises UnavailableError if nothing listens."""
    try:
        reader, writer = await asyncio.open_unix_connection(path)
    except OSError as exc:  # missing, refused, no permission, path too long: all mean "not reachable"
        raise UnavailableError(f"{name} is not listening on {path} ({exc.strerror or exc})") from None
    peer = Peer(reader, writer, handler, name)
    peer.start()
    return peer
