"""A run that logs a million distinct metric keys: everyone's runs list, show and compare stay answered and small.

A real job writes its metric lines straight into ``$MLFLEET_METRICS_FILE``
(docs/metrics.md): 1,000 lines of 1,000 keys each (``layer0000/w0000`` to
``layer0999/w0999``), then 300 steps of ``loss`` and of one of those keys
again. A second, small run logs a few keys. The real controller ingests
both; then the user lists, shows and compares them with the real CLI.

Each CLI call waits at most its usual request timeout (60 s; 300 s for
compare) and fails otherwise, so an exit code of 0 is the proof that the
controller answered in time; nothing here times anything.

The controller's memory is sampled (psutil, every 20 ms) during the
queries and must stay under 512 MiB. What justifies it: here the
controller rests at ~200 MiB once both runs are in (Python, DuckDB and its
buffer pool over a ~90 MB store file: the million points and the million
summary rows) and peaked at ~290 MiB while paging all keys; a page is
10,000 keys (~2 MB of JSON) and Python holds one at a time. 512 MiB leaves
room for another machine's allocator and is a fifth of what the same calls
took before the summary table (2.7 GB, and no answer within the timeout:
each grouped every point and built a dict per key).

Also: hostile keys stay plain text to patterns, mistakes are one sentence,
and a comparison too big for one answer is refused. That the summary is
the exact aggregate of the points is tests/test_metric_keys_exact.py.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import Fleet, cpu_heavy
from mlfleet.core.tracking import run_keys as cli_run_keys
from mlfleet.core.base.errors import UsageError
from mlfleet.core.tracking.ingest import parse_lines
from mlfleet.core.jobs import records as job_records
from mlfleet.core.tracking import records as run_records
from mlfleet.core.tracking import run_compare
from mlfleet.core.tracking import run_queries
from mlfleet.core.store.db import Store

BLOCKS, WIDTH = 1000, 1000  # lines x keys per line: 1,000,000 distinct keys
KEYS = BLOCKS * WIDTH + 1  # and loss
WIDE = f"""\
import json, os
with open(os.environ["MLFLEET_METRICS_FILE"], "a") as out:
    out.write(json.dumps({{"params": {{"blocks": {BLOCKS}}}}}) + "\\n")
    out.write(json.dumps({{"summary": {{"loss": "min", "layer0007/w0003": "max"}}}}) + "\\n")
    for b in range({BLOCKS}):
        metrics = {{f"layer{{b:04d}}/w{{i:04d}}": b + i / {WIDTH} for i in range({WIDTH})}}
        out.write(json.dumps({{"step": b, "metrics": metrics}}) + "\\n")
    for step in range(300):
        out.write(json.dumps({{"step": 1000 + step, "metrics": {{"loss": 1.0 / (1 + step),
                                                              "layer0007/w0003": -step}}}}) + "\\n")
"""
SMALL = """\
from mlfleet import track
track.log_params({"blocks": 1})
for step in range(50):
    track.log({"loss": 2.0 / (1 + step), "layer0000/w0000": step, "z_last": 1.0}, step=step)
track.flush()
"""
# layer0007/w0003: 7.003 at step 7, then 0, -1, ..., -299 at steps 1000..1299.
CHOSEN = "layer0007/w0003"
CHOSEN_VALUES = [7 + 3 / WIDTH] + [-float(s) for s in range(300)]
ROUGH_JSON_BYTES = 200_000  # a bounded answer: 20-100 keys of a few hundred bytes each, not a million
RSS_BOUND = 512 << 20


class PeakRss:
    """The largest RSS of a process while the block runs, sampled every 20 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def submit(fleet: Fleet, name: str, script: str) -> str:
    (fleet.root / "specs").mkdir(exist_ok=True)
    (fleet.root / "specs" / f"{name}.py").write_text(script)
    spec = fleet.write_spec(name, f"name: {name}\ncommand: [python, {name}.py]\n")
    job_id = fleet.cli("submit", str(spec), check=True).out.strip()
    # A job is done only once its metrics file is drained into the store.
    job = fleet.wait_state(job_id, {"succeeded", "failed"}, timeout=600)
    assert job["state"] == "succeeded", job
    return job["run_id"]


