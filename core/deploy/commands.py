"""``mlfleet deploy apply|list|show|history|logs|scale|stop|rollback|metrics``: serve a registered model.

``apply`` checks the spec file here (every mistake at its line) before any
controller is started for it, and sends it as data; the controller
decides what changed (docs/deployments.md). ``logs`` reads a replica's job
output through the jobs' ``job_logs`` RPC, printed as ``jobs logs`` prints
it (text, or JSON lines with ``--json``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from mlfleet.core.base.errors import EXIT_OK, UsageError
from mlfleet.core.base.models import TERMINAL_STATES, to_plain
from mlfleet.core.base.units import format_duration, parse_duration
from mlfleet.core.cli import render
from mlfleet.core.cli.output import Add, bounded, client_command, print_json, say
from mlfleet.core.controller.client import ControllerClient
from mlfleet.core.deploy.open_command import add_open_command
from mlfleet.core.deploy.spec import load_deployment_spec
from mlfleet.core.jobs import log_output


def _at(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return dt.datetime.fromtimestamp(float(epoch)).strftime("%Y-%m-%d %H:%M:%S")


def _num(value: Any, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def cmd_apply(args: argparse.Namespace) -> int:
    """The spec is checked here, before any controller is started for it."""
    args.spec = load_deployment_spec(args.file)
    return client_command(_apply)(args)


async def _apply(client: ControllerClient, args: argparse.Namespace) -> int:
    """Another user's controller (or one over SSH) never reads the workdir: the code is packed here and sent."""
    from mlfleet.core.jobs.code_send import send_code, sends_own_code

    spec = args.spec
    code = (await send_code(client, Path(spec.workdir), client.home, spec.project, deployment=spec.name)
            if sends_own_code(client) else None)
    answer = await client.call("deploy_apply", spec=to_plain(spec), spec_path=str(Path(args.file).absolute()),
                               **({"code": code} if code is not None else {}))
    for warning in answer.get("warnings") or []:
        print(f"mlfleet: warning: {warning}", file=sys.stderr)
    say(args, answer, answer["message"])
    return EXIT_OK


async def cmd_list(client: ControllerClient, args: argparse.Namespace) -> int:
    found = await client.call("deploy_list")
    if args.json:
        print_json(found)
        return EXIT_OK
    if not found:
        print("no deployments yet: mlfleet deploy apply FILE (docs/deployments.md)")
        return EXIT_OK
    print(render.table(["name", "model", "version", "phase", "replicas", "progress", "updated"],
                       [[d["name"], d["model"], f"v{d['target_version']}", d["phase"], d["replicas"], d["progress"],
                         _at(d["updated_at"])] for d in found]))
    return EXIT_OK


async def cmd_show(client: ControllerClient, args: argparse.Namespace) -> int:
    d = await client.call("deploy_show", name=args.name)
    if args.json:
        print_json(d)
        return EXIT_OK
    stable = f"; stable v{d['stable_version']}" if d.get("stable_version") not in (None, d["target_version"]) else ""
    print(f"deployment {d['name']}  model {d['model_ref']}  (created by {d['created_by']} {_at(d['created_at'])})")
    print(f"phase: {d['phase']}" + (f"  ({d['reason']})" if d.get("reason") else ""))
    print(f"target v{d['target_version']}{stable}; {d['spec'].get('replicas')} replicas wanted")
    print(f"progress: {d['progress']}")
    if d["replicas"]:
        print(render.table(
            ["replica", "version", "host", "port", "health", "restarts", "rps", "p95 ms", "errors"],
            [[r["replica_id"], f"v{r['version']}", r["host"] or "-", r["port"] or "-",
              r["health"] + (" (draining)" if r["draining"] else "") + (" (stopping)" if r["stopping"] else ""),
              r["restarts"], _num(r.get("rps")), _num(None if r.get("p95") is None else r["p95"] * 1000),
              _num(None if r.get("error_rate") is None else r["error_rate"] * 100, "{:.1f}%")]
             for r in d["replicas"]]))
    endpoints = ", ".join(f"{e['host']}:{e['port']}" for e in d["endpoints"]) or "none healthy"
    print(f"endpoints: {endpoints}")
    return EXIT_OK


async def cmd_history(client: ControllerClient, args: argparse.Namespace) -> int:
    events = await client.call("deploy_history", name=args.name)
    if args.json:
        print_json(events)
        return EXIT_OK
    print(render.table(["when", "actor", "event", "version", "detail"],
                       [[_at(e["ts"]), e["actor"], e["kind"], f"v{e['version']}" if e["version"] else "-",
                         ", ".join(f"{k}={render.value(v)}" for k, v in (e["detail"] or {}).items())]
                        for e in events]))
    return EXIT_OK


async def cmd_scale(client: ControllerClient, args: argparse.Namespace) -> int:
    answer = await client.call("deploy_scale", name=args.name, replicas=args.replicas)
    say(args, answer, answer["message"])
    return EXIT_OK


async def cmd_stop(client: ControllerClient, args: argparse.Namespace) -> int:
    answer = await client.call("deploy_stop", name=args.name)
    say(args, answer, answer["message"])
    return EXIT_OK


