"""A user opens a deployment on a local port and uses it while its replicas come, go and die.

``deploy open``'s forwarder runs in a process of its own (tests/forward_harness.py: the command's forwarder,
dialers and Ctrl-C path, its endpoint list read from a file the story rewrites); the replicas are real HTTP
servers on loopback, and a remote replica is reached through a real sshd (tests/sshd.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import pytest

from conftest import under_full_load
from mlfleet.core.deploy.forward import Endpoint, change_line

HARNESS = Path(__file__).with_name("forward_harness.py")
_BLOBS: dict[int, bytes] = {}


def _blob(size: int) -> bytes:
    if size not in _BLOBS:
        _BLOBS[size] = os.urandom(size)
    return _BLOBS[size]


class Backend:
    """A replica: a stdlib HTTP server on 127.0.0.1 that answers with its name and counts what it served."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.hits = 0
        self.lock = threading.Lock()
        self.slow_started = threading.Event()
        self.slow_release = threading.Event()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                with backend.lock:
                    backend.hits += 1
                if self.path == "/slow":  # a long answer that ends only when the story says so
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(backend.name) + 2 * 65536))
                    self.end_headers()
                    self.wfile.write(backend.name.encode() + b"a" * 65536)
                    self.wfile.flush()
                    backend.slow_started.set()
                    backend.slow_release.wait(60)
                    self.wfile.write(b"b" * 65536)
                elif self.path.startswith("/download/"):
                    data = _blob(int(self.path.rsplit("/", 1)[1]))
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    view = memoryview(data)
                    for i in range(0, len(data), 1 << 20):
                        self.wfile.write(view[i:i + (1 << 20)])
                else:
                    self._send(backend.name.encode())

            def do_POST(self) -> None:  # an upload read slowly: the sender must be held back, not buffered
                with backend.lock:
                    backend.hits += 1
                left = int(self.headers["Content-Length"])
                digest = hashlib.sha256()
                while left:
                    chunk = self.rfile.read(min(left, 65536))
                    if not chunk:
                        break
                    digest.update(chunk)
                    left -= len(chunk)
                    time.sleep(0.001)
                self._send(digest.hexdigest().encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def endpoint(self, version: int = 1) -> dict[str, Any]:
        return {"replica_id": self.name, "host": "local", "port": self.port, "version": version, "local": True}

    def stop(self) -> None:
        self.slow_release.set()
        self.server.shutdown()
        self.server.server_close()


class Forwarder:
    """The forwarder process; ``set`` rewrites its endpoint list, ``said`` is what it printed."""

    def __init__(self, root: Path, endpoints: list[dict[str, Any]], refresh: float = 0.5,
                 env: dict[str, str] | None = None) -> None:
        self.file = root / "endpoints.json"
        self._write(endpoints)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen([sys.executable, str(HARNESS), str(self.file), str(refresh)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        threading.Thread(target=self._read, daemon=True).start()
        self.port = int(self.wait_line(lambda line: line.startswith("port ")).split()[1])

    def _write(self, endpoints: list[dict[str, Any]]) -> None:
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(endpoints))
        os.replace(tmp, self.file)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    def wait_line(self, predicate: Callable[[str], bool], after: int = 0, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [line for line in self.lines[after:] if predicate(line)]
                if found:
                    return found[0]
                left = deadline - time.monotonic()
                assert left > 0 and self.proc.poll() is None, f"the forwarder did not say it; it said {self.lines}"
                self.cond.wait(left)

    def set(self, endpoints: list[dict[str, Any]]) -> None:
        """Change the list and wait until the forwarder says it took it (new connections follow it from then)."""
        with self.cond:
            seen = len(self.lines)
        self._write(endpoints)
        expected = change_line("iris", [Endpoint.from_rpc(e) for e in endpoints])
        self.wait_line(lambda line: line == expected, after=seen)

    def stop(self) -> str:
        """Ctrl-C: it must end at once, cleanly (exit 0, no traceback)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(20)
        assert self.proc.stderr is not None
        err = self.proc.stderr.read()
        assert code == 0 and "Traceback" not in err, f"exit {code}: {err}"
        return err


@pytest.fixture
def backends() -> Iterator[list[Backend]]:
    made = [Backend(name) for name in ("b1", "b2", "b3")]
    try:
        yield made
    finally:
        for backend in made:
            backend.stop()


@pytest.fixture
def forwarders(tmp_path: Path) -> Iterator[Callable[..., Forwarder]]:
    started: list[Forwarder] = []

    def start(endpoints: list[dict[str, Any]], **kwargs: Any) -> Forwarder:
        folder = tmp_path / f"fw{len(started)}"
        folder.mkdir()
        started.append(Forwarder(folder, endpoints, **kwargs))
        return started[-1]

    try:
        yield start
    finally:
        for fw in started:
            if fw.proc.poll() is None:
                fw.proc.kill()
                fw.proc.wait()


def get(port: int, path: str = "/") -> tuple[int, bytes]:
    """One request on a new connection through the forwarder."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def dead_endpoint() -> dict[str, Any]:
    with socket.socket() as s:  # a port nothing listens on (a replica that died since the last refresh)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {"replica_id": "dead", "host": "local", "port": port, "version": 1, "local": True}


def test_new_connections_are_spread_round_robin_over_the_replicas(backends, forwarders) -> None:
    fw = forwarders([b.endpoint() for b in backends])
    answers = Counter(get(fw.port)[1].decode() for _ in range(100))
    assert sum(answers.values()) == 100
    assert sorted(answers.values()) == [33, 33, 34]
    assert {b.name: b.hits for b in backends} == dict(answers)
    assert "→ 3 replicas: local:%d (v1), local:%d (v1), local:%d (v1)" % tuple(b.port for b in backends) in fw.lines
    fw.stop()


def test_a_replica_taken_out_gets_no_new_connections_but_finishes_the_open_one(backends, forwarders) -> None:
    b1, b2, b3 = backends
    fw = forwarders([b.endpoint() for b in backends])
    slow: dict[str, Any] = {}
    reader = threading.Thread(target=lambda: slow.update(answer=get(fw.port, "/slow")))
    reader.start()  # the first connection goes to the first replica
    assert b1.slow_started.wait(20)

    fw.set([b2.endpoint(), b3.endpoint()])  # b1 drains: out of the list, still serving its request
    answers = Counter(get(fw.port)[1].decode() for _ in range(30))
    assert answers == {"b2": 15, "b3": 15} and b1.hits == 1

    b1.slow_release.set()
    reader.join(30)
    assert slow["answer"] == (200, b"b1" + b"a" * 65536 + b"b" * 65536)
    fw.stop()


def test_a_dead_replica_in_the_list_costs_no_request(backends, forwarders) -> None:
    b1, b2, _ = backends
    dead = dead_endpoint()
    fw = forwarders([b1.endpoint(), dead, b2.endpoint()])
    answers = Counter(get(fw.port) for _ in range(100))
    assert answers == {(200, b"b1"): 34, (200, b"b2"): 66}  # the dead one's turns went to the next one
    said = [line for line in fw.lines if line.startswith(f"cannot reach local:{dead['port']} (v1)")]
    assert len(said) == 1  # said once, not once per connection
    fw.stop()


def test_no_replica_closes_connections_at_once_and_says_so_once_per_change(backends, forwarders) -> None:
    fw = forwarders([], refresh=0.05)
    waiting = "no healthy replica of iris; waiting"
    assert fw.wait_line(lambda line: line == waiting)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        get(fw.port)
    time.sleep(0.5)  # ten refreshes with the same empty list
    fw.set([backends[0].endpoint()])
    assert get(fw.port) == (200, b"b1")
    fw.set([])
    assert fw.lines.count(waiting) == 2  # once when it began, once when it came back: not once per refresh
    fw.stop()


def test_the_same_replicas_listed_in_another_order_are_no_change(backends, forwarders) -> None:
    b1, b2, b3 = backends
    fw = forwarders([b1.endpoint(), b2.endpoint()], refresh=0.05)
    fw._write([b2.endpoint(), b1.endpoint()])  # a controller may list them in any order
    time.sleep(0.5)  # ten refreshes
    fw.set([b3.endpoint()])
    assert [line for line in fw.lines if line.startswith("→ ")] == [
        f"→ 2 replicas: local:{b1.port} (v1), local:{b2.port} (v1)", f"→ 1 replica: local:{b3.port} (v1)"]
    fw.stop()


def test_a_list_that_cannot_be_read_keeps_the_last_one_and_says_so_once(backends, forwarders) -> None:
    fw = forwarders([backends[0].endpoint()], refresh=0.05)
    fw.file.write_text("{not json")  # as when the controller does not answer for a while
    said = fw.wait_line(lambda line: line.startswith("cannot read the replicas of iris ("))
    assert said.endswith("; keeping the last 1")
    assert [get(fw.port) for _ in range(5)] == [(200, b"b1")] * 5
    fw.set([backends[1].endpoint()])  # it answers again
    assert get(fw.port) == (200, b"b2")
    assert sum(line.startswith("cannot read") for line in fw.lines) == 1
    fw.stop()


def _rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


class _Peak:
    """The highest RSS of a process while a transfer runs (sampled from a thread)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self.done = pid, _rss(pid), threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.done.wait(0.02):
            self.peak = max(self.peak, _rss(self.pid))

    def stop(self) -> int:
        self.done.set()
        self.thread.join()
        return self.peak


def test_50_mb_up_and_down_arrive_intact_with_slow_readers_and_bounded_memory(backends, forwarders) -> None:
    size = 50 * 1024 * 1024
    data = _blob(size)
    fw = forwarders([backends[0].endpoint()])
    assert get(fw.port) == (200, b"b1")  # warmed up: its baseline includes a first connection
    baseline = _rss(fw.proc.pid)
    peak = _Peak(fw.proc.pid)

    conn = http.client.HTTPConnection("127.0.0.1", fw.port, timeout=60)  # upload: the replica reads slowly
    conn.request("POST", "/upload", body=data, headers={"Content-Length": str(size)})
    response = conn.getresponse()
    assert (response.status, response.read().decode()) == (200, hashlib.sha256(data).hexdigest())
    conn.close()

    conn = http.client.HTTPConnection("127.0.0.1", fw.port, timeout=60)  # download: we read slowly
    conn.request("GET", f"/download/{size}")
    response = conn.getresponse()
    digest, got = hashlib.sha256(), 0
    while chunk := response.read(65536):
        digest.update(chunk)
        got += len(chunk)
        time.sleep(0.001)
    conn.close()
    assert got == size and digest.hexdigest() == hashlib.sha256(data).hexdigest()

    grew = peak.stop() - baseline
    assert grew < 8 * 1024 * 1024, f"the forwarder grew by {grew / 2**20:.1f} MiB moving 50 MiB each way"
    fw.stop()


class HalfCloseServer:
    """A plain TCP replica for EOF stories: 'echo-sum' answers the sha256 of all it got once the client shut
    down its sending side; 'speak-first' says hello, shuts its own side and still reads the client to the end."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.received: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _read_all(self, conn: socket.socket) -> bytes:
        parts = []
        while chunk := conn.recv(65536):
            parts.append(chunk)
        return b"".join(parts)

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            if self.mode == "speak-first":
                conn.sendall(b"hello")
                conn.shutdown(socket.SHUT_WR)
            data = self._read_all(conn)
            self.received.append(data)
            if self.mode == "echo-sum":
                conn.sendall(hashlib.sha256(data).hexdigest().encode())

    def endpoint(self) -> dict[str, Any]:
        return {"replica_id": self.mode, "host": "local", "port": self.port, "version": 1, "local": True}


def _read_to_eof(sock: socket.socket) -> bytes:
    parts = []
    while chunk := sock.recv(65536):
        parts.append(chunk)
    return b"".join(parts)


def test_half_close_either_way_keeps_the_other_direction_open(forwarders) -> None:
    payload = _blob(3 * 1024 * 1024)
    server = HalfCloseServer("echo-sum")
    fw = forwarders([server.endpoint()])
    with socket.create_connection(("127.0.0.1", fw.port), timeout=30) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)  # we are done sending; the answer must still come
        assert _read_to_eof(sock) == hashlib.sha256(payload).hexdigest().encode()

    server = HalfCloseServer("speak-first")
    fw.set([server.endpoint()])
    with socket.create_connection(("127.0.0.1", fw.port), timeout=30) as sock:
        assert _read_to_eof(sock) == b"hello"  # the replica is done sending: we see EOF ...
        sock.sendall(payload)  # ... and may still send it all
        sock.shutdown(socket.SHUT_WR)
        assert _read_to_eof(sock) == b""
    deadline = time.monotonic() + 20
    while not server.received and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.received == [payload]
    fw.stop()


def test_ctrl_c_ends_the_forwarder_cleanly_with_a_connection_open(backends, forwarders) -> None:
    fw = forwarders([backends[0].endpoint()])
    sock = socket.create_connection(("127.0.0.1", fw.port), timeout=30)
    sock.sendall(b"GET /slow HTTP/1.0\r\n\r\n")
    assert backends[0].slow_started.wait(20)
    fw.stop()
    sock.settimeout(10)
    try:
        while sock.recv(65536):
            pass  # the forwarder closed its side: the client sees the end, not a hang
    except ConnectionResetError:
        pass
    sock.close()
    assert fw.lines[-1] == "closed"


async def _load(port: int, rate: float, seconds: float) -> tuple[int, list[str]]:
    """New connection per request at ``rate`` per second; every answer must be a whole 200."""
    failures: list[str] = []
    done = 0

    async def one() -> None:
        nonlocal done
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            writer.write(b"GET / HTTP/1.0\r\nHost: iris\r\n\r\n")
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 20)
            writer.close()
            if not (answer.startswith(b"HTTP/1.0 200") and re.search(rb"\r\n\r\nb[123]$", answer)):
                failures.append(repr(answer[:80]))
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
        done += 1

    tasks = []
    start = asyncio.get_running_loop().time()
    for i in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, start + i / rate - asyncio.get_running_loop().time()))
        tasks.append(asyncio.ensure_future(one()))
    await asyncio.gather(*tasks)
    return done, failures


