"""The run filter language: what parses, what fails and how, and that SQL agrees with plain Python.

Runs are written straight into a real store file (``Store``, the shipped
schema); every filter is evaluated twice, by ``run_queries.list_runs`` in
DuckDB and by a small Python evaluator over the same data written here,
and both must pick the same runs.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import re
from pathlib import Path
from typing import Any

import pytest

from conftest import cpu_heavy
from mlfleet.core.base.errors import UsageError
from mlfleet.core.tracking.runfilter import And, Compare, FilterError, Field, Not, Or, SortKey, parse_filter, parse_sort
from mlfleet.core.tracking.ingest import ParsedBatch
from mlfleet.core.tracking import records
from mlfleet.core.tracking import run_queries
from mlfleet.core.store.db import Store

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)


# ----------------------------------------------------------------- data

def make_runs(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    runs = []
    for i in range(n):
        params: dict[str, Any] = {}
        if rng.random() < 0.85:
            params["lr"] = rng.choice([0.1, 0.01, 0.001, 0.03, 1, 0])
        if rng.random() < 0.7:
            params["layers"] = rng.choice([1, 2, 3, 4])
        if rng.random() < 0.8:
            params["model"] = rng.choice(["resnet", "vit", "Résnet-50", "o'brien", "res_net", "ResNet"])
        if rng.random() < 0.5:
            params["flag"] = rng.choice([True, False])
        if rng.random() < 0.3:
            params["select"] = rng.choice(["x", "drop table runs"])
        if rng.random() < 0.2:
            params["lr"] = "0.01"  # a number logged as text: compares as text only
        tags = {}
        if rng.random() < 0.7:
            tags["model"] = rng.choice(["resnet", "vit", "gpt"])
        if rng.random() < 0.5:
            tags["team"] = rng.choice(["a", "b", "日本"])
        metrics: dict[str, list[tuple[int | None, float, int]]] = {}
        for key in ("loss", "val/acc"):
            if rng.random() < 0.8:
                count = rng.randint(1, 30)
                points = []
                for s in range(count):
                    value = rng.choice([rng.random(), rng.random(), rng.random(), float("nan")]) \
                        if rng.random() < 0.1 else rng.random()
                    points.append((s, value, s))
                metrics[key] = points
        runs.append({
            "run_id": f"j{i:03d}-1", "job_id": f"j{i:03d}", "name": rng.choice(["train", "sweep-a", "sweep_b"]),
            "project": rng.choice(["p1", "p2"]), "host": rng.choice(["local", "node-a"]),
            "state": rng.choice(["succeeded", "failed", "running"]),
            "exit_code": rng.choice([0, 1, None]), "attempt": rng.randint(1, 3),
            "created_at": T0 + dt.timedelta(hours=i), "params": params, "tags": tags, "metrics": metrics,
        })
    return runs


def write_runs(path: Path, runs: list[dict[str, Any]]) -> Store:
    store = Store(path)
    con = store.con
    for r in runs:
        con.execute("""insert into runs (run_id, job_id, attempt, project, name, owner, host, state, created_at,
                       exit_code) values (?, ?, ?, ?, ?, 'me', ?, ?, ?, ?)""",
                    [r["run_id"], r["job_id"], r["attempt"], r["project"], r["name"], r["host"], r["state"],
                     r["created_at"], r["exit_code"]])
        for k, v in r["params"].items():  # the way ingest writes params
            con.execute("insert into params (run_id, key, value, value_text, value_num) values (?, ?, ?, ?, ?)",
                        [r["run_id"], k, json.dumps(v), v if isinstance(v, str) else json.dumps(v),
                         float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None])
        for k, v in r["tags"].items():
            con.execute("insert into tags (run_id, key, value) values (?, ?, ?)", [r["run_id"], k, v])
        batch = ParsedBatch()  # the points go in the way ingest writes them, with their per-key summary
        for key, points in r["metrics"].items():
            for step, value, seq in points:
                batch.keys.append(key)
                batch.steps.append(step)
                batch.values.append(value)
                batch.timestamps.append(None)
                batch.seqs.append(seq)
        con.execute("insert into ingest_offsets (run_id, stream, byte_offset, lines) values (?, 'metrics', 0, 0)",
                    [r["run_id"]])
        assert records.ingest_metrics(con, r["run_id"], 0, 1, batch)
    return store


# ------------------------------------------------- the Python evaluator

def summary(points: list[tuple[int | None, float, int]], which: str) -> float | None:
    values = [v for _, v, _ in points if not math.isnan(v)]
    if which == "count":
        return float(len(points))
    if which == "last":
        last = max(points, key=lambda p: p[2])[1] if points else None
        return None if last is None or math.isnan(last) else last
    if not values:
        return None
    return {"min": min(values), "max": max(values), "mean": math.fsum(values) / len(values)}[which]


def like(text: str, pattern: str, fold: bool) -> bool:
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, re.DOTALL | (re.IGNORECASE if fold else 0)) is not None


def value_of(run: dict[str, Any], field: Field, literal: Any) -> Any:
    """The run's value for the field in the type of ``literal`` (None when it has none of that type)."""
    if field.source == "run":
        value = run.get(field.key)
        return value.timestamp() if isinstance(value, dt.datetime) else value
    if field.source == "metrics":
        points = run["metrics"].get(field.key)
        if points is None:
            return 0.0 if field.summary == "count" else None
        return summary(points, field.summary)
    if field.source == "tags":
        return run["tags"].get(field.key)
    if field.key not in run["params"]:
        return None
    logged = run["params"][field.key]
    if isinstance(literal, (str, bool)):
        return logged if isinstance(logged, str) else json.dumps(logged)
    return float(logged) if isinstance(logged, (int, float)) and not isinstance(logged, bool) else None


