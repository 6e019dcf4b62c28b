"""The agent's socket survives whatever is written to it, and speaks only its version."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Fleet
from mlfleet.core.errors import RemoteError
from mlfleet.core.protocol import MAX_FRAME, PROTOCOL_VERSION, open_unix_peer

FUZZ = [
    b"\n",
    b"not json\n",
    b"{\n",
    b"[]\n",
    b"42\n",
    b'"text"\n',
    b"null\n",
    b'{"id": "x", "method": 5}\n',
    b'{"id": 1, "method": "launch", "params": {"request": {"run_id": "../etc"}}}\n',
    b'{"id": 2, "method": "read", "params": {"run_id": "../../x", "stream": "metrics"}}\n',
    b'{"id": 3, "method": "read", "params": {"run_id": "nope", "stream": "passwd"}}\n',
    b'{"id": 4, "method": "no_such_method", "params": {}}\n',
    b'{"id": 5, "method": "status", "params": {"bogus": 1}}\n',
    b'{"id": 6, "method": "__init__", "params": {}}\n',
    b'{"id": 7, "method": "hello", "params": {"protocol": 999}}\n',
    b"\xff\xfe\x00garbage\n",
    b'{"id": 8, "method": "poll", "params": {"metrics": "not a mapping"}}\n',
    b'{"id": 9, "method": "telemetry", "params": {"since": "yesterday"}}\n',
    b'{"id": 10, "method": "cancel", "params": {}}\n',
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


async def _raw_exchange(sock: Path, payload: bytes) -> list[dict]:
    reader, writer = await asyncio.open_unix_connection(str(sock), limit=MAX_FRAME * 2)
    writer.write(payload)
    await writer.drain()
    answers = []
    try:
        while True:
            line = await asyncio.wait_for(reader.readline(), 2.0)
            if not line:
                break
            answers.append(json.loads(line))
    except asyncio.TimeoutError:
        pass
    writer.close()
    return answers


async def test_malformed_frames_get_error_answers_and_the_agent_stays_up(agent) -> None:
    proc, sock = agent
    answers = await _raw_exchange(sock, b"".join(FUZZ))
    # Every non-blank frame is answered, each with an error.
    assert len(answers) == len(FUZZ) - 1
    assert all("error" in a for a in answers)
    messages = " ".join(a["error"]["message"] for a in answers)
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


async def test_an_oversized_frame_is_dropped_and_the_connection_goes_on(agent) -> None:
    proc, sock = agent
    big = b'{"id": 1, "method": "status", "params": {"x": "' + b"a" * (MAX_FRAME + 10) + b'"}}\n'
    ok = b'{"id": 2, "method": "hello", "params": {"protocol": %d}}\n' % PROTOCOL_VERSION
    answers = await _raw_exchange(sock, big + ok)
    assert any("longer than" in (a.get("error") or {}).get("message", "") for a in answers)
    assert any(a.get("id") == 2 and a.get("result", {}).get("role") == "agent" for a in answers)
    assert proc.poll() is None


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