def text_of(fleet: Fleet, *args: str) -> str:
    done = fleet.cli(*args, timeout=400)
    assert done.code == 0, (args, done.err[-2000:])
    assert len(done.out.encode()) < ROUGH_JSON_BYTES, (args, len(done.out))
    return done.out


def json_of(fleet: Fleet, *args: str) -> Any:
    return json.loads(text_of(fleet, *args, "--json"))


def test_a_run_with_a_million_keys_is_listed_shown_and_compared_in_bounded_answers(fleet: Fleet) -> None:
    wide = submit(fleet, "wide", WIDE)
    small = submit(fleet, "small", SMALL)
    pid = fleet.controller_pid
    assert pid is not None

    with PeakRss(pid) as rss:
        runs = {r["run_id"]: r for r in json_of(fleet, "runs", "list")}
        assert runs[wide]["metric_keys"] == {"total": KEYS, "matching": KEYS, "shown": 20, "left_out": KEYS - 20}
        assert runs[wide]["points"] == BLOCKS * WIDTH + 600
        assert list(runs[wide]["metrics"]) == [f"layer0000/w{i:04d}" for i in range(20)]
        assert runs[small]["metric_keys"] == {"total": 3, "matching": 3, "shown": 3, "left_out": 0}
        listed = text_of(fleet, "runs", "list")
        assert str(KEYS) in listed and wide in listed

        # A filter and sort on one key among a million: the right run, the right values, that key shown.
        picked = json_of(fleet, "runs", "list", "--where", f'metrics."{CHOSEN}".min < -298',
                         f'--sort=-metrics."{CHOSEN}".max', "--max-keys", "1")
        assert [r["run_id"] for r in picked] == [wide]
        chosen = picked[0]["metrics"][CHOSEN]
        assert chosen == {"min": -299.0, "max": CHOSEN_VALUES[0], "mean": sum(CHOSEN_VALUES) / 301,
                          "last": -299.0, "last_step": 1299, "points": 301,
                          "summary": {"mode": "max", "value": CHOSEN_VALUES[0]}}  # track.summary declared max
        assert list(picked[0]["metrics"]) == ["layer0000/w0000", CHOSEN]
        assert [r["run_id"] for r in json_of(fleet, "runs", "list", "--where",
                                             'metrics."layer0999/w0999".count = 1')] == [wide]
        assert [r["run_id"] for r in json_of(fleet, "runs", "list", "--where", "metrics.loss.last < 0.01",
                                             "--keys", "loss")] == [wide]

        shown = json_of(fleet, "runs", "show", wide)
        assert len(shown["metrics"]) == 100 and shown["metrics"][0]["key"] == "layer0000/w0000"
        assert shown["metric_keys"] == {"shown": 100, "total": KEYS, "matching": KEYS, "left_out": KEYS - 100,
                                        "next": "layer0000/w0099", "pattern": None}
        text = text_of(fleet, "runs", "show", wide)
        assert f"... and {KEYS - 100:,} more metric keys ({KEYS:,} in all); see them with --keys PATTERN" in text
        layer7 = json_of(fleet, "runs", "show", wide, "--keys", "layer0007/*", "--max-keys", "1000")
        assert [m["key"] for m in layer7["metrics"]] == [f"layer0007/w{i:04d}" for i in range(1000)]
        assert layer7["metric_keys"]["left_out"] == 0 and layer7["metric_keys"]["matching"] == 1000
        one = next(m for m in layer7["metrics"] if m["key"] == CHOSEN)
        assert one == {"key": CHOSEN, "points": 301, "min": -299.0, "max": CHOSEN_VALUES[0],
                       "mean": sum(CHOSEN_VALUES) / 301, "last": -299.0, "last_step": 1299}
        assert layer7["summary"] == {CHOSEN: {"mode": "max", "value": CHOSEN_VALUES[0]}, "loss": {"mode": "min",
                                                                                             "value": 1 / 300}}

        compared = json_of(fleet, "runs", "compare", wide, small)
        assert compared["metric_keys"] == {"compared": 20, "matching": KEYS + 1, "left_out": KEYS + 1 - 20,
                                           "estimated": False, "pattern": None}  # z_last is the small run's own
        assert list(compared["metrics"]) == [f"layer0000/w{i:04d}" for i in range(20)]
        text = text_of(fleet, "runs", "compare", wide, small)
        assert f"... and {KEYS + 1 - 20:,} more metrics not compared ({KEYS + 1:,} in all)" in text
        loss = json_of(fleet, "runs", "compare", wide, small, "--metric", "loss", "--metric", CHOSEN)
        assert loss["metrics"]["loss"]["best"][wide] == {"value": 1 / 300, "step": 1299, "mode": "min"}
        assert loss["metrics"]["loss"]["best"][small] == {"value": 2 / 50, "step": 49, "mode": "min"}
        assert loss["metrics"][CHOSEN]["best"][wide] == {"value": CHOSEN_VALUES[0], "step": 7, "mode": "max"}
        assert loss["metrics"][CHOSEN]["curves"][wide]["points"] == 301
        assert loss["metric_keys"]["left_out"] == 0
        by_glob = json_of(fleet, "runs", "compare", wide, small, "--keys", "z_*")
        assert list(by_glob["metrics"]) == ["z_last"] and by_glob["metric_keys"]["left_out"] == 0

        # A row per run cannot hold five million columns: say so, and export the metrics named.
        refused = fleet.cli("runs", "export", "--output", str(fleet.files / "all.csv"), "--format", "csv")
        assert refused.code == 2 and refused.err.strip() == (
            f"mlfleet: the 2 runs have {KEYS + 1:,} metric keys, 5 columns each, and a row per run holds at most "
            "2,000 keys; name them with --metric K, or write the points with --metrics")
        assert not (fleet.files / "all.csv").exists()
        out = fleet.files / "two.csv"
        fleet.cli("runs", "export", "--output", str(out), "--format", "csv", "--metric", CHOSEN, "--metric", "loss",
                  check=True)
    header = out.read_text().split("\n")[0].split(",")
    assert [h for h in header if h.startswith("metrics.")] == [
        f"metrics.{k}.{p}" for k in (CHOSEN, "loss") for p in ("min", "max", "last", "last_step", "points")]
    assert rss.peak < RSS_BOUND, f"controller RSS reached {rss.peak / 2**20:.0f} MiB"