def holds(node: Any, run: dict[str, Any]) -> bool:
    if isinstance(node, And):
        return all(holds(n, run) for n in node.items)
    if isinstance(node, Or):
        return any(holds(n, run) for n in node.items)
    if isinstance(node, Not):
        return not holds(node.item, run)
    assert isinstance(node, Compare)
    f = node.field
    if node.op == "is null":
        if f.source in ("params", "tags"):
            return f.key not in run[f.source]
        return value_of(run, f, 0.0) is None
    if node.op in ("like", "ilike"):
        text = value_of(run, f, "")
        return text is not None and like(text, node.value, node.op == "ilike")
    literals = node.value if node.op == "in" else (node.value,)
    for lit in literals:
        value = value_of(run, f, lit)
        if isinstance(lit, bool):
            lit = "true" if lit else "false"
        if value is None:
            continue
        op = "=" if node.op == "in" else node.op
        if {"=": value == lit, "!=": value != lit, "<": value < lit, "<=": value <= lit, ">": value > lit,
                ">=": value >= lit}[op]:
            return True
    return False


# ------------------------------------------------------- random filters

def random_filter(rng: random.Random, depth: int = 0) -> str:
    if depth < 3 and rng.random() < 0.45:
        op = rng.choice(["and", "or", "AND", "Or"])
        left, right = random_filter(rng, depth + 1), random_filter(rng, depth + 1)
        text = f"({left} {op} {right})" if rng.random() < 0.6 else f"{left} {op} {right}"
        return f"not {text}" if rng.random() < 0.2 else text
    cmp = rng.choice(["=", "!=", "<", "<=", ">", ">=", "==", "<>"])
    num = rng.choice(["0.01", "0.1", "1", "0", "1e-3", "-1", ".5", "0.03", "2", "15"])
    atoms = [
        f"params.lr {cmp} {num}", f"params.layers in (1, {rng.randint(2, 4)})", "params.layers not in (2, 3)",
        f"params.model = '{rng.choice(['resnet', 'vit', 'Résnet-50'])}'", "params.model = 'o''brien'",
        f"params.model like '{rng.choice(['res%', '%net', 'R_s%', '%'])}'", "params.model ilike 'RES%'",
        f"params.flag = {rng.choice(['true', 'false', 'TRUE'])}", "params.flag != true",
        f"params.lr {cmp} '0.01'", "params.lr is null", "params.lr is not null",
        "params.\"select\" = 'drop table runs'", "params.select is not null",
        f"tags.model {rng.choice(['=', '!='])} '{rng.choice(['resnet', 'vit'])}'", "tags.team = '日本'",
        "tags.team is null", "tags.model in ('gpt', 'vit')",
        f"metrics.loss.{rng.choice(['min', 'max', 'last', 'mean'])} {cmp} {rng.choice(['0.1', '0.5', '0.9'])}",
        f"metrics.loss.count {cmp} {rng.choice(['0', '5', '15'])}", "metrics.loss.last is null",
        f"metrics.\"val/acc\".max {cmp} 0.5", "metric.val/acc.min < 0.2",
        "state in ('succeeded', 'failed')", f"state = '{rng.choice(['running', 'failed'])}'",
        f"exit_code {cmp} 0", "exit_code is null", f"attempt >= {rng.randint(1, 3)}",
        "name like 'sweep%'", "name like 'sweep\\_b'", "host != 'local'",
        f"created_at > '2026-11-01T{rng.randint(0, 23):02d}:30:00+00:00'",
        f"created_at <= {T0.timestamp() + rng.randint(0, 40) * 3600}",
    ]
    return rng.choice(atoms)


