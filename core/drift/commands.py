"""``mlfleet drift ...``: the batch twins of the TUI's drift screen.

``check`` and ``profile`` compute here, in this process, with an in-memory
DuckDB over the user's files; the controller only stores what they found.
Bad paths, globs, columns or YAML fail before any controller is started.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from mlfleet.core.cli import render
from mlfleet.core.cli.output import Add, checked_output, client_command, positive, print_json, say
from mlfleet.core.base.errors import EXIT_DRIFT, EXIT_OK, UsageError
from mlfleet.core.base.private import tighten_tree


def _columns(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise UsageError("--columns is empty; give names separated by commas, e.g. --columns age,country")
    return names


def _current(args: argparse.Namespace) -> Any:
    """CUR: the files of --current, or (without it) the captured inputs of --deployment."""
    from mlfleet.core.drift.sources import resolve_captures, resolve_files

    if args.current is not None:
        if args.since is not None:
            raise UsageError("--since reads a deployment's captures; drop --current to check the captures of "
                             "--deployment NAME, or drop --since")
        return resolve_files(args.current, "current")
    if args.deployment is None:
        raise UsageError("give --current FILES, or --deployment NAME to check what that deployment's replicas "
                         "were sent")
    since = None
    if args.since is not None:
        import time

        from mlfleet.core.base.units import parse_duration

        try:
            seconds = parse_duration(args.since)
        except (ValueError, TypeError):
            seconds = -1.0
        if seconds <= 0:
            raise UsageError(f"--since {args.since!r}: give a duration such as 1d, 6h or 30m")
        since = time.time() - seconds
    from mlfleet.core.base.paths import Home
    from mlfleet.core.controller.client import shared_controller

    home = Home.from_env()
    if (shared := shared_controller(home)) is not None:  # the captures are the head node's files, not ours
        raise UsageError(f"drift check --deployment reads the captured requests on the controller's machine, and "
                         f"the controller is shared ({shared.url}): run it on {shared.host}, or give --current FILES")
    return resolve_captures(home.capture_dir, args.deployment, since, args.since)


def cmd_check(args: argparse.Namespace) -> int:
    from mlfleet.core.drift.check import check_columns, run_check
    from mlfleet.core.drift.config import load_drift_config
    from mlfleet.core.drift.sources import looks_like_profile_name, resolve_files

    args.config_obj = load_drift_config(args.config)
    args.columns_list = _columns(args.columns)
    args.current_source = _current(args)
    args.reference_source = None if looks_like_profile_name(args.reference) else resolve_files(args.reference,
                                                                                                "reference")
    check_columns(args.config_obj, args.reference_source, args.current_source, args.columns_list)
    args.captures = args.current is None
    if args.captures and args.columns_list is None and args.reference_source is not None:
        from mlfleet.core.drift.check import source_columns

        args.columns_list = source_columns(args.config_obj, args.reference_source)  # the reference's features
    if args.config_obj.on_drift_submit:
        from mlfleet.core.jobs.spec import load_job_spec

        args.trigger_spec = load_job_spec(args.config_obj.on_drift_submit)  # a bad spec fails now, not on drift
    args.report = None
    if args.reference_source is not None:  # files on both sides: compute first, then start/ask the controller
        args.report = run_check(args.config_obj, args.reference_source, args.current_source, args.columns_list)
    return client_command(_check)(args)


async def _check(client: Any, args: argparse.Namespace) -> int:
    import asyncio

    from mlfleet.core.drift.check import run_check

    report = args.report
    if report is None:  # the reference is a profile: only the controller knows where it is
        reference = await client.call("drift_get_profile", name=args.reference)
        columns = args.columns_list
        if args.captures and columns is None:  # captures hold what servers were sent: compare the profile's features
            columns = [c["column"] for c in reference["columns"]]
        report = await asyncio.to_thread(run_check, args.config_obj, reference, args.current_source, columns)
    saved = await client.call("drift_save_report", report=report, run=args.run, deployment=args.deployment)
    report.update(report_id=saved["report_id"], run_id=saved["run_id"], deployment=saved["deployment"])
    if report["drifted"] and args.config_obj.on_drift_submit:
        report["trigger"] = await _trigger(client, args, report["report_id"])
    if args.json:
        print_json(report)
    else:
        _print_report(report)
    return EXIT_DRIFT if report["drifted"] and args.fail_on_drift else EXIT_OK


async def _trigger(client: Any, args: argparse.Namespace, report_id: str) -> dict[str, Any]:
    """Submit the config's retraining job through the ordinary submit path, then record why (audited)."""
    from mlfleet.core.base.models import to_plain

    spec_path = args.config_obj.on_drift_submit
    from mlfleet.core.jobs.code_send import with_code

    answer = await client.call("submit", **await with_code(client, {"spec": to_plain(args.trigger_spec),
                                                                     "spec_path": spec_path}))
    await client.call("drift_trigger", report=report_id, job_id=answer["job_id"], spec_path=spec_path)
    if not args.json:
        print(f"drift found: submitted {answer['job_id']} ({spec_path})", file=sys.stderr)
    return {"job_id": answer["job_id"], "spec_path": spec_path}