@under_full_load
def test_constant_load_while_replicas_flip_every_300_ms_loses_no_request(backends, forwarders) -> None:
    b1, b2, b3 = backends
    fw = forwarders([b1.endpoint()], refresh=0.5)
    sets = [[b1.endpoint(1)], [b2.endpoint(2), b3.endpoint(2)], [b3.endpoint(2)], [b1.endpoint(1), b2.endpoint(2)]]
    stop = threading.Event()

    def flip() -> None:
        i = 0
        while not stop.wait(0.3):
            i += 1
            fw._write(sets[i % len(sets)])

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    try:
        done, failures = asyncio.run(_load(fw.port, rate=200, seconds=5))
    finally:
        stop.set()
        flipper.join()
    assert done == 1000 and failures == []
    assert all(b.hits > 0 for b in backends)  # the flips really moved the traffic
    assert sum(line.startswith("→ ") for line in fw.lines) >= 4
    fw.stop()


def _ssh_connections(pid: int, sshd_port: int) -> list[Any]:
    """The forwarder's TCP connections to one sshd: how many SSH connections it holds to that host."""
    return [c for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.raddr and c.raddr.port == sshd_port and c.status == psutil.CONN_ESTABLISHED]


def _forwards_to(server: Any, port: int) -> int:
    """How many direct-tcpip channels this sshd opened to 127.0.0.1:port (its DEBUG1 log says each)."""
    log = (server.root / "sshd.log").read_text(errors="replace")
    return len(re.findall(rf"server_request_direct_tcpip: .*target 127\.0\.0\.1 port {port}\b", log))