@pytest.fixture(scope="module")
def store_and_runs(tmp_path_factory: pytest.TempPathFactory):
    runs = make_runs(48, seed=5)
    store = write_runs(tmp_path_factory.mktemp("filter") / "mlfleet.duckdb", runs)
    yield store, runs
    store.close()


def listed(store: Store, where: str | None, sort: str | None = None) -> list[str]:
    return [r["run_id"] for r in run_queries.list_runs(store.con, where, sort, limit=1000)]


@cpu_heavy
def test_random_filters_pick_the_same_runs_as_python(store_and_runs) -> None:
    store, runs = store_and_runs
    rng = random.Random(11)
    for _ in range(400):
        text = random_filter(rng)
        node = parse_filter(text)
        expected = {r["run_id"] for r in runs if holds(node, r)}
        assert set(listed(store, text)) == expected, text


def test_the_example_from_the_issue(store_and_runs) -> None:
    store, runs = store_and_runs
    text = "params.lr > 0.01 and (metrics.loss.min < 0.3 or tags.model = 'resnet')"
    node = parse_filter(text)
    expected = {r["run_id"] for r in runs if holds(node, r)}
    assert expected and set(listed(store, text)) == expected


def test_sort_is_by_the_field_with_missing_values_last(store_and_runs) -> None:
    store, runs = store_and_runs

    def newest_first(r: dict[str, Any]) -> tuple[float, str]:
        return (-r["created_at"].timestamp(), r["run_id"])

    by_loss = sorted(runs, key=lambda r: (summary(r["metrics"].get("loss", []), "min") is None,
                                          summary(r["metrics"].get("loss", []), "min") or 0.0, newest_first(r)))
    assert listed(store, None, "metrics.loss.min") == [r["run_id"] for r in by_loss]
    by_loss_desc = sorted(runs, key=lambda r: (summary(r["metrics"].get("loss", []), "min") is None,
                                               -(summary(r["metrics"].get("loss", []), "min") or 0.0),
                                               newest_first(r)))
    assert listed(store, None, "-metrics.loss.min") == [r["run_id"] for r in by_loss_desc]
    assert listed(store, None, "metrics.loss.min desc") == [r["run_id"] for r in by_loss_desc]
    assert listed(store, None) == [r["run_id"] for r in sorted(runs, key=newest_first)]
    by_state = sorted(runs, key=lambda r: (r["state"], newest_first(r)))
    assert listed(store, None, "state") == [r["run_id"] for r in by_state]