@cpu_heavy
def test_all_keys_pages_through_a_million_keys_once_each_in_order(fleet: Fleet) -> None:
    wide = submit(fleet, "wide", WIDE)
    pid = fleet.controller_pid
    with PeakRss(pid) as rss:
        done = fleet.cli("runs", "show", wide, "--all-keys", timeout=900)
    assert done.code == 0, done.err[-2000:]
    lines = done.out.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("METRIC"))
    keys = [line.split()[0] for line in lines[start + 1:start + 1 + KEYS]]
    assert keys == sorted(keys) and len(set(keys)) == KEYS
    assert keys[0] == "layer0000/w0000" and keys[-1] == "loss"
    assert lines[start + 1 + KEYS].startswith("lineage:")
    assert "more metric keys" not in done.out
    assert rss.peak < RSS_BOUND, f"controller RSS reached {rss.peak / 2**20:.0f} MiB"

    # 15,000 keys: a page of 10,000 and one of 5,000, written as one JSON document.
    pages = json.loads(fleet.cli("runs", "show", wide, "--all-keys", "--keys", "layer00[0-2][0-4]/*", "--json",
                                 timeout=300, check=True).out)
    assert [m["key"] for m in pages["metrics"]] == [f"layer{b:04d}/w{i:04d}" for b in
                                                    [10 * t + u for t in range(3) for u in range(5)] for i in range(WIDTH)]
    assert pages["metric_keys"] == {"shown": 15_000, "total": KEYS, "matching": 15_000, "left_out": 0, "next": None,
                                    "pattern": "layer00[0-2][0-4]/*"}
    assert pages["summary"] == {CHOSEN: {"mode": "max", "value": CHOSEN_VALUES[0]},
                                "loss": {"mode": "min", "value": 1 / 300}}