def _print_report(report: dict[str, Any]) -> None:
    """The report as text: the verdict with its rule, a table, then every note in full (a table cell would cut it)."""
    from mlfleet.core.drift import summary

    print(f"{report['report_id']}: {summary.headline(report)}")
    print(f"reference {report['reference']} ({report['rows_reference']} rows); "
          f"current {report['current']} ({report['rows_current']} rows)")
    rows = []
    for c in report["columns"]:
        flag = {True: "DRIFT", False: "ok", None: "n/a"}[c["drifted"]]
        rows.append([c["column"], c["kind"] or "-", c["test"], render.number(c["statistic"]),
                     render.number(c["threshold"]), flag, summary.shift(c, "mean"), summary.shift(c, "median"),
                     summary.shift(c, "nulls")])
    print(render.table(["column", "kind", "test", "statistic", "threshold", "drift", "mean ref -> cur",
                        "median ref -> cur", "nulls ref -> cur"], rows))
    notes = [(c["column"], n) for c in report["columns"] for n in c["notes"]]
    if any(c["test"] == "wasserstein" for c in report["columns"]):
        notes.append(("", summary.WASSERSTEIN_MEANING))
    notes += [("", n) for n in report.get("notes") or []]
    for column, note in notes:
        print(f"note: {column + ': ' if column else ''}{note}")


def cmd_profile(args: argparse.Namespace) -> int:
    from mlfleet.core.drift.config import load_drift_config
    from mlfleet.core.drift.sources import resolve_files

    if not args.name or "/" in args.name or args.name.startswith("."):
        raise UsageError(f"--name {args.name!r}: give a plain name such as 'train-2026-11'")
    args.config_obj = load_drift_config(args.config)
    args.columns_list = _columns(args.columns)
    args.source = resolve_files(args.reference, "reference")
    return client_command(_profile)(args)


async def _profile(client: Any, args: argparse.Namespace) -> int:
    import asyncio

    from mlfleet.core.drift.check import build_profile

    where = await client.call("drift_profile_dir")
    folder = Path(where["values_dir"])
    try:
        profile = await asyncio.to_thread(build_profile, args.config_obj, args.source, folder, args.name,
                                          args.columns_list)
        tighten_tree(folder)  # written here with the user's umask, into the controller's private folder
        saved = await client.call("drift_save_profile", profile_id=where["profile_id"], profile=profile,
                                  replace=args.replace)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    result = {**saved, "rows": profile["rows"], "columns": [c["column"] for c in profile["columns"]],
              "values_dir": profile["values_dir"], "elapsed_s": profile["elapsed_s"]}
    say(args, result, f"profile {args.name} saved ({profile['rows']} rows, {len(profile['columns'])} columns); "
                      f"check against it with 'mlfleet drift check --reference {args.name} --current CUR'")
    return EXIT_OK


async def cmd_list(client: Any, args: argparse.Namespace) -> int:

    reports = await client.call("drift_list", limit=args.limit, run=args.run)
    if args.json:
        print_json(reports)
        return EXIT_OK
    from mlfleet.core.drift import summary

    print(render.table(["report", "when", "drift", "drifted/compared", "reference", "current", "run", "deployment"],
                       [[r["report_id"], render.when(r["created_at"]), "DRIFT" if r["drifted"] else "no",
                         summary.counts(r), r["reference"], r["current"], r["run_id"] or "-",
                         r["deployment"] or "-"] for r in reports]))
    return EXIT_OK


