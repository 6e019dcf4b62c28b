"""A user submits jobs on the embedded local host and watches them through the CLI."""

from __future__ import annotations

import time

import psutil
import pytest

from conftest import CONFIGS, Fleet


@pytest.mark.pypi  # the demo brings its environment (numpy), resolved against PyPI
@pytest.mark.timeout(300)
def test_demo_runs_and_its_metrics_and_params_land_in_duckdb(fleet: Fleet) -> None:
    done = fleet.cli("submit", str(CONFIGS / "demo-train.yaml"), "--wait", "--json", timeout=240)
    assert done.code == 0, done.err
    result = done.json()
    assert result["state"] == "succeeded" and result["exit_code"] == 0
    assert result["job_id"].startswith("j") and result["run_id"] == f"{result['job_id']}-1"

    run = fleet.cli_json("runs", "show", result["run_id"])
    metrics = {m["key"]: m for m in run["metrics"]}
    assert metrics["loss"]["points"] == 100 and metrics["accuracy"]["points"] == 100
    assert metrics["val_accuracy"]["points"] == 10
    assert metrics["loss"]["last_step"] == 100
    assert metrics["loss"]["last"] < metrics["loss"]["max"]  # it learned something
    assert run["params"]["lr"] == 0.5 and run["params"]["model"] == "logistic-regression"
    assert run["tags"]["dataset"] == "synthetic-linear"

    count = fleet.cli_json("db", "query", "select count(*) as n from metrics")
    assert count["rows"] == [[210]]
    dupes = fleet.cli_json("db", "query", "select count(*) from (select key, step from metrics "
                                          "group by all having count(*) > 1)")
    assert dupes["rows"] == [[0]]


def test_a_failing_job_fails_the_wait_with_its_exit_code(fleet: Fleet) -> None:
    spec = fleet.write_spec("fails", "name: fails\ncommand: [python, -c, 'import sys; sys.exit(3)']\n")
    done = fleet.cli("submit", str(spec), "--wait", "--json")
    assert done.code == 1
    assert done.json()["state"] == "failed" and done.json()["exit_code"] == 3
    assert "exited 3" in done.json()["reason"]


def test_a_command_that_does_not_exist_fails_with_a_clear_reason(fleet: Fleet) -> None:
    spec = fleet.write_spec("typo", "name: typo\ncommand: [pyhton, train.py]\n")
    done = fleet.cli("submit", str(spec), "--wait", "--json")
    assert done.code == 1
    assert "failed to start" in done.json()["reason"] and "pyhton" in done.json()["reason"]
    logs = fleet.cli("jobs", "logs", done.json()["job_id"], "--stderr")
    assert "pyhton" in logs.out


def test_retries_run_the_job_again_until_it_succeeds(fleet: Fleet) -> None:
    # Fails on attempts 1 and 2 (run ids end in -1, -2), succeeds on the third.
    spec = fleet.write_spec("flaky", "name: flaky\nretries: 2\n"
                            "command: \"case $MLFLEET_RUN_ID in *-3) exit 0;; *) exit 1;; esac\"\n")
    done = fleet.cli("submit", str(spec), "--wait", "--json")
    assert done.code == 0, done.out + done.err
    job = fleet.job(done.json()["job_id"])
    assert [r["state"] for r in job["runs"]] == ["failed", "failed", "succeeded"]
    assert job["attempt"] == 3 and job["max_attempts"] == 3
    assert any("retrying (2 of 3)" in (e["reason"] or "") for e in job["events"])


def test_the_job_environment_carries_run_id_metrics_file_and_no_gpus(fleet: Fleet) -> None:
    spec = fleet.write_spec("env", "name: env-check\nenv: {GREETING: hi, LEVEL: 3}\ncommand: "
                            "\"echo run=$MLFLEET_RUN_ID; echo cuda=[$CUDA_VISIBLE_DEVICES]; "
                            "echo metrics=$MLFLEET_METRICS_FILE; echo $GREETING $LEVEL; pwd\"\n")
    done = fleet.cli("submit", str(spec), "--wait", "--json")
    assert done.code == 0
    out = fleet.cli("jobs", "logs", done.json()["job_id"]).out
    run_id = done.json()["run_id"]
    assert f"run={run_id}" in out
    assert "cuda=[]" in out
    assert f"metrics={fleet.home.local_agent_dir}/runs/{run_id}/metrics.jsonl" in out
    assert "hi 3" in out
    assert str(fleet.root) in out  # workdir defaults to the spec's folder


