"""What the controller writes and reads for data drift: profiles, reports, their columns.

Plain functions over a DuckDB connection, run on the store's threads; a
report and its columns (and its audit row) commit in one transaction.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb

from mlfleet.core.base.errors import NotFoundError, UsageError

from mlfleet.core.store.db import now, transaction
from mlfleet.core.audit.records import audit
from mlfleet.core.store.rows import resolve, rows

REPORT_FIELDS = """report_id, created_at, reference, current, profile, rows_reference, rows_current, drifted,
                   drifted_columns, column_count, compared_columns, drift_share, drift_share_threshold,
                   multiple_testing, run_id, deployment, elapsed_s, trigger_job_id, actor"""


def _json(value: Any) -> str:
    return json.dumps(value, allow_nan=False)


def _loads(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


# --------------------------------------------------------------- profiles

def save_profile(con: duckdb.DuckDBPyConnection, profile_id: str, profile: dict[str, Any], actor: str,
                 replace: bool) -> str | None:
    """Record a profile; with ``replace``, an older one of that name goes. Returns the replaced values folder."""
    with transaction(con):
        old = con.execute("select profile_id, values_dir from drift_profiles where name = ?",
                          [profile["name"]]).fetchall()
        if old and not replace:
            raise UsageError(f"a profile named {profile['name']!r} exists; pass --replace to make it anew, "
                             "or choose another --name")
        if old:
            con.execute("delete from drift_profiles where profile_id = ?", [old[0][0]])
        con.execute("""insert into drift_profiles (profile_id, name, created_at, actor, source, files, format, rows,
                       values_dir, columns) values (?, ?, to_timestamp(?), ?, ?, ?, ?, ?, ?, ?)""",
                    [profile_id, profile["name"], now(), actor, profile["source"], _json(profile["files"]),
                     profile["format"], profile["rows"], profile["values_dir"], _json(profile["columns"])])
        audit(con, actor, "drift.profile", profile["name"],
              {"profile_id": profile_id, "source": profile["source"], "rows": profile["rows"],
               "columns": len(profile["columns"]), "replaced": old[0][0] if old else None})
    return old[0][1] if old else None


def get_profile(con: duckdb.DuckDBPyConnection, name: str) -> dict[str, Any]:
    found = rows(con, "select * from drift_profiles where name = ?", [name])
    if not found:
        raise NotFoundError(f"no drift profile named {name!r} and no such file; make one with "
                            f"'mlfleet drift profile REF --name {name}' or list them with 'mlfleet drift profiles'")
    profile = found[0]
    profile["files"], profile["columns"] = _loads(profile["files"]), _loads(profile["columns"])
    return profile


def list_profiles(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    out = rows(con, """select profile_id, name, created_at, actor, source, format, rows,
                       json_array_length(columns) as columns from drift_profiles order by created_at desc""")
    return out


# ---------------------------------------------------------------- reports

def save_report(con: duckdb.DuckDBPyConnection, report_id: str, report: dict[str, Any], actor: str,
                run_id: str | None, deployment: str | None) -> None:
    with transaction(con):
        con.execute(
            """insert into drift_reports (report_id, created_at, actor, reference, current, profile, rows_reference,
               rows_current, drifted, drifted_columns, column_count, compared_columns, drift_share,
               drift_share_threshold, multiple_testing, run_id, deployment, elapsed_s, config, notes)
               values (?, to_timestamp(?), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            [report_id, now(), actor, report["reference"], report["current"], report.get("profile"),
             report.get("rows_reference"), report.get("rows_current"), bool(report["drifted"]),
             int(report["drifted_columns"]), int(report["column_count"]), int(report["compared_columns"]),
             float(report["drift_share"]), float(report["drift_share_threshold"]), report["multiple_testing"],
             run_id, deployment, report.get("elapsed_s"), _json(report.get("config") or {}),
             _json(report.get("notes") or [])])
        columns = [[report_id, i, c["column"], c.get("kind"), c["test"], c.get("statistic"), c.get("threshold"),
                    c.get("drifted"), c.get("ref_type"), c.get("cur_type"), _json(c.get("stats") or {}),
                    _json(c.get("notes") or []), _json(c.get("histogram") or {})]
                   for i, c in enumerate(report["columns"])]
        if columns:  # a report of no columns (nothing was compared) has no rows here
            con.executemany(
                """insert into drift_columns (report_id, position, column_name, kind, test, statistic, threshold,
                   drifted, ref_type, cur_type, stats, notes, histogram) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                columns)
        audit(con, actor, "drift.check", report_id,
              {"drifted": bool(report["drifted"]), "drifted_columns": int(report["drifted_columns"]),
               "columns": int(report["column_count"]), "reference": report["reference"],
               "current": report["current"], "run_id": run_id, "deployment": deployment})


def triggered_job(con: duckdb.DuckDBPyConnection, job_id: str) -> dict[str, Any]:
    """The job a trigger names (its owner and project decide who may record it); NotFoundError when there is none."""
    found = rows(con, "select job_id, owner, project from jobs where job_id = ?", [job_id])
    if not found:
        raise NotFoundError(f"no job {job_id!r}: a drift trigger records the retraining job that was submitted")
    return found[0]


def record_trigger(con: duckdb.DuckDBPyConnection, report_id: str, job_id: str, spec_path: str, actor: str) -> None:
    with transaction(con):
        con.execute("update drift_reports set trigger_job_id = ? where report_id = ?", [job_id, report_id])
        audit(con, actor, "drift.trigger", report_id, {"job_id": job_id, "spec_path": spec_path})


def _report_row(row: dict[str, Any]) -> dict[str, Any]:
    row["columns"] = row["column_count"]
    return row


def list_reports(con: duckdb.DuckDBPyConnection, limit: int = 200, run: str | None = None) -> list[dict[str, Any]]:
    where, params = "", []
    if run:
        where, params = "where starts_with(run_id, ?)", [run]
    return [_report_row(r) for r in
            rows(con, f"select {REPORT_FIELDS} from drift_reports {where} order by created_at desc, report_id limit ?",
                 params + [limit])]


def resolve_report_id(con: duckdb.DuckDBPyConnection, ident: str) -> str:
    return resolve(con, "drift_reports", "report_id", ident, "drift report")


def get_report(con: duckdb.DuckDBPyConnection, ident: str) -> dict[str, Any]:
    try:
        report_id = resolve_report_id(con, ident)
    except NotFoundError:
        raise NotFoundError(f"no drift report {ident!r}; list them with 'mlfleet drift list'") from None
    report = _report_row(rows(con, f"select {REPORT_FIELDS}, config, notes from drift_reports where report_id = ?",
                              [report_id])[0])
    report["config"], report["notes"] = _loads(report["config"]), _loads(report["notes"])
    cols = rows(con, """select column_name as column, kind, test, statistic, threshold, drifted, ref_type, cur_type,
                        stats, notes, histogram from drift_columns where report_id = ? order by position""",
                [report_id])
    for c in cols:
        c["stats"], c["notes"], c["histogram"] = _loads(c["stats"]), _loads(c["notes"]), _loads(c["histogram"])
    report["columns"] = cols
    return report