HOSTILE_KEYS = ["a*b", "a?b", "[0]", "x'y", "日本", "", "k" * 5000, "a\\b", "drop table runs; --", "loss"]
HOSTILE = f"""\
import json, os
with open(os.environ["MLFLEET_METRICS_FILE"], "a") as out:
    for step in range(3):
        out.write(json.dumps({{"step": step, "metrics": {{k: step for k in {HOSTILE_KEYS!r}}}}}) + "\\n")
"""


def test_hostile_keys_are_plain_text_to_patterns_and_mistakes_are_one_sentence(fleet: Fleet) -> None:
    run = submit(fleet, "hostile", HOSTILE)
    shown = json_of(fleet, "runs", "show", run)
    assert [m["key"] for m in shown["metrics"]] == sorted(HOSTILE_KEYS)
    assert all(m["points"] == 3 and m["last"] == 2.0 and m["mean"] == 1.0 for m in shown["metrics"])
    for pattern, want in (("a\\*b", ["a*b"]), ("a?b", ["a*b", "a?b", "a\\b"]), ("[[]0]", ["[0]"]), ("x'y", ["x'y"]),
                          ("日*", ["日本"]), ("a\\\\b", ["a\\b"]), ("k*", ["k" * 5000]),
                          ("'; drop table runs; --", []), ("*", sorted(HOSTILE_KEYS))):
        got = json_of(fleet, "runs", "show", run, "--keys", pattern)
        assert [m["key"] for m in got["metrics"]] == want, pattern
        assert got["metric_keys"]["matching"] == len(want) and got["metric_keys"]["total"] == len(HOSTILE_KEYS)
    assert [r["run_id"] for r in json_of(fleet, "runs", "list", "--where", 'metrics."a*b".count = 3')] == [run]
    assert [r["run_id"] for r in json_of(fleet, "runs", "list", "--where", 'metrics."x\'y".max = 2')] == [run]
    compared = json_of(fleet, "runs", "compare", run, "--keys", "a[*?]b")
    assert sorted(compared["metrics"]) == ["a*b", "a?b"]
    assert len(json_of(fleet, "runs", "list")) == 1  # nothing was dropped

    for args, message in (
            (("runs", "show", run, "--keys", ""), "mlfleet: --keys needs a pattern, e.g. --keys 'val_*'"),
            (("runs", "show", run, "--max-keys", "20000"), "mlfleet: --max-keys must be between 1 and 10,000, got 20000"),
            (("runs", "list", "--max-keys", "10001"), "mlfleet: --max-keys must be between 1 and 10,000, got 10001"),
            (("runs", "compare", run, "--max-keys", "1001"), "mlfleet: --max-keys must be between 1 and 1,000, got 1001"),
            (("runs", "compare", run, "--metric", "loss", "--keys", "l*"),
             "mlfleet: give the metrics by name (--metric) or by pattern (--keys), not both"),
            (("runs", "show", run, "--keys", "x" * 1001), "mlfleet: --keys pattern is 1,001 characters; the most is 1,000")):
        done = fleet.cli(*args)
        assert done.code == 2 and "Traceback" not in done.err, (args, done.err)
        assert done.err.strip().startswith(message) and len(done.err.strip().splitlines()) == 1, (args, done.err)


