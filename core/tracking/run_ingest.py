"""A run's metrics stream, taken chunk by chunk as its agent's polls bring it: each byte exactly once.

The controller remembers where each run's stream was read to (``offset``,
``lines``); a chunk is committed only if it starts there
(:func:`records.ingest_metrics`), and a refused one means the file knows
better, so the position is read back from it.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from mlfleet.core.base.models import StreamChunk
from mlfleet.core.store.db import Store
from mlfleet.core.store.rows import rows
from mlfleet.core.tracking.ingest import parse_lines
from mlfleet.core.tracking.records import ingest_metrics


class StreamPosition(Protocol):
    run_id: str
    offset: int  # bytes of the metrics stream committed
    lines: int  # lines of it committed


async def take_chunk(store: Store, run: StreamPosition, chunk: StreamChunk) -> bool:
    """Commit ``chunk`` and move ``run`` past it; whether the stream is now read to its end."""
    if chunk.end > chunk.offset:
        parsed = await asyncio.to_thread(parse_lines, chunk.data, run.lines, chunk.long_lines)
        taken = await store.run(ingest_metrics, run.run_id, chunk.offset, chunk.end, parsed)
        if taken:
            run.offset, run.lines = chunk.end, run.lines + parsed.lines
        else:
            await reload_offset(store, run)
    return chunk.eof and chunk.end == run.offset


async def reload_offset(store: Store, run: StreamPosition) -> None:
    found = await store.read(rows, "select byte_offset, lines from ingest_offsets where run_id = ?", [run.run_id])
    if found:
        run.offset, run.lines = found[0]["byte_offset"], found[0]["lines"]