def test_a_listed_run_carries_params_tags_and_metric_summaries(store_and_runs) -> None:
    store, runs = store_and_runs
    run = next(r for r in runs if "loss" in r["metrics"] and r["params"])
    got = next(r for r in run_queries.list_runs(store.con, f"run_id = '{run['run_id']}'"))
    assert got["params"] == run["params"] and got["tags"] == run["tags"]
    loss = got["metrics"]["loss"]
    points = run["metrics"]["loss"]
    assert loss["points"] == len(points) and loss["min"] == summary(points, "min")
    assert loss["max"] == summary(points, "max") and loss["last"] == summary(points, "last")
    assert loss["last_step"] == max(points, key=lambda p: p[2])[0]
    assert got["points"] == sum(len(p) for p in run["metrics"].values())
    assert set(got) >= {"run_id", "job_id", "name", "project", "owner", "host", "gpus", "state", "created_at",
                        "started_at", "finished_at", "exit_code", "points", "params", "tags", "metrics"}


# -------------------------------------------------------------- parsing

VALID = {
    "params.lr > 0.01": Compare(Field("params", "lr"), ">", 0.01),
    "PARAMS.lr>=1e-3": Compare(Field("params", "lr"), ">=", 0.001),
    "params.lr<>-2": Compare(Field("params", "lr"), "!=", -2.0),
    "params.a.b = 'x'": Compare(Field("params", "a.b"), "=", "x"),
    'params."lr" = 1': Compare(Field("params", "lr"), "=", 1.0),
    'params."we""ird key" = 1': Compare(Field("params", 'we"ird key'), "=", 1.0),
    "params.\"x'); drop table runs; --\" = 1": Compare(Field("params", "x'); drop table runs; --"), "=", 1.0),
    "params.select = 'from'": Compare(Field("params", "select"), "=", "from"),
    "tags.model = 'o''brien'": Compare(Field("tags", "model"), "=", "o'brien"),
    'tags.model = "resnet"': Compare(Field("tags", "model"), "=", "resnet"),
    "tags.équipe = '日本'": Compare(Field("tags", "équipe"), "=", "日本"),
    "metrics.val_loss.min < 0.3": Compare(Field("metrics", "val_loss", "min"), "<", 0.3),
    "metrics.train/loss.LAST <= 2": Compare(Field("metrics", "train/loss", "last"), "<=", 2.0),
    'metrics."loss.min".max > 1': Compare(Field("metrics", "loss.min", "max"), ">", 1.0),
    "state in ('running', 'failed')": Compare(Field("run", "state"), "in", ("running", "failed")),
    "state not in ('running')": Not(Compare(Field("run", "state"), "in", ("running",))),
    "name not like 'a%'": Not(Compare(Field("run", "name"), "like", "a%")),
    "exit_code is not null": Not(Compare(Field("run", "exit_code"), "is null", None)),
    "params.flag = TRUE": Compare(Field("params", "flag"), "=", True),
    "not not state = 'x'": Not(Not(Compare(Field("run", "state"), "=", "x"))),
    "a.b": None,
}


@pytest.mark.parametrize("text", [t for t, v in VALID.items() if v is not None])
def test_valid_filters_parse_to_the_tree(text: str) -> None:
    assert parse_filter(text) == VALID[text]


def test_and_binds_tighter_than_or_and_parentheses_win() -> None:
    a, b, c = (Compare(Field("run", "state"), "=", x) for x in "abc")
    assert parse_filter("state = 'a' or state = 'b' and state = 'c'") == Or((a, And((b, c))))
    assert parse_filter("(state = 'a' or state = 'b') and state = 'c'") == And((Or((a, b)), c))
    assert parse_filter("not state = 'a' and state = 'b'") == And((Not(a), b))
    assert parse_filter("  ") is None


