"""The pure parts of tracking: both parsing paths agree, track writes what ingest reads, GPU use sums up."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mlfleet.core.tracking import ingest
from mlfleet.core.tracking.ingest import parse_lines
from mlfleet.core.tracking.lineage import git_lineage, gpu_usage
from mlfleet.core.base.models import GpuProcess, GpuSample, HostSample

SHA = "ab" * 32


def _lines(rng: random.Random, n: int) -> list[str]:
    out = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.8:
            out.append(json.dumps({"ts": 1732800000 + i, "step": i, "metrics": {"loss": rng.random(), "n": i}}))
        elif kind < 0.85:
            out.append(json.dumps({"params": {"lr": rng.random()}, "tags": {"t": i}}))
        elif kind < 0.9:
            out.append(json.dumps({"summary": {"loss": rng.choice(["min", "max", "last"])}}))
        elif kind < 0.95:
            out.append(json.dumps({"ts": 1732800000, "artifact": {"path": f"/m/{i}.pt", "size": i, "sha256": SHA}}))
        else:
            out.append(json.dumps({"step": float(i), "metrics": {"loss": "nan", "ok": True}}))
    return out


def _same(a: ingest.ParsedBatch, b: ingest.ParsedBatch) -> None:
    for name in ("keys", "steps", "timestamps", "seqs", "params", "tags", "summaries", "artifacts", "lines",
                 "bad_lines", "first_error"):
        assert getattr(a, name) == getattr(b, name), name
    assert [v if not math.isnan(v) else "nan" for v in a.values] == [v if not math.isnan(v) else "nan" for v in b.values]


def test_the_fast_path_and_the_line_by_line_path_give_the_same_batch() -> None:
    text = "\n".join(_lines(random.Random(5), 3000)) + "\n"
    fast = ingest._parse_typed(text, 17)
    assert fast is not None  # this chunk is the common shape: one decode call
    _same(fast, ingest._parse_each(text, 17))
    assert len(fast.artifacts) > 0 and fast.summaries and fast.params


def test_a_chunk_with_a_blank_or_bad_line_takes_the_careful_path_and_keeps_seqs() -> None:
    good = _lines(random.Random(6), 50)
    text = "\n".join(good[:10] + ["", "not json", "[1]"] + good[10:]) + "\n"
    assert ingest._parse_typed(text, 0) is None
    batch = parse_lines(text, 0)
    assert batch.lines == 53 and batch.bad_lines == 2
    assert max(batch.seqs) <= 52 and 10 not in batch.seqs


def test_summaries_and_artifacts_are_checked() -> None:
    text = "\n".join([
        '{"summary": {"loss": "min", "acc": "best"}}',
        '{"artifact": {"path": "relative.pt", "size": 1, "sha256": "%s"}}' % SHA,
        '{"artifact": {"path": "/abs.pt", "size": -1, "sha256": "%s"}}' % SHA,
        '{"artifact": {"path": "/abs.pt", "size": 3, "sha256": "xyz"}}',
        '{"artifact": {"path": "/abs.pt", "size": 3, "sha256": "%s"}}' % SHA,
    ]) + "\n"
    batch = parse_lines(text, 0)
    assert batch.summaries == {"loss": "min"}
    assert batch.artifacts == {"/abs.pt": {"sha256": SHA, "size": 3, "ts": None}}
    assert batch.bad_lines == 4 and "'best'" in batch.first_error


def _job(script: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    metrics = cwd / "metrics.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLEET_")}
    env["MLFLEET_METRICS_FILE"] = str(metrics)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60)
    return done, metrics


def test_track_writes_summaries_artifacts_and_fast_lines_that_ingest_reads(tmp_path: Path) -> None:
    done, metrics = _job("""
        import numpy
        from mlfleet import track
        track.log({"loss": numpy.float64(0.25), "n": 3, "tiny": 1e-300}, step=1)
        track.log({"loss": numpy.float32(0.5), "ok": True, "bad": float("inf")}, step=2)
        track.log({"é \\"quoted\\"": 1.0})
        track.summary("loss", "min")
        open("w.bin", "wb").write(b"x" * 1000)
        print(track.log_artifact("w.bin"))
        try:
            track.summary("loss", "best")
        except ValueError as exc:
            print("refused:", exc)
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "refused: summary mode must be one of min, max, last" in done.stdout
    batch = parse_lines(metrics.read_text(), 0)
    assert batch.bad_lines == 0, batch.first_error
    points = list(zip(batch.keys, batch.steps, batch.values))
    assert points[:3] == [("loss", 1, 0.25), ("n", 1, 3.0), ("tiny", 1, 1e-300)]
    assert points[3:6] == [("loss", 2, 0.5), ("ok", 2, 1.0), ("bad", 2, math.inf)]
    assert points[6] == ('é "quoted"', None, 1.0)
    assert batch.summaries == {"loss": "min"}
    path = os.path.realpath(tmp_path / "w.bin")
    import hashlib
    assert batch.artifacts == {path: {"sha256": hashlib.sha256(b"x" * 1000).hexdigest(), "size": 1000,
                                      "ts": batch.artifacts[path]["ts"]}}


def test_outside_mlfleet_summary_and_log_artifact_do_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLEET_")}
    done = subprocess.run([sys.executable, "-c", "from mlfleet import track\n"
                           "track.summary('loss'); print(track.log_artifact('/no/such/file'))"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]"


def test_git_lineage_is_null_outside_a_repository(tmp_path: Path) -> None:
    assert git_lineage(tmp_path) == {"git_repo": None, "git_commit": None, "git_branch": None, "git_dirty": None,
                                     "diff_hash": None}


def _sample(ts: float, util: float, memory: int, run_id: str | None = None) -> HostSample:
    processes = [GpuProcess(pid=1, used_memory=memory // 2, run_id=run_id)] if run_id else []
    return HostSample(seq=int(ts), ts=ts, cpu_percent=0, cpu_count=1, load1=0, memory_total=1, memory_used=0,
                      swap_used=0, disk_total=1, disk_used=0, net_rx_bps=0, net_tx_bps=0, gpu_state="ok",
                      gpus=[GpuSample(index=0, utilization=util, memory_used=memory, processes=processes),
                            GpuSample(index=1, utilization=100.0, memory_used=memory)])


def test_gpu_use_weighs_stored_windows_and_live_samples() -> None:
    rows = [{"ts": 110.0, "window_s": 10, "gpu_index": 0, "utilization": 20.0, "memory_used": 100},
            {"ts": 110.0, "window_s": 10, "gpu_index": 1, "utilization": 99.0, "memory_used": 999}]  # not ours
    live = [_sample(120.0 + i, 80.0, 300) for i in range(10)]
    usage = gpu_usage("r", [0], 100.0, 129.0, live, rows, 1.0)
    assert usage["elapsed_s"] == 29.0 and usage["gpu_hours"] == pytest.approx(29 / 3600, abs=1e-6)
    assert (usage["gpu_util_mean"], usage["gpu_util_peak"]) == (50.0, 80.0)  # 10 s at 20 %, 10 s at 80 %
    assert (usage["gpu_mem_mean"], usage["gpu_mem_peak"]) == (200.0, 300)


def test_a_process_of_the_run_counts_with_its_own_memory() -> None:
    live = [_sample(10.0, 40.0, 1000, run_id="r")]
    usage = gpu_usage("r", [], 10.0, 11.0, live, [], 1.0)
    assert usage["gpu_hours"] == 0
    assert usage["gpu_util_mean"] == 40.0 and usage["gpu_mem_peak"] == 500.0
