"""A user checks data drift from the CLI: reports and profiles are stored by a real controller."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from conftest import Fleet
from drift_data import rng, write


def _data(root: Path) -> dict[str, Path]:
    g = rng(21)
    n_ref, n_cur = 5000, 1500
    ref = {"age": g.normal(40, 10, n_ref), "income": g.lognormal(10, 1, n_ref),
           "country": g.choice(["de", "fr", "it"], n_ref).astype(object)}
    same = {"age": g.normal(40, 10, n_cur), "income": g.lognormal(10, 1, n_cur),
            "country": g.choice(["de", "fr", "it"], n_cur).astype(object)}
    moved = {"age": g.normal(48, 10, n_cur), "income": g.lognormal(10.5, 1, n_cur),
             "country": g.choice(["de", "fr", "es"], n_cur).astype(object)}
    (root / "data").mkdir()
    return {"ref": write(root / "data" / "ref.parquet", ref), "same": write(root / "data" / "same.csv", same),
            "moved": write(root / "data" / "moved.parquet", moved)}


def test_check_profile_list_show_and_ci_gate(fleet: Fleet) -> None:
    files = _data(fleet.root)
    drifted = fleet.cli("drift", "check", "--reference", str(files["ref"]), "--current", str(files["moved"]),
                        "--json", "--deployment", "prod-eu")
    assert drifted.code == 0, drifted.err  # no --fail-on-drift: drift is reported, not an error
    report = drifted.json()
    assert report["drifted"] is True and report["drifted_columns"] == 3 and report["deployment"] == "prod-eu"
    assert {c["column"]: c["test"] for c in report["columns"]} == {"age": "wasserstein", "income": "wasserstein",
                                                                   "country": "js"}

    gate = fleet.cli("drift", "check", "--reference", str(files["ref"]), "--current", str(files["moved"]),
                     "--fail-on-drift")
    assert gate.code == 3 and "DRIFT" in gate.out
    calm = fleet.cli("drift", "check", "--reference", str(files["ref"]), "--current", str(files["same"]),
                     "--fail-on-drift", "--json")
    assert calm.code == 0 and calm.json()["drifted"] is False

    profile = fleet.cli_json("drift", "profile", str(files["ref"]), "--name", "train-v1")
    assert profile["rows"] == 5000 and profile["columns"] == ["age", "income", "country"]
    assert Path(profile["values_dir"]).parent == fleet.home.data_dir / "profiles"
    again = fleet.cli("drift", "profile", str(files["ref"]), "--name", "train-v1")
    assert again.code == 2 and "--replace" in again.err
    via_profile = fleet.cli_json("drift", "check", "--reference", "train-v1", "--current", str(files["moved"]))
    assert via_profile["profile"] == "train-v1" and via_profile["reference"] == "profile train-v1"
    assert [c["drifted"] for c in via_profile["columns"]] == [c["drifted"] for c in report["columns"]]
    assert fleet.cli_json("drift", "profiles")[0]["name"] == "train-v1"

    listed = fleet.cli_json("drift", "list")
    assert len(listed) == 4
    newest = listed[0]
    assert newest["report_id"] == via_profile["report_id"]
    assert set(newest) >= {"report_id", "created_at", "reference", "current", "drifted", "drifted_columns",
                           "columns", "drift_share", "run_id", "deployment"}
    assert newest["columns"] == 3 and newest["drifted"] is True and newest["drift_share"] == 1.0

    shown = fleet.cli_json("drift", "show", report["report_id"][:5])
    assert shown["report_id"] == report["report_id"] and shown["deployment"] == "prod-eu"
    age = shown["columns"][0]
    assert age["column"] == "age" and age["kind"] == "numeric" and age["drifted"] is True
    assert set(age["stats"]) >= {"psi", "ks_d", "ks_p", "wasserstein", "js", "chi2", "chi2_p", "null_rate_ref",
                                 "null_rate_cur", "unseen_share", "out_of_range_share"}
    assert age["stats"] == report["columns"][0]["stats"]
    assert len(age["histogram"]["edges"]) == 11 and len(age["histogram"]["reference"]) == 10
    assert shown["columns"][2]["histogram"]["categories"][:3] == ["de", "fr", "it"] or \
        set(shown["columns"][2]["histogram"]["categories"]) == {"de", "fr", "it", "es"}
    human = fleet.cli("drift", "show", report["report_id"])
    assert human.code == 0 and "country" in human.out and "DRIFT" in human.out

    exported = fleet.files / "report.json"
    assert fleet.cli("drift", "export", report["report_id"], "-o", str(exported)).code == 0
    assert json.loads(exported.read_text())["columns"][1]["column"] == "income"

    audit = fleet.cli_json("audit", "list", "--action", "drift.check")
    assert len(audit) == 4 and audit[-1]["target"] == report["report_id"]
    assert len(fleet.cli_json("audit", "list", "--action", "drift.profile")) == 1


def test_mistakes_are_one_sentence_and_start_no_controller(fleet: Fleet) -> None:
    files = _data(fleet.root)
    for args, words in (
        (["--reference", str(fleet.root / "nope.parquet")], "no such file"),
        (["--reference", str(fleet.root / "data" / "*.json")], "matches no files"),
        (["--reference", str(files["ref"]), "--columns", "agee"], "agee is in neither side"),
    ):
        result = fleet.cli("drift", "check", *args, "--current", str(files["same"]))
        assert result.code == 2, result.err
        assert words in result.err and result.err.count("\n") == 1 and "Traceback" not in result.err
    bad_yaml = fleet.root / "drift.yaml"
    bad_yaml.write_text("thresholds:\n  psi: lots\n")
    result = fleet.cli("drift", "check", "--reference", str(files["ref"]), "--current", str(files["same"]),
                       "--config", str(bad_yaml), "--json")
    assert result.code == 2 and result.json()["error"]["message"].startswith(f"{bad_yaml}:2: thresholds.psi")
    assert fleet.controller_pid is None  # all of the above fail before a controller is started
    unknown = fleet.cli("drift", "check", "--reference", "no-such-profile", "--current", str(files["same"]))
    assert unknown.code == 4 and "no drift profile named 'no-such-profile'" in unknown.err
    missing_run = fleet.cli("drift", "check", "--reference", str(files["ref"]), "--current", str(files["same"]),
                            "--run", "zzzz")
    assert missing_run.code == 4
    assert fleet.cli("drift", "show", "dnothere").code == 4


def test_drift_submits_the_retraining_job_and_audits_it(fleet: Fleet) -> None:
    files = _data(fleet.root)
    spec = fleet.write_spec("retrain", "name: retrain\nproject: drift\ncommand: [python, -c, 'print(42)']\n"
                                       "resources: {gpus: 0, cpus: 1, memory: 256MiB}\n")
    config = fleet.root / "drift.yaml"
    config.write_text(f"drift_share: 0.3\non_drift:\n  submit: {spec.relative_to(fleet.root)}\n")
    calm = fleet.cli_json("drift", "check", "--reference", str(files["ref"]), "--current", str(files["same"]),
                          "--config", str(config))
    assert calm["drifted"] is False and "trigger" not in calm
    result = fleet.cli("drift", "check", "--reference", str(files["ref"]), "--current", str(files["moved"]),
                       "--config", str(config), "--fail-on-drift", "--json")
    assert result.code == 3
    report = result.json()
    job_id = report["trigger"]["job_id"]
    assert report["trigger"]["spec_path"] == str(spec)
    job = fleet.wait_state(job_id, {"succeeded", "failed"})
    assert job["state"] == "succeeded" and job["name"] == "retrain"
    trigger = fleet.cli_json("audit", "list", "--action", "drift.trigger")
    assert len(trigger) == 1 and trigger[0]["target"] == report["report_id"]
    assert json.loads(trigger[0]["detail"])["job_id"] == job_id
    assert len(fleet.cli_json("audit", "list", "--action", "job.submit")) == 1
    stored = fleet.cli_json("drift", "show", report["report_id"])
    assert stored["trigger_job_id"] == job_id

    # A report linked to the retraining run, found again by that run.
    run_id = job["run_id"]
    linked = fleet.cli_json("drift", "check", "--reference", str(files["ref"]), "--current", str(files["same"]),
                            "--run", run_id[:6])
    assert linked["run_id"] == run_id
    by_run = fleet.cli_json("drift", "list", "--run", run_id)
    assert [r["report_id"] for r in by_run] == [linked["report_id"]]
    assert np.isclose(by_run[0]["drift_share"], 0.0)


def test_the_text_report_says_the_rule_and_its_counts_agree_everywhere(fleet: Fleet) -> None:
    """A new user's report: 8 columns, one only in the current data, 2 of the 7 compared drift (no drift)."""
    from drift_data import write_sql

    cols = ", ".join(f"random() as c{i}" for i in range(4))
    ref = write_sql(fleet.root / "ref.parquet", f"select {cols}, date '2024-01-01' + cast(floor(random() * 365) "
                                                "as integer) as day, 'text' as gone, random() as shifted, "
                                                "random() as holes from range(3000)", seed=0.1)
    cur = write_sql(fleet.root / "cur.csv", f"select {cols}, date '2024-01-01' + cast(floor(random() * 365) "
                                            "as integer) as day, random() + 3 as shifted, case when random() < 0.2 "
                                            "then null else random() end as holes, 1 as extra from range(2000)",
                    seed=0.2)
    text = fleet.cli("drift", "check", "--reference", str(ref), "--current", str(cur))
    assert text.code == 0, text.err
    report = fleet.cli_json("drift", "show", text.out.split(":")[0])
    assert (report["drifted"], report["drifted_columns"], report["compared_columns"], report["column_count"]) == \
        (False, 3, 8, 9)
    headline = text.out.splitlines()[0]
    assert headline.endswith(": no drift: 3 of 8 compared columns drifted (38%); the dataset counts as drifted "
                             "when 50% of them or more drift (drift_share); 1 column not compared"), headline

    # One definition of the counts: check, show, list, the TUI's list and its report screen.
    from mlfleet.core.drift.summary import counts
    from mlfleet.tui.screens.drift import report_cells

    listed = fleet.cli_json("drift", "list")[0]
    assert counts(listed) == counts(report) == "3/8 (38%), 1 not compared"
    assert "3/8 (38%), 1 not compared" in fleet.cli("drift", "list").out
    assert str(report_cells(listed)[5]) == "3/8 (38%), 1 not compared"
    assert headline.split(": ", 1)[1] in fleet.cli("drift", "show", report["report_id"]).out.splitlines()[0]

    # Rows: reference -> current mean, median and null rate, on the column's own scale.
    lines = {line.split()[0]: line for line in text.out.splitlines()[3:] if line and not line.startswith("note:")}
    assert "0.0% -> 20." in lines["holes"] and "%>" not in text.out
    assert " -> 3." in lines["shifted"] and "DRIFT" in lines["shifted"]
    assert "2024-0" in lines["day"] and " -> 2024-0" in lines["day"]  # dates as dates, not seconds since 1970
    # Every note in full, after the table; what Wasserstein is scaled by.
    notes = [line for line in text.out.splitlines() if line.startswith("note: ")]
    assert "note: gone: missing from the current data (counted as drifted)" in notes
    assert "note: extra: only in the current data: nothing to compare it with (not counted in the verdict)" in notes
    assert "note: wasserstein is the Wasserstein-1 distance divided by the reference's standard deviation " \
           "(0.1: the current values moved a tenth of a standard deviation)" in notes
    assert "..." not in text.out and "…" not in text.out
