"""One HTTP/1.1 request to a model server on this node's loopback: did it answer the status it should, in time?

Written on a bare asyncio protocol rather than with an HTTP library: the
agent probes every replica every few seconds from its one event loop, and
a probe needs only the status line. No thread, no connection pool, nothing kept
between probes; ``Connection: close`` on every request. The whole exchange
up to the status line is bounded by the probe's timeout, so a server that
accepts and never answers costs a timed-out probe, never a stuck agent.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.parse

from mlfleet.core.base.models import HealthProbe

_STATUS_LINE = re.compile(rb"^HTTP/\d(?:\.\d)? (\d{3})(?:[ \r\n]|$)")
_MAX_LINE = 8192  # a status line longer than this is no HTTP answer
_MAX_DRAIN = 1024 * 1024  # bytes of the answer read (and dropped) after its status line
# Kept as typed: letters, digits, the reserved characters and "%"; spaces, CR/LF and non-ASCII are %-encoded,
# so a probe path can never add a header of its own.
_PATH_SAFE = "/:@!$&'()*+,;=?#[]%~"


class _NotHttp(Exception):
    """The peer answered something that is not an HTTP status line."""


class _Exchange(asyncio.Protocol):
    """One request on one connection: sends it, reads the status line, drops the rest until the server closes.

    A protocol rather than asyncio streams: a probe runs every second for
    every replica, and a bare protocol costs a fraction of a stream pair.
    """

    def __init__(self, request: bytes, loop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self.answered: asyncio.Future[int] = loop.create_future()  # the status code, or _NotHttp / OSError
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.rest = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.answered.done():
            self.rest += len(data)
            if self.rest > _MAX_DRAIN and self.transport is not None:
                self.transport.close()
            return
        self.head += data
        end = self.head.find(b"\n")
        if end < 0:
            if len(self.head) > _MAX_LINE:
                self._answer(_NotHttp("an answer that is not HTTP"))
            return
        match = _STATUS_LINE.match(bytes(self.head[: end + 1]))
        self._answer(int(match.group(1)) if match else _NotHttp("an answer that is not HTTP"))

    def eof_received(self) -> bool:
        self._answer(_NotHttp("closed the connection without answering"))
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._answer(exc if isinstance(exc, OSError) else _NotHttp("closed the connection without answering"))
        if not self.closed.done():
            self.closed.set_result(None)

    def _answer(self, outcome: int | Exception) -> None:
        if self.answered.done():
            return
        if isinstance(outcome, Exception):
            self.answered.set_exception(outcome)
            if self.transport is not None:
                self.transport.close()
        else:
            self.answered.set_result(outcome)


def request_bytes(port: int, probe: HealthProbe) -> bytes:
    """The request a probe sends: method, path, Host, Connection: close, and its body if it has one."""
    path = urllib.parse.quote(probe.path, safe=_PATH_SAFE)
    head = [f"{probe.method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close",
            "User-Agent: mlfleet-agent", "Accept: */*"]
    body = b""
    if probe.body is not None:
        body = probe.body.encode("utf-8")
        try:
            json.loads(probe.body)
            kind = "application/json"
        except ValueError:
            kind = "text/plain; charset=utf-8"
        head += [f"Content-Type: {kind}", f"Content-Length: {len(body)}"]
    elif probe.method in ("POST", "PUT"):
        head.append("Content-Length: 0")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


def answered_wrong(error: str) -> bool:
    """Whether ``check``'s words say the server answered, with another status (``POST /predict: 500``)."""
    tail = error.rsplit(": ", 1)[-1]
    return len(tail) == 3 and tail.isdigit()


async def check(port: int, probe: HealthProbe) -> str:
    """Probe ``127.0.0.1:port`` once: "" when it answered ``probe.expect_status`` in time, else why not, in words.

    The words start with the method and path ("POST /predict: 500",
    "GET /health: no answer in 1 s", "GET /health: connection refused");
    the caller says which probe it was. Never raises (but CancelledError).
    """
    what = f"{probe.method} {probe.path}"
    timeout = max(0.001, float(probe.timeout))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    exchange = _Exchange(request_bytes(port, probe), loop)
    try:
        try:
            async with asyncio.timeout_at(deadline):
                await loop.create_connection(lambda: exchange, "127.0.0.1", port)
                status = await exchange.answered
        except TimeoutError:
            return f"{what}: no answer in {timeout:g} s"
        except ConnectionRefusedError:
            return f"{what}: connection refused"
        except _NotHttp as exc:
            return f"{what}: {exc}"
        except OSError as exc:  # reset, unreachable
            return f"{what}: {exc.strerror or type(exc).__name__}"
        try:  # the rest of the answer is not needed; a server that never ends it still passed
            async with asyncio.timeout_at(deadline):
                await exchange.closed
        except TimeoutError:
            pass
        return "" if status == probe.expect_status else f"{what}: {status}"
    finally:
        if exchange.transport is not None:
            exchange.transport.close()
        if exchange.answered.done() and not exchange.answered.cancelled():
            exchange.answered.exception()  # retrieved: never "exception was never retrieved"
