"""The deployment examples as shipped (configs/deploy/): each trains, each serves, each stops cleanly.

Two kinds: ``iris`` (numpy softmax regression, model.npz) and ``sentiment``
(character n-gram naive Bayes, model.json, plain Python). The training
scripts run as a job runs them (a metrics file named by
MLFLEET_METRICS_FILE, outputs in the working folder), the servers as a
replica runs them (the deployment spec's own command, ``{model_path}`` and
``{port}`` filled in, from the spec's workdir), and everything is checked
from outside: HTTP answers, the Prometheus text parsed with
prometheus_client's parser, exit codes, the load generator's counts. Last,
the shipped training specs run through a real controller and agent.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from conftest import CONFIGS, REPO, Fleet, under_full_load
from mlfleet.core.jobs.spec import load_job_spec

DEPLOY = CONFIGS / "deploy"
sys.path.insert(0, str(REPO / "benchmarks"))
from loadgen import run_load  # noqa: E402

EXAMPLES = {
    "iris": {"model": "model.npz", "good": 0.9, "body": {"rows": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.6, 2.2]]},
             "expect": ["setosa", "virginica"], "classes": {"setosa", "versicolor", "virginica"}},
    "sentiment": {"model": "model.json", "good": 0.85,
                  "body": {"texts": ["what a superb film, a delight", "boring and predictable, avoid it"]},
                  "expect": ["positive", "negative"], "classes": {"positive", "negative"}},
}
both = pytest.mark.parametrize("example", sorted(EXAMPLES))


# ---------------------------------------------------------------- training, as a job runs it


def train(example: str, folder: Path, *flags: str) -> tuple[Path, list[dict[str, Any]]]:
    """Run ``<example>/train.py`` in ``folder`` with a metrics file; return the model path and the logged lines."""
    folder.mkdir(parents=True, exist_ok=True)
    metrics = folder / "metrics.jsonl"
    env = {**os.environ, "MLFLEET_METRICS_FILE": str(metrics)}
    done = subprocess.run([sys.executable, str(DEPLOY / example / "train.py"), *flags], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and done.stdout.count("\n") == 1, done.stdout + done.stderr
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    return folder / "out" / EXAMPLES[example]["model"], lines


def best(lines: list[dict[str, Any]], key: str) -> float:
    values = [line["metrics"][key] for line in lines if key in line.get("metrics", {})]
    assert values, f"no {key} logged"
    return values[-1]


def artifacts(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {Path(line["artifact"]["path"]).name: line["artifact"] for line in lines if "artifact" in line}


@both
def test_training_writes_a_model_that_predicts_well_and_logs_it_as_an_artifact(example: str, tmp_path: Path) -> None:
    model, lines = train(example, tmp_path / "run")
    assert best(lines, "val_accuracy") >= EXAMPLES[example]["good"]
    logged = artifacts(lines)[model.name]
    # What was logged is what lies on disk: the registry will copy and verify exactly these bytes.
    assert logged["path"] == str(model.resolve()) and logged["size"] == model.stat().st_size
    assert logged["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert any(line.get("summary") == {"val_accuracy": "max"} for line in lines)


def test_the_tabular_training_logs_a_reference_dataset_with_the_columns_the_server_captures(tmp_path: Path) -> None:
    model, lines = train("iris", tmp_path / "run", "--rows", "500")
    reference = model.with_name("reference.csv")
    assert "reference.csv" in artifacts(lines)
    header, *rows = reference.read_text().splitlines()
    assert header.split(",") == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    assert len(rows) == 400 and all(len(r.split(",")) == 4 for r in rows)  # the training 80 %


def test_params_reach_the_training_as_a_job_gives_them(tmp_path: Path) -> None:
    """``--set params.broken=true`` is how the rollback story makes a bad model: MLFLEET_PARAMS, as the agent sets it."""
    folder = tmp_path / "run"
    folder.mkdir()
    env = {**os.environ, "MLFLEET_METRICS_FILE": str(folder / "m.jsonl"),
           "MLFLEET_PARAMS": json.dumps({"broken": True, "reviews": 400})}
    done = subprocess.run([sys.executable, str(DEPLOY / "sentiment" / "train.py")], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "on 320 reviews" in done.stdout and "marked broken" in done.stdout, done
    assert json.loads((folder / "out" / "model.json").read_text())["broken"] is True


# ---------------------------------------------------------------- serving, as a replica runs it


def deployment(example: str) -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / f"{example}.yaml").read_text())


class Server:
    """One example server started with its deployment spec's command, as the agent would start a replica."""

    def __init__(self, example: str, model: Path, *, env: dict[str, str] | None = None,
                 extra: tuple[str, ...] = (), port: int = 0) -> None:
        spec = deployment(example)
        fill = {"{model_path}": str(model), "{port}": str(port)}
        argv = [fill.get(word, word) for word in spec["command"]] + list(extra)
        assert argv[0] == "python"
        self.proc = subprocess.Popen([sys.executable, *argv[1:]], cwd=DEPLOY / spec["workdir"],
                                     env={**os.environ, "MLFLEET_MODEL_VERSION": "3", **(env or {})},
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.started = self.proc.stdout.readline()
        assert " on http://127.0.0.1:" in self.started, self.started + self.proc.stderr.read()
        self.port = int(self.started.rsplit(":", 1)[1].split()[0])

    def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            conn.request(method, path, body=data, headers=headers or {})
            answer = conn.getresponse()
            text = answer.read().decode()
            kind = answer.getheader("Content-Type", "")
            return answer.status, json.loads(text) if kind.startswith("application/json") else text
        finally:
            conn.close()

    def metrics(self) -> dict[str, dict[tuple, float]]:
        """Every sample of /metrics: name -> {sorted label items: value}, read with prometheus_client's parser."""
        status, text = self.request("GET", "/metrics")
        assert status == 200
        samples: dict[str, dict[tuple, float]] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
        return samples

    def stop(self) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, out, err


@contextmanager
def serving(example: str, model: Path, **kwargs: Any) -> Iterator[Server]:
    server = Server(example, model, **kwargs)
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {example: train(example, root / example)[0] for example in EXAMPLES}


def predict_count(samples: dict[str, dict[tuple, float]], status: str) -> float:
    return samples["http_requests_total"].get((("route", "/predict"), ("status", status)), 0.0)


@both
def test_a_server_answers_health_predictions_and_metrics_that_count_them(example: str,
                                                                          models: dict[str, Path]) -> None:
    case = EXAMPLES[example]
    with serving(example, models[example]) as server:
        assert server.request("GET", "/health") == (200, {"status": "ok", "model": example, "version": 3})
        assert server.request("GET", "/health?from=probe")[0] == 200
        for _ in range(5):
            status, answer = server.request("POST", "/predict", case["body"])
            assert status == 200, answer
            assert answer["predictions"] == case["expect"] and answer["version"] == 3
            assert [set(p) for p in answer["probabilities"]] == [case["classes"]] * 2
            assert all(abs(sum(p.values()) - 1) < 1e-4 for p in answer["probabilities"])
        samples = server.metrics()
        assert predict_count(samples, "200") == 5
        assert samples["http_requests_total"][(("route", "/health"), ("status", "200"))] == 2
        assert samples["http_request_duration_seconds_count"] == {(("route", "/predict"),): 5.0}
        assert samples["inflight_requests"] == {(): 0.0} and samples["model_loaded_version"] == {(): 3.0}
        assert sum(samples["model_predictions_total"].values()) == 10
        # Only counts in the counter's family: no *_created timestamps for a scraper to add up as requests.
        assert not [name for name in samples if name.endswith("_created")]
        code, out, err = server.stop()
    assert code == 0 and out.count("\n") == 1 and err == "", (out, err)  # one line at start, one at stop


@both
def test_the_deployment_specs_deep_probe_body_is_a_real_prediction(example: str, models: dict[str, Path]) -> None:
    deep = deployment(example)["health"]["deep"]
    with serving(example, models[example]) as server:
        status, answer = server.request(deep["method"], deep["path"], raw=deep["body"].encode(),
                                        headers={"Content-Type": "application/json"})
        assert status == deep["expect_status"] == 200 and answer["predictions"], answer


@both
def test_broken_mode_fails_predictions_while_health_still_passes(example: str, models: dict[str, Path]) -> None:
    with serving(example, models[example], env={"MLFLEET_EXAMPLE_BROKEN": "1"}) as server:
        assert "BROKEN" in server.started
        assert server.request("GET", "/health")[0] == 200
        status, answer = server.request("POST", "/predict", EXAMPLES[example]["body"])
        assert status == 500 and "broken on purpose" in answer["error"]
        assert predict_count(server.metrics(), "500") == 1  # what a scrape counts as an error


def test_a_model_trained_broken_fails_its_predictions_with_the_flag_off(tmp_path: Path) -> None:
    """The rollback story: the new version's model is bad, not its server; its deep probe must say so."""
    model, _ = train("iris", tmp_path / "run", "--broken", "--rows", "300")
    with serving("iris", model) as server:
        assert server.request("GET", "/health")[0] == 200
        assert server.request("POST", "/predict", EXAMPLES["iris"]["body"])[0] == 500


@both
def test_hostile_requests_get_a_sentence_and_the_server_keeps_serving(example: str, models: dict[str, Path]) -> None:
    with serving(example, models[example]) as server:
        wrong = [
            server.request("POST", "/predict", raw=b"{not json"),
            server.request("POST", "/predict", {"rows": "x", "texts": 5}),
            server.request("POST", "/predict", []),
            server.request("POST", "/predict", {"rows": [[1, 2]], "texts": [3]}),
            server.request("POST", "/predict", raw=b'{"rows": [[NaN, 1, 2, 3]], "texts": [null]}'),
            server.request("POST", "/predict", {"rows": [[1, 2, 3, 4]] * 1001, "texts": ["a"] * 257}),
            server.request("POST", "/predict", raw=b"\xff\xfe"),
        ]
        assert [status for status, _ in wrong] == [400] * len(wrong), wrong
        assert all(isinstance(answer["error"], str) and answer["error"] for _, answer in wrong)
        huge = server.request("POST", "/predict", raw=b"", headers={"Content-Length": str(10 ** 9)})
        assert huge[0] == 413
        for path in ("/nope", "/" + "x" * 5000, "/%00"):
            assert server.request("GET", path)[0] == 404
        assert server.request("GET", "/predict")[0] == 405
        samples = server.metrics()
        # Hostile paths share one label value: no series per path.
        assert {dict(k)["route"] for k in samples["http_requests_total"]} <= {"/predict", "/metrics", "other"}
        assert server.request("POST", "/predict", EXAMPLES[example]["body"])[0] == 200
        assert server.stop()[0] == 0


@both
def test_sigterm_with_twenty_requests_in_flight_answers_all_of_them_and_exits_0(example: str,
                                                                                 models: dict[str, Path]) -> None:
    with serving(example, models[example], env={"MLFLEET_EXAMPLE_DELAY": "1.0"}) as server:
        answers: list[int] = []

        def one() -> None:
            answers.append(server.request("POST", "/predict", EXAMPLES[example]["body"])[0])

        threads = [threading.Thread(target=one) for _ in range(20)]
        for t in threads:
            t.start()
        # All twenty accepted and inside predict (the server's own gauge says so), then the signal.
        deadline = 200
        while server.metrics()["inflight_requests"][()] < 20 and deadline:
            deadline -= 1
            threading.Event().wait(0.05)
        assert server.metrics()["inflight_requests"][()] == 20
        server.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=30)
        code, out, err = server.stop()
    assert answers == [200] * 20, answers
    assert code == 0 and "stopped" in out and err == "", (out, err)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()