def test_a_remote_replica_is_reached_over_one_reused_ssh_connection(ssh_fleet, backends, forwarders) -> None:
    fleet = ssh_fleet.fleet
    server = ssh_fleet.servers["node-a"]
    server.stop()
    server.log_level = "DEBUG1"  # so that it logs each forward it makes: the proof the bytes went through it
    server.start()
    ssh_fleet.add("node-a")  # hosts.yaml and mlfleet's known_hosts, as a user adds a host
    replica = backends[0]
    remote = {"replica_id": "iris-v2-1", "host": "node-a", "port": replica.port, "version": 2, "local": False}
    fw = forwarders([remote], env={"MLFLEET_HOME": str(fleet.root)})
    assert f"→ 1 replica: node-a:{replica.port} (v2)" in fw.lines

    assert [get(fw.port) for _ in range(50)] == [(200, b"b1")] * 50
    assert _forwards_to(server, replica.port) == 50
    first = _ssh_connections(fw.proc.pid, server.port)
    assert len(first) == 1  # fifty TCP connections, one SSH connection

    data = _blob(8 * 1024 * 1024)  # bytes both ways through the channel, intact
    conn = http.client.HTTPConnection("127.0.0.1", fw.port, timeout=60)
    conn.request("POST", "/upload", body=data, headers={"Content-Length": str(len(data))})
    assert conn.getresponse().read().decode() == hashlib.sha256(data).hexdigest()
    conn.close()
    assert get(fw.port, f"/download/{len(data)}") == (200, data)

    server.drop_connections()  # the link dies (a network blip, sshd restarted): the next dial makes a new one
    assert [get(fw.port) for _ in range(20)] == [(200, b"b1")] * 20
    again = _ssh_connections(fw.proc.pid, server.port)
    assert len(again) == 1 and again[0].laddr != first[0].laddr
    fw.stop()


def test_a_remote_replica_whose_host_key_changed_is_refused_and_the_others_serve(ssh_fleet, backends,
                                                                                 forwarders) -> None:
    fleet = ssh_fleet.fleet
    ssh_fleet.add("node-a")
    server = ssh_fleet.servers["node-a"]
    server.stop()
    server.new_host_key()  # someone else answers at node-a's address now
    server.start()
    b1, b2, _ = backends
    remote = {"replica_id": "iris-v1-2", "host": "node-a", "port": b1.port, "version": 1, "local": False}
    fw = forwarders([remote, b2.endpoint()], env={"MLFLEET_HOME": str(fleet.root)})
    assert [get(fw.port) for _ in range(10)] == [(200, b"b2")] * 10
    assert b1.hits == 0 and _ssh_connections(fw.proc.pid, server.port) == []
    refused = fw.wait_line(lambda line: line.startswith(f"cannot reach node-a:{b1.port} (v1)"))
    assert "CHANGED" in refused
    fw.stop()