BAD = {
    "params.lr >": "--where: expected a value after '>', found the end at column 12",
    "params.lr > 0; drop table runs": "--where: unexpected ';' (a filter is one expression, not statements) at column 14",
    "params.lr > 0 drop table runs": "--where: unexpected 'drop' after a complete condition (join conditions with and / or) at column 15",
    "params.lr = 'x": "--where: the quoted text that starts here is never closed at column 13",
    'params."lr = 1': "--where: the quoted name that starts here is never closed at column 8",
    "metrics.loss < 1": "--where: say which summary of metric 'loss': metrics.loss.min, .max, .last, .mean, .count, .summary at column 1",
    "metrics.loss.median < 1": "--where: say which summary of metric 'loss.median': metrics.loss.median.min, .max, .last, .mean, .count, .summary at column 1",
    "lr > 1": None,
    "state = running": "--where: expected a value after '=', found the name 'running' (put text in single quotes: 'running') at column 9",
    "state = 3": "--where: state is text; put the value in quotes: '3' at column 9",
    "metrics.loss.min = 'low'": "--where: metrics.loss.min is a number; compare it with a number, not 'low' at column 20",
    "tags.model = 3": "--where: tags.model is text; put the value in quotes: '3' at column 14",
    "(state = 'a'": "--where: expected ')' to close the '(' at column 1, found the end at column 13",
    "state = 'a')": "--where: unexpected ')' after a complete condition at column 12",
    "state = 'a' and": "--where: expected a field (e.g. params.lr, metrics.loss.min, state), found the end at column 16",
    "params. = 1": "--where: expected a name after '.' at column 7, found '=' at column 9",
    "params = 1": "--where: say which param: params.KEY at column 1",
    'params."" = 1': "--where: a param key cannot be empty at column 1",
    "started_at > 'yesterday'": None,
    "state ~ 'a'": "--where: unexpected character '~' at column 7",
    "state ! 'a'": "--where: unexpected '!' (did you mean '!='?) at column 7",
    "params.lr > 1x": "--where: unexpected 'x' after the number 1 at column 14",
    "state like 3": "--where: like takes a quoted pattern, e.g. name like 'resnet%' at column 12",
    "metrics.loss.min like 'a'": "--where: metrics.loss.min is a number; like works on text at column 18",
    "params.lr in 1": "--where: expected '(' after 'in', found '1' at column 14",
    "params.lr in (1 2)": "--where: expected ',' or ')' in the list after 'in' at column 11, found '2' at column 17",
    "params.lr is 1": "--where: expected null after 'is', found '1' at column 14",
    "params.lr > true": "--where: true and false compare only with = and != at column 13",
    "state = true": "--where: state is a text, not true or false at column 9",
    "params.lr": "--where: expected a comparison (=, !=, <, <=, >, >=, in, like, is null) after params.lr, found the end at column 10",
    "and = 1": "--where: expected a field (e.g. params.lr, metrics.loss.min, state), found 'and' at column 1",
    "params.lr > 1 --": "--where: unexpected '-' after a complete condition at column 15",
    "/* */ state = 'a'": "--where: unexpected character '/' at column 1",
    "params.lr > 0 union select * from runs": None,
    "params.lr > 0 or 1=1": None,
    "state = 'a' or (": None,
    "\x00": "--where: unexpected character '\\x00' at column 1",
    "created_at > '0001-01-01'": None,
}


@pytest.mark.parametrize("text", list(BAD))
def test_bad_filters_fail_with_one_sentence_and_a_column(text: str) -> None:
    with pytest.raises(FilterError) as caught:
        parse_filter(text)
    message = str(caught.value)
    assert isinstance(caught.value, UsageError) and caught.value.exit_code == 2
    assert message.startswith("--where: ") and re.search(r" at column \d+$", message) and "\n" not in message
    if BAD[text] is not None:
        assert message == BAD[text]


def test_nesting_and_length_have_limits_with_a_sentence() -> None:
    deep = "(" * 64 + "state = 'a'" + ")" * 64
    assert parse_filter(deep) == Compare(Field("run", "state"), "=", "a")
    with pytest.raises(FilterError, match="nests deeper than 64 levels at column 65"):
        parse_filter("(" * 65 + "state = 'a'" + ")" * 65)
    with pytest.raises(FilterError, match="nests deeper"):
        parse_filter("not " * 100 + "state = 'a'")
    with pytest.raises(FilterError, match="longer than 10000 characters"):
        parse_filter("state = '" + "a" * 10_000 + "'")
    many = " or ".join(f"params.p{i} = 1" for i in range(33))
    with pytest.raises(FilterError, match="at most 32 different"):
        parse_filter(many)