def test_a_comparison_too_big_for_one_answer_is_refused_in_one_sentence(tmp_path: Path) -> None:
    store = Store(tmp_path / "mlfleet.duckdb")
    try:
        job_records.insert_job(store.con, {"job_id": "j1", "name": "long", "project": "p", "owner": "me",
                                       "spec": {"name": "long"}, "spec_hash": "h", "priority": 0, "max_attempts": 1,
                                       "submitted_at": 0.0}, "me")
        job_records.dispatch(store.con, "j1", {"run_id": "j1-1", "attempt": 1, "project": "p", "name": "long",
                                           "owner": "me", "host": "local", "gpus": [], "spec_hash": "h",
                                           "workdir": "/tmp", "command": ["true"]})
        text = "".join(json.dumps({"step": i, "metrics": {"loss": 1 / (i + 1), "acc": i}}) + "\n"
                       for i in range(60_000))
        assert run_records.ingest_metrics(store.con, "j1-1", 0, len(text), parse_lines(text, 0))
        with pytest.raises(UsageError, match="^2 curves of up to 100,000 buckets are 120,000 buckets; the most is "
                                             "100,000: ask for fewer --points, runs or metrics$"):
            run_compare.compare_runs(store.con, ["j1-1"], None, 100_000)
        fits = run_compare.compare_runs(store.con, ["j1-1"], None, 50_000)
        assert [len(m["curves"]["j1-1"]["step"]) for m in fits["metrics"].values()] == [50_000, 50_000]
    finally:
        store.close()



def test_a_long_list_carries_fewer_keys_per_run_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_queries, "LIST_ENTRIES", 100)  # as 2,500 runs would with the real budget of 50,000
    store = Store(tmp_path / "mlfleet.duckdb")
    try:
        for r in range(40):
            store.con.execute("insert into runs (run_id, job_id, attempt, project, name, owner, host, state, "
                              "created_at) values (?, ?, 1, 'p', 'n', 'me', 'local', 'succeeded', now())",
                              [f"j{r:02d}-1", f"j{r:02d}"])
            store.con.execute("insert into ingest_offsets (run_id, stream, byte_offset, lines) values (?, 'metrics', "
                              "0, 0)", [f"j{r:02d}-1"])
            text = json.dumps({"step": 1, "metrics": {f"k{i:02d}": i for i in range(30)}}) + "\n"
            assert run_records.ingest_metrics(store.con, f"j{r:02d}-1", 0, len(text), parse_lines(text, 0))
        runs = run_queries.list_runs(store.con, "metrics.k29.max = 29", None, 1000, None, 20)
        assert len(runs) == 40
        for run in runs:
            assert list(run["metrics"]) == ["k00", "k01", "k29"]  # 100 // 40 = 2 each, and the key the filter names
            assert run["metric_keys"] == {"total": 30, "matching": 30, "shown": 3, "left_out": 27}
    finally:
        store.close()


def test_how_many_keys_two_huge_runs_share_is_an_estimate_and_says_so(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_compare, "EXACT_DISTINCT", 1000)  # as two runs of a few million keys each would
    store = Store(tmp_path / "mlfleet.duckdb")
    try:
        for r, first in (("ja-1", 0), ("jb-1", 1500)):  # keys 0..2999 and 1500..4499: 4,500 in all
            store.con.execute("insert into runs (run_id, job_id, attempt, project, name, owner, host, state, "
                              "created_at) values (?, ?, 1, 'p', 'n', 'me', 'local', 'succeeded', now())",
                              [r, r[:2]])
            store.con.execute("insert into ingest_offsets (run_id, stream, byte_offset, lines) values (?, 'metrics', "
                              "0, 0)", [r])
            text = json.dumps({"step": 1, "metrics": {f"k{i:05d}": i for i in range(first, first + 3000)}}) + "\n"
            assert run_records.ingest_metrics(store.con, r, 0, len(text), parse_lines(text, 0))
        counts = run_compare.compare_runs(store.con, ["ja-1", "jb-1"])["metric_keys"]
        assert counts["estimated"] and counts["compared"] == 20 and abs(counts["matching"] - 4500) < 450
        assert counts["left_out"] == counts["matching"] - 20
        monkeypatch.setattr(run_compare, "EXACT_DISTINCT", 6000)
        exact = run_compare.compare_runs(store.con, ["ja-1", "jb-1"])["metric_keys"]
        assert exact == {"compared": 20, "matching": 4500, "left_out": 4480, "estimated": False, "pattern": None}
    finally:
        store.close()
    assert cli_run_keys.left_out_note(counts, "metrics not compared", "use --keys").startswith(
        f"... and about {counts['left_out']:,} more metrics not compared (about {counts['matching']:,} in all)")
