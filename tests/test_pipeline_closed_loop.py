"""The shipped closed loop, end to end: served traffic drifts, the model retrains, wins its gate and rolls out.

A real controller with its local agent, the shipped files (configs/deploy/iris-train.yaml, iris.yaml and
configs/pipelines/closed-loop.yaml, copied only to check every 2 s instead of every minute and to shrink
the data), real model servers and real captures. The story, as a user lives it:

1. a deliberately weak champion is trained by hand (3 epochs), registered and put behind
   ``iris@production``; ``deploy apply`` serves it (scaled to one replica: the machine has 2 cores);
2. the loop is run once by hand, which arms its ``on: drift:`` watch. Nothing has been served
   yet, so its drift step has no captures to check and the run stops there, before the gate: the
   run trained a challenger and registered nothing;
3. normal requests: the watch checks them (a clean report, saved as the controller) and fires nothing;
4. requests with petal_length shifted by 1.5 cm: the watch's report says drifted, the trigger fires
   (its history names the report and the drifted feature), a run with trigger ``drift`` retrains
   (labelled rows of the new kind arrived in prepare's input glob meanwhile, so prepare and train run
   again on them; with nothing new they would be reused from the cache), its gate passes with its
   numbers recorded, register makes version 2,
   promote moves production to 2 and the deployment rolls out to version 2;
5. the served version is traceable to its data: version 2's run is the pipeline run's train step's
   run, and that step's key holds prepare.outputs.data by the sha256 prepare's output was stored with.
"""

from __future__ import annotations

import http.client
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import Fleet

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "configs" / "deploy"
LOOP = REPO / "configs" / "pipelines" / "closed-loop.yaml"
SMALL = ["--set", "params.rows=600", "--set", "params.epochs=60"]  # a 0.97 challenger in well under a second

pytestmark = [pytest.mark.pypi, pytest.mark.timeout(900)]  # the iris environment is resolved against PyPI


def loop_copy(fleet: Fleet) -> Path:
    """The shipped loop with its watch every 2 s, reading a copy of configs/deploy (labelled rows land there)."""
    text = LOOP.read_text()
    assert "    every: 1m " in text and text.count("../deploy/") == 2 and text.count("iris-drift.yaml") == 2
    deploy = fleet.files / "deploy"
    shutil.copytree(DEPLOY, deploy, ignore=shutil.ignore_patterns("__pycache__", "out", "data"))
    text = text.replace("    every: 1m ", "    every: 2s ").replace("../deploy/", f"{deploy}/")
    text = text.replace("iris-drift.yaml", str(LOOP.parent / "iris-drift.yaml"))
    path = fleet.files / "closed-loop.yaml"
    path.write_text(text)
    return path