def test_cancel_stops_the_whole_process_group(fleet: Fleet) -> None:
    # The job starts a grandchild; cancel must stop both, not orphan the child.
    spec = fleet.write_spec("sleepy", "name: sleepy\ncommand: \"sleep 300 & echo child=$!; wait\"\n")
    job_id = fleet.cli("submit", str(spec), check=True).out.strip()
    fleet.wait_state(job_id, {"running"})
    child = int(fleet.wait_for(lambda: _grep(fleet.cli("jobs", "logs", job_id).out, "child="), what="child pid"))
    assert psutil.pid_exists(child)

    answer = fleet.cli_json("jobs", "cancel", job_id)
    assert answer["changed"] is True
    job = fleet.wait_state(job_id, {"cancelled", "failed", "succeeded"})
    assert job["state"] == "cancelled"
    assert "cancelled by" in job["reason"]
    fleet.wait_for(lambda: not _alive(child), timeout=15, what="the grandchild to die")
    audit = fleet.cli_json("audit", "list")
    assert any(e["action"] == "job.cancel" and e["target"] == job_id for e in audit)


def test_a_job_that_can_never_fit_is_refused_at_submit(fleet: Fleet) -> None:
    fleet.cli("controller", "start", check=True)
    fleet.wait_for(lambda: fleet.cli_json("hosts", "list")[0]["telemetry"], what="the local host's telemetry")
    spec = fleet.write_spec("gpu", "name: needs-gpu\ncommand: [true]\nresources: {gpus: 1}\n")
    refused = fleet.cli("submit", str(spec))
    assert refused.code == 2
    assert refused.err.strip() == ("mlfleet: needs-gpu can never fit on this fleet (local: has no GPUs (need 1)); "
                                   "change its resources or constraints, or add a host that has them and submit "
                                   "with --queue-anyway")
    assert fleet.cli_json("jobs", "list") == []


def test_cancel_of_a_job_that_cannot_be_placed_leaves_it_cancelled(fleet: Fleet) -> None:
    spec = fleet.write_spec("gpu", "name: needs-gpu\ncommand: [true]\nresources: {gpus: 1}\n")
    job_id = fleet.cli("submit", str(spec), "--queue-anyway", check=True).out.strip()
    why = fleet.wait_for(lambda: (j := fleet.job(job_id))["why_pending"] and j, what="a pending reason")
    assert why["why_pending"][0]["host"] == "local"
    assert "has no GPUs (need 1)" in why["why_pending"][0]["message"]
    listed = fleet.cli_json("jobs", "list")
    assert "has no GPUs" in next(j for j in listed if j["job_id"] == job_id)["reason"]
    assert fleet.cli_json("jobs", "cancel", job_id[:5])["state"] == "cancelled"  # a unique prefix is enough
    assert fleet.job(job_id)["state"] == "cancelled"


def test_timeout_stops_a_job_that_runs_too_long(fleet: Fleet) -> None:
    spec = fleet.write_spec("slow", "name: slow\ntimeout: 1s\ncommand: [sleep, '60']\n")
    started = time.monotonic()
    done = fleet.cli("submit", str(spec), "--wait", "--json")
    assert done.code == 1
    assert "timeout" in done.json()["reason"]
    assert time.monotonic() - started < 30


def test_logs_follow_prints_output_until_the_job_ends(fleet: Fleet) -> None:
    spec = fleet.write_spec("talk", "name: talk\ncommand: \"for i in 1 2 3; do echo line $i; sleep 0.5; done\"\n")
    job_id = fleet.cli("submit", str(spec), check=True).out.strip()
    followed = fleet.cli("jobs", "logs", job_id, "-f", timeout=60)
    assert followed.code == 0
    assert followed.out.splitlines() == ["line 1", "line 2", "line 3"]


def test_unknown_job_is_exit_4_with_one_sentence(fleet: Fleet) -> None:
    result = fleet.cli("jobs", "show", "jnothere")
    assert result.code == 4
    assert result.err.strip().count("\n") == 0 and "no job 'jnothere'" in result.err
    assert "Traceback" not in result.err


