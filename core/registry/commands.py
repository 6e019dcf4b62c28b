"""``mlfleet models register|list|show|versions|alias|history``: the model registry from the command line.

The controller checks names, aliases and reasons and copies the artifact
(core/registry/api.py); here a ``--at`` time is read in the user's own
local time (core/base/when.py) before it travels as Unix seconds, and
answers are printed with the CLI toolkit (``--json``: the answer as is).
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from typing import Any

from mlfleet.core.base.errors import EXIT_OK
from mlfleet.core.cli import render
from mlfleet.core.cli.output import Add, bounded, client_command, positive, print_json, say
from mlfleet.core.controller.client import ControllerClient
from mlfleet.core.registry.refs import MAX_VERSION
from mlfleet.core.base.when import parse_at


def _aliases(aliases: dict[str, int]) -> str:
    return ", ".join(f"{a}=v{v}" for a, v in aliases.items()) or "-"


def _short(digest: Any) -> str:
    return str(digest)[:12] if digest else "-"


def _stamp(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M:%S")


async def cmd_register(client: ControllerClient, args: argparse.Namespace) -> int:
    v = await client.call("model_register", name=args.name, run=args.run, artifact=args.artifact, alias=args.alias,
                          reason=args.reason, request_timeout=None)
    how = "copied into the model store" if v["copied"] else "already in the model store"
    text = (f"{v['name']}: version {v['version']} from run {v['run_id']} ({v['file_name']}, "
            f"{render.format_size(v['size'])}, sha256 {_short(v['sha256'])} verified, {how})")
    moved = v.get("alias_moved")
    if moved:
        text += f"; {v['name']}@{moved['alias']} -> v{moved['to_version']}"
    say(args, v, text)
    return EXIT_OK


async def cmd_list(client: ControllerClient, args: argparse.Namespace) -> int:
    models = await client.call("models_list", limit=args.limit)
    if args.json:
        print_json(models)
        return EXIT_OK
    if not models:
        print("no models yet: register one with 'mlfleet models register NAME --run RUN --artifact PATH' "
              "(docs/models.md)")
        return EXIT_OK
    print(render.table(["model", "versions", "latest", "aliases", "latest run", "updated"],
                       [[m["name"], m["versions"], f"v{m['latest']}", _aliases(m["aliases"]), m["latest_run"],
                         render.when(m["updated_at"])] for m in models]))
    return EXIT_OK


def _print_version(v: dict[str, Any]) -> None:
    print(f"  run        {v['run_id']} (job {render.value(v.get('job_id'))})")
    print(f"  file       {v['file_name']}, {render.format_size(v['size'])}, sha256 {v['sha256']}")
    print(f"  logged as  {v['artifact_path']}")
    print(f"  by         {v['created_by']} at {render.when(v['created_at'])}")
    print(f"  env        {_short(v.get('env_hash'))}")
    packages = v.get("packages") or {}
    if packages and "count" not in packages:
        print(f"  packages   {len(packages)}: " + render.value([f"{k}=={p}" for k, p in list(packages.items())[:8]])
              + (" ..." if len(packages) > 8 else ""))
    lineage = {**(v.get("lineage") or {}), "code_hash": v.get("code_hash"), "spec_hash": v.get("spec_hash")}
    for label, text in render.lineage_rows(lineage):
        print(f"  {label:<10} {text}")
    metrics = v.get("metrics") or {}
    if metrics:
        print(render.table(["metric", "last", "min", "max", "summary"],
                           [[render.Name(k), m.get("last"), m.get("min"), m.get("max"),
                             f"{m['mode']} {render.number(m['summary'])}" if m.get("mode") else "-"]
                            for k, m in metrics.items()]))


async def cmd_show(client: ControllerClient, args: argparse.Namespace) -> int:
    shown = await client.call("model_show", model=args.model)
    if args.json:
        print_json(shown)
        return EXIT_OK
    v = shown["version"]
    picked = f" ({shown['name']}@{shown['alias']})" if shown.get("alias") else ""
    print(f"model {shown['name']}: {shown['versions']} version{'s' if shown['versions'] != 1 else ''}, latest "
          f"v{shown['latest']}; aliases {_aliases(shown['model_aliases'])}")
    print(f"version {v['version']}{picked}" + (f", aliased {', '.join(v['aliases'])}" if v["aliases"] else ""))
    _print_version(v)
    if shown["history"]:
        print("alias history (newest first):")
        print(_moves_table(shown["history"][:10]))
    return EXIT_OK


async def cmd_versions(client: ControllerClient, args: argparse.Namespace) -> int:
    versions = await client.call("model_versions", name=args.name)
    if args.json:
        print_json(versions)
        return EXIT_OK
    print(render.table(["version", "aliases", "run", "file", "size", "sha256", "by", "registered"],
                       [[f"v{v['version']}", ", ".join(v["aliases"]) or "-", v["run_id"], v["file_name"],
                         render.format_size(v["size"]), _short(v["sha256"]), v["created_by"],
                         render.when(v["created_at"])] for v in versions]))
    return EXIT_OK


async def cmd_alias(client: ControllerClient, args: argparse.Namespace) -> int:
    moved = await client.call("model_alias", name=args.name, alias=args.alias, version=args.version,
                              reason=args.reason)
    if moved["changed"]:
        before = f"v{moved['from_version']}" if moved["from_version"] is not None else "(new)"
        text = f"{moved['name']}@{moved['alias']}: {before} -> v{moved['to_version']}" + \
            (f" ({moved['reason']})" if moved.get("reason") else "")
    else:
        text = f"{moved['name']}@{moved['alias']} already points to v{moved['to_version']}; nothing changed"
    say(args, moved, text)
    return EXIT_OK


def _moves_table(moves: list[dict[str, Any]]) -> str:
    return render.table(["at", "alias", "from", "to", "by", "reason"],
                        [[render.when(m["moved_at"]), m["alias"],
                          f"v{m['from_version']}" if m["from_version"] is not None else "-", f"v{m['to_version']}",
                          m["actor"], m["reason"]] for m in moves])


async def cmd_history(client: ControllerClient, args: argparse.Namespace) -> int:
    at = parse_at(args.at, time.time()) if args.at is not None else None
    answer = await client.call("model_history", name=args.name, at=at, alias=args.alias)
    if args.json:
        print_json(answer)
        return EXIT_OK
    if answer["kind"] == "moves":
        if not answer["moves"]:
            print(f"model {args.name} has no alias moves yet: 'mlfleet models alias {args.name} ALIAS VERSION'")
        else:
            print(_moves_table(answer["moves"]))
        return EXIT_OK
    print(f"model {answer['name']} at {_stamp(answer['at'])}:")
    for a in answer["aliases"]:
        print(f"  {a['alias']} = v{a['version']} since {render.when(a['since'])} (by {a['actor']}"
              + (f": {a['reason']}" if a.get("reason") else "") + ")")
        print(f"    run {a['run_id']} (job {render.value(a.get('job_id'))}), sha256 {_short(a['sha256'])}, "
              f"code {_short(a.get('code_hash'))}, env {_short(a.get('env_hash'))}")
        for item in a.get("inputs") or []:
            if isinstance(item, dict):
                detail = item.get("error") or f"sha256 {_short(item.get('sha256'))}"
                print(f"    data {render.value(item.get('path'))}: {detail}")
    for alias in answer["unset"]:
        print(f"  {alias}: not set yet at that time")
    return EXIT_OK


def register(sub: Any, add: Add) -> None:
    """Add the ``models`` command group to the top-level subparsers."""
    models = sub.add_parser("models", help="the model registry: versions, aliases and their history").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = add(models, "register", client_command(cmd_register),
            "make the next version of a model from an artifact a run logged (copied and verified by sha256)")
    p.add_argument("name", help="the model's name, e.g. iris")
    p.add_argument("--run", required=True, help="the run that logged the artifact (a unique prefix is enough)")
    p.add_argument("--artifact", required=True, help="the artifact's logged path, or a unique ending of it (model.bin)")
    p.add_argument("--alias", help="also point this alias at the new version (e.g. staging)")
    p.add_argument("--reason", help="why, for the alias history (with --alias)")
    p = add(models, "list", client_command(cmd_list), "list models with their latest version and aliases")
    p.add_argument("--limit", type=positive, default=200)
    p = add(models, "show", client_command(cmd_show), "show a model's latest version (or NAME:V, NAME@ALIAS): "
                                                      "run, file, lineage, metrics, alias history")
    p.add_argument("model", help="NAME, NAME:VERSION or NAME@ALIAS")
    p = add(models, "versions", client_command(cmd_versions), "list every version of a model")
    p.add_argument("name")
    p = add(models, "alias", client_command(cmd_alias), "point an alias (production, staging) at a version")
    p.add_argument("name")
    p.add_argument("alias")
    p.add_argument("version", type=bounded(1, MAX_VERSION))
    p.add_argument("--reason", help="why (kept in the alias history)")
    p = add(models, "history", client_command(cmd_history),
            "the alias history; with --at T, which version each alias pointed to then, and its run and data")
    p.add_argument("name")
    p.add_argument("--at", help="a time: '2026-11-28 14:30' (local), '2h' or '3d ago', '@UNIX_SECONDS'")
    p.add_argument("--alias", help="only this alias")
