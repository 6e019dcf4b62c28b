"""A metric line is counted once, however the stream is cut: the agent's reader and the parser together.

``seq`` is a point's line number in the run's stream, so every chunking of
the stream must give every good line its own number and count an overlong
line as exactly one bad line. These tests drive the real reader
(agents/metriclines.py) over a real file, with a small line limit and tiny,
random chunk sizes, the way the controller does: the chunk's end is the
next offset, the lines counted move the next seq.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from mlfleet.agents.metriclines import read_lines
from mlfleet.core.tracking.ingest import parse_lines

LIMIT = 64  # bytes: a small line limit, so that long lines are cheap to make


def _good(i: int) -> bytes:
    return json.dumps({"step": i, "metrics": {"loss": i / 10}}, separators=(",", ":")).encode()


def _long(i: int, length: int) -> bytes:
    """A valid JSON line of exactly ``length`` bytes; from 200 bytes on it names an artifact (never to be served)."""
    if length >= 200:
        head = json.dumps({"artifact": {"path": f"/etc/shadow{i}", "size": 1, "sha256": "0" * 64}})[:-1]
    else:
        head = json.dumps({"step": i, "metrics": {"loss": 1.0}})[:-1]
    line = (head + ',"pad":"' + "x" * (length - len(head) - 10) + '"}').encode()
    assert len(line) == length
    return line


def _ingest(path: Path, sizes: list[int], final: bool, state: dict) -> None:
    """Read ``path`` from where ``state`` stopped, one chunk per size (cycled), as the controller does."""
    scans: dict = state.setdefault("scans", {})
    turn = 0
    while True:
        max_bytes = sizes[turn % len(sizes)]
        turn += 1
        looked = dict(scans)
        lines = read_lines(path, state["offset"], max_bytes, final, scans, "run", max_line=LIMIT, scan_budget=97)
        if lines.end == state["offset"]:
            if scans != looked:
                continue  # a long line's end is looked for in slices: ask again, as the next poll would
            return
        parsed = parse_lines(lines.data.decode("utf-8", errors="replace"), state["seq"], lines.long_lines)
        state["offset"] = lines.end
        state["seq"] += parsed.lines
        state["bad"] += parsed.bad_lines
        state["seqs"].extend(parsed.seqs)
        state["steps"].extend(parsed.steps)
        state["artifacts"].update(parsed.artifacts)


def _expect(lines: list[bytes]) -> tuple[list[int], list[int], int]:
    seqs = [n for n, line in enumerate(lines) if len(line) <= LIMIT and line.startswith(b'{"step"')]
    steps = [json.loads(lines[n])["step"] for n in seqs]
    bad = sum(1 for line in lines if len(line) > LIMIT)
    return seqs, steps, bad


def _fresh() -> dict:
    return {"offset": 0, "seq": 0, "bad": 0, "seqs": [], "steps": [], "artifacts": {}}


def test_overlong_lines_are_one_bad_line_each_whatever_the_chunk_size(tmp_path: Path) -> None:
    lines = [_good(0), _long(1, LIMIT + 1), _good(2), _good(3), _long(4, 5 * LIMIT), _long(5, 40 * LIMIT),
             _good(6), _good(7).ljust(LIMIT, b" "), _long(8, LIMIT + 1), _long(9, 1000 * LIMIT), _good(10)]
    assert len(lines[7]) == LIMIT  # exactly the limit is still a line
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    seqs, steps, bad = _expect(lines)
    assert bad == 5
    for sizes in ([1], [7], [LIMIT - 1], [LIMIT], [LIMIT + 1], [3 * LIMIT], [10_000], [1, 500, 2, 63, 65]):
        state = _fresh()
        _ingest(path, sizes, final=True, state=state)
        assert state["offset"] == path.stat().st_size, sizes
        assert state["seq"] == len(lines), sizes
        assert state["bad"] == bad, sizes
        assert state["seqs"] == seqs and state["steps"] == steps, sizes
        assert state["artifacts"] == {}, sizes


def test_an_overlong_last_line_without_a_newline_counts_once_when_the_writer_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(_good(0) + b"\n" + _long(1, 10 * LIMIT))
    state = _fresh()
    _ingest(path, [5], final=False, state=state)  # still running: the unfinished line waits
    assert (state["seq"], state["bad"], state["offset"]) == (1, 0, len(_good(0)) + 1)
    _ingest(path, [5], final=True, state=state)
    assert (state["seq"], state["bad"], state["offset"]) == (2, 1, path.stat().st_size)


def test_a_short_unfinished_line_waits_and_then_counts_once(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(_good(0) + b"\n" + _good(1)[:5])
    state = _fresh()
    _ingest(path, [3], final=False, state=state)
    assert state["seq"] == 1
    with path.open("ab") as fh:
        fh.write(_good(1)[5:] + b"\n")
    _ingest(path, [3], final=False, state=state)
    assert (state["seq"], state["bad"], state["steps"]) == (2, 0, [0, 1])


@settings(max_examples=150, deadline=None)
@given(kinds=st.lists(st.sampled_from(["good", "good", "good", "limit", "long", "huge", "blank"]), min_size=1,
                      max_size=30),
       seed=st.integers(0, 2**32))
def test_a_growing_stream_read_at_random_moments_numbers_every_line_exactly(tmp_path_factory, kinds: list[str],  # noqa: ANN001
                                                                            seed: int) -> None:
    # The writer appends in random pieces (cutting lines, long ones too, anywhere); the reader asks with
    # random sizes between the pieces; at the end the writer is gone and the reader drains the rest.
    rng = random.Random(seed)
    lines = []
    for i, kind in enumerate(kinds):
        lines.append({"good": _good(i), "limit": _good(i).ljust(LIMIT, b" "), "long": _long(i, rng.randint(LIMIT + 1,
                      3 * LIMIT)), "huge": _long(i, rng.randint(100 * LIMIT, 400 * LIMIT)), "blank": b""}[kind])
    blob = b"\n".join(lines) + (b"\n" if rng.random() < 0.8 else b"")
    path = tmp_path_factory.mktemp("stream") / "metrics.jsonl"
    path.write_bytes(b"")
    state = _fresh()
    written = 0
    while written < len(blob):
        piece = rng.choice([1, 2, 17, LIMIT, 3 * LIMIT, 5000])
        with path.open("ab") as fh:
            fh.write(blob[written:written + piece])
        written += piece
        _ingest(path, [rng.choice([1, 3, LIMIT - 1, LIMIT + 1, 2 * LIMIT, 4096])], final=False, state=state)
    _ingest(path, [rng.choice([1, 9, 4096])], final=True, state=state)

    lines = blob.split(b"\n")  # the stream's lines as the agent counts them: an unfinished last one is a line
    if lines[-1] == b"":
        lines.pop()
    seqs, steps, bad = _expect(lines)
    assert state["offset"] == len(blob)
    assert state["seq"] == len(lines)
    assert state["bad"] == bad
    assert state["seqs"] == seqs and state["steps"] == steps
    assert state["artifacts"] == {}
