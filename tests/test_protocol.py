"""The agent's socket survives whatever is written to it, and speaks only its version."""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from conftest import Fleet
from mlfleet.core.base.errors import RemoteError
from mlfleet.core.base.frames import MAX_FRAME, encode, read_frame
from mlfleet.core.base.hello import PROTOCOL_VERSION
from mlfleet.core.base.protocol import MAX_IN_FLIGHT, Peer, open_unix_peer

def _raw(payload: bytes) -> bytes:
    """A frame around any bytes: the length header, then the payload as is."""
    return struct.pack(">I", len(payload)) + payload


FUZZ = [
    encode({"id": 100, "method": "hello", "params": {"protocol": PROTOCOL_VERSION, "role": "fuzz"}}),
    _raw(b""),
    _raw(b"not msgpack at all"),
    _raw(b"\xc1"),  # a byte msgpack never uses
    _raw(msgspec.msgpack.encode([])),
    _raw(msgspec.msgpack.encode(42)),
    _raw(msgspec.msgpack.encode("text")),
    _raw(msgspec.msgpack.encode(None)),
    _raw(b"\x83\xa2id\x0c\xa6method\xa6status\xa6params\x81\xa1a" + b"\x91" * 100_000 + b"\xc0"),  # 100k deep
    _raw(msgspec.msgpack.encode({"id": 0, "params": {1: 2}, "method": "status"})),
    encode({"id": "x", "method": 5}),
    encode({"id": 1, "method": "launch", "params": {"request": {"run_id": "../etc"}}}),
    encode({"id": 2, "method": "read", "params": {"run_id": "../../x", "stream": "metrics"}}),
    encode({"id": 3, "method": "read", "params": {"run_id": "nope", "stream": "passwd"}}),
    encode({"id": 4, "method": "no_such_method", "params": {}}),
    encode({"id": 5, "method": "status", "params": {"bogus": 1}}),
    encode({"id": 6, "method": "__init__", "params": {}}),
    encode({"id": 7, "method": "hello", "params": {"protocol": 999}}),
    _raw(b"\xff\xfe\x00garbage"),
    encode({"id": 8, "method": "poll", "params": {"metrics": "not a mapping"}}),
    encode({"id": 9, "method": "telemetry", "params": {"since": "yesterday"}}),
    encode({"id": 10, "method": "cancel", "params": {}}),
]


