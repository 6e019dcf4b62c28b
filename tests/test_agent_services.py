"""A deployment's replica on a node: a real agent supervises a real HTTP server, restarts it, and says how it is.

The server is a small stdlib http.server written to the test's folder. Its
behaviour is switched by files beside it (make /health fail, make the deep
probe fail, hang, exit), and each process it starts leaves a pid file, so
"no second server" is something the test can count.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any, Callable

import msgspec
import psutil
import pytest

from conftest import Fleet
from mlfleet.agents.httpprobe import request_bytes
from mlfleet.agents.runner import restart_delay
from mlfleet.agents.services import Health, after_probe, crash_words
from mlfleet.core.base.errors import MlfleetError
from mlfleet.core.base.models import HealthProbe, LaunchRequest, MetricNames, Seconds, ServicePlan, to_plain
from mlfleet.core.base.protocol import Peer, open_unix_peer

SERVER = r'''
import http.server, json, os, sys, threading, time
from pathlib import Path

port = int(sys.argv[sys.argv.index("--port") + 1]) if "--port" in sys.argv else int(os.environ["MLFLEET_PORT"])
switches = Path(sys.argv[sys.argv.index("--switches") + 1])
(switches / f"pid-{os.getpid()}").write_text(str(port))
print(f"serving on {port} as {os.getpid()}", flush=True)


def watch():
    while True:
        if (switches / "exit-once").exists():
            (switches / "exit-once").unlink()
            print("exiting on purpose", flush=True)
            os._exit(1)
        time.sleep(0.05)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self, code, payload):
        while (switches / "hang").exists():
            time.sleep(0.05)
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            self._answer(500 if (switches / "health-fail").exists() else 200, {"ok": True})
        elif self.path == "/info":
            self._answer(200, {"pid": os.getpid(), "argv": sys.argv, "port": port,
                               "env": {k: v for k, v in os.environ.items() if k.startswith(("MLFLEET_", "EXTRA"))}})
        else:
            self._answer(404, {})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        (switches / "last-predict").write_bytes(body + b"\n" + self.headers.get("Content-Type", "").encode())
        self._answer(500 if (switches / "deep-fail").exists() else 200, {"rows": 1})

    def log_message(self, *args):
        pass


threading.Thread(target=watch, daemon=True).start()
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
'''

SILENT = r'''
import os, socket, sys, time
# Accepts every connection and never says a word (the hostile server).
sock = socket.create_server(("127.0.0.1", int(os.environ["MLFLEET_PORT"])))
held = []
while True:
    conn, _ = sock.accept()
    held.append(conn)
'''

FAST = HealthProbe(interval=Seconds(0.2), timeout=Seconds(0.5), failures=2)
DEEP = HealthProbe(path="/predict", method="POST", body='{"rows": [[5.1, 3.5]]}', interval=Seconds(0.2),
                   timeout=Seconds(0.5), failures=2)


# ------------------------------------------------------------------ harness

class Node:
    """One node: an agent process on a state dir, restartable, with a test's peer to it."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.state = fleet.root / "state"
        self.sock = fleet.root / "a.sock"
        self.switches = fleet.root / "switches"
        self.switches.mkdir(exist_ok=True)
        self.server = fleet.root / "server.py"
        self.server.write_text(SERVER)
        (fleet.root / "silent.py").write_text(SILENT)
        self.proc: subprocess.Popen[bytes] | None = None
        self.peer: Peer | None = None

    async def start(self) -> "Node":
        self.proc = subprocess.Popen([sys.executable, "-m", "mlfleet", "agent", "serve", "--state-dir", str(self.state),
                                      "--socket", str(self.sock), "--name", "svc"], env=self.fleet.env,
                                     stdout=subprocess.DEVNULL, stderr=open(self.fleet.root / "agent.log", "ab"))
        deadline = time.monotonic() + 30
        while True:
            try:
                self.peer = await open_unix_peer(str(self.sock), "agent")
                await self.peer.hello("test")
                return self
            except MlfleetError:
                assert time.monotonic() < deadline, "the agent did not come up"
                await asyncio.sleep(0.1)

    async def kill(self) -> None:
        """SIGKILL the agent (its runs keep going)."""
        assert self.proc is not None and self.peer is not None
        await self.peer.close()
        self.proc.kill()
        self.proc.wait(10)
        self.sock.unlink(missing_ok=True)

    async def stop(self) -> None:
        if self.peer is not None:
            await self.peer.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    async def launch(self, run_id: str, plan: ServicePlan, argv: list[str] | None = None,
                     env: dict[str, str] | None = None) -> dict[str, Any]:
        argv = argv or ["python", str(self.server), "--port", "{port}", "--switches", str(self.switches)]
        request = LaunchRequest(run_id=run_id, job_id="job-" + run_id, argv=argv, workdir=str(self.fleet.root),
                                env=env or {}, kill_grace=3.0, service=plan)
        assert self.peer is not None
        return await self.peer.request("launch", request=to_plain(request))

    async def status(self, run_id: str) -> dict[str, Any]:
        assert self.peer is not None
        return (await self.peer.request("status", run_ids=[run_id]))[0]

    async def until(self, run_id: str, check: Callable[[dict[str, Any]], bool], what: str,
                    timeout: float = 30) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = await self.status(run_id)
            if check(seen):
                return seen
            await asyncio.sleep(0.05)
        raise AssertionError(f"{run_id}: timed out waiting for {what}; last status {seen}")

    async def healthy(self, run_id: str, timeout: float = 30) -> dict[str, Any]:
        return await self.until(run_id, lambda s: (s.get("service") or {}).get("health") == "healthy", "healthy",
                                timeout)

    def servers(self) -> list[int]:
        """The pids of every server process ever started, and still alive."""
        pids = [int(p.name.split("-")[1]) for p in self.switches.glob("pid-*")]
        return [pid for pid in pids if _alive(pid)]

    def started(self) -> int:
        return len(list(self.switches.glob("pid-*")))

    def run_file(self, run_id: str, name: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.state / "runs" / run_id / name).read_text())
        except FileNotFoundError:
            return None


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _get(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None


def plan(**fields: Any) -> ServicePlan:
    base: dict[str, Any] = {"deployment": "iris", "version": 3, "replica": "iris-v3-1", "health": FAST, "deep": DEEP,
                            "restart_backoff": 0.2, "max_backoff": 5.0}
    return ServicePlan(**{**base, **fields})


@pytest.fixture
async def node(fleet: Fleet):
    node = Node(fleet)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


# ------------------------------------------------------------- the stories

async def test_a_replica_gets_a_port_and_its_model_path_and_turns_healthy(node: Node) -> None:
    model = b"weights of iris v3"
    sha = hashlib.sha256(model).hexdigest()
    with pytest.raises(MlfleetError, match=rf"model {sha[:12]} \(model.npz\) is not on this host; ship it first"):
        await node.launch("r1", plan(model_sha256=sha, model_file="model.npz"))
    assert not (node.state / "runs" / "r1").exists()  # refused before anything was written: launched again later
    with pytest.raises(MlfleetError, match=r"model file name '../../agent.lock' must be a plain file name"):
        await node.launch("r1", plan(model_sha256=sha, model_file="../../agent.lock"))
    with pytest.raises(MlfleetError, match=r"is not 64 hex digits"):
        await node.launch("r1", plan(model_sha256=sha + "\n", model_file="model.npz"))
    store = node.state / "models" / sha
    store.mkdir(parents=True)
    (store / "model.npz").write_bytes(model)

    argv = ["python", str(node.server), "--port", "{port}", "--model", "{model_path}", "--switches", str(node.switches),
            '{"port": "{port}"}']
    await node.launch("r1", plan(model_sha256=sha, model_file="model.npz"), argv=argv,
                      env={"EXTRA_URL": "http://127.0.0.1:{port}/", "EXTRA_MODEL": "{model_path}"})
    status = await node.healthy("r1")
    port = status["service"]["port"]
    assert node.run_file("r1", "service.json") == {"port": port}
    assert status["state"] == "running" and status["service"]["restarts"] == 0 and status["service"]["deep_ok"] is True
    assert status["service"]["probed_at"]
    assert status["service"]["last_error"] in ("", "health probe GET /health: connection refused",
                                               "deep probe POST /predict: connection refused")  # while it started

    code, info = _get(port, "/info")
    model_path = str(store / "model.npz")
    assert code == 200 and info["port"] == port
    assert info["argv"] == [str(node.server), "--port", str(port), "--model", model_path,
                                "--switches", str(node.switches), json.dumps({"port": str(port)})]
    promised = {
        "MLFLEET_PORT": str(port), "MLFLEET_MODEL_PATH": model_path, "EXTRA_URL": f"http://127.0.0.1:{port}/",
        "EXTRA_MODEL": model_path, "MLFLEET_CAPTURE_FILE": str(node.state / "runs" / "r1" / "capture.jsonl"),
        "MLFLEET_DEPLOYMENT": "iris", "MLFLEET_MODEL_VERSION": "3", "MLFLEET_RUN_ID": "r1", "MLFLEET_JOB_ID": "job-r1"}
    assert {k: info["env"].get(k) for k in promised} == promised
    body, kind = (node.switches / "last-predict").read_bytes().split(b"\n")
    assert body == b'{"rows": [[5.1, 3.5]]}' and kind == b"application/json"  # the deep probe's request, as written

    again = await node.launch("r1", plan(model_sha256=sha, model_file="model.npz"), argv=argv)
    assert again["state"] == "running" and again["service"]["port"] == port
    await asyncio.sleep(0.5)
    assert node.started() == 1  # asking again never starts a second server

    other = await node.healthy((await node.launch("r2", plan(replica="iris-v3-2")))["run_id"])
    assert other["service"]["port"] != port  # two replicas on one node never share a port


async def test_a_dead_engine_behind_a_cheerful_health_route_is_unhealthy(node: Node) -> None:
    await node.launch("r1", plan())
    port = (await node.healthy("r1"))["service"]["port"]

    (node.switches / "deep-fail").touch()
    status = await node.until("r1", lambda s: s["service"]["health"] == "unhealthy", "unhealthy")
    assert status["service"]["deep_ok"] is False
    assert status["service"]["last_error"] == "deep probe POST /predict: 500"
    assert _get(port, "/health")[0] == 200  # liveness alone would have said all is well
    assert status["state"] == "running" and node.started() == 1  # unhealthy is not a crash: nothing restarted

    (node.switches / "deep-fail").unlink()
    back = await node.healthy("r1")
    assert back["service"]["deep_ok"] is True and back["service"]["since"] > status["service"]["since"]

    (node.switches / "health-fail").touch()
    status = await node.until("r1", lambda s: s["service"]["health"] == "unhealthy", "unhealthy on /health")
    assert status["service"]["last_error"] == "health probe GET /health: 500"
    (node.switches / "health-fail").unlink()
    await node.healthy("r1")


async def test_a_crashed_server_is_restarted_with_growing_backoff_on_the_same_port(node: Node) -> None:
    await node.launch("r1", plan(restart_backoff=0.3, max_backoff=5.0))
    first = await node.healthy("r1")
    port, first_pid = first["service"]["port"], first["pid"]

    seen: list[dict] = []
    (node.switches / "exit-once").touch()
    again = await node.until("r1", lambda s: seen.append(s) or (s["service"]["restarts"] == 1
                                                                and s["service"]["health"] == "healthy"),
                             "restarted and healthy")
    assert any(s["service"]["health"] == "starting" and s["service"]["last_error"] == "exited 1, restarting in 0.3 s"
               for s in seen), seen
    assert again["pid"] != first_pid and again["service"]["port"] == port and again["state"] == "running"
    assert again["started_at"] == first["started_at"]  # the run's start; only its process is new
    assert node.servers() == [again["pid"]]
    restarts = node.run_file("r1", "restarts.json")
    assert restarts["count"] == 1 and restarts["last_exit_code"] == 1 and restarts["last_exit_at"] > first["started_at"]

    (node.switches / "exit-once").touch()  # again, soon after: the wait doubles
    await node.until("r1", lambda s: s["service"]["restarts"] == 2 and s["service"]["health"] == "healthy",
                     "restarted twice")
    assert node.run_file("r1", "restarts.json")["backoff"] == 0.6
    stdout = (await node.peer.request("read", run_id="r1", stream="stdout", offset=0))["data"]
    assert stdout.count(f"serving on {port}") == 3 and stdout.count("exiting on purpose") == 2  # one log, appended
    stderr = (await node.peer.request("read", run_id="r1", stream="stderr", offset=0))["data"]
    assert "mlfleet: the server exited with code 1; restarting it in 0.6 s" in stderr
    assert node.run_file("r1", "exit.json") is None


async def test_a_server_that_crashes_at_once_keeps_being_restarted_until_cancelled(node: Node) -> None:
    argv = ["python", "-c", "import sys; print('no model here', file=sys.stderr); sys.exit(3)"]
    await node.launch("r1", plan(restart_backoff=0.1, max_backoff=0.4), argv=argv)
    status = await node.until("r1", lambda s: s["service"]["restarts"] >= 4, "four restarts")
    assert status["state"] == "running" and status["service"]["health"] == "starting"
    assert status["service"]["last_error"].startswith(("exited 3, restarting in", "health probe GET /health: "))
    assert node.run_file("r1", "restarts.json")["backoff"] == 0.4  # capped at max_backoff
    await node.peer.request("cancel", run_id="r1")
    done = await node.until("r1", lambda s: s["state"] == "exited", "cancelled", timeout=10)
    assert done["reason"] == "cancelled" and done["service"]["health"] == "unhealthy"


async def test_cancel_stops_a_replica_for_good_even_while_it_waits_to_restart(node: Node) -> None:
    await node.launch("r1", plan())
    status = await node.healthy("r1")
    port, pid = status["service"]["port"], status["pid"]
    await node.peer.request("cancel", run_id="r1")
    done = await node.until("r1", lambda s: s["state"] == "exited", "cancelled", timeout=10)
    assert done["reason"] == "cancelled" and done["signal"] == signal.SIGTERM
    assert node.run_file("r1", "exit.json")["reason"] == "cancelled"
    assert done["service"] == {**done["service"], "port": port, "health": "unhealthy",
                               "last_error": "not running (cancelled)"}
    await asyncio.sleep(1.0)  # longer than the restart backoff: nothing comes back
    assert not _alive(pid) and node.servers() == [] and node.started() == 1
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()

    # Crashed, and cancelled during the (long) wait before its restart: it ends at once, never restarted.
    await node.launch("r2", plan(restart_backoff=60.0, max_backoff=60.0))
    await node.healthy("r2")
    (node.switches / "exit-once").touch()
    await node.until("r2", lambda s: s["service"]["restarts"] == 1, "the crash seen")
    await node.peer.request("cancel", run_id="r2")
    done = await node.until("r2", lambda s: s["state"] == "exited", "cancelled during the backoff", timeout=5)
    assert done["reason"] == "cancelled" and done["message"] == "cancelled while waiting to restart the server"
    assert node.started() == 2  # r1's and r2's first: r2 was never started again


async def test_a_new_agent_finds_the_replica_still_serving_on_its_port(node: Node) -> None:
    await node.launch("r1", plan())
    before = await node.healthy("r1")
    await node.kill()
    code, _ = _get(before["service"]["port"], "/health")
    assert code == 200  # the server does not need the agent

    await node.start()
    fresh = await node.status("r1")  # before any probe of this agent answered: what the folder says
    assert fresh["service"]["port"] == before["service"]["port"] and fresh["service"]["health"] in ("starting",
                                                                                                     "healthy")
    after = await node.healthy("r1")
    assert after["pid"] == before["pid"] and after["service"]["port"] == before["service"]["port"]
    assert after["service"]["restarts"] == 0 and node.servers() == [before["pid"]] and node.started() == 1

    (node.switches / "exit-once").touch()  # the runner still restarts it: the agent's restart changed nothing
    again = await node.until("r1", lambda s: s["service"]["restarts"] == 1 and s["service"]["health"] == "healthy",
                             "restarted under the new agent")
    assert again["service"]["port"] == before["service"]["port"] and len(node.servers()) == 1


async def test_a_replica_whose_runner_is_killed_keeps_serving_and_cancel_still_stops_it(node: Node) -> None:
    await node.launch("r1", plan())
    status = await node.healthy("r1")
    runner = node.run_file("r1", "runner.json")["pid"]
    os.kill(runner, signal.SIGKILL)
    gone = await node.until("r1", lambda s: "runner is gone" in s.get("message", ""), "the runner gone")
    assert gone["state"] == "running" and gone["pid"] == status["pid"] and _alive(status["pid"])
    await asyncio.sleep(0.6)  # probes go on
    later = await node.status("r1")
    assert later["service"]["health"] == "healthy" and later["service"]["probed_at"] > gone["service"]["probed_at"]

    await node.peer.request("cancel", run_id="r1")  # no runner: the agent stops the server's group itself
    await node.until("r1", lambda s: s["state"] == "exited", "stopped", timeout=10)
    assert node.servers() == []


async def test_a_server_that_accepts_and_never_answers_times_out_and_the_agent_stays_responsive(node: Node) -> None:
    await node.launch("mute", plan(deep=None), argv=["python", str(node.fleet.root / "silent.py")])
    status = await node.until("mute", lambda s: "no answer" in s["service"]["last_error"], "a timed-out probe")
    assert status["service"]["last_error"] == "health probe GET /health: no answer in 0.5 s"
    assert status["service"]["health"] == "starting"  # it never answered once: not up yet, never healthy

    await node.launch("r1", plan())
    await node.healthy("r1")
    (node.switches / "hang").touch()  # a server that went silent after serving
    hung = await node.until("r1", lambda s: s["service"]["health"] == "unhealthy", "unhealthy when hung")
    assert "no answer in 0.5 s" in hung["service"]["last_error"]
    for _ in range(10):  # while both hang, the agent answers at once
        began = time.monotonic()
        await node.status("mute")
        assert time.monotonic() - began < 2.0
    (node.switches / "hang").unlink()
    await node.healthy("r1")


async def test_a_server_that_answers_garbage_or_hangs_up_fails_its_probes_in_words(node: Node) -> None:
    garbage = node.fleet.root / "garbage.py"
    garbage.write_text("import os, socket\nsock = socket.create_server(('127.0.0.1', int(os.environ['MLFLEET_PORT'])))\n"
                       "while True:\n    conn, _ = sock.accept()\n    conn.recv(65536)\n"
                       "    conn.sendall(b'\\x00' * 100000 + b'\\n')\n    conn.close()\n")
    await node.launch("g", plan(deep=None), argv=["python", str(garbage)])
    status = await node.until("g", lambda s: "refused" not in s["service"]["last_error"] and s["service"]["last_error"],
                              "a failed probe of the running server")
    assert status["service"]["last_error"] == "health probe GET /health: an answer that is not HTTP"
    assert status["service"]["health"] == "starting"


async def test_scrapes_are_skipped_or_kept_without_disturbing_health(node: Node) -> None:
    await node.launch("r1", plan(metrics=MetricNames(interval=Seconds(0.2))))
    status = await node.healthy("r1")
    try:
        from mlfleet.agents import scrape  # noqa: F401
        del scrape
    except ImportError:
        assert status["service"]["scrape"] is None  # no scraper on this node yet: health alone
        return
    scraped = await node.until("r1", lambda s: s["service"]["scrape"] is not None, "a scrape")
    assert scraped["service"]["scrape"]["ts"] > 0


# ------------------------------------------------------------ pure pieces

def test_health_follows_liveness_and_deep_probes() -> None:
    p = plan()  # failures=2 for both
    h = Health(since=0.0)
    h = after_probe(h, "health", "", p, 1.0)
    assert h.state == "starting"  # liveness alone is not enough while a deep probe is set
    h = after_probe(h, "deep", "", p, 2.0)
    assert (h.state, h.since) == ("healthy", 2.0)
    h = after_probe(h, "deep", "POST /predict: 500", p, 3.0)
    h = after_probe(h, "health", "", p, 3.5)  # a passing liveness does not reset the deep failures
    assert h.state == "healthy" and h.last_error == "deep probe POST /predict: 500"
    h = after_probe(h, "deep", "POST /predict: 500", p, 4.0)
    assert (h.state, h.since) == ("unhealthy", 4.0)
    h = after_probe(h, "health", "", p, 5.0)
    assert h.state == "unhealthy"  # the deep probe has not passed again yet
    h = after_probe(h, "deep", "", p, 6.0)
    assert (h.state, h.since) == ("healthy", 6.0)

    only_live = plan(deep=None)
    s = Health()
    for t in range(5):
        s = after_probe(s, "health", "GET /health: connection refused", only_live, float(t))
    assert s.state == "starting"  # loading for a long time is not unhealthy; ready_timeout judges it
    assert after_probe(s, "health", "", only_live, 9.0).state == "healthy"

    # Up and broken: liveness passes, predictions are answered 500: unhealthy while still starting (rolled back
    # within a few probes). Refused or timed-out predictions are a server still loading: it stays starting.
    b = after_probe(Health(), "health", "", p, 1.0)
    b = after_probe(b, "deep", "POST /predict: 500", p, 2.0)
    assert b.state == "starting"
    b = after_probe(b, "deep", "POST /predict: 500", p, 3.0)
    assert (b.state, b.since) == ("unhealthy", 3.0)
    loading = after_probe(Health(), "health", "", p, 1.0)
    for t in range(2, 8):
        loading = after_probe(loading, "deep", "POST /predict: no answer in 2 s", p, float(t))
    assert loading.state == "starting"


def test_the_wait_before_a_restart_doubles_to_its_cap_and_starts_over_after_good_running() -> None:
    waits, backoff = [], 1.0
    for ran_for in (0.5, 0.5, 0.5, 0.5, 0.5, 0.5):
        delay, backoff = restart_delay(backoff, ran_for, 1.0, 10.0)
        waits.append(delay)
    assert waits == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert restart_delay(backoff, 9.9, 1.0, 10.0) == (10.0, 10.0)  # not quite long enough
    assert restart_delay(backoff, 10.0, 1.0, 10.0) == (1.0, 2.0)  # ran max_backoff seconds: starts over


def test_exits_are_said_in_words() -> None:
    assert crash_words(None) == ""
    assert crash_words({"count": 1, "last_exit_code": 1, "last_exit_at": 5.0, "backoff": 4.0}) == \
        "exited 1, restarting in 4 s"
    assert crash_words({"count": 2, "last_exit_code": None, "last_exit_signal": 9, "last_exit_at": 5.0,
                        "backoff": 0.5}) == "killed by SIGKILL, restarting in 0.5 s"


def test_a_probe_path_cannot_add_headers_of_its_own() -> None:
    sent = request_bytes(8080, HealthProbe(path="/health\r\nX-Evil: 1 ünï", method="GET"))
    head = sent.decode("ascii").split("\r\n")
    assert head[0] == "GET /health%0D%0AX-Evil:%201%20%C3%BCn%C3%AF HTTP/1.1"
    assert "Host: 127.0.0.1:8080" in head and "Connection: close" in head
    posted = request_bytes(1, HealthProbe(path="/p?q=1", method="POST", body="not json"))
    assert posted.startswith(b"POST /p?q=1 HTTP/1.1\r\n") and posted.endswith(b"\r\n\r\nnot json")
    assert b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 8\r\n" in posted


def test_a_launch_request_with_a_service_travels_as_plain_builtins() -> None:
    request = LaunchRequest(run_id="r", job_id="j", argv=["x"], workdir="/", env={}, service=plan())
    from mlfleet.agents.services import decode
    assert decode(msgspec.json.decode(msgspec.json.encode(to_plain(request))), LaunchRequest) == request
