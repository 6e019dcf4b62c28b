"""``mlfleet.serve.capture`` from a real server-like process: fast writers, kills, hostile values, caps.

Each story runs the capture in a subprocess of its own (the writer is per
process and reads its settings from the environment, as in a replica), and
reads the file back, or reads it through a real agent's ``read`` RPC.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from conftest import Fleet
from mlfleet.agents.serve import MAX_LINE
from mlfleet.core.base.hello import PROTOCOL_VERSION
from mlfleet.core.base.models import MAX_METRIC_LINE, LaunchRequest
from mlfleet.core.base.protocol import Peer

FAST_WRITERS = textwrap.dedent("""
    import os, random, sys, threading
    from mlfleet import serve
    stop = float(sys.argv[1]) if len(sys.argv) > 1 else None
    def work(t):
        i = 0
        while True:
            serve.capture({"thread": t, "i": i, "pad": "x" * random.randrange(0, 600)}, {"label": i % 3})
            i += 1
    for t in range(8):
        threading.Thread(target=work, args=(t,), daemon=True).start()
    print("ready", flush=True)
    if stop is None:
        threading.Event().wait()
    import time
    time.sleep(stop)
    sys.exit(0)  # atexit writes what is buffered
""")


def _run(code: str, env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _env(capture: Path | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLEET_")}
    if capture is not None:
        env["MLFLEET_CAPTURE_FILE"] = str(capture)
    return {**env, **extra}


def _lines(path: Path) -> tuple[list[dict[str, Any]], bytes]:
    """Whole lines parsed (each must be JSON), and what follows the last newline."""
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    records = [json.loads(line) for line in data[:cut].split(b"\n")[:-1]]
    return records, data[cut:]


def test_without_the_variable_capture_writes_nothing_and_starts_no_thread(tmp_path: Path) -> None:
    code = ("import threading\nfrom mlfleet import serve\nbefore = threading.active_count()\n"
            "for i in range(1000): serve.capture({'x': i}, i)\nserve.flush()\n"
            "print(threading.active_count() - before, serve.stats())")
    done = _run(code, _env(None), timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "0"
    assert list(tmp_path.iterdir()) == []


def test_eight_threads_at_full_speed_killed_at_random_moments_never_leave_a_split_line(tmp_path: Path) -> None:
    capture = tmp_path / "capture.jsonl"
    env = _env(capture, MLFLEET_CAPTURE_MAX_SIZE=str(48 * 1024**2))  # full speed fills a 256 MiB cap in seconds
    rng = random.Random(16)
    seen_unfinished = 0
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", FAST_WRITERS], env=env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0.05, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        records, tail = _lines(capture)  # whole lines are all JSON; at most the last one is unfinished
        seen_unfinished += bool(tail)
        assert b"\n" not in tail
    # The next server process (the runner restarts it) cuts an unfinished line before it appends.
    done = _run(FAST_WRITERS, env, "0.5")
    assert done.returncode == 0, done.stderr
    records, tail = _lines(capture)
    assert tail == b""
    assert len(records) > 1000
    for record in records:
        assert set(record) == {"ts", "inputs", "outputs"}
        assert set(record["inputs"]) == {"thread", "i", "pad"} and record["outputs"] == {"label": record["inputs"]["i"] % 3}
    print(f"{len(records)} lines; {seen_unfinished} of 8 kills left an unfinished line")


def test_sampling_honours_the_rate_from_the_argument_and_the_environment(tmp_path: Path) -> None:
    code = ("import sys\nfrom mlfleet import serve\n"
            "rate = None if sys.argv[1] == 'env' else float(sys.argv[1])\n"
            "for i in range(40000): serve.capture([i], rate=rate)\n"
            "serve.flush()\nprint(serve.stats())")
    for how, env_rate in (("0.25", None), ("env", "0.25")):
        capture = tmp_path / f"{how}.jsonl"
        env = _env(capture, **({"MLFLEET_CAPTURE_RATE": env_rate} if env_rate else {}))
        done = _run(code, env, how)
        assert done.returncode == 0, done.stderr
        records, _ = _lines(capture)
        # Binomial(40000, 0.25): mean 10000, sd 86.6; six sd either side
        assert 10000 - 520 < len(records) < 10000 + 520, len(records)
        assert len({r["inputs"][0] for r in records}) == len(records)
        stats = eval(done.stdout)  # noqa: S307 - our own print of a dict
        assert stats["captured"] == len(records) and stats["captured"] + stats["sampled_out"] == 40000
    none = tmp_path / "none.jsonl"
    done = _run(code, _env(none, MLFLEET_CAPTURE_RATE="0"), "env")
    assert done.returncode == 0 and not none.exists()


def test_values_json_cannot_encode_become_text_and_never_reach_the_server(tmp_path: Path) -> None:
    capture = tmp_path / "capture.jsonl"
    code = textwrap.dedent("""
        import numpy as np
        from mlfleet import serve
        class Sulky:
            def __str__(self): raise RuntimeError("no")
        loop = [1]; loop.append(loop)
        serve.capture({"rows": np.arange(3), "score": np.float32(0.5), "nan": float("nan"), "inf": float("-inf")},
                      {"label": np.int64(2)})
        serve.capture({(1, 2): "tuple key", 3: "int key"}, object())
        serve.capture(Sulky(), loop)
        serve.capture({"big": "x" * (2 * 1024 * 1024)})
        serve.capture({"set": {1}}, rate="not a number")
        serve.flush()
        print(serve.stats())
    """)
    done = _run(code, _env(capture))
    assert done.returncode == 0 and done.stderr == "", done.stderr
    records, tail = _lines(capture)
    assert tail == b""
    assert records[0]["inputs"] == {"rows": [0, 1, 2], "score": 0.5, "nan": "nan", "inf": "-inf"}
    assert records[0]["outputs"] == {"label": 2}
    assert records[1]["inputs"] == {"(1, 2)": "tuple key", "3": "int key"}
    assert records[1]["outputs"].startswith("<object object at")
    assert records[2]["inputs"] == "<unprintable Sulky>"
    assert records[3]["inputs"] == {"set": "{1}"}  # what JSON cannot encode is its str()
    assert len(records) == 4
    assert "'dropped': 1" in done.stdout  # the 2 MiB line: longer than the agent would ever serve
    assert MAX_LINE == MAX_METRIC_LINE


def test_the_file_stops_at_its_cap_and_drops_are_counted_and_said_once(tmp_path: Path) -> None:
    capture = tmp_path / "capture.jsonl"
    code = ("from mlfleet import serve\nfor i in range(5000):\n    serve.capture({'i': i, 'pad': 'y' * 100})\n"
            "    if i % 500 == 0: serve.flush()\nserve.flush()\nprint(serve.stats())")
    done = _run(code, _env(capture, MLFLEET_CAPTURE_MAX_SIZE="20000"))
    assert done.returncode == 0
    assert capture.stat().st_size <= 20000
    records, tail = _lines(capture)
    assert tail == b"" and [r["inputs"]["i"] for r in records] == list(range(len(records)))
    stats = eval(done.stdout)  # noqa: S307
    assert stats["captured"] == len(records) and stats["dropped"] == 5000 - len(records) > 0
    assert done.stderr.count("reached its cap of 20000 bytes") == 1


# ------------------------------------------------------------ through the agent

@pytest.fixture
def agent(fleet: Fleet):
    state = fleet.root / "agent-state"
    sock = fleet.root / "a.sock"
    proc = subprocess.Popen([sys.executable, "-m", "mlfleet", "agent", "serve", "--state-dir", str(state),
                             "--socket", str(sock), "--name", "capture"], env=fleet.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fleet.wait_for(lambda: sock.exists(), what="the agent socket")
    yield state, sock
    proc.terminate()
    proc.wait(10)


async def test_the_agent_serves_the_capture_stream_in_whole_lines_by_offset(agent, tmp_path: Path) -> None:
    state, sock = agent
    run_id = "cap-1"
    script = tmp_path / "server.py"
    script.write_text(FAST_WRITERS)
    request = LaunchRequest(run_id=run_id, job_id="cap", argv=[sys.executable, str(script), "1.0"], workdir=str(tmp_path),
                            env={"MLFLEET_CAPTURE_FILE": str(state / "runs" / run_id / "capture.jsonl")})
    reader, writer = await asyncio.open_unix_connection(str(sock))
    peer = Peer(reader, writer, name="agent")
    peer.start()
    try:
        await peer.request("hello", protocol=PROTOCOL_VERSION, role="controller")
        await peer.request("launch", request=msgspec.to_builtins(request))
        offset, text, chunks = 0, [], 0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            chunk = await peer.request("read", run_id=run_id, stream="capture", offset=offset, max_bytes=5000)
            assert chunk["offset"] == offset
            if chunk["data"]:
                assert chunk["data"].endswith("\n")  # never part of a line, even while the writers write
                text.append(chunk["data"])
                chunks += 1
            offset = chunk["end"]
            if chunk["eof"]:
                break
            if not chunk["more"]:
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("the capture stream never reached its end")
    finally:
        await peer.close()
    whole = "".join(text)
    assert whole.encode() == (state / "runs" / run_id / "capture.jsonl").read_bytes()
    records = [json.loads(line) for line in whole.splitlines()]
    assert len(records) > 100 and chunks > 10
    assert all(set(r) == {"ts", "inputs", "outputs"} for r in records)


def test_a_server_in_an_environment_without_mlfleet_captures_through_the_agents_client_copy(tmp_path: Path) -> None:
    """A replica inside its own environment has none of the agent's packages: the client folder the agent keeps
    (agents/envs/client.py) must carry serve as it carries track, standard library only."""
    from mlfleet.agents.envs.client import refresh_client

    folder = refresh_client(tmp_path / "state")
    capture_file = tmp_path / "capture.jsonl"
    script = ("import sys; sys.path.append(sys.argv[1]); from mlfleet import serve; "
              "serve.capture({'x': 1.5}, {'y': 2}); serve.flush() if hasattr(serve, 'flush') else None")
    # -I -S: no site-packages at all, as in an environment that lacks mlfleet and its dependencies
    done = subprocess.run([sys.executable, "-I", "-S", "-c", script, str(folder)], capture_output=True, text=True,
                          env={"MLFLEET_CAPTURE_FILE": str(capture_file), "PATH": os.environ.get("PATH", "")},
                          timeout=60)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in capture_file.read_text().splitlines()]
    assert [(r["inputs"], r["outputs"]) for r in rows] == [({"x": 1.5}, {"y": 2})]