@pytest.fixture
def agent(fleet: Fleet):
    state = fleet.root / "agent-state"
    sock = fleet.root / "a.sock"
    proc = subprocess.Popen([sys.executable, "-m", "mlfleet", "agent", "serve", "--state-dir", str(state),
                             "--socket", str(sock), "--name", "fuzzed"], env=fleet.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    fleet.wait_for(lambda: sock.exists(), what="the agent socket")
    yield proc, sock
    proc.terminate()
    proc.wait(10)


async def _raw_exchange(sock: Path, payload: bytes, wait: float = 2.0) -> tuple[list[dict], bool]:
    """Send raw bytes; collect the answers; say whether the agent closed the connection."""
    reader, writer = await asyncio.open_unix_connection(str(sock))
    writer.write(payload)
    await writer.drain()
    answers, closed = [], False
    try:
        while True:
            body = await asyncio.wait_for(read_frame(reader), wait)
            if body is None:
                closed = True
                break
            answers.append(msgspec.msgpack.decode(body))
    except asyncio.TimeoutError:
        pass
    writer.close()
    return answers, closed


async def test_malformed_frames_get_error_answers_and_the_agent_stays_up(agent) -> None:
    proc, sock = agent
    answers, closed = await _raw_exchange(sock, b"".join(FUZZ))
    # Every frame is answered, each with an error, and the connection carries on.
    assert not closed
    assert len(answers) == len(FUZZ)
    assert answers[0]["result"]["role"] == "agent"
    assert all("error" in a for a in answers[1:]), [a for a in answers[1:] if "error" not in a]
    messages = " ".join(a["error"]["message"] for a in answers[1:])
    assert "nested too deeply" in messages
    assert "unknown method 'no_such_method'" in messages
    assert "invalid run id" in messages
    assert "speaks protocol 999" in messages
    assert "bad parameters for poll" in messages and "bad parameters for telemetry" in messages
    assert "missing required field `run_id`" in messages

    peer = await open_unix_peer(str(sock), "agent")
    info = await peer.hello("test")
    assert info["protocol"] == PROTOCOL_VERSION and info["host"] == "fuzzed"
    await peer.close()
    assert proc.poll() is None


@pytest.mark.parametrize("first", [
    {"id": 1, "method": "status", "params": {}},
    {"id": 1, "method": "launch", "params": {"request": {"run_id": "r1"}}},
    {"id": 1, "method": "hello", "params": {"protocol": 999}},
    {"id": 1, "method": "hello", "params": {"protocol": str(PROTOCOL_VERSION)}},
    {"id": 1, "method": "hello", "params": {"protocol": True}},
    {"id": 1, "method": "hello", "params": {}},
], ids=["status", "launch", "wrong-version", "version-as-text", "version-as-bool", "no-version"])
async def test_nothing_is_answered_before_a_hello_and_a_bad_hello_says_why(agent, first: dict) -> None:
    proc, sock = agent
    after = encode({"id": 2, "method": "status", "params": {}})
    answers, closed = await _raw_exchange(sock, encode(first) + after)
    assert answers and "error" in answers[0]
    assert not any("result" in a for a in answers), answers  # status was never served
    message = answers[0]["error"]["message"]
    if first["method"] != "hello":
        assert closed and f"the first request on a connection must be hello (protocol {PROTOCOL_VERSION})" in message
    elif first["params"].get("protocol") == 999:
        assert message.startswith("the other side speaks protocol 999, this side speaks")
    elif first["params"]:
        assert f"hello's protocol must be the number {PROTOCOL_VERSION}, not" in message
    else:
        assert f"hello must carry protocol: {PROTOCOL_VERSION}" in message
    assert proc.poll() is None


async def test_an_oversized_frame_breaks_only_its_own_connection(agent) -> None:
    proc, sock = agent
    header = struct.pack(">I", MAX_FRAME + 10)
    answers, closed = await _raw_exchange(sock, header + b"a" * 1000)
    assert closed and any("over the" in (a.get("error") or {}).get("message", "") for a in answers)
    peer = await open_unix_peer(str(sock), "agent")
    assert (await peer.hello("test"))["role"] == "agent"
    await peer.close()
    assert proc.poll() is None


async def test_an_old_line_protocol_peer_is_told_to_upgrade(agent) -> None:
    proc, sock = agent
    answers, closed = await _raw_exchange(sock, b'{"id": 1, "method": "hello", "params": {"protocol": 1}}\n')
    assert closed and "older mlfleet" in answers[0]["error"]["message"]


async def test_a_frame_that_stops_part_way_is_cut_off_at_its_deadline(fleet: Fleet, tmp_path: Path) -> None:
    """A peer that begins a frame and then stalls (a slowloris, or a stuck link) does not hold a reader."""
    server_side: list[Peer] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer, None, "test", frame_deadline=0.5, hello_deadline=5)
        server_side.append(peer)
        peer.start()
        await peer.wait_closed()

    path = str(tmp_path / "s.sock")
    server = await asyncio.start_unix_server(on_connect, path=path)
    reader, writer = await asyncio.open_unix_connection(path)
    frame = encode({"id": 1, "method": "x", "params": {}})
    writer.write(frame[:3])  # the header, not even whole
    await writer.drain()
    await asyncio.sleep(1.2)
    assert server_side and server_side[0].closed and "did not arrive whole" in server_side[0].close_reason
    assert b"closing the connection" in await asyncio.wait_for(reader.read(), 2)  # told why, then closed
    writer.close()

    # And a connection that never sends its first frame is closed at the hello deadline.
    async def on_quiet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer, None, "test", hello_deadline=0.5)
        server_side.append(peer)
        peer.start()
        await peer.wait_closed()

    quiet_path = str(tmp_path / "q.sock")
    quiet = await asyncio.start_unix_server(on_quiet, path=quiet_path)
    _r, quiet_writer = await asyncio.open_unix_connection(quiet_path)
    await asyncio.sleep(1.0)
    assert server_side[-1].closed and "of connecting" in server_side[-1].close_reason
    quiet_writer.close()
    server.close()
    quiet.close()


async def test_frames_far_larger_than_any_buffer_arrive_whole(tmp_path: Path) -> None:
    """A 15 MiB answer (over a reader whose buffer limit is 64 KiB) is one frame, not fragments;
    an answer over the frame limit is refused with an error answer, and the link survives it."""
    big = "x" * (15 * 1024 * 1024)

    async def handler(peer: Peer, method: str, params: dict) -> str:
        return big if method == "big" else "z" * (MAX_FRAME + 1)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer, handler, "server")
        peer.start()
        await peer.wait_closed()

    path = str(tmp_path / "big.sock")
    server = await asyncio.start_unix_server(on_connect, path=path)
    peer = await open_unix_peer(path, "client")
    for _ in range(3):
        assert await peer.request("big") == big
    with pytest.raises(RemoteError, match="over the 16,777,216-byte limit"):
        await peer.request("too_big")
    assert await peer.request("big") == big
    await peer.close()
    server.close()