def test_sigterm_while_idle_exits_0_and_frees_the_port(models: dict[str, Path]) -> None:
    with serving("iris", models["iris"]) as server:
        code, _, err = server.stop()
    assert code == 0 and err == ""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", server.port))  # a restarted replica gets the same port back


def test_a_model_file_that_is_not_one_is_a_sentence_and_exit_2(tmp_path: Path) -> None:
    for example, content in (("iris", b"PK\x03\x04 truncated"), ("iris", b"hello"), ("sentiment", b"{}"),
                             ("sentiment", b"\xff")):
        bad = tmp_path / EXAMPLES[example]["model"]
        bad.write_bytes(content)
        for model in (bad, tmp_path / "missing" / bad.name):
            done = subprocess.run([sys.executable, f"{example}/serve.py", "--model", str(model), "--port", "0"],
                                  cwd=DEPLOY, capture_output=True, text=True, timeout=60)
            assert done.returncode == 2 and "cannot load the model" in done.stderr, done
            assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr


def test_a_port_in_use_is_a_sentence_and_exit_2(models: dict[str, Path]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "iris/serve.py", "--model", str(models["iris"]), "--port", str(port)],
                              cwd=DEPLOY, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in done.stderr, done
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------- capture (mlfleet.serve lands with the capture work)