async def cmd_rollback(client: ControllerClient, args: argparse.Namespace) -> int:
    answer = await client.call("deploy_rollback", name=args.name, **({"to": args.to} if args.to else {}))
    say(args, answer, answer["message"])
    return EXIT_OK


def _since(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be longer than 0, got {text!r}")
    return seconds


async def cmd_metrics(client: ControllerClient, args: argparse.Namespace) -> int:
    answer = await client.call("deploy_metrics", name=args.name, since=args.since)
    if args.json:
        print_json(answer)
        return EXIT_OK
    versions = answer["versions"]
    print(f"{args.name}: serving over the last {format_duration(args.since)} (target v{answer['target_version']})")
    if not versions:
        print("no scrapes yet in that window")
        return EXIT_OK
    print(render.table(["version", "replicas", "requests", "rps", "errors", "p50 ms", "p95 ms", "p99 ms"],
                       [[f"v{v.get('version')}", v.get("replicas", "-"), _num(v.get("requests"), "{:.0f}"),
                         _num(v.get("rps", v.get("request_rate"))),
                         _num(None if v.get("error_rate") is None else v["error_rate"] * 100, "{:.2f}%"),
                         *(_num(None if v.get(q) is None else v[q] * 1000) for q in ("p50", "p95", "p99"))]
                        for v in versions]))
    return EXIT_OK


async def cmd_logs(client: ControllerClient, args: argparse.Namespace) -> int:
    """The output of one replica (--replica), or of each open one in turn."""
    found = await client.call("deploy_replica", name=args.name, replica=args.replica,
                              include_ended=args.replica is not None)
    if not found:
        raise UsageError(f"{args.name} has no replicas running; 'mlfleet deploy history {args.name}' says what happened")
    if args.follow and len(found) > 1:
        raise UsageError(f"{args.name} has {len(found)} replicas; follow one with --replica "
                         f"({', '.join(r['replica_id'] for r in found[:5])})")
    stream = "stderr" if args.stderr else "stdout"
    for replica in found:
        out = log_output.JsonLog(stream) if args.json else log_output.TextLog()
        if not args.json and len(found) > 1:
            print(f"==> {replica['replica_id']} (job {replica['job_id']}) <==", flush=True)
        try:
            await _follow(client, replica["job_id"], stream, out, args.follow)
        finally:
            out.close()
    return EXIT_OK


async def _follow(client: ControllerClient, job_id: str, stream: str, out: Any, follow: bool) -> None:
    offset = 0
    while True:
        chunk = await client.call("job_logs", job=job_id, stream=stream, offset=offset)
        if chunk.get("dropped"):
            out.dropped(chunk["job_id"], chunk.get("run_id"), chunk["dropped"], chunk.get("max_size", 0),
                        earlier=offset == 0)
        if chunk["data"]:
            out.data(chunk["job_id"], chunk.get("run_id"), chunk["data"])
        offset = chunk["end"]
        if chunk["end"] > chunk["offset"]:
            continue
        if not follow or chunk["state"] in TERMINAL_STATES:
            return
        await asyncio.sleep(0.5)


def register(sub: Any, add: Add) -> None:
    """Add the ``deploy`` command group to the top-level subparsers."""
    deploy = sub.add_parser("deploy", help="serve registered models: apply, roll out, roll back, watch").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = add(deploy, "apply", cmd_apply, "create or update a deployment from its spec (the same file again: unchanged)")
    p.add_argument("file", help="the deployment spec, e.g. configs/deploy/iris-deploy.yaml")
    add(deploy, "list", client_command(cmd_list), "list deployments with their phase and rollout progress")
    for name, fn, text in (("show", cmd_show, "show a deployment: replicas, health, RPS, p95, errors, endpoints"),
                           ("history", cmd_history, "every rollout step of a deployment, oldest first"),
                           ("stop", cmd_stop, "drain and stop every replica (apply starts it again)")):
        add(deploy, name, client_command(fn), text).add_argument("name", help="the deployment's name")
    p = add(deploy, "scale", client_command(cmd_scale), "change how many replicas serve")
    p.add_argument("name", help="the deployment's name")
    p.add_argument("replicas", type=bounded(0, 1000), help="the number of replicas, e.g. 3")
    p = add(deploy, "rollback", client_command(cmd_rollback),
            "roll back to the version that served before (or --to VERSION), health-gated like a rollout")
    p.add_argument("name", help="the deployment's name")
    p.add_argument("--to", type=bounded(1, 1 << 62), help="the model version to roll back to")
    p = add(deploy, "metrics", client_command(cmd_metrics), "request rate, errors and latency per version, side by side")
    p.add_argument("name", help="the deployment's name")
    p.add_argument("--since", type=_since, default=3600.0, help="how far back, e.g. 15m, 1h, 1d (default 1h)")
    p = add(deploy, "logs", client_command(cmd_logs), "print a replica's output (--json: one JSON object per line)")
    p.add_argument("name", help="the deployment's name")
    p.add_argument("--replica", help="one replica (its id, or its number: 3 for iris-v2-3)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the replica stops")
    p.add_argument("--stderr", action="store_true", help="print stderr instead of stdout")
    add_open_command(deploy, add)
