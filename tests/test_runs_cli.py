"""A user trains two models with ``mlfleet.track``, then filters, compares and exports the runs from the CLI."""

from __future__ import annotations

import duckdb

from conftest import Fleet

TRAIN = """\
import sys
from mlfleet import track

lr, model = float(sys.argv[1]), sys.argv[2]
track.log_params({"lr": lr, "model": model, "epochs": 3})
track.set_tags({"team": "vision"})
for step in range(60):
    loss = 1.0 / (1 + lr * step)
    track.log({"loss": loss, "val_acc": 1 - loss}, step=step)
track.flush()
"""


def submit(fleet: Fleet, name: str, lr: str, model: str) -> str:
    spec = fleet.write_spec(name, f"name: {name}\ncommand: [python, train.py, '{lr}', {model}]\n")
    done = fleet.cli("submit", str(spec), "--wait", "--json", timeout=120)
    assert done.code == 0, done.out + done.err
    return done.json()["run_id"]


def test_filter_compare_and_export_two_tracked_runs(fleet: Fleet) -> None:
    (fleet.root / "specs").mkdir(exist_ok=True)
    (fleet.root / "specs" / "train.py").write_text(TRAIN)
    slow = submit(fleet, "slow", "0.001", "resnet")
    fast = submit(fleet, "fast", "0.5", "vit")

    picked = fleet.cli_json("runs", "list", "--where", "params.lr > 0.01 and (metrics.loss.min < 0.3 or "
                                                        "tags.model = 'resnet')")
    assert [r["run_id"] for r in picked] == [fast]
    run = picked[0]
    assert run["params"] == {"lr": 0.5, "model": "vit", "epochs": 3} and run["tags"] == {"team": "vision"}
    assert run["metrics"]["loss"]["points"] == 60 and run["metrics"]["loss"]["last_step"] == 59
    assert run["points"] == 120
    ordered = fleet.cli_json("runs", "list", "--sort", "metrics.loss.min")
    assert [r["run_id"] for r in ordered] == [fast, slow]
    assert [r["run_id"] for r in fleet.cli_json("runs", "list", "--sort=-metrics.loss.min")] == [slow, fast]
    text = fleet.cli("runs", "list", "--where", "params.model like '%t'", "--sort", "params.lr desc", check=True)
    assert slow in text.out and fast in text.out and "params.model" in text.out.splitlines()[0]

    bad = fleet.cli("runs", "list", "--where", "params.lr >")
    assert bad.code == 2 and "Traceback" not in bad.err
    assert bad.err.strip() == "mlfleet: --where: expected a value after '>', found the end at column 12"
    hostile = fleet.cli("runs", "list", "--where", "params.lr > 0; drop table runs")
    assert hostile.code == 2 and "column 14" in hostile.err
    assert len(fleet.cli_json("runs", "list")) == 2

    compared = fleet.cli_json("runs", "compare", fast[:6] if fast[:6] != slow[:6] else fast, slow, "--points", "10")
    assert [r["run_id"] for r in compared["runs"]] == [fast, slow]
    loss = compared["metrics"]["loss"]
    assert loss["best"][fast] == {"value": 1.0 / (1 + 0.5 * 59), "step": 59, "mode": "min"}
    assert loss["best"][slow]["step"] == 59
    assert compared["metrics"]["val_acc"]["best"][fast]["mode"] == "max"
    assert len(loss["curves"][fast]["step"]) == 10 and loss["curves"][fast]["step"][-1] == 59
    assert compared["params"] == {"differ": {"lr": {fast: 0.5, slow: 0.001}, "model": {fast: "vit", slow: "resnet"}},
                                  "same": {"epochs": 3}}
    human = fleet.cli("runs", "compare", fast, slow, "--metric", "loss", check=True).out
    assert "loss" in human and "min 0.03279" in human and "lr" in human and "same in all: epochs=3" in human

    out = fleet.files / "runs.csv"
    answer = fleet.cli_json("runs", "export", "--format", "csv", "--where", "tags.team = 'vision'", "--output", str(out))
    assert answer["rows"] == 2 and answer["output"] == str(out)
    points = fleet.files / "points.parquet"
    fleet.cli("runs", "export", "--metrics", "--metric", "loss", "--output", str(points), check=True)
    fleet.cli("controller", "stop", check=True)  # the store is the controller's while it runs; files are ours
    con = duckdb.connect()
    rows = con.execute("select run_id, \"params.lr\", \"metrics.loss.last\" from read_csv(?) order by 1",
                       [str(out)]).fetchall()
    assert sorted(rows) == sorted([(fast, 0.5, 1.0 / (1 + 0.5 * 59)), (slow, 0.001, 1.0 / (1 + 0.001 * 59))])
    assert con.execute("select count(*), count(distinct run_id), min(key), max(key) from read_parquet(?)",
                       [str(points)]).fetchall() == [(120, 2, "loss", "loss")]
    audit = fleet.cli_json("audit", "list", "--action", "runs.export")
    assert len(audit) == 2 and {e["target"] for e in audit} == {str(out), str(points)}