@both
def test_each_prediction_is_captured_with_named_inputs(example: str, models: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("mlfleet.serve", reason="mlfleet.serve (capture) is not in this checkout yet")
    capture = tmp_path / "capture.jsonl"
    with serving(example, models[example], env={"MLFLEET_CAPTURE_FILE": str(capture)}) as server:
        assert server.request("POST", "/predict", EXAMPLES[example]["body"])[0] == 200
        assert server.stop()[0] == 0
    [line] = [json.loads(t) for t in capture.read_text().splitlines()]
    assert line["outputs"] == EXAMPLES[example]["expect"]
    columns = {"iris": {"sepal_length", "sepal_width", "petal_length", "petal_width"}, "sentiment": {"text"}}
    assert [set(row) for row in line["inputs"]] == [columns[example]] * 2


# ---------------------------------------------------------------- the load generator


@both
@under_full_load
def test_the_load_generator_sees_no_failure_at_200_requests_a_second(example: str, models: dict[str, Path]) -> None:
    with serving(example, models[example]) as server:
        summary = asyncio.run(run_load("127.0.0.1", server.port, rate=200, duration=3,
                                       body=json.dumps(EXAMPLES[example]["body"])))
        served = predict_count(server.metrics(), "200")
    assert summary["sent"] == 600 and summary["ok"] == 600 and summary["failed"] == 0, summary["failures"]
    assert served == 600  # every request reached the server once: a new connection each, none retried
    assert summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"] <= summary["latency_ms"]["max"]
    assert sum(s["ok"] for s in summary["timeline"]) == 600 and len(summary["timeline"]) == 3


def test_the_load_generator_counts_failures_by_reason(models: dict[str, Path]) -> None:
    body = json.dumps(EXAMPLES["iris"]["body"])
    with serving("iris", models["iris"], env={"MLFLEET_EXAMPLE_BROKEN": "1"}) as server:
        broken = asyncio.run(run_load("127.0.0.1", server.port, rate=20, duration=0.5, body=body))
        port = server.port
    assert broken["ok"] == 0 and broken["failures"] == {"status 500": 10} and broken["latency_ms"]["p50"] is None
    gone = asyncio.run(run_load("127.0.0.1", port, rate=20, duration=0.5, body=body))  # the server has stopped
    assert gone["failures"] == {"refused": 10}


def test_the_load_generator_command_prints_json_and_fails_when_requests_failed(models: dict[str, Path]) -> None:
    with serving("iris", models["iris"]) as server:
        done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "loadgen.py"), "--port", str(server.port),
                               "--rate", "20", "--duration", "0.5"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and json.loads(done.stdout)["ok"] == 10, done
    bad = subprocess.run([sys.executable, str(REPO / "benchmarks" / "loadgen.py"), "--port", str(server.port),
                          "--rate", "20", "--duration", "0.5"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and json.loads(bad.stdout)["failures"] == {"refused": 10}


# ---------------------------------------------------------------- the specs as shipped

DEPLOYMENT_KEYS = {"name", "model", "command", "workdir", "project", "env", "environment", "resources",
                   "constraints", "replicas", "health", "metrics", "rollout"}


@both
def test_the_deployment_specs_have_the_contracts_shape(example: str) -> None:
    spec = deployment(example)
    assert set(spec) <= DEPLOYMENT_KEYS and spec["name"] == example and spec["model"] == f"{example}@production"
    assert "{model_path}" in spec["command"] and "{port}" in spec["command"]
    assert (DEPLOY / spec["workdir"] / spec["command"][1]).is_file()
    assert set(spec["health"]) <= {"path", "expect_status", "interval", "timeout", "initial_delay", "failures", "deep"}
    assert set(spec["metrics"]) == {"prometheus", "interval", "requests", "errors", "latency", "gauges"}
    assert set(spec["rollout"]) == {"max_surge", "max_unavailable", "ready_timeout", "drain"}
    try:
        from mlfleet.core.deploy.spec import load_deployment_spec
    except ImportError:  # core/deploy lands with the deployments capability
        return
    assert load_deployment_spec(DEPLOY / f"{example}.yaml").name == example


@both
def test_the_training_specs_load_as_job_specs(example: str) -> None:
    spec = load_job_spec(DEPLOY / f"{example}-train.yaml")
    assert Path(spec.workdir) == DEPLOY / example and spec.resources.gpus == 0


def run_shipped_training(fleet: Fleet, example: str) -> dict[str, Any]:
    done = fleet.cli("submit", str(DEPLOY / f"{example}-train.yaml"), "--wait", "--json", timeout=240)
    job = done.json() if done.out.strip() else {}
    logs = fleet.cli("jobs", "logs", job["job_id"]).out if job.get("job_id") else ""
    assert done.code == 0 and job["state"] == "succeeded", done.out + done.err + logs
    assert "val_accuracy" in logs, logs
    run = fleet.cli_json("runs", "show", job["run_id"])
    assert {m["key"] for m in run["metrics"]} >= {"val_accuracy"}
    return run | {"run_id": job["run_id"]}


def fetched_model(fleet: Fleet, run_id: str, name: str) -> Path:
    listed = fleet.cli_json("runs", "artifacts", run_id)
    assert any(str(a["path"]).endswith(f"out/{name}") for a in listed), listed
    target = fleet.files / name
    got = fleet.cli("runs", "artifact", "get", run_id, name, "-o", str(target))
    assert got.code == 0, got.err
    return target


@pytest.mark.timeout(300)
def test_the_shipped_text_training_job_runs_under_a_controller_and_its_model_serves(fleet: Fleet) -> None:
    run = run_shipped_training(fleet, "sentiment")
    assert run["params"]["reviews"] == 4000
    model = fetched_model(fleet, run["run_id"], "model.json")
    with serving("sentiment", model) as server:
        status, answer = server.request("POST", "/predict", EXAMPLES["sentiment"]["body"])
    assert status == 200 and answer["predictions"] == EXAMPLES["sentiment"]["expect"]


@pytest.mark.pypi  # its environment (numpy, prometheus_client) is resolved against PyPI
@pytest.mark.timeout(300)
def test_the_shipped_tabular_training_job_runs_in_its_environment_and_its_model_serves(fleet: Fleet) -> None:
    run = run_shipped_training(fleet, "iris")
    [[env_hash]] = fleet.cli_json("db", "query", f"select env_hash from runs where run_id = '{run['run_id']}'")["rows"]
    assert env_hash, "the run did not use the spec's environment"
    model = fetched_model(fleet, run["run_id"], "model.npz")
    fetched_model(fleet, run["run_id"], "reference.csv")
    with serving("iris", model) as server:
        status, answer = server.request("POST", "/predict", EXAMPLES["iris"]["body"])
    assert status == 200 and answer["predictions"] == EXAMPLES["iris"]["expect"]
