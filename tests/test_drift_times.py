"""A user's data has dates, timestamps, times of day and durations: they are compared as numbers, on one
scale per measure, whichever file format or type they were read as (real DuckDB over real files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from drift_data import write_sql
from mlfleet.core.drift.check import build_profile, run_check
from mlfleet.core.drift.config import DriftConfig, load_drift_config
from mlfleet.core.drift.scan import Engine
from mlfleet.core.drift.sources import resolve_files

DAYS_2023 = "date '2023-01-01' + cast(floor(random() * 365) as integer)"


def check(ref: Path, cur: Path, config: DriftConfig | None = None, **kw: Any) -> dict[str, Any]:
    report = run_check(config or DriftConfig(), resolve_files(str(ref), "reference"),
                       resolve_files(str(cur), "current"), **kw)
    json.dumps(report, allow_nan=False)
    return report


def col(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in report["columns"] if c["column"] == name)


def test_dates_of_the_same_year_are_not_drift_and_a_month_later_is(tmp_path: Path) -> None:
    """365 distinct days were 365 categories: sampling noise alone made a false DRIFT."""
    select = f"select {DAYS_2023} as day, cast({DAYS_2023} as timestamp) as ts from range(%d)"
    ref = write_sql(tmp_path / "ref.parquet", select % 5000, seed=0.1)
    same = write_sql(tmp_path / "same.parquet", select % 1500, seed=0.7)
    report = check(ref, same)
    for name, duck_type in (("day", "DATE"), ("ts", "TIMESTAMP")):
        c = col(report, name)
        assert (c["kind"], c["test"], c["ref_type"]) == ("numeric", "wasserstein", duck_type)
        assert c["drifted"] is False and c["statistic"] < 0.05, c
        assert c["stats"]["ks_d"] < 0.05 and len(c["histogram"]["edges"]) == 11
    assert report["drifted"] is False and report["drifted_columns"] == 0

    later = write_sql(tmp_path / "later.parquet",
                      f"select {DAYS_2023} + 30 as day, cast({DAYS_2023} + 30 as timestamp) as ts from range(1500)")
    moved = check(ref, later)
    assert [c["drifted"] for c in moved["columns"]] == [True, True]
    day = col(moved, "day")
    # Means and medians are seconds since 1970 (UTC): a month later is 30 days of seconds later.
    assert day["stats"]["mean_cur"] - day["stats"]["mean_ref"] == pytest.approx(30 * 86400, rel=0.1)
    assert day["stats"]["median_cur"] - day["stats"]["median_ref"] == pytest.approx(30 * 86400, rel=0.15)


def test_means_and_medians_are_the_exact_ones(tmp_path: Path) -> None:
    ref = write_sql(tmp_path / "ref.parquet", "select random() * 100 as x from range(3001)", seed=0.2)
    cur = write_sql(tmp_path / "cur.parquet", "select random() * 50 as x from range(2000)", seed=0.3)
    x = col(check(ref, cur), "x")
    import duckdb

    values = {side: np.sort(duckdb.sql(f"select x from '{path}'").fetchnumpy()["x"])
              for side, path in (("ref", ref), ("cur", cur))}
    for side, v in values.items():
        assert x["stats"][f"mean_{side}"] == pytest.approx(v.mean(), rel=1e-12)
        assert x["stats"][f"median_{side}"] == v[(len(v) - 1) // 2]  # the lower median: a value of the data


def test_kind_numeric_on_a_timestamp_is_honoured(tmp_path: Path) -> None:
    """A timestamp of 3 distinct values is a category by default; kind: numeric makes it a number, not 'text'."""
    select = "select timestamp '2024-01-01' + to_hours(cast(floor(random() * 3) as bigint)) as ts from range(%d)"
    ref = write_sql(tmp_path / "ref.parquet", select % 800, seed=0.1)
    cur = write_sql(tmp_path / "cur.parquet", select % 600, seed=0.2)
    default = col(check(ref, cur), "ts")
    assert default["kind"] == "categorical"
    assert set(default["histogram"]["categories"]) == {"2024-01-01 00:00:00", "2024-01-01 01:00:00",
                                                       "2024-01-01 02:00:00"}  # read as times, not seconds
    assert "times with 3 distinct reference values" in default["notes"][0]
    (tmp_path / "drift.yaml").write_text("columns:\n  ts: {kind: numeric}\n")
    forced = col(check(ref, cur, load_drift_config(tmp_path / "drift.yaml")), "ts")
    assert forced["kind"] == "numeric" and forced["test"] == "ks" and forced["drifted"] is False
    assert not any("text" in n for n in forced["notes"]), forced["notes"]
    text = write_sql(tmp_path / "text.parquet", "select 'a' as ts from range(10)")
    asked = col(check(text, text, load_drift_config(tmp_path / "drift.yaml")), "ts")
    assert asked["kind"] == "categorical" and "VARCHAR holds neither numbers nor times" in asked["notes"][0]


def test_csv_dates_against_parquet_timestamps_of_the_same_data_are_identical(tmp_path: Path) -> None:
    """A Parquet file keeps TIMESTAMP; the same data in CSV reads back as DATE (pandas writes midnights as
    dates) and TIME (durations are written as HH:MM:SS)."""
    select = (f"select cast({DAYS_2023} as %s) as day, "
              "cast(timestamp '2023-01-01' + to_seconds(cast(random() * 86400 * 365 as bigint)) as timestamptz) as at, "
              "time '00:00:00' + to_seconds(cast(random() * 86399 as bigint)) as clock, "
              "to_seconds(cast(random() * 7200 as bigint)) as took from range(4000)")
    parquet = write_sql(tmp_path / "data.parquet", select % "timestamp")
    csv = write_sql(tmp_path / "data.csv", select % "date")
    report = check(parquet, csv)
    types = {c["column"]: (c["ref_type"], c["cur_type"]) for c in report["columns"]}
    assert types == {"day": ("TIMESTAMP", "DATE"), "at": ("TIMESTAMP WITH TIME ZONE", "TIMESTAMP WITH TIME ZONE"),
                     "clock": ("TIME", "TIME"), "took": ("INTERVAL", "TIME")}
    for c in report["columns"]:
        assert c["drifted"] is False and c["statistic"] == 0.0 and c["stats"]["ks_d"] == 0.0, c
        assert c["stats"]["mean_ref"] == pytest.approx(c["stats"]["mean_cur"], rel=1e-12)
    assert col(report, "day")["notes"] == ["types differ (TIMESTAMP in the reference, DATE in the current data): "
                                           "both compared as times"]
    assert "taken as the duration since midnight" in col(report, "took")["notes"][0]


def test_timestamptz_and_naive_timestamps_are_the_same_instants_in_utc(tmp_path: Path) -> None:
    ref = write_sql(tmp_path / "ref.parquet", "select timestamptz '2024-03-01 12:00:00+02' + to_minutes("
                                              "cast(random() * 10000 as bigint)) as at from range(2000)", seed=0.4)
    naive = write_sql(tmp_path / "cur.parquet", "select timestamp '2024-03-01 10:00:00' + to_minutes("
                                                "cast(random() * 10000 as bigint)) as at from range(2000)", seed=0.4)
    at = col(check(ref, naive), "at")
    assert at["statistic"] == 0.0 and at["drifted"] is False
    assert "a time without a time zone taken as UTC" in at["notes"][0]


def test_text_dates_are_parsed_or_refused_in_one_sentence(tmp_path: Path) -> None:
    """Dates kept as strings on one side (a pandas object column, a CSV read as VARCHAR)."""
    dates = write_sql(tmp_path / "dates.parquet", f"select {DAYS_2023} as day from range(3000)", seed=0.1)
    text = write_sql(tmp_path / "text.parquet", f"select cast({DAYS_2023} as varchar) as day from range(2000)", seed=0.2)
    for ref, cur, side in ((dates, text, "current data"), (text, dates, "reference")):
        day = col(check(ref, cur), "day")
        assert day["kind"] == "numeric" and day["drifted"] is False and day["statistic"] < 0.05
        assert any(n.startswith(f"the {side} holds VARCHAR, and every value reads as one of the times")
                   for n in day["notes"]), day["notes"]
    spoiled = write_sql(tmp_path / "spoiled.csv", f"select case when random() < 0.01 then 'unknown' else "
                                                  f"cast({DAYS_2023} as varchar) end as day from range(2000)")
    day = col(check(dates, spoiled), "day")
    assert (day["test"], day["drifted"], day["cur_type"]) == ("type", True, "VARCHAR")
    [sentence] = day["notes"]
    assert sentence.startswith("the current data holds VARCHAR and ") and "(such as 'unknown')" in sentence
    assert sentence.endswith("are not times like the reference's DATE: they cannot be compared (counted as drifted)")


@pytest.mark.parametrize("ref_sql,cur_sql,words", [
    ("random() * 1e9", "to_timestamp(random() * 1e9)", "DOUBLE (a number) in the reference to "
                                                      "TIMESTAMP WITH TIME ZONE (a point in time)"),
    ("time '10:00:00'", "timestamp '2024-01-01 10:00:00'", "TIME (a time of day) in the reference to "
                                                          "TIMESTAMP (a point in time)"),
    ("date '2024-01-01'", "random() < 0.5", "DATE (a point in time) in the reference to "
                                            "BOOLEAN (neither a number nor a time)"),
])
def test_different_measures_are_refused_in_one_sentence(tmp_path: Path, ref_sql: str, cur_sql: str,
                                                        words: str) -> None:
    ref = write_sql(tmp_path / "ref.parquet", f"select {ref_sql} as c from range(100)")
    cur = write_sql(tmp_path / "cur.parquet", f"select {cur_sql} as c from range(100)")
    c = col(check(ref, cur), "c")
    assert (c["test"], c["kind"], c["drifted"]) == ("type", None, True)
    assert c["notes"] == [f"type changed from {words} in the current data: they cannot be compared "
                          "(counted as drifted)"]


def test_infinite_dates_are_infinities_not_nulls(tmp_path: Path) -> None:
    ref = write_sql(tmp_path / "ref.parquet", f"select {DAYS_2023} as day from range(2000)")
    cur = write_sql(tmp_path / "cur.parquet", f"select case when i < 20 then date 'infinity' when i < 30 then "
                                              f"date '-infinity' else {DAYS_2023} end as day from range(2000) t(i)")
    day = col(check(ref, cur), "day")
    assert day["stats"]["inf_cur"] == 30 and day["stats"]["null_rate_cur"] == 0.0
    assert day["stats"]["out_of_range_share"] >= 30 / 2000


def test_a_profile_keeps_times_as_seconds_and_checks_like_the_files(tmp_path: Path) -> None:
    select = (f"select {DAYS_2023} as day, time '00:00:00' + to_seconds(cast(random() * 86399 as bigint)) as clock, "
              "to_minutes(cast(random() * 500 as bigint)) as took from range(%d)")
    ref = write_sql(tmp_path / "ref.parquet", select % 3000, seed=0.1)
    cur = write_sql(tmp_path / "cur.csv", select % 1000, seed=0.9)
    direct = check(ref, cur)
    profile = build_profile(DriftConfig(), resolve_files(str(ref), "reference"), tmp_path / "values", "p")
    assert [c["numeric"] for c in profile["columns"]] == [True, True, True]
    via = run_check(DriftConfig(), profile, resolve_files(str(cur), "current"))
    for a, b in zip(direct["columns"], via["columns"]):
        assert (a["drifted"], a["kind"], a["histogram"]) == (b["drifted"], b["kind"], b["histogram"])
        assert b["stats"]["ks_d"] == a["stats"]["ks_d"]

    # A profile saved before times were numbers kept the DATE's values as text: they are parsed, same answer.
    old = json.loads(json.dumps(profile))
    with Engine() as engine:
        side = engine.open_side(resolve_files(str(ref), "reference"))
        labels = engine.text_counts(side, "day")
        engine.copy_to_parquet(labels, str(tmp_path / "values" / "old-day.parquet"))
    old["columns"][0].update(numeric=False, values_file="old-day.parquet")
    from_old = col(run_check(DriftConfig(), old, resolve_files(str(cur), "current")), "day")
    assert from_old["stats"]["ks_d"] == col(direct, "day")["stats"]["ks_d"] and from_old["kind"] == "numeric"


def test_pandas_nanosecond_timestamps_against_their_csv(tmp_path: Path) -> None:
    """pandas writes datetime64[ns] (TIMESTAMP_NS in Parquet); TIMESTAMPTZ_NS was unknown and has no isinf
    in DuckDB (found by attack)."""
    from drift_data import rng, write

    g = rng(31)
    stamps = (np.datetime64("2023-01-01") + g.integers(0, 365 * 86400, 3000).astype("timedelta64[s]"))
    parquet = write(tmp_path / "ref.parquet", {"at": stamps.astype("datetime64[ns]")})
    csv = write(tmp_path / "cur.csv", {"at": stamps.astype("datetime64[ns]")})
    at = col(check(parquet, csv), "at")
    assert (at["ref_type"], at["cur_type"], at["statistic"], at["drifted"]) == ("TIMESTAMP_NS", "TIMESTAMP", 0.0, False)
    zoned = write_sql(tmp_path / "zoned.parquet", "select cast(timestamptz '2023-01-01' + to_minutes(cast(random() * "
                                                  "1e5 as bigint)) as timestamptz_ns) as at from range(3000)")
    assert "a time without a time zone taken as UTC" in col(check(parquet, zoned), "at")["notes"][0]


def test_text_with_no_values_says_nothing_about_reading_them(tmp_path: Path) -> None:
    dates = write_sql(tmp_path / "dates.parquet", f"select {DAYS_2023} as day from range(300)")
    empty = write_sql(tmp_path / "nulls.parquet", "select cast(null as varchar) as day from range(100)")
    day = col(check(dates, empty), "day")
    assert (day["test"], day["statistic"], day["drifted"]) == ("null_rate", 1.0, True)
    assert not any("every value reads" in n for n in day["notes"]), day["notes"]
