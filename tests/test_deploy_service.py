"""Deployments through the CLI, with a real controller, the local agent and a real HTTP model server on loopback.

The stories: a registered model is applied and served; the same file again
changes nothing; an alias move rolls it to the new version; a broken new
version (its deep probe fails) and one no host can take are rolled back
while the old one keeps serving; a controller SIGKILLed mid-rollout
resumes without starting any replica twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from conftest import CliResult, Fleet

SERVER = '''\
"""A tiny model server: /health, /predict (the deep probe), /metrics (prometheus_client)."""
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

port = int(sys.argv[sys.argv.index("--port") + 1])
version = os.environ.get("MLFLEET_MODEL_VERSION", "?")
broken = version in os.environ.get("BROKEN_VERSIONS", "").split(",")
registry = CollectorRegistry()
requests = Counter("http_requests", "requests served", ["status"], registry=registry)
latency = Histogram("http_request_duration_seconds", "time to answer", registry=registry)
print("serving version", version, "on", port, flush=True)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, code, body, kind="application/json"):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            self.answer(200, "ok")
        elif self.path == "/metrics":
            self.answer(200, generate_latest(registry).decode(), "text/plain; version=0.0.4")
        else:
            self.answer(404, "no such route")

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with latency.time():
            code = 500 if broken else 200
            self.answer(code, json.dumps({"version": version, "prediction": 0}))
        requests.labels(status=str(code)).inc()


ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
'''

TRAIN = """\
import os, sys
from mlfleet import track
os.makedirs("out", exist_ok=True)
with open("out/model.bin", "w") as fh:
    fh.write("weights " + sys.argv[1])
track.log_artifact("out/model.bin")
"""


def deploy_spec(fleet: Fleet, name: str = "iris", model: str = "iris@production", replicas: int = 2,
                extra: str = "", ready_timeout: str = "8s") -> Path:
    """A deployment of the tiny server with fast probes (0.2 s) so a story takes seconds."""
    folder = fleet.root / "specs"
    folder.mkdir(exist_ok=True)
    (folder / "server.py").write_text(SERVER)
    return fleet.write_spec(name, f"""\
name: {name}
model: {model}
command: [python, server.py, --port, "{{port}}"]
replicas: {replicas}
health:
  path: /health
  interval: 0.3s
  timeout: 0.25s
  failures: 2
  deep: {{path: /predict, method: POST, body: '{{"rows": [[1, 2]]}}', expect_status: 200, interval: 0.3s,
          timeout: 0.25s}}
