"""A job writes metric lines (by hand or with ``mlfleet.track``) and mlfleet reads them back.

The format is docs/metrics.md: one JSON object per line with ``metrics``,
``params`` or ``tags``; ``ts`` and ``step`` optional; a bad line is counted
and skipped while the lines around it still count.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from mlfleet.core.tracking.ingest import parse_lines


def test_metric_lines_become_points_with_step_time_and_line_number() -> None:
    batch = parse_lines(
        '{"ts": 1732800000.5, "step": 10, "metrics": {"loss": 0.31, "acc": 0.9}}\n'
        '{"ts": 1732800001.0, "step": 11, "metrics": {"loss": 0.29}}\n',
        first_seq=0,
    )
    assert batch.keys == ["loss", "acc", "loss"]
    assert batch.values == [0.31, 0.9, 0.29]
    assert batch.steps == [10, 10, 11]
    assert batch.timestamps == [1732800000.5, 1732800000.5, 1732800001.0]
    assert batch.seqs == [0, 0, 1]
    assert (batch.lines, batch.bad_lines, batch.first_error) == (2, 0, "")


def test_step_and_time_are_optional() -> None:
    batch = parse_lines('{"metrics": {"loss": 1}}\n{"step": 3.0, "metrics": {"loss": 2}}\n', first_seq=0)
    assert batch.steps == [None, 3]
    assert batch.timestamps == [None, None]
    assert batch.values == [1.0, 2.0]
    assert batch.bad_lines == 0


def test_seq_continues_from_where_the_previous_batch_ended() -> None:
    first = parse_lines('{"metrics": {"a": 1}}\n{"metrics": {"a": 2}}\n', first_seq=0)
    second = parse_lines('{"metrics": {"a": 3}}\n\n{"metrics": {"a": 4}}\n', first_seq=first.lines)
    assert first.seqs == [0, 1]
    # a blank line still takes its line number, so seq is the line's place in the file
    assert second.seqs == [2, 4]
    assert second.lines == 3 and second.bad_lines == 0


def test_params_and_tags_are_kept_and_the_last_value_wins() -> None:
    batch = parse_lines(
        '{"params": {"lr": 0.001, "model": "resnet18", "layers": [64, 128]}}\n'
        '{"tags": {"dataset": "cifar10", "epochs": 3}}\n'
        '{"params": {"lr": 0.0005}}\n',
        first_seq=0,
    )
    assert batch.params == {"lr": 0.0005, "model": "resnet18", "layers": [64, 128]}
    assert batch.tags == {"dataset": "cifar10", "epochs": "3"}
    assert batch.keys == [] and batch.bad_lines == 0


def test_nan_and_infinity_survive_as_bare_tokens_and_as_strings() -> None:
    batch = parse_lines(
        '{"step": 1, "metrics": {"loss": NaN, "grad": Infinity, "neg": -Infinity}}\n'
        '{"step": 2, "metrics": {"loss": "nan", "grad": "inf", "neg": "-inf", "big": "Infinity"}}\n',
        first_seq=0,
    )
    assert batch.bad_lines == 0
    got = dict(zip(zip(batch.keys, batch.steps), batch.values))
    assert math.isnan(got[("loss", 1)]) and math.isnan(got[("loss", 2)])
    assert got[("grad", 1)] == got[("grad", 2)] == got[("big", 2)] == math.inf
    assert got[("neg", 1)] == got[("neg", 2)] == -math.inf


def test_bad_lines_are_counted_and_skipped_while_the_good_ones_survive() -> None:
    text = "\n".join([
        '{"step": 1, "metrics": {"loss": 0.5}}',  # seq 100
        'loss=0.4 step=2',  # 101: not JSON
        '[1, 2, 3]',  # 102: not an object
        '{"step": 3, "metrics": {"loss": 0.3}}',  # 103
        '{"step": 4, "message": "hello"}',  # 104: none of metrics, params, tags
        '{"step": 5, "metrics": {"loss": 0.2}',  # 105: cut short
        '{"step": 6, "metrics": {"loss": 0.1}}',  # 106
    ]) + "\n"
    batch = parse_lines(text, first_seq=100)
    assert batch.values == [0.5, 0.3, 0.1]
    assert batch.steps == [1, 3, 6]
    assert batch.seqs == [100, 103, 106]
    assert batch.lines == 7
    assert batch.bad_lines == 4
    # the first bad line is named by its line number in the file (seq 101 is line 102)
    assert batch.first_error.startswith("line 102: not JSON")


def test_a_metric_that_is_not_a_number_is_skipped_but_its_neighbours_on_the_line_are_kept() -> None:
    batch = parse_lines('{"step": 1, "metrics": {"loss": 0.5, "note": "warming up", "lr": [0.1]}}\n', first_seq=0)
    assert batch.keys == ["loss"] and batch.values == [0.5]
    # one line is wrong, so one bad line, however many values on it are wrong
    assert batch.bad_lines == 1
    assert batch.bad_lines <= batch.lines
    assert "note" in batch.first_error


# --------------------------------------------------- mlfleet.track, for real

def _run_job(script: str, cwd: Path, metrics_file: Path | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLEET_")}
    if metrics_file is not None:
        env["MLFLEET_METRICS_FILE"] = str(metrics_file)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_a_job_that_logs_with_track_and_exits_leaves_lines_mlfleet_reads_back(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    done = _run_job("""
        from mlfleet import track
        track.log({"loss": 0.5}, step=1)
        track.log_params({"lr": 0.1})
        track.log({"x": float("nan")}, step=2)
    """, tmp_path, metrics)
    assert done.returncode == 0, done.stderr
    text = metrics.read_text()  # written at exit: the job never called flush()
    assert text.endswith("\n") and len(text.splitlines()) == 3
    batch = parse_lines(text, first_seq=0)
    assert batch.bad_lines == 0, batch.first_error
    assert batch.keys == ["loss", "x"]
    assert batch.steps == [1, 2]
    assert batch.values[0] == 0.5 and math.isnan(batch.values[1])
    assert batch.seqs == [0, 2]
    assert batch.params == {"lr": 0.1}
    assert all(ts is not None for ts in batch.timestamps)


def test_track_writes_numpy_scalars_tags_and_flushes_on_demand(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    done = _run_job("""
        import os, numpy
        from mlfleet import track
        track.set_tags({"dataset": "cifar10", "epochs": 3})
        track.log({"acc": numpy.float32(0.25), "loss": numpy.float64("inf")}, step=numpy.int64(7))
        track.flush()
        print(len(open(os.environ["MLFLEET_METRICS_FILE"]).read().splitlines()))
    """, tmp_path, metrics)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2"  # on disk before the job ended
    batch = parse_lines(metrics.read_text(), first_seq=0)
    assert batch.bad_lines == 0, batch.first_error
    assert batch.tags == {"dataset": "cifar10", "epochs": "3"}
    assert dict(zip(batch.keys, batch.values)) == {"acc": 0.25, "loss": math.inf}
    assert batch.steps == [7, 7]


def test_track_is_a_no_op_outside_mlfleet(tmp_path: Path) -> None:
    done = _run_job("""
        import os, threading
        from mlfleet import track
        track.log({"loss": 0.5}, step=1)
        track.log_params({"lr": 0.1})
        track.set_tags({"a": "b"})
        track.flush()
        print(threading.active_count(), track.run_id())
    """, tmp_path, metrics_file=None)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "None"]  # no flusher thread, no run
    assert list(tmp_path.iterdir()) == []  # and no file anywhere it could have written
