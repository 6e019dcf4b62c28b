"""``mlfleet runs ...``: tracked runs: list and filter, show, compare, export, and fetch their artifacts.

The filter, the sort and the metric-key bounds are the controller's
(core/tracking/runfilter, core/tracking/run_keys.py); here they are only
shown: the params and metrics a ``--where`` or ``--sort`` names become
columns of ``runs list``. ``runs export`` and ``runs artifact get`` check
the file they write (core/base/output_path.py) before any controller is
started, and an artifact is kept only when its sha256 is the one logged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mlfleet.core.base import bounds
from mlfleet.core.base.errors import EXIT_OK, MlfleetError
from mlfleet.core.base.output_path import check_output, open_temp, os_failure, place
from mlfleet.core.base.paths import Home
from mlfleet.core.base.private import user_umask
from mlfleet.core.base.words import plural
from mlfleet.core.cli import render
from mlfleet.core.cli.output import Add, bounded, checked_output, client_command, positive, print_json, say
from mlfleet.core.controller.client import ControllerClient
from mlfleet.core.tracking import run_keys as cli_run_keys


async def cmd_runs_list(client: ControllerClient, args: argparse.Namespace) -> int:
    runs = await client.call("runs_list", where=args.where, sort=args.sort, limit=args.limit, keys=args.keys,
                             max_keys=args.max_keys)
    if args.json:
        print_json(runs)
        return EXIT_OK
    from mlfleet.core.tracking.runfilter import fields_of, parse_filter, parse_sort

    named = [f for f in fields_of(parse_filter(args.where or "")) + [k.field for k in parse_sort(args.sort)]
             if f.source != "run"]
    extra = list(dict.fromkeys(named))[:4]  # the params, tags and metrics the filter and sort name
    print(render.table(["run", "name", "project", "host", "state", "keys", "points", "started", "elapsed"]
                       + render.names(str(f) for f in extra),
                       [[r["run_id"], r["name"], r["project"], r["host"], r["state"],
                         (r.get("metric_keys") or {}).get("total"), r["points"],
                         render.when(r["started_at"]), render.elapsed(r["started_at"], r["finished_at"])]
                        + [_run_field(r, f) for f in extra] for r in runs]))
    return EXIT_OK


def _run_field(run: dict[str, Any], field: Any) -> Any:
    if field.source == "metrics":
        summary = run["metrics"].get(field.key) or {}
        if field.summary == "summary":
            return (summary.get("summary") or {}).get("value")
        return summary.get({"count": "points"}.get(field.summary, field.summary))
    if field.source == "params":
        return cli_run_keys.param_at(run["params"], field.key)
    return run[field.source].get(field.key)


_SPARKS = "▁▂▃▄▅▆▇█"


def _sparkline(values: list[Any], width: int = 24) -> str:
    """A small text curve of a run's bucket values (gaps as spaces)."""
    if not values:
        return ""
    picked = [values[min(len(values) - 1, i * len(values) // width)] for i in range(min(width, len(values)))]
    finite = [v for v in picked if v is not None]
    if not finite:
        return " " * len(picked)
    lo, hi = min(finite), max(finite)
    scale = (len(_SPARKS) - 1) / (hi - lo) if hi > lo else 0.0
    return "".join(" " if v is None else _SPARKS[int((v - lo) * scale)] for v in picked)


async def cmd_runs_compare(client: ControllerClient, args: argparse.Namespace) -> int:
    result = await client.call("runs_compare", runs=args.ids, metrics=args.metric or None, points=args.points,
                               keys=args.keys, max_keys=args.max_keys, request_timeout=300)
    if args.json:
        print_json(result)
        return EXIT_OK
    names = {r["run_id"]: r["name"] for r in result["runs"]}
    for key, metric in result["metrics"].items():
        print(f"{key}")
        rows = []
        for run_id in names:
            best = metric["best"].get(run_id)
            curve = metric["curves"].get(run_id)
            if curve is None:
                rows.append([run_id, names[run_id], "-", "-", "-", "-", "(not logged)"])
                continue
            last = next((v for v in reversed(curve["last"]) if v is not None), None)
            rows.append([run_id, names[run_id], f"{best['mode']} {render.number(best['value'])}",
                         best["step"], last, curve["points"], _sparkline(curve["last"])])
        print(render.table(["run", "name", "best", "at step", "last", "points", "curve (last per bucket)"], rows))
        print()
    params = result["params"]
    if params["differ"]:
        ids = list(names)
        print(render.table(["param", *render.names(ids)], [[k] + [render.value(v.get(i))
                                                    for i in ids] for k, v in params["differ"].items()]))
    if params["same"]:
        print("same in all: " + ", ".join(f"{k}={render.value(v)}" for k, v in params["same"].items()))
    packages = result.get("packages") or {}
    if packages.get("differ"):
        ids = list(names)
        print(render.table(["package", *render.names(ids)], [[k] + [v.get(i) or "-" for i in ids]
                                                             for k, v in packages["differ"].items()]))
    if packages.get("same") and any((packages.get("env_hash") or {}).values()):
        print(f"{packages['same']} other package{'s' if packages['same'] != 1 else ''} the same in every environment")
    note = cli_run_keys.left_out_note(result.get("metric_keys") or {}, "metrics not compared",
                                      "name them with --metric K, or --keys PATTERN, --max-keys N")
    if note:
        print(note)
    return EXIT_OK


def cmd_runs_export(args: argparse.Namespace) -> int:
    from mlfleet.core.tracking.export_format import export_format

    args.format = export_format(args.output, args.format)  # before any controller is started for it
    args.output = str(check_output(Path(args.output).expanduser().absolute(), Home.from_env().own_folders(),
                                   args.force))  # the controller checks again: the TUI and scripts skip this
    return client_command(_runs_export)(args)


async def _runs_export(client: ControllerClient, args: argparse.Namespace) -> int:
    answer = await client.call("runs_export", output=args.output, format=args.format, where=args.where,
                               sort=args.sort, points=args.metrics, metrics=args.metric or None,
                               mode=0o666 & ~user_umask(), force=args.force, request_timeout=None)
    if answer["kind"] == "points":
        what = f"{plural(answer['rows'], 'metric point')} of {plural(answer['runs'], 'run')}"
    else:
        what = plural(answer["rows"], "run")
    say(args, answer, f"wrote {what} to {answer['output']} as {answer['format']}")
    return EXIT_OK


async def cmd_runs_show(client: ControllerClient, args: argparse.Namespace) -> int:
    first = cli_run_keys.PAGE if args.all_keys else args.max_keys
    run = await client.call("run_show", run=args.id, keys=args.keys, max_keys=first)
    if args.json:
        if args.all_keys:
            await cli_run_keys.print_all_keys_json(client, run, args.keys)
        else:
            print_json(run)
        return EXIT_OK
    print(f"run {run['run_id']}  {render.value(run['name'])}  (job {run['job_id']}, attempt {run['attempt']}, "
          f"host {render.value(run['host'])})")
    print(f"state: {run['state']}; exit {run['exit_code'] if run['exit_code'] is not None else '-'}; "
          f"{render.when(run['started_at'])} for {render.elapsed(run['started_at'], run['finished_at'])}")
    if run["params"]:
        print("params:")
        for k, v in run["params"].items():
            print(f"  {k} = {render.value(v)}")
    if run["tags"]:
        print("tags:")
        for k, v in run["tags"].items():
            print(f"  {k} = {render.value(v)}")
    if args.all_keys:
        await cli_run_keys.print_all_keys_text(client, run, args.keys)
    elif run["metrics"]:
        print(render.table(cli_run_keys.SHOW_HEADERS, cli_run_keys.show_rows(run["metrics"], run.get("summary") or {})))
    note = None if args.all_keys else cli_run_keys.left_out_note(
        run["metric_keys"], "metric keys", "see them with --keys PATTERN, --max-keys N or --all-keys")
    if note:
        print(note)
    if run.get("artifacts"):
        print(f"artifacts: {len(run['artifacts'])} (mlfleet runs artifacts {run['run_id']})")
    _print_lineage(run.get("lineage") or {})
    return EXIT_OK


def _print_lineage(lineage: dict[str, Any]) -> None:
    print("lineage:")
    for label, text in render.lineage_rows(lineage):  # one definition with the TUI's run page and compare
        print(f"  {label:<10} {text}")


async def cmd_runs_artifacts(client: ControllerClient, args: argparse.Namespace) -> int:
    artifacts = await client.call("run_artifacts", run=args.id)
    if args.json:
        print_json(artifacts)
        return EXIT_OK
    print(render.table(["path", "size", "sha256", "logged"],
                       [[a["path"], render.format_size(a["size"]), a["sha256"][:16], render.when(a["created_at"])]
                        for a in artifacts]))
    return EXIT_OK


async def cmd_runs_artifact_get(client: ControllerClient, args: argparse.Namespace) -> int:
    """Fetch an artifact from its node in chunks; keep it only if its sha256 is the one logged."""
    import base64
    import hashlib
    import os

    first = await client.call("run_artifact_read", run=args.id, path=args.path, offset=0, request_timeout=120)
    to_stdout = args.output == "-"
    target, partial = None, None
    if not to_stdout:  # checked again: the default name is the artifact's, known only now
        target = check_output(Path(args.output or os.path.basename(first["path"])).absolute(),
                              Home.from_env().own_folders(), args.force)
        partial, fd = open_temp(target)
    out = sys.stdout.buffer if to_stdout else os.fdopen(fd, "wb")
    digest, size, chunk = hashlib.sha256(), 0, first
    try:
        while True:
            data = base64.b64decode(chunk["data"])
            digest.update(data)
            try:
                out.write(data)
            except OSError as exc:
                raise os_failure(exc, "write", target or "stdout") from None
            size += len(data)
            if chunk["eof"] or not data:
                break
            chunk = await client.call("run_artifact_read", run=args.id, path=first["path"], offset=chunk["end"],
                                      request_timeout=120)
    except BaseException:  # an RPC error, a lost host or Ctrl-C: leave nothing half-written behind
        if partial is not None:
            out.close()
            partial.unlink(missing_ok=True)
        raise
    finally:
        if not to_stdout:
            out.close()
    if digest.hexdigest() != first["sha256"]:
        if partial is not None:
            partial.unlink(missing_ok=True)
        raise MlfleetError(f"{first['path']} on {first['host']} is not what the run logged (sha256 "
                           f"{digest.hexdigest()[:12]}, {size} bytes; logged {first['sha256'][:12]}, "
                           f"{first['logged_size']} bytes): it changed since; nothing was kept")
    if partial is not None and target is not None:
        place(partial, target, args.force)
    result = {"run_id": first["run_id"], "path": first["path"], "host": first["host"], "size": size,
              "sha256": first["sha256"], "verified": True, "output": "-" if target is None else str(target)}
    if args.json:
        print_json(result)
    elif target is not None:
        print(f"{target}: {render.format_size(size)} from {first['host']}, sha256 {first['sha256'][:12]} verified")
    return EXIT_OK


def register(sub: Any, add: Add) -> None:
    """Add the ``runs`` command group (and ``runs artifact``) to the top-level subparsers."""
    runs = sub.add_parser("runs", help="tracked runs").add_subparsers(dest="action", metavar="ACTION", required=True)
    where_help = ("only runs that pass this filter, e.g. \"params.lr > 0.01 and metrics.val_loss.min < 0.3\" "
                  "(docs/runs.md)")
    sort_help = "sort by these fields, e.g. metrics.val_loss.min or \"-params.lr, name\" (a leading - or desc: largest first)"
    p = add(runs, "list", client_command(cmd_runs_list), "list runs, newest first, or filtered and sorted")
    p.add_argument("--where", help=where_help)
    p.add_argument("--sort", help=sort_help)
    p.add_argument("--limit", type=positive, default=200)
    keys_help = "only metric keys matching this glob, e.g. 'val_*' (* any characters, ? one, [abc] one of)"
    p.add_argument("--keys", metavar="PATTERN", help=keys_help)
    p.add_argument("--max-keys", type=bounded(1, 1_000_000), default=20, metavar="N",
                   help="metric keys per run in --json, besides those --where and --sort name (default 20)")
    p = add(runs, "compare", client_command(cmd_runs_compare),
            "compare runs: best values, downsampled curves, params that differ")
    p.add_argument("ids", nargs="+", metavar="ID", help="run ids (a unique prefix is enough)")
    p.add_argument("--metric", action="append", help="only this metric (repeatable; default: the first --max-keys)")
    p.add_argument("--keys", metavar="PATTERN", help=keys_help)
    p.add_argument("--max-keys", type=bounded(1, 1_000_000), default=20, metavar="N",
                   help="without --metric, compare the first N metrics in key order (default 20, at most 1000)")
    p.add_argument("--points", type=bounded(1, bounds.MAX_POINTS), default=500, help="buckets per curve (default 500)")
    p = add(runs, "export", cmd_runs_export, "write runs or their metric points to Parquet or CSV")
    p.add_argument("--output", "-o", required=True, help="the file to write (a new one unless --force)")
    p.add_argument("--force", action="store_true", help="replace an existing regular file (never a link)")
    p.add_argument("--format", choices=["parquet", "csv"],
                   help="default: the one the --output name ends in (.parquet, .pq, .csv, .csv.gz)")
    p.add_argument("--where", help=where_help)
    p.add_argument("--sort", help=sort_help)
    p.add_argument("--metrics", action="store_true", help="write the metric points (a long table), not one row per run")
    p.add_argument("--metric", action="append",
                   help="only this metric (repeatable): its columns in a row per run, or with --metrics its points")
    p = add(runs, "show", client_command(cmd_runs_show), "show a run's params, tags and metrics")
    p.add_argument("id")
    p.add_argument("--keys", metavar="PATTERN", help=keys_help)
    how_many = p.add_mutually_exclusive_group()
    how_many.add_argument("--max-keys", type=bounded(1, 1_000_000), default=100, metavar="N",
                          help="show the first N metric keys in key order (default 100, at most 10000)")
    how_many.add_argument("--all-keys", action="store_true", help="show every metric key, fetched 10,000 at a time")
    add(runs, "artifacts", client_command(cmd_runs_artifacts), "list the files a run logged as artifacts").add_argument("id")
    artifact = runs.add_parser("artifact", help="fetch a run's artifact").add_subparsers(dest="artifact_action", metavar="ACTION", required=True)
    p = add(artifact, "get", checked_output(cmd_runs_artifact_get), "copy an artifact from its node here (sha256 verified)")
    p.add_argument("id", help="run id (a unique prefix is enough)")
    p.add_argument("path", help="the artifact's path as listed, or a unique ending of it (model.pt)")
    p.add_argument("-o", "--output", help="where to write it (default: its file name, here; '-' for stdout)")
    p.add_argument("--force", action="store_true", help="replace an existing regular file (never a link)")
