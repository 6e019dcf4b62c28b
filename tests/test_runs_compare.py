"""Comparing runs and exporting them, checked against plain numpy on the same data.

The series are written straight into a real store file, with the awkward
cases on purpose: points without steps (bucketed by line), steps logged out
of order and twice (a resumed run), NaN and inf values, a single point,
steps near 2**62.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest

from mlfleet.core.base.errors import NotFoundError, UsageError
from mlfleet.core.tracking.ingest import ParsedBatch
from mlfleet.core.tracking import records
from mlfleet.core.tracking import run_compare
from mlfleet.core.tracking import run_export
from mlfleet.core.store.db import Store

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)


def add_run(con: duckdb.DuckDBPyConnection, run_id: str, params: dict[str, Any],
            series: dict[str, tuple[np.ndarray | None, np.ndarray, np.ndarray]], minutes: int = 0) -> None:
    con.execute("""insert into runs (run_id, job_id, attempt, project, name, owner, host, gpus, state, created_at,
                   started_at) values (?, ?, 1, 'p', ?, 'me', 'local', [0, 1], 'succeeded', ?, ?)""",
                [run_id, run_id.split("-")[0], f"name-{run_id}", T0 + dt.timedelta(minutes=minutes), T0])
    for k, v in params.items():
        con.execute("insert into params (run_id, key, value, value_text, value_num) values (?, ?, ?, ?, ?)",
                    [run_id, k, json.dumps(v), v if isinstance(v, str) else json.dumps(v),
                     float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None])
    con.execute("insert into ingest_offsets (run_id, stream, byte_offset, lines) values (?, 'metrics', 0, 0)",
                [run_id])
    for chunk, (key, (steps, values, seqs)) in enumerate(series.items()):  # one ingest chunk per series
        n = len(values)
        batch = ParsedBatch(keys=[key] * n, steps=steps.tolist() if steps is not None else [None] * n,
                            values=values.tolist(), timestamps=[None] * n, seqs=seqs.tolist())
        assert records.ingest_metrics(con, run_id, chunk, chunk + 1, batch)


def expected_curve(steps: np.ndarray | None, values: np.ndarray, seqs: np.ndarray, n: int) -> dict[str, Any]:
    """The documented bucketing, computed point by point in numpy."""
    x = steps if steps is not None else seqs
    x0, x1 = int(x.min()), int(x.max())
    span = float(x1 - x0) + 1.0
    buckets = np.minimum(np.floor(((x - x0).astype(np.float64) * float(n)) / span), n - 1).astype(np.int64)
    out: dict[str, list[Any]] = {"step": [], "min": [], "max": [], "last": []}
    for b in np.unique(buckets):
        sel = buckets == b
        v = values[sel]
        finite = v[~np.isnan(v)]
        last = v[np.argmax(seqs[sel])]
        out["step"].append(int(x[sel].max()))
        out["min"].append(float(finite.min()) if finite.size else None)
        out["max"].append(float(finite.max()) if finite.size else None)
        out["last"].append(None if math.isnan(last) else float(last))
    for name in ("min", "max", "last"):
        out[name] = [v if v is None or math.isfinite(v) else None for v in out[name]]
    return out


def expected_best(steps: np.ndarray | None, values: np.ndarray, seqs: np.ndarray, mode: str) -> dict[str, Any]:
    x = steps if steps is not None else seqs
    if mode == "last":
        i = int(np.argmax(seqs))
        value = None if math.isnan(values[i]) else float(values[i])
        return {"value": value if value is None or math.isfinite(value) else None, "step": int(x[i]), "mode": mode}
    finite = ~np.isnan(values)
    if not finite.any():
        return {"value": None, "step": None, "mode": mode}
    best = values[finite].min() if mode == "min" else values[finite].max()
    return {"value": float(best) if math.isfinite(best) else None, "step": int(x[values == best].min()), "mode": mode}


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "mlfleet.duckdb")
    yield s
    s.close()


def make_series(rng: np.random.Generator) -> dict[str, dict[str, tuple]]:
    n = 5000
    steps = np.arange(n, dtype=np.int64) * 3 + 7
    loss = np.exp(-steps / 4000) + rng.normal(0, 0.01, n)
    loss[1234] = 50.0  # a spike that must survive downsampling
    loss[2000:2003] = np.nan
    acc = rng.random(n)
    resumed_steps = np.concatenate([np.arange(0, 3000), np.arange(2000, 4000)]).astype(np.int64)  # resumed from 2000
    no_steps = rng.random(777)
    no_steps[5] = np.inf
    huge = np.array([0, 1 << 61, (1 << 62) - 1], dtype=np.int64)
    return {
        "ja-1": {"loss": (steps, loss, np.arange(n, dtype=np.int64) * 2),
                 "val_acc": (steps[::10], acc[::10], np.arange(0, n, 10, dtype=np.int64) * 2 + 1)},
        "jb-1": {"loss": (resumed_steps, rng.random(resumed_steps.size), np.arange(resumed_steps.size, dtype=np.int64)),
                 "val_acc": (None, no_steps, np.arange(no_steps.size, dtype=np.int64) + 100),
                 "one": (np.array([42]), np.array([0.5]), np.array([9]))},
        "jc-1": {"loss": (huge, np.array([3.0, 1.0, 2.0]), np.arange(3, dtype=np.int64)),
                 "all_nan": (np.arange(4, dtype=np.int64), np.full(4, np.nan), np.arange(4, dtype=np.int64))},
    }


# Big series get a UNION branch each, small ones share a grouped join: check both, and a mix.
PATHS = {"a branch per series": 0, "one grouped join": 10**9, "mixed": 1000}


@pytest.mark.parametrize("big", list(PATHS.values()), ids=list(PATHS))
@pytest.mark.parametrize("points", [1, 7, 500, 20_000])
def test_curves_and_best_values_equal_numpy(store: Store, points: int, big: int,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_compare, "_BIG_SERIES", big)
    data = make_series(np.random.default_rng(3))
    params = {"ja-1": {"lr": 0.1, "model": "resnet", "seed": 1}, "jb-1": {"lr": 0.01, "model": "resnet"},
              "jc-1": {"lr": 0.1, "model": "resnet", "layers": [1, 2]}}
    for i, (run_id, series) in enumerate(data.items()):
        add_run(store.con, run_id, params[run_id], series, minutes=i)
    result = run_compare.compare_runs(store.con, ["ja", "jb-1", "jc"], None, points)

    assert [r["run_id"] for r in result["runs"]] == ["ja-1", "jb-1", "jc-1"]
    assert result["runs"][0]["gpus"] == [0, 1] and result["runs"][0]["name"] == "name-ja-1"
    assert set(result["metrics"]) == {"loss", "val_acc", "one", "all_nan"}
    for run_id, series in data.items():
        for key, (steps, values, seqs) in series.items():
            got = result["metrics"][key]["curves"][run_id]
            want = expected_curve(steps, values, seqs, points)
            assert {k: got[k] for k in want} == want, (run_id, key)
            assert got["axis"] == ("step" if steps is not None else "seq") and got["points"] == len(values)
            assert len(got["step"]) <= points
            mode = "min" if "loss" in key else "max"
            assert result["metrics"][key]["best"][run_id] == expected_best(steps, values, seqs, mode), (run_id, key)
    if points >= 500:  # the spike at step 1234 * 3 + 7 is in some bucket's max
        assert max(v for v in result["metrics"]["loss"]["curves"]["ja-1"]["max"] if v is not None) == 50.0
    assert result["params"] == {"differ": {"lr": {"ja-1": 0.1, "jb-1": 0.01, "jc-1": 0.1},
                                           "seed": {"ja-1": 1, "jb-1": None, "jc-1": None},
                                           "layers": {"ja-1": None, "jb-1": None, "jc-1": [1, 2]}},
                                "same": {"model": "resnet"}}
    json.dumps(result, allow_nan=False)  # plain JSON: no NaN or inf anywhere


def test_only_the_metrics_asked_for_and_runs_missing_one(store: Store) -> None:
    data = make_series(np.random.default_rng(4))
    for run_id, series in data.items():
        add_run(store.con, run_id, {}, series)
    result = run_compare.compare_runs(store.con, ["ja-1", "jc-1"], ["val_acc"], 50)
    assert list(result["metrics"]) == ["val_acc"]
    assert list(result["metrics"]["val_acc"]["curves"]) == ["ja-1"]  # jc-1 never logged it: still compared
    assert result["params"] == {"differ": {}, "same": {}}
    with pytest.raises(NotFoundError, match="^none of runs ja-1, jc-1 logged metric 'nothing'; "):
        run_compare.compare_runs(store.con, ["ja-1", "jc-1"], ["val_acc", "nothing"], 50)  # no run did: a typo


@pytest.mark.parametrize("big", list(PATHS.values()), ids=list(PATHS))
def test_a_declared_summary_mode_wins_over_the_name(store: Store, big: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_compare, "_BIG_SERIES", big)
    steps = np.arange(10, dtype=np.int64)
    values = np.array([5, 3, 9, 1, 4, 8, 2, 7, 6, 0.5])
    add_run(store.con, "jd-1", {}, {"loss": (steps, values, steps), "score": (steps, values, steps)})
    store.con.execute("insert into metric_summaries (run_id, key, mode) values ('jd-1', 'loss', 'max'), "
                      "('jd-1', 'score', 'last')")
    result = run_compare.compare_runs(store.con, ["jd-1"])
    best = {k: m["best"]["jd-1"] for k, m in result["metrics"].items()}
    assert best == {"loss": {"value": 9.0, "step": 2, "mode": "max"},
                    "score": {"value": 0.5, "step": 9, "mode": "last"}}


def test_bad_compare_requests_are_one_sentence(store: Store) -> None:
    add_run(store.con, "je-1", {}, {})
    add_run(store.con, "je-2", {}, {})
    with pytest.raises(NotFoundError, match="no run 'nope'"):
        run_compare.compare_runs(store.con, ["nope"])
    with pytest.raises(UsageError, match="ambiguous"):
        run_compare.compare_runs(store.con, ["je"])
    with pytest.raises(UsageError, match="points must be between 1 and 100000"):
        run_compare.compare_runs(store.con, ["je-1"], None, 0)
    with pytest.raises(UsageError, match="at least one run"):
        run_compare.compare_runs(store.con, [])
    assert run_compare.compare_runs(store.con, ["je-1", "je-1"])["runs"][0]["run_id"] == "je-1"


# ------------------------------------------------------------------ export

def test_export_writes_runs_wide_and_points_long(store: Store, tmp_path: Path) -> None:
    data = make_series(np.random.default_rng(5))
    params = {"ja-1": {"lr": 0.1, "model": "resnet"}, "jb-1": {"lr": 0.01, "model": 3},
              "jc-1": {"LR": "high", "flag": True}}
    for i, (run_id, series) in enumerate(data.items()):
        add_run(store.con, run_id, params[run_id], series, minutes=i)
    store.con.execute("insert into tags values ('ja-1', 'team', 'vision')")

    out = tmp_path / "runs.parquet"
    answer = run_export.export_runs(store.con, str(out), "parquet", "params.lr is not null", "params.lr")
    assert answer == {"output": str(out), "format": "parquet", "rows": 2, "runs": 2, "kind": "runs"}
    con = duckdb.connect()
    table = con.execute("select * from read_parquet(?)", [str(out)])
    names = [d[0] for d in table.description]
    rows = [dict(zip(names, r)) for r in table.fetchall()]
    assert [r["run_id"] for r in rows] == ["jb-1", "ja-1"]  # sorted by lr
    assert rows[1]["params.lr"] == 0.1 and rows[0]["params.model"] == "3" and rows[1]["params.model"] == "resnet"
    assert rows[1]["tags.team"] == "vision" and rows[0]["tags.team"] is None
    loss = data["ja-1"]["loss"][1]
    assert rows[1]["metrics.loss.min"] == float(np.nanmin(loss)) and rows[1]["metrics.loss.points"] == loss.size
    assert not any(n.startswith("params.LR") or n.startswith("params.flag") for n in names)  # jc-1 not selected

    every = tmp_path / "every.csv"
    run_export.export_runs(store.con, str(every), "csv")
    header = every.read_text().splitlines()[0].split(",")
    assert "params.LR" in header and "params.lr (2)" in header  # DuckDB names ignore case: the second gets a suffix

    points = tmp_path / "points.csv"
    answer = run_export.export_runs(store.con, str(points), "csv", "run_id = 'jb-1'", points=True,
                                     metrics=["val_acc"])
    assert answer["rows"] == data["jb-1"]["val_acc"][1].size and answer["kind"] == "points"
    back = con.execute("select run_id, key, step, value, seq from read_csv(?) order by seq", [str(points)]).fetchall()
    assert {r[0] for r in back} == {"jb-1"} and {r[1] for r in back} == {"val_acc"}
    assert [r[4] for r in back] == list(data["jb-1"]["val_acc"][2]) and all(r[2] is None for r in back)


def test_export_refuses_bad_targets_and_leaves_no_half_file(store: Store, tmp_path: Path) -> None:
    add_run(store.con, "jf-1", {}, {})
    with pytest.raises(UsageError, match="must be absolute"):
        run_export.export_runs(store.con, "relative.csv", "csv")
    with pytest.raises(UsageError, match="is not a folder"):
        run_export.export_runs(store.con, str(tmp_path / "missing" / "x.csv"), "csv")
    with pytest.raises(UsageError, match="unknown export format 'xlsx'"):
        run_export.export_runs(store.con, str(tmp_path / "x.xlsx"), "xlsx")
    with pytest.raises(UsageError, match="--where: "):
        run_export.export_runs(store.con, str(tmp_path / "x.csv"), "csv", "params.lr >")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith((".", "x."))]