def labelled(seed: int, rows: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Iris-like measurements (the example's own generator), petal_length moved by ``shift`` cm, and species."""
    rng = np.random.default_rng(seed)
    means = np.array([[5.01, 3.43, 1.46, 0.25], [5.94, 2.77, 4.26, 1.33], [6.59, 2.97, 5.55, 2.03]])
    spreads = np.array([[0.35, 0.38, 0.17, 0.11], [0.52, 0.31, 0.47, 0.20], [0.64, 0.32, 0.55, 0.27]])
    y = rng.integers(0, 3, size=rows)
    x = np.round(np.clip(rng.normal(means[y], spreads[y]), 0.1, None), 1)
    x[:, 2] += shift
    return x, y


def features(seed: int, rows: int, shift: float = 0.0) -> list[list[float]]:
    return [[round(float(v), 1) for v in row] for row in labelled(seed, rows, shift)[0]]


def predict(endpoint: dict[str, Any], rows: list[list[float]]) -> dict[str, Any]:
    assert endpoint["host"] == "local", endpoint  # the controller's own machine: its replicas listen on loopback
    conn = http.client.HTTPConnection("127.0.0.1", int(endpoint["port"]), timeout=30)
    try:
        conn.request("POST", "/predict", body=json.dumps({"rows": rows}).encode(),
                     headers={"Content-Type": "application/json"})
        answer = conn.getresponse()
        body = json.loads(answer.read())
        assert answer.status == 200, body
        return body
    finally:
        conn.close()


def serving(fleet: Fleet, version: int, timeout: float = 240) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        d = fleet.cli_json("deploy", "show", "iris")
        eps = d["endpoints"]
        return d if d["phase"] == "stable" and eps and {e["version"] for e in eps} == {version} else None
    return fleet.wait_for(done, timeout=timeout, interval=0.5, what=f"iris to serve version {version}")


def query(fleet: Fleet, sql: str) -> list[list[Any]]:
    return fleet.cli_json("db", "query", sql)["rows"]


def states(run: dict[str, Any]) -> dict[str, str]:
    return {s["step"]: s["state"] for s in run["steps"]}


def step(run: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in run["steps"] if s["step"] == name)


def watch_reports(fleet: Fleet) -> list[list[Any]]:
    return query(fleet, "select report_id, drifted, rows_current, actor from drift_reports "
                        "where deployment = 'iris' and actor not like 'pipeline:%' order by created_at")


def test_a_shifted_feature_in_served_inputs_retrains_gates_and_rolls_out_a_model_traceable_to_its_data(
        fleet: Fleet) -> None:
    started = time.monotonic()
    # 1. the weak champion, by hand, and its deployment
    champion = fleet.cli("submit", str(DEPLOY / "iris-train.yaml"), "--set", "params.epochs=3", "--wait", "--json",
                         timeout=400)
    assert champion.code == 0, champion.out + champion.err
    fleet.cli("models", "register", "iris", "--run", champion.json()["run_id"], "--artifact", "model.npz",
              check=True)
    fleet.cli("models", "alias", "iris", "production", "1", "--reason", "the first model", check=True)
    fleet.cli("deploy", "apply", str(DEPLOY / "iris.yaml"), check=True)
    fleet.cli("deploy", "scale", "iris", "1", check=True)
    [endpoint] = serving(fleet, 1)["endpoints"]

    # 2. the loop's first run arms the watch; nothing served yet, so it stops at its drift check
    path = loop_copy(fleet)
    first = fleet.cli("pipeline", "run", str(path), *SMALL, "--wait", "--timeout", "400", "--json", timeout=460)
    assert first.code == 1, first.out + first.err
    arming = first.json()
    assert states(arming) == {"prepare": "succeeded", "train": "succeeded", "drift": "failed", "gate": "skipped",
                              "register": "skipped", "promote": "skipped"}, arming
    assert "no captured inputs" in (step(arming, "drift")["reasons"] or [""])[-1] + json.dumps(step(arming, "drift"))
    [armed] = fleet.cli_json("pipeline", "triggers", "iris-closed-loop")["armed"]
    assert armed["on"]["drift"]["deployment"] == "iris" and armed["on"]["drift"]["every"] == 2.0
    assert armed["on"]["drift"]["reference"] == "train.outputs.reference"
    assert [v[0] for v in query(fleet, "select version from model_versions where name = 'iris'")] == [1]

    # 3. normal traffic: checked by the controller, clean, fires nothing
    normal = predict(endpoint, features(7, 300))
    assert normal["version"] == 1 and len(normal["predictions"]) == 300
    [clean] = fleet.wait_for(lambda: watch_reports(fleet) or None, timeout=60, what="the watch to check the traffic")
    assert clean[1:] == [False, 300, "controller"] or clean[1:3] == [False, 300], clean
    time.sleep(3)  # a tick or two more: the same captures are not checked again, and nothing fired
    assert len(watch_reports(fleet)) == 1
    assert fleet.cli_json("pipeline", "triggers", "iris-closed-loop")["history"] == []

    # 4. the world moved: labelled rows of the new kind arrive where prepare reads them (nothing fires for
    #    that: the loop has no on: data), then petal_length shifts in what is served: the loop fires
    x, y = labelled(11, 400, shift=1.5)
    arrived = fleet.files / "deploy" / "iris" / "data" / "labelled"
    arrived.mkdir(parents=True)
    np.savetxt(arrived / "batch-1.csv", np.column_stack([x, y]), fmt="%.1f", delimiter=",")
    shifted = predict(endpoint, features(8, 300, shift=1.5))
    assert shifted["version"] == 1

    def fired() -> dict[str, Any] | None:
        history = fleet.cli_json("pipeline", "triggers", "iris-closed-loop")["history"]
        return history[0] if history else None
    firing = fleet.wait_for(fired, timeout=60, what="the drift trigger to fire")
    [clean_again, drifted] = watch_reports(fleet)
    assert clean_again == clean and drifted[1:3] == [True, 300], "the window held only the shifted requests"
    assert (firing["trigger"], firing["outcome"]) == ("drift", "started"), firing
    assert firing["cause"]["report_id"] == drifted[0] and firing["cause"]["drifted_features"] == ["petal_length"]
    run_id = firing["run_id"]

    def ended() -> dict[str, Any] | None:
        shown = fleet.cli_json("pipeline", "show", run_id)
        return shown if shown["state"] != "running" else None
    run = fleet.wait_for(ended, timeout=300, interval=1, what="the retraining run to end")
    assert run["trigger"] == "drift" and run["cause"]["report_id"] == drifted[0], run
    # prepare read the new rows (a new input hash), so train learnt again, from them
    assert states(run) == {"prepare": "succeeded", "train": "succeeded", "drift": "succeeded", "gate": "succeeded",
                           "register": "succeeded", "promote": "succeeded"}, run
    assert run["state"] == "succeeded"
    why = fleet.cli_json("pipeline", "why", run_id, "prepare")["changes"]
    assert any(c.startswith("input data/labelled/*.csv changed") for c in why), why
    assert step(run, "drift")["detail"]["drifted"] is True  # recorded, not a reason to stop (fail_on_drift: false)
    gate = step(run, "gate")["detail"]
    decision = gate.get("decision", gate)
    assert decision["passed"] is True
    [accuracy, loss] = decision["requirements"]
    assert accuracy["verdict"] and loss["verdict"], decision
    assert accuracy["left"] > accuracy["right"] and loss["left"] <= loss["right"], decision  # numbers recorded
    assert query(fleet, f"select passed, champion_version from pipeline_gate_decisions where run_id = '{run_id}'") \
        == [[True, 1]]
    assert step(run, "register")["detail"]["version"] == 2
    production = fleet.cli_json("models", "show", "iris@production")
    assert production["version"]["version"] == 2
    [endpoint] = serving(fleet, 2)["endpoints"]
    assert predict(endpoint, features(9, 5))["version"] == 2

    # 5. the served version back to the data it learnt from
    version_run = production["version"]["run_id"]
    assert step(run, "train")["run"] == version_run
    [[parts]] = query(fleet, f"select key_parts from pipeline_steps where run_id = '{run_id}' and step = 'train'")
    parts = json.loads(parts) if isinstance(parts, str) else parts
    data = next(o for o in step(run, "prepare")["outputs"] if o["name"] == "data")
    assert parts["inputs"]["prepare.outputs.data"] == data["sha256"]
    [[made]] = query(fleet, f"select sha256 from pipeline_step_outputs where run_id = '{arming['run_id']}' "
                            "and step = 'prepare' and name = 'data'")
    assert made != data["sha256"], "the drift run's rows hold the labelled ones the arming run had not"
    print(f"closed loop story: {time.monotonic() - started:.0f} s")