def test_sort_parses_direction_by_prefix_or_word() -> None:
    assert parse_sort("-metrics.loss.min, name") == [SortKey(Field("metrics", "loss", "min"), True),
                                                     SortKey(Field("run", "name"), False)]
    assert parse_sort("params.lr desc, state ASC") == [SortKey(Field("params", "lr"), True),
                                                      SortKey(Field("run", "state"), False)]
    assert parse_sort(None) == []
    with pytest.raises(FilterError, match="^--sort: use either a leading '-' or asc/desc, not both at column 19$"):
        parse_sort("-metrics.loss.min desc")
    with pytest.raises(FilterError, match="^--sort: expected ',' or the end after the sort field name"):
        parse_sort("name drop table runs")


# --------------------------------------------------------- hostile input

HOSTILE = [
    "params.lr > 0; drop table runs",
    "params.lr > 0 or 1=1",
    "state = '' or ''=''",
    "state = 'x'' or ''1''=''1'",
    "state = 'a'; delete from runs where ''=''",
    "params.\"lr\" = 1 or params.\"x\"\" = 1); drop table runs; --\" = 1",
    "params.\"lr = 1 --\" = 1",
    "tags.\"model'); delete from tags; --\" = 'x'",
    "metrics.\"loss' or '1'='1\".min < 1",
    "params.lr = '\\'; drop table runs; --'",
    "name like '%'' or 1=1 --'",
    "state = 'x' union select * from params",
    "exit_code = 0 /* comment */",
    "state = 'a' -- comment",
    "params.lr in (1, 2); copy runs to '/tmp/x.csv'",
    "state = 'x'\n; drop table runs",
    "\"state\" = 'a'",
    "params.run_id = 'j000-1'",
    "tags.\"key\"\"\" = '\"'",
    "params.lr > 1e999999",
    "params.lr > -1e308 and params.lr < 1e308",
    "created_at > '2026-11-01 00:00:00'; drop table runs",
    "params.\"\u202e\" = 'rtl'",
    "params.\"𝔁\" = '🙂'",
    "(" * 60 + "params.lr > 0" + ")" * 60,
    " or ".join(f"params.\"k{i}; drop table runs\" = {i}" for i in range(32)),
]


def fingerprint(store: Store) -> list[Any]:
    out = []
    for table in ("runs", "params", "tags", "metrics", "jobs", "audit"):
        out.append(store.con.execute(f"select count(*), sum(hash(t)) from {table} t").fetchall())
    out.append(store.con.execute("select table_name from information_schema.tables order by 1").fetchall())
    return out


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_filters_cannot_change_the_store(store_and_runs, text: str) -> None:
    store, runs = store_and_runs
    before = fingerprint(store)
    try:
        node = parse_filter(text)
    except FilterError as exc:
        assert str(exc).startswith("--where: ")
        node = None
    if node is not None:
        compiled = run_queries._Query(node, [])
        sql = compiled.from_sql().replace("'nan'::double", "NAN")  # the one literal the compiler writes
        for word in ("drop", "delete", "union", "copy", "--", "/*", "1=1", "'"):
            assert word not in sql.lower(), (word, sql)
        got = set(listed(store, text))
        assert got == {r["run_id"] for r in runs if holds(node, r)}
    assert fingerprint(store) == before


def test_a_long_list_carries_the_same_summaries(tmp_path: Path) -> None:
    runs = make_runs(300, seed=8)
    store = write_runs(tmp_path / "long.duckdb", runs)
    try:
        got = {r["run_id"]: r for r in run_queries.list_runs(store.con, None, None, 1000)}
        assert len(got) == 300
        for run in runs:
            for key, points in run["metrics"].items():
                summary_got = got[run["run_id"]]["metrics"][key]
                assert (summary_got["min"], summary_got["points"]) == (summary(points, "min"), len(points))
            assert set(got[run["run_id"]]["metrics"]) == set(run["metrics"])
    finally:
        store.close()


def test_limit_is_checked(store_and_runs) -> None:
    store, _ = store_and_runs
    with pytest.raises(UsageError, match="limit must be between 1 and 100000"):
        run_queries.list_runs(store.con, None, None, 0)
    assert len(run_queries.list_runs(store.con, None, None, 3)) == 3