async def test_a_second_agent_on_the_same_state_dir_is_refused(agent, fleet: Fleet) -> None:
    proc, sock = agent
    second = subprocess.run([sys.executable, "-m", "mlfleet", "agent", "serve", "--state-dir",
                             str(fleet.root / "agent-state"), "--socket", str(fleet.root / "b.sock")],
                            env=fleet.env, capture_output=True, text=True, timeout=30)
    assert second.returncode == 5
    assert "another agent is already running" in second.stderr and "Traceback" not in second.stderr


async def test_a_launch_is_idempotent_by_run_id(agent, fleet: Fleet) -> None:
    proc, sock = agent
    peer = await open_unix_peer(str(sock), "agent")
    await peer.hello("test")
    request = {"run_id": "r1", "job_id": "j1", "argv": ["sleep", "30"], "workdir": str(fleet.root), "env": {}}
    first = await peer.request("launch", request=request)
    second = await peer.request("launch", request=request)
    assert first["state"] == "starting" and second["state"] in {"starting", "running"}
    await asyncio.sleep(1.0)
    runs = [p for p in (fleet.root / "agent-state" / "runs").iterdir()]
    assert [p.name for p in runs] == ["r1"]
    started = json.loads((runs[0] / "started.json").read_text())
    assert (await peer.request("cancel", run_id="r1"))["run_id"] == "r1"
    for _ in range(50):
        status = (await peer.request("status", run_ids=["r1"]))[0]
        if status["state"] == "exited":
            break
        await asyncio.sleep(0.2)
    assert status["reason"] == "cancelled" and status["signal"] == 15
    with pytest.raises(RemoteError, match="not known"):
        await peer.request("cancel", run_id="r2")
    assert started["pid"] > 0
    await peer.close()


def test_a_command_line_argument_that_is_not_utf8_is_one_sentence(fleet: Fleet) -> None:
    for args in (("jobs", "show", "\udcff"), ("db", "query", "select '\udcfe'"), ("runs", "list", "--where", "x\udcff")):
        result = fleet.cli(*args)
        assert result.code == 2 and "is not UTF-8 text" in result.err and "Traceback" not in result.err, result


def test_an_answer_with_a_huge_integer_arrives_as_text(fleet: Fleet) -> None:
    answer = fleet.cli_json("db", "query", "select 170141183460469231731687303715884105727::hugeint as h, 7 as small")
    assert answer["rows"] == [["170141183460469231731687303715884105727", 7]]


async def test_a_peer_that_pipelines_without_reading_is_held_to_its_requests_in_flight(tmp_path: Path) -> None:
    """20,000 requests written at once, no answer read: the server answers at most MAX_IN_FLIGHT at a time,
    reads no further meanwhile (backpressure), and every request is answered once the client reads."""
    running, most = 0, 0
    release = asyncio.Event()

    async def handler(peer: Peer, method: str, params: dict) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1
        return params["n"]

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer, handler, "server")
        peer.start()
        await peer.wait_closed()

    path = str(tmp_path / "pipe.sock")
    server = await asyncio.start_unix_server(on_connect, path=path)
    reader, writer = await asyncio.open_unix_connection(path)
    total = 20_000
    writer.write(b"".join(encode({"id": n, "method": "echo", "params": {"n": n}}) for n in range(1, total + 1)))
    await asyncio.sleep(1.0)
    assert most == MAX_IN_FLIGHT
    release.set()
    answers = set()
    while len(answers) < total:
        body = await asyncio.wait_for(read_frame(reader), 30)
        answers.add(msgspec.msgpack.decode(body)["result"])
    assert answers == set(range(1, total + 1)) and most == MAX_IN_FLIGHT
    writer.close()
    server.close()


def test_a_pipelining_client_cannot_grow_the_controller_or_starve_others(fleet: Fleet) -> None:
    import socket

    import psutil

    fleet.cli("controller", "start", check=True)
    controller = psutil.Process(fleet.controller_pid)
    before = controller.memory_info().rss
    flood = socket.socket(socket.AF_UNIX)
    flood.connect(str(fleet.home.controller_socket))
    flood.setblocking(False)
    hello = encode({"id": 1, "method": "hello", "params": {"protocol": PROTOCOL_VERSION, "role": "client"}})
    burst = hello + b"".join(encode({"id": n, "method": "jobs_list", "params": {}}) for n in range(2, 200_002))
    sent = 0
    deadline = time.monotonic() + 20
    while sent < len(burst) and time.monotonic() < deadline:  # as much as the controller will take
        try:
            sent += flood.send(burst[sent:sent + (1 << 20)])
        except BlockingIOError:
            time.sleep(0.05)
    try:
        assert sent < len(burst)  # it stopped reading: the rest waits in the socket, not in its memory
        assert fleet.cli("jobs", "list").code == 0
        assert controller.memory_info().rss - before < 200 * 1024 * 1024
    finally:
        flood.close()
    assert fleet.cli("jobs", "list").code == 0