def _grep(text: str, prefix: str) -> str | None:
    for line in text.splitlines():
        if line.startswith(prefix):
            return line[len(prefix):]
    return None


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False



def test_bad_metric_lines_never_stall_a_run_or_the_fleet(fleet: Fleet) -> None:
    # A timestamp in nanoseconds, a line longer than one read, then a good point: the run still ends,
    # the good point is kept, the bad lines are counted, and the next job still runs.
    script = (
        "import json, os\n"
        "f = open(os.environ['MLFLEET_METRICS_FILE'], 'a')\n"
        "f.write(json.dumps({'ts': 1.7e18, 'metrics': {'loss': 1}}) + chr(10))\n"
        "f.write(json.dumps({'params': {'blob': 'a' * 5_000_000}}) + chr(10))\n"
        "f.write(json.dumps({'step': 1, 'metrics': {'loss': 0.5}}) + chr(10))\n"
    )
    (fleet.root / "specs").mkdir(exist_ok=True)
    (fleet.root / "specs" / "writer.py").write_text(script)
    spec = fleet.write_spec("bad-lines", "name: bad-lines\ncommand: [python, writer.py]\n")
    done = fleet.cli("submit", str(spec), "--wait", "--json", timeout=120)
    assert done.code == 0, done.out + done.err
    run = fleet.cli_json("runs", "show", done.json()["run_id"])
    assert [(m["key"], m["points"], m["last"]) for m in run["metrics"]] == [("loss", 1, 0.5)]
    assert run["ingest"][0]["bad_lines"] == 2 and run["ingest"][0]["complete"] is True
    follow = fleet.write_spec("after", "name: after\ncommand: [true]\n")
    assert fleet.cli("submit", str(follow), "--wait").code == 0


LONG_LINES_JOB = """\
import json, os
f = open(os.environ['MLFLEET_METRICS_FILE'], 'a')
def line(text):
    f.write(text)
    f.flush()
n = 0
def good():
    global n
    line(json.dumps({'step': n, 'metrics': {'loss': n / 1000}}) + chr(10))
    n += 1
def long(end=chr(10)):
    global n
    # 5 MiB, valid JSON, naming an artifact: it must count as one bad line, never as several, never as an artifact
    line(json.dumps({'artifact': {'path': '/etc/shadow', 'size': 1, 'sha256': '0' * 64}, 'pad': 'x' * (5 << 20)}) + end)
    n += 1
for _ in range(40_000):  # about 1.7 MiB: the first long line straddles the first 2 MiB read
    good()
long()
good(); good()
long(); long()
for _ in range(1000):
    good()
long(end='')  # the last line never gets its newline: it is one line when the job ends
"""


def test_metric_lines_over_the_limit_count_once_and_keep_every_line_number(fleet: Fleet) -> None:
    (fleet.root / "specs").mkdir(exist_ok=True)
    (fleet.root / "specs" / "long.py").write_text(LONG_LINES_JOB)
    spec = fleet.write_spec("long-lines", "name: long-lines\ncommand: [python, long.py]\n")
    done = fleet.cli("submit", str(spec), "--wait", "--json", timeout=180)
    assert done.code == 0, done.out + done.err
    run_id = done.json()["run_id"]
    run = fleet.cli_json("runs", "show", run_id)
    ingest = run["ingest"][0]
    assert ingest["complete"] is True
    assert ingest["bad_lines"] == 4
    assert ingest["lines"] == 40_000 + 1 + 2 + 2 + 1000 + 1
    stream = fleet.home.local_agent_dir / "runs" / run_id / "metrics.jsonl"
    assert ingest["byte_offset"] == stream.stat().st_size
    # Each point's seq is its line number in the stream (the job logs it as its step).
    rows = fleet.cli_json("db", "query", "select count(*), count(*) filter (where seq = step) from metrics "
                                         f"where run_id = '{run_id}'")["rows"]
    assert rows == [[40_000 + 2 + 1000, 40_000 + 2 + 1000]]
    assert run["artifacts"] == []


def test_a_negative_limit_is_a_usage_error(fleet: Fleet) -> None:
    result = fleet.cli("jobs", "list", "--limit", "-1")
    assert result.code == 2 and "must be 1 or more" in result.err and "Traceback" not in result.err
