"""``mlfleet sweeps list|show|cancel``: a sweep's children, progress and best run so far.

A sweep is submitted like any job spec (``mlfleet submit sweep.yaml``): the
``submit`` command sees its ``sweep:`` block; this module also holds what
that command prints for one (:func:`submitted`, :func:`wait`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from mlfleet.core.base.errors import EXIT_FAILED, EXIT_OK
from mlfleet.core.cli import render
from mlfleet.core.cli.output import Add, client_command, positive, print_json, say
from mlfleet.core.controller.client import ControllerClient
from mlfleet.core.sweeps.summary import best as _best, progress as _progress


async def cmd_sweeps_list(client: ControllerClient, args: argparse.Namespace) -> int:
    sweeps = await client.call("sweeps_list", limit=args.limit)
    if args.json:
        print_json(sweeps)
        return EXIT_OK
    if not sweeps:
        print("no sweeps yet: submit a spec with a sweep: block (docs/sweeps.md)")
        return EXIT_OK
    print(render.table(["sweep", "name", "points", "parallel", "progress", "best", "created"],
                       [[s["sweep_id"], s["name"], s["points"], s["max_parallel"] or "-", _progress(s["progress"]),
                         _best(s["best"]), render.when(s["created_at"])] for s in sweeps]))
    return EXIT_OK


async def cmd_sweeps_show(client: ControllerClient, args: argparse.Namespace) -> int:
    sweep = await client.call("sweep_show", sweep=args.name)
    if args.json:
        print_json(sweep)
        return EXIT_OK
    objective = (f"{sweep['objective_mode']} {sweep['objective_metric']}" if sweep["objective_metric"] else "none")
    print(f"sweep {sweep['sweep_id']}  {sweep['name']}  (project {sweep['project']}, owner {sweep['owner']})")
    print(f"points {sweep['points']}; max_parallel {sweep['max_parallel'] or '-'}; objective {objective}"
          + (f"; cancelled by {sweep['cancelled_by']}" if sweep["cancelled_by"] else ""))
    print(f"progress: {_progress(sweep['progress'])}")
    print(f"best: {_best(sweep['best'])}" + (f"  run {sweep['best']['run_id']}" if sweep["best"] else ""))
    metric = sweep["objective_metric"] or "objective"
    print(render.table(["#", "job", "name", "state", "host", metric, "point"],
                       [[c["idx"], c["job_id"], c["name"], c["state"], c["host"], render.number(c["objective"]),
                         render.value(c["point"])] for c in sweep["children"]]))
    return EXIT_OK


async def cmd_sweeps_cancel(client: ControllerClient, args: argparse.Namespace) -> int:
    answer = await client.call("sweep_cancel", sweep=args.name)
    say(args, answer, answer["message"])
    return EXIT_OK


async def submitted(client: ControllerClient, args: argparse.Namespace, answer: dict[str, Any]) -> int:
    """What ``submit`` prints for a sweep: its name and children, or with ``--wait`` how they ended."""
    for sentence in answer.get("code_skipped") or []:
        print(f"mlfleet: warning: {sentence}", file=sys.stderr)
    if answer.get("existing") and not args.lost and not args.json:
        print(f"mlfleet: key {args.key} was already submitted as sweep {answer['name']}; nothing new was queued",
              file=sys.stderr)
    if not args.wait:
        if args.json:
            print_json(answer)
        else:
            print(f"{answer['name']}: sweep {answer['sweep_id']}, {answer['points']} jobs queued "
                  f"(mlfleet sweeps show {answer['name']})")
        return EXIT_OK
    if not args.json:
        print(f"sweep {answer['name']} submitted; waiting for its {answer['points']} jobs (Ctrl-C stops waiting, "
              "not the sweep)", file=sys.stderr)
    return await wait(client, args, answer["sweep_id"])


async def wait(client: ControllerClient, args: argparse.Namespace, sweep_id: str) -> int:
    while True:
        sweep = await client.call("sweep_show", sweep=sweep_id)
        p = sweep["progress"]
        if p["pending"] + p["running"] == 0:
            break
        await asyncio.sleep(0.5)
    result = {"sweep_id": sweep_id, "name": sweep["name"], "progress": p, "best": sweep["best"]}
    if args.json:
        print_json(result)
    else:
        print(f"sweep {sweep['name']}: {_progress(p)}; best {_best(sweep['best'])}")
    return EXIT_OK if p["succeeded"] == p["total"] else EXIT_FAILED


def register(sub: Any, add: Add) -> None:
    """Add the ``sweeps`` command group to the top-level subparsers."""
    sweeps = sub.add_parser("sweeps", help="list, inspect and cancel sweeps").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = add(sweeps, "list", client_command(cmd_sweeps_list), "list sweeps, newest first, with progress and best run")
    p.add_argument("--limit", type=positive, default=200)
    p = add(sweeps, "show", client_command(cmd_sweeps_show), "show a sweep: its children, progress and best run")
    p.add_argument("name", help="the sweep's name (or its id)")
    p = add(sweeps, "cancel", client_command(cmd_sweeps_cancel), "cancel a sweep's queued and running children")
    p.add_argument("name", help="the sweep's name (or its id)")