metrics: {{prometheus: /metrics, interval: 0.3s}}
rollout: {{max_surge: 1, max_unavailable: 0, ready_timeout: {ready_timeout}, drain: 0.3s}}
{extra}""")


def register_versions(fleet: Fleet, count: int, name: str = "iris") -> None:
    """``count`` versions of a model, each from a real run that logged its file; production -> v1."""
    folder = fleet.root / "specs"
    folder.mkdir(exist_ok=True)
    (folder / "train.py").write_text(TRAIN)
    spec = fleet.write_spec("train", "name: train\ncommand: [python, train.py, '{params.v}']\nparams: {v: '1'}\n")
    for v in range(1, count + 1):
        done = fleet.cli("submit", str(spec), "--set", f"params.v='{v}'", "--wait", "--json", timeout=120)
        assert done.code == 0, done.out + done.err
        extra = ["--alias", "production"] if v == 1 else []
        fleet.cli_json("models", "register", name, "--run", done.json()["run_id"], "--artifact", "model.bin", *extra)


def one_sentence(result: CliResult, code: int, *words: str) -> None:
    assert result.code == code, (result.code, result.out, result.err)
    lines = result.err.strip().splitlines()
    assert lines and all(line.startswith("mlfleet: ") for line in lines) and "Traceback" not in result.err, result.err
    for word in words:
        assert word in result.err, result.err


def replica_jobs(fleet: Fleet, name: str = "iris") -> list[dict[str, Any]]:
    return [j for j in fleet.cli_json("jobs", "list") if j["name"].startswith(f"{name}-v")]


def show(fleet: Fleet, name: str = "iris") -> dict[str, Any]:
    return fleet.cli_json("deploy", "show", name)


def endpoints(fleet: Fleet, name: str = "iris") -> list[dict[str, Any]]:
    return show(fleet, name)["endpoints"]


def predict(endpoint: dict[str, Any]) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{endpoint['port']}/predict", data=b"{}", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read())["version"]
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def wait_serving(fleet: Fleet, version: int, count: int, name: str = "iris", timeout: float = 60) -> dict[str, Any]:
    """Until exactly ``count`` endpoints serve, all of ``version``, and the rollout is over."""
    def done() -> dict[str, Any] | None:
        d = show(fleet, name)
        eps = d["endpoints"]
        ok = len(eps) == count and {e["version"] for e in eps} == {version} and d["phase"] in ("stable", "rolled_back") \
            and len(d["replicas"]) == count
        return d if ok else None
    return fleet.wait_for(done, timeout=timeout, interval=0.3, what=f"{count} endpoints of v{version}")


def kinds(fleet: Fleet, name: str = "iris") -> list[str]:
    return [e["kind"] for e in fleet.cli_json("deploy", "history", name)]


# ------------------------------------------------------------------ without health: rows, jobs, idempotence

def test_a_spec_and_its_replica_jobs_decode_again_as_they_were_stored(fleet: Fleet) -> None:
    """What the CLI sends and the controller stores is read back by the next controller (initial_delay 0s too)."""
    from mlfleet.core.base.models import spec_from_plain, to_plain
    from mlfleet.core.deploy.spec import load_deployment_spec, replica_job_spec, validate_deployment_spec

    spec = load_deployment_spec(deploy_spec(fleet))
    assert validate_deployment_spec(to_plain(spec)) == spec
    job = replica_job_spec(spec, 3, "iris-v3-1", "ab" * 32, "model.bin")
    assert spec_from_plain(to_plain(job)) == job



def test_mistakes_are_one_sentence_and_leave_nothing_behind(fleet: Fleet) -> None:
    register_versions(fleet, 1)
    bad = fleet.write_spec("bad", "name: iris\nmodel: iris@production\ncommand: [python, server.py]\nreplicas: -1\n")
    result = fleet.cli("deploy", "apply", str(bad))
    one_sentence(result, 2, f"{bad}:4: replicas")
    missing = deploy_spec(fleet, model="nosuch@production")
    one_sentence(fleet.cli("deploy", "apply", str(missing)), 4, "nosuch")
    no_alias = deploy_spec(fleet, model="iris@canary")
    one_sentence(fleet.cli("deploy", "apply", str(no_alias)), 4, "canary")
    one_sentence(fleet.cli("deploy", "show", "nope"), 4, "no deployment 'nope'")
    one_sentence(fleet.cli("deploy", "rollback", "nope"), 4)
    assert fleet.cli_json("deploy", "list") == []
    assert replica_jobs(fleet) == []


def test_apply_submits_one_job_per_replica_and_the_same_file_again_changes_nothing(fleet: Fleet) -> None:
    register_versions(fleet, 1)
    spec = deploy_spec(fleet, replicas=2, ready_timeout="10m")
    first = fleet.cli_json("deploy", "apply", str(spec))
    assert first["change"] == "created" and first["target_version"] == 1
    jobs = fleet.wait_for(lambda: len(j := replica_jobs(fleet)) == 2 and j, what="two replica jobs")
    assert sorted(j["name"] for j in jobs) == ["iris-v1-1", "iris-v1-2"]
    job = fleet.job(jobs[0]["job_id"])
    assert job["spec"]["tags"] == {"deployment": "iris", "version": "1"}
    assert job["spec"]["service"]["deployment"] == "iris" and job["spec"]["service"]["model_sha256"]

    again = fleet.cli("deploy", "apply", str(spec))
    assert again.code == 0 and again.out.strip() == "iris: unchanged", again.out + again.err
    racers = [subprocess.Popen([str(Path(sys.executable).with_name("mlfleet")), "deploy", "apply", str(spec), "--json"],
                               env=fleet.env, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    assert [json.loads(p.communicate(timeout=60)[0])["change"] for p in racers] == ["unchanged"] * 3
    follows_staging = spec.read_text().replace("model: iris@production", "model: iris@staging")
    fleet.cli("models", "alias", "iris", "staging", "1", "--reason", "same weights", check=True)
    spec.write_text(follows_staging)
    assert fleet.cli_json("deploy", "apply", str(spec))["change"] == "updated"  # another alias, the same version
    time.sleep(1.5)  # a few ticks: nothing new is started for an unchanged apply
    assert len(replica_jobs(fleet)) == 2

    d = show(fleet)
    assert [r["replica_id"] for r in d["replicas"]] == ["iris-v1-1", "iris-v1-2"]
    assert kinds(fleet)[:4] == ["apply", "rollout", "start", "start"]
    audits = [a["action"] for a in fleet.cli_json("audit", "list")]
    assert "deploy.apply" in audits and "deploy.rollout" in audits

    scaled = fleet.cli_json("deploy", "scale", "iris", "3")
    assert scaled["changed"]
    fleet.wait_for(lambda: len(replica_jobs(fleet)) == 3, what="a third replica job")
    assert "iris-v1-3" in {j["name"] for j in replica_jobs(fleet)}
    assert fleet.cli_json("deploy", "list")[0]["replicas"] == 3

    stopped = fleet.cli_json("deploy", "stop", "iris")
    assert stopped["changed"]
    fleet.wait_for(lambda: all(j["state"] in ("cancelled", "failed") for j in replica_jobs(fleet)), timeout=60,
                   what="every replica job ended")
    fleet.wait_for(lambda: show(fleet)["replicas"] == [], what="no replica left")
    assert show(fleet)["phase"] == "stopped"


def test_a_controller_killed_after_apply_starts_nothing_twice(fleet: Fleet) -> None:
    register_versions(fleet, 1)
    spec = deploy_spec(fleet, replicas=2, ready_timeout="10m")
    fleet.cli_json("deploy", "apply", str(spec))
    fleet.wait_for(lambda: len(replica_jobs(fleet)) == 2, what="two replica jobs")
    os.kill(fleet.controller_pid or 0, signal.SIGKILL)
    fleet.wait_for(lambda: fleet.controller_pid is None, what="the controller to die")
    d = show(fleet)  # starts a new controller, which rebuilds from the file
    assert [r["replica_id"] for r in d["replicas"]] == ["iris-v1-1", "iris-v1-2"]
    time.sleep(1.5)
    assert sorted(j["name"] for j in replica_jobs(fleet)) == ["iris-v1-1", "iris-v1-2"]
    assert fleet.cli("deploy", "apply", str(spec)).out.strip() == "iris: unchanged"


# ------------------------------------------------------------------ with health (the agent supervises servers)

def test_v1_serves_then_an_alias_move_rolls_to_v2_without_a_gap(fleet: Fleet) -> None:
    register_versions(fleet, 2)
    spec = deploy_spec(fleet, replicas=2)
    fleet.cli_json("deploy", "apply", str(spec))
    d = wait_serving(fleet, 1, 2)
    assert all(e["local"] and e["host"] == "local" for e in d["endpoints"])
    assert all(predict(e) == (200, "1") for e in d["endpoints"])
    assert d["progress"] == "2/2 v1 healthy"

    fleet.cli("models", "alias", "iris", "production", "2", "--reason", "better on holdout", check=True)
    seen_gap = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        eps = endpoints(fleet)
        if not eps:
            seen_gap = True
        if len(eps) == 2 and {e["version"] for e in eps} == {2} and show(fleet)["phase"] == "stable":
            break
        time.sleep(0.3)
    d = wait_serving(fleet, 2, 2)
    assert not seen_gap  # max_unavailable 0: some replica served at every moment
    assert all(predict(e) == (200, "2") for e in d["endpoints"])
    rollout = [e for e in fleet.cli_json("deploy", "history", "iris") if e["kind"] == "rollout"][-1]
    assert rollout["detail"]["cause"] == "alias production moved 1\u21922" and rollout["version"] == 2
    assert "done" in kinds(fleet) and "drain" in kinds(fleet)
    v1 = [j for j in replica_jobs(fleet) if j["name"].startswith("iris-v1-")]
    fleet.wait_for(lambda: all(fleet.job(j["job_id"])["state"] == "cancelled" for j in v1), what="v1 replicas cancelled")
    text = fleet.cli("deploy", "show", "iris").out
    assert "progress: 2/2 v2 healthy" in text and "healthy" in text

    # Serving numbers per version, from the agent's scrapes (the deep probe's own requests count too).
    for e in d["endpoints"]:
        for _ in range(5):
            assert predict(e) == (200, "2")
    def both_versions() -> list[dict[str, Any]] | None:
        found = fleet.cli_json("deploy", "metrics", "iris", "--since", "10m")["versions"]
        return found if [v["version"] for v in found] == [1, 2] and all(v["requests"] > 0 for v in found) else None
    versions = fleet.wait_for(both_versions, what="both versions' request counts")
    assert all(v["errors"] == 0 and v["p95"] is not None for v in versions)
    table = fleet.cli("deploy", "metrics", "iris", "--since", "10m").out
    assert "v1" in table and "v2" in table and "P95 MS" in table
    logs = fleet.cli("deploy", "logs", "iris", "--replica", d["endpoints"][0]["replica_id"])
    assert logs.code == 0 and "serving version 2" in logs.out, logs.err


def test_a_broken_v2_is_rolled_back_while_v1_keeps_serving(fleet: Fleet) -> None:
    register_versions(fleet, 2)
    spec = deploy_spec(fleet, replicas=2, model="iris:1", extra="env: {BROKEN_VERSIONS: '2'}\n")
    fleet.cli_json("deploy", "apply", str(spec))
    wait_serving(fleet, 1, 2)
    spec.write_text(spec.read_text().replace("model: iris:1", "model: iris:2"))
    assert fleet.cli_json("deploy", "apply", str(spec))["change"] == "rolling"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        eps = endpoints(fleet)
        assert eps and {e["version"] for e in eps} == {1}  # v2 never serves; v1 always does
        if show(fleet)["phase"] == "rolled_back":
            break
        time.sleep(0.3)
    d = wait_serving(fleet, 1, 2)
    assert d["phase"] == "rolled_back" and "rolling back to v1" in d["reason"]
    assert "rollback" in kinds(fleet)
    assert any(a["action"] == "deploy.rollback" for a in fleet.cli_json("audit", "list"))
    assert {r["version"] for r in d["replicas"]} == {1}


def test_a_v2_no_host_can_take_leaves_v1_serving(fleet: Fleet) -> None:
    register_versions(fleet, 2)
    spec = deploy_spec(fleet, replicas=1, model="iris:1", ready_timeout="3s")
    fleet.cli_json("deploy", "apply", str(spec))
    wait_serving(fleet, 1, 1)
    spec.write_text(spec.read_text().replace("model: iris:1", "model: iris:2") + "constraints: {hosts: [nowhere]}\n")
    applied = fleet.cli("deploy", "apply", str(spec), "--json")
    assert applied.code == 0 and "no host of this fleet can run a replica" in applied.err
    fleet.wait_for(lambda: show(fleet)["phase"] == "rolled_back", timeout=40, what="the rollback")
    d = wait_serving(fleet, 1, 1)
    assert all(predict(e) == (200, "1") for e in d["endpoints"])
    pending = [j for j in replica_jobs(fleet) if j["name"].startswith("iris-v2-")]
    assert pending and all(j["state"] == "cancelled" for j in pending)


def test_a_controller_killed_mid_rollout_resumes_and_starts_nothing_twice(fleet: Fleet) -> None:
    register_versions(fleet, 2)
    spec = deploy_spec(fleet, replicas=2)
    fleet.cli_json("deploy", "apply", str(spec))
    wait_serving(fleet, 1, 2)
    fleet.cli("models", "alias", "iris", "production", "2", "--reason", "roll", check=True)
    fleet.wait_for(lambda: any(r["version"] == 2 for r in show(fleet)["replicas"]), what="a v2 replica")
    os.kill(fleet.controller_pid or 0, signal.SIGKILL)
    fleet.wait_for(lambda: fleet.controller_pid is None, what="the controller to die")
    d = wait_serving(fleet, 2, 2, timeout=90)  # the CLI starts a new controller; it carries on
    assert all(predict(e) == (200, "2") for e in d["endpoints"])
    names = [j["name"] for j in replica_jobs(fleet)]
    assert len(names) == len(set(names))  # no replica started twice
    assert sorted(n for n in names if n.startswith("iris-v2-")) == ["iris-v2-3", "iris-v2-4"]


def test_a_first_apply_that_never_gets_healthy_fails_and_a_fixed_apply_serves(fleet: Fleet) -> None:
    register_versions(fleet, 2)
    spec = deploy_spec(fleet, replicas=2, model="iris:2", ready_timeout="3s", extra="env: {BROKEN_VERSIONS: '2'}\n")
    fleet.cli_json("deploy", "apply", str(spec))
    fleet.wait_for(lambda: show(fleet)["phase"] == "failed", timeout=40, what="the first apply to fail")
    fleet.wait_for(lambda: show(fleet)["replicas"] == [], timeout=30, what="its replicas stopped")
    assert all(j["state"] == "cancelled" for j in replica_jobs(fleet))
    assert "no v2 replica became healthy" in show(fleet)["reason"] and "failed" in kinds(fleet)
    time.sleep(1.5)
    assert len(replica_jobs(fleet)) == 2  # a failed deployment does not try again on its own

    # The fixed one may take its time (3 s is tight for a good server's start beside other test workers).
    spec.write_text(spec.read_text().replace("model: iris:2", "model: iris:1").replace("ready_timeout: 3s",
                                                                                      "ready_timeout: 30s"))
    assert fleet.cli_json("deploy", "apply", str(spec))["change"] == "rolling"
    wait_serving(fleet, 1, 2)


def test_a_rollback_by_hand_goes_back_and_the_alias_does_not_pull_it_forward_again(fleet: Fleet) -> None:
    register_versions(fleet, 2)
    fleet.cli_json("deploy", "apply", str(deploy_spec(fleet, replicas=1)))
    wait_serving(fleet, 1, 1)
    fleet.cli("models", "alias", "iris", "production", "2", "--reason", "try v2", check=True)
    wait_serving(fleet, 2, 1)

    back = fleet.cli_json("deploy", "rollback", "iris")
    assert back["changed"] and back["target_version"] == 1
    d = wait_serving(fleet, 1, 1)
    assert predict(d["endpoints"][0]) == (200, "1")
    time.sleep(2)  # several ticks: production still says 2, and the deployment stays where the user put it
    assert {e["version"] for e in endpoints(fleet)} == {1} and show(fleet)["target_version"] == 1
    rollback = [e for e in fleet.cli_json("deploy", "history", "iris") if e["kind"] == "rollback"][-1]
    assert rollback["actor"] != "controller" and rollback["version"] == 1

    again = fleet.cli_json("deploy", "rollback", "iris", "--to", "2")
    assert again["target_version"] == 2
    wait_serving(fleet, 2, 1)
    one_sentence(fleet.cli("deploy", "rollback", "iris", "--to", "9"), 4, "no version 9")


def test_an_agent_killed_mid_rollout_leaves_its_servers_serving_and_the_rollout_finishes(fleet: Fleet) -> None:
    register_versions(fleet, 2)
    fleet.cli_json("deploy", "apply", str(deploy_spec(fleet, replicas=2)))
    wait_serving(fleet, 1, 2)
    fleet.cli("models", "alias", "iris", "production", "2", "--reason", "roll", check=True)
    fleet.wait_for(lambda: any(r["version"] == 2 for r in show(fleet)["replicas"]), what="a v2 replica")
    os.kill(fleet.agent_pid or 0, signal.SIGKILL)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # the controller starts the local agent again; it finds the servers
        eps = endpoints(fleet)
        assert eps, "a moment with no replica serving"  # a healthy server is not forgotten for its agent's restart
        if {e["version"] for e in eps} == {2} and len(eps) == 2 and show(fleet)["phase"] == "stable":
            break
        time.sleep(0.2)
    d = wait_serving(fleet, 2, 2)
    assert not any(e["kind"] == "rollback" for e in fleet.cli_json("deploy", "history", "iris"))
    assert all(predict(e) == (200, "2") for e in d["endpoints"])
    names = [j["name"] for j in replica_jobs(fleet)]
    assert len(names) == len(set(names)) == 4