async def cmd_show(client: Any, args: argparse.Namespace) -> int:

    report = await client.call("drift_show", report=args.id)
    if args.json:
        print_json(report)
    else:
        _print_report(report)
    return EXIT_OK


async def cmd_export(client: Any, args: argparse.Namespace) -> int:
    report = await client.call("drift_show", report=args.id)
    text = json.dumps(report, indent=2, default=str) + "\n"
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        from mlfleet.core.base.output_path import check_output, write_bytes
        from mlfleet.core.base.paths import Home

        # checked before the controller was started too (checked_output); again here, the moment before writing
        target = check_output(Path(args.output).expanduser().absolute(), Home.from_env().own_folders(), args.force)
        write_bytes(target, text.encode(), args.force)
        if args.json:  # the report is in the file: stdout says where, as JSON
            sys.stdout.write(json.dumps({"report_id": report["report_id"], "output": args.output}) + "\n")
        else:
            print(f"wrote {args.output}", file=sys.stderr)
    return EXIT_OK


async def cmd_profiles(client: Any, args: argparse.Namespace) -> int:

    profiles = await client.call("drift_profiles")
    if args.json:
        print_json(profiles)
        return EXIT_OK
    print(render.table(["name", "id", "when", "rows", "columns", "source"],
                       [[p["name"], p["profile_id"], render.when(p["created_at"]), p["rows"], p["columns"],
                         p["source"]] for p in profiles]))
    return EXIT_OK


def register(sub: Any, add: Add) -> None:
    """Add the ``drift`` command group to the top-level subparsers."""
    drift = sub.add_parser("drift", help="data drift: checks, reference profiles, stored reports").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = add(drift, "check", cmd_check, "compare current data with a reference (files or a saved profile)")
    p.add_argument("--reference", required=True, metavar="REF",
                   help="Parquet/CSV/JSON file, folder or quoted glob, or a profile name")
    p.add_argument("--current", metavar="CUR", help="Parquet/CSV/JSON file, folder or quoted glob "
                                                   "(without it: the captured inputs of --deployment)")
    p.add_argument("--since", metavar="AGE", help="with --deployment and no --current: only inputs captured in the "
                                                  "last AGE (1d, 6h)")
    p.add_argument("--columns", help="only these columns, separated by commas")
    p.add_argument("--config", help="drift.yaml with thresholds, per-column rules and on_drift (configs/drift.yaml)")
    p.add_argument("--fail-on-drift", action="store_true", help="exit 3 when the dataset drifted (for CI)")
    link = p.add_mutually_exclusive_group()
    link.add_argument("--run", help="link the report to this run (a unique prefix is enough)")
    link.add_argument("--deployment", help="link the report to this deployment; without --current, check the "
                                           "inputs its replicas captured")
    p = add(drift, "profile", cmd_profile, "save a reference profile so later checks scan only the current data")
    p.add_argument("reference", metavar="REF", help="Parquet/CSV/JSON file, folder or quoted glob")
    p.add_argument("--name", required=True, help="the profile's name, used as --reference NAME")
    p.add_argument("--columns", help="only these columns, separated by commas")
    p.add_argument("--config", help="drift.yaml (bins, ignored columns)")
    p.add_argument("--replace", action="store_true", help="replace a profile of the same name")
    p = add(drift, "list", client_command(cmd_list), "list drift reports, newest first")
    p.add_argument("--limit", type=positive, default=200)
    p.add_argument("--run", help="only reports linked to this run (id prefix)")
    add(drift, "show", client_command(cmd_show), "show a report and its columns").add_argument(
        "id", help="report id (a unique prefix is enough)")
    p = add(drift, "export", checked_output(cmd_export), "write a report as JSON (to stdout, or -o FILE)")
    p.add_argument("id", help="report id (a unique prefix is enough)")
    p.add_argument("-o", "--output", help="file to write (default: stdout; a new one unless --force)")
    p.add_argument("--force", action="store_true", help="replace an existing regular file (never a link)")
    add(drift, "profiles", client_command(cmd_profiles), "list saved reference profiles")
