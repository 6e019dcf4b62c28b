"""Frames: a 4-byte big-endian length, then that many bytes of msgpack (docs/protocol.md).

Why length-prefixed binary: a frame is read whole (``readexactly``) or not
at all, whatever the transport buffers (core/base/protocol.py says more).
Frames are bounded (``MAX_FRAME``), and one that stops arriving part way
(``FRAME_DEADLINE_S``) breaks the connection.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgspec

from mlfleet.core.base.errors import ProtocolError

MAX_FRAME = 16 * 1024 * 1024
FRAME_DEADLINE_S = 60.0  # a frame that has begun must be whole within this, or the link is broken

_HEADER = struct.Struct(">I")
_encoder = msgspec.msgpack.Encoder()


class Frame(msgspec.Struct, omit_defaults=True):
    id: int | None = None
    method: str | None = None
    params: dict[str, Any] | None = None
    result: Any = None
    error: dict[str, Any] | None = None


_frame_decoder = msgspec.msgpack.Decoder(Frame)


class FrameTooLarge(ProtocolError):
    """An encoded frame over ``MAX_FRAME``: it is never sent (the other side would break the link)."""


def encode(obj: Any, max_frame: int = MAX_FRAME) -> bytes:
    """One frame: the length header and the msgpack body, in one buffer (written with one ``write``)."""
    buf = bytearray(_HEADER.size)
    try:
        _encoder.encode_into(obj, buf, _HEADER.size)
    except (TypeError, OverflowError, ValueError) as exc:
        raise ProtocolError(f"cannot encode a frame: {exc}") from None
    size = len(buf) - _HEADER.size
    if size > max_frame:
        raise FrameTooLarge(f"a frame of {size:,} bytes is over the {max_frame:,}-byte limit")
    _HEADER.pack_into(buf, 0, size)
    return bytes(buf)


def decode(payload: bytes) -> Frame:
    """The frame in ``payload`` (the bytes after the header); raises ProtocolError for anything else."""
    try:
        return _frame_decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProtocolError(f"malformed frame: {exc}") from None
    except RecursionError:
        raise ProtocolError("malformed frame: nested too deeply") from None


class BrokenFrame(Exception):
    """The byte stream can no longer be trusted to be at a frame boundary: the connection must close."""


async def read_frame(reader: Any, max_frame: int = MAX_FRAME,
                     deadline: float | None = FRAME_DEADLINE_S) -> bytes | None:
    """The next frame's body, whole; None at a clean end of stream (between frames).

    Waiting for a frame to *begin* has no limit (an idle connection is fine);
    once its first byte is here, the rest must arrive within ``deadline``
    seconds. ``reader`` is an asyncio StreamReader or an asyncssh SSHReader.
    """
    try:
        first = await reader.readexactly(1)
    except asyncio.IncompleteReadError:
        return None
    try:
        async with asyncio.timeout(deadline):
            head = first + await reader.readexactly(_HEADER.size - 1)
            (size,) = _HEADER.unpack(head)
            if size > max_frame:
                hint = (" (the peer speaks the line protocol of an older mlfleet; install the same version on "
                        "both sides)" if first == b"{" else "")
                raise BrokenFrame(f"a frame of {size:,} bytes is over the {max_frame:,}-byte limit{hint}")
            return await reader.readexactly(size)
    except asyncio.IncompleteReadError as exc:
        raise BrokenFrame(f"the connection ended part way through a frame ({len(exc.partial)} bytes)") from None
    except TimeoutError:
        raise BrokenFrame(f"a frame did not arrive whole within {deadline:.0f} s") from None
