"""One HTTP/1.1 request to a model server on this node's loopback: did it answer the status it should, in time?

Written on asyncio streams rather than with an HTTP library: the agent
probes every replica every few seconds from its one event loop, and a probe
needs only the status line. No thread, no connection pool, nothing kept
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


async def _status_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    await writer.drain()
    try:
        line = await reader.readline()
    except ValueError:  # over the reader's limit
        raise _NotHttp("an answer that is not HTTP") from None
    if not line:
        raise _NotHttp("closed the connection without answering")
    match = _STATUS_LINE.match(line)
    if match is None:
        raise _NotHttp("an answer that is not HTTP")
    return int(match.group(1))


async def _drain(reader: asyncio.StreamReader) -> None:
    """Read the rest of the answer, so the server is not cut off mid-write (it would log a reset)."""
    left = _MAX_DRAIN
    while left > 0:
        chunk = await reader.read(min(65536, left))
        if not chunk:
            return
        left -= len(chunk)


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
    writer: asyncio.StreamWriter | None = None
    try:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, limit=_MAX_LINE),
                                                    timeout)
            status = await asyncio.wait_for(_status_line(reader, writer, request_bytes(port, probe)),
                                            max(0.001, deadline - loop.time()))
        except asyncio.TimeoutError:
            return f"{what}: no answer in {timeout:g} s"
        except ConnectionRefusedError:
            return f"{what}: connection refused"
        except _NotHttp as exc:
            return f"{what}: {exc}"
        except OSError as exc:  # reset, unreachable
            return f"{what}: {exc.strerror or type(exc).__name__}"
        try:  # what follows the status line is not needed; a server that never ends it is still a pass
            await asyncio.wait_for(_drain(reader), max(0.001, deadline - loop.time()))
        except (asyncio.TimeoutError, OSError):
            pass
        return "" if status == probe.expect_status else f"{what}: {status}"
    finally:
        if writer is not None:
            writer.close()
