"""``mlfleet``: the TUI with no arguments, the batch CLI otherwise.

Every command that prints data takes ``--json``. Exit codes (docs/cli.md):
0 ok, 1 the job or action failed, 2 bad input, 3 drift found, 4 not found,
5 controller or host unavailable. A user's mistake is one sentence on
stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

from mlfleet import __version__
from mlfleet.core.base import bounds
from mlfleet.core.fleet import agent_commands as cli_agents
from mlfleet.core.drift import commands as cli_drift
from mlfleet.core.jobs import log_output as cli_logs
from mlfleet.core.cli import parser as cli_parser
from mlfleet.core.tracking import run_keys as cli_run_keys
from mlfleet.core.fleet import hostseen
from mlfleet.core.base import logfile
from mlfleet.core.cli import render
from mlfleet.core.controller.client import ControllerClient, connect, controller_pid, lock_held, submit_with_retry, try_connect
from mlfleet.core.jobs.spec import load_job_spec
from mlfleet.core.base.errors import (EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, MlfleetError, UnavailableError,
                                 UsageError)
from mlfleet.core.base.models import SHOWN_JOB_STATES, TERMINAL_STATES, to_plain
from mlfleet.core.base.output_path import check_output, open_temp, os_failure, place
from mlfleet.core.base.paths import Home
from mlfleet.core.base.private import private_agent_state, private_dir, trusted_socket, use_private_umask, user_umask
from mlfleet.core.base.settings import load_settings
from mlfleet.core.jobs.submit_key import check_submit_key, new_submit_key
from mlfleet.core.base.words import plural


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _client_command(fn: Callable[[ControllerClient, argparse.Namespace], Awaitable[int]]) -> Callable[[argparse.Namespace], int]:
    """Wrap an async command that needs a controller (started on demand)."""

    def run(args: argparse.Namespace) -> int:
        async def go() -> int:
            async with await connect(Home.from_env()) as client:
                return await fn(client, args)

        return asyncio.run(go())

    return run


def _checked_output(fn: Callable[[ControllerClient, argparse.Namespace], Awaitable[int]]) -> Callable[[argparse.Namespace], int]:
    """Like _client_command, but refuse ``--output`` (core/output_path.py) before any controller is started."""

    def run(args: argparse.Namespace) -> int:
        if args.output not in (None, "-"):
            check_output(Path(args.output).expanduser().absolute(), Home.from_env().own_folders(), args.force)
        return _client_command(fn)(args)

    return run


# ------------------------------------------------------------------ jobs

def cmd_submit(args: argparse.Namespace) -> int:
    """Validate the spec and the key here, before any controller is started for them."""
    args.spec = load_job_spec(args.file)
    args.key = check_submit_key(args.key) if args.key is not None else new_submit_key()  # one per command
    home = Home.from_env()
    args.retry_for = float(load_settings(home.config_file).client.submit_retry)
    return asyncio.run(_submit(home, args))


def _resubmit_command(args: argparse.Namespace) -> str:
    """This command again, with its key: what to run when its outcome is unknown."""
    flags = [flag for flag, given in (("--queue-anyway", args.queue_anyway), ("--wait", args.wait),
                                      ("--json", args.json)) if given]
    return " ".join(["mlfleet", "submit", shlex.quote(args.file), "--key", args.key, *flags])


async def _submit(home: Home, args: argparse.Namespace) -> int:
    first = await connect(home)  # nothing is sent before this: if it fails, no job exists and its sentence says why
    args.lost = False

    def asking_again(why: str) -> None:
        args.lost = True
        print(f"mlfleet: lost the controller during the submit ({why}); asking again with the same key for up to "
              f"{args.retry_for:.0f} s", file=sys.stderr)

    try:
        answer, client = await submit_with_retry(
            first, {"spec": to_plain(args.spec), "spec_path": str(Path(args.file).absolute()),
                    "queue_anyway": args.queue_anyway, "key": args.key},
            retry_for=args.retry_for, resubmit=_resubmit_command(args), on_retry=asking_again)
        try:
            return await _submitted(client, args, answer)
        finally:
            if client is not first:
                await client.close()
    finally:
        await first.close()


async def _submitted(client: ControllerClient, args: argparse.Namespace, answer: dict[str, Any]) -> int:
    job_id = answer["job_id"]
    for sentence in answer.get("code_skipped") or []:  # symlinks that would reach outside the workdir
        print(f"mlfleet: warning: {sentence}", file=sys.stderr)
    if answer.get("existing") and not args.lost and not args.json:  # the user ran a submit again, with its key
        print(f"mlfleet: key {args.key} was already submitted as job {job_id}; nothing new was queued", file=sys.stderr)
    if not args.wait:
        if args.json:
            _print_json(answer)
        else:
            print(job_id)
        return EXIT_OK
    if not args.json:
        print(f"{job_id} submitted; waiting for it to finish (Ctrl-C stops waiting, not the job)", file=sys.stderr)
    while True:
        job = await client.call("job_wait", request_timeout=60, job=job_id, timeout=30)
        if job["state"] in TERMINAL_STATES:
            break
    result = {"job_id": job_id, "state": job["state"], "run_id": job["run_id"], "exit_code": job["exit_code"],
              "reason": job["reason"], "host": job["host"]}
    if args.json:
        _print_json(result)
    else:
        print(f"{job_id} {job['state']} ({job['reason']}); run {job['run_id']}")
    return EXIT_OK if job["state"] == "succeeded" else EXIT_FAILED


async def cmd_jobs_list(client: ControllerClient, args: argparse.Namespace) -> int:
    jobs = await client.call("jobs_list", limit=args.limit, states=args.state or None, key=args.key)
    if args.json:
        _print_json(jobs)
        return EXIT_OK
    if args.key is not None and not jobs:
        print(f"no job of yours was submitted with key {args.key}")
        return EXIT_OK
    print(render.table(
        ["id", "name", "project", "state", "host", "elapsed", "submitted", "reason"],
        [[j["job_id"], j["name"], j["project"], j["state"], j["host"], render.elapsed(j["started_at"], j["finished_at"]),
          render.when(j["submitted_at"]), j["reason"]] for j in jobs]))
    return EXIT_OK


async def cmd_jobs_show(client: ControllerClient, args: argparse.Namespace) -> int:
    job = await client.call("job_show", job=args.id)
    if args.json:
        _print_json(job)
        return EXIT_OK
    print(f"job {job['job_id']}  {job['name']}  (project {job['project']}, owner {job['owner']})")
    print(f"state: {job['state']}" + (f"  ({job['reason']})" if job["reason"] else ""))
    gpus = ",".join(map(str, job["gpus"] or [])) or "-"
    print(f"attempt {job['attempt']} of {job['max_attempts']}; host {job['host'] or '-'}; GPUs {gpus}")
    if job["why_pending"]:
        print("why pending:")
        for r in job["why_pending"]:
            print(f"  {r['host']}: {r['message']}")
    print("events:")
    for e in job["events"]:
        print(f"  {render.when(e['ts'])}  {e['state']:<10} {e['reason'] or ''}")
    if job["runs"]:
        print("runs:")
        for r in job["runs"]:
            print(f"  {r['run_id']}  {r['state']:<10} host {r['host']}  exit {r['exit_code'] if r['exit_code'] is not None else '-'}")
    return EXIT_OK


async def cmd_jobs_why(client: ControllerClient, args: argparse.Namespace) -> int:
    job = await client.call("job_show", job=args.id)
    if args.json:
        _print_json({"job_id": job["job_id"], "state": job["state"], "reason": job["reason"],
                     "why_pending": job["why_pending"]})
        return EXIT_OK
    if job["state"] != "pending":
        print(f"{job['job_id']} is not pending: it is {job['state']}" + (f" ({job['reason']})" if job["reason"] else ""))
        return EXIT_OK
    print(f"{job['job_id']} is pending: {job['reason']}")
    for r in job["why_pending"]:
        print(f"  {r['host']}: {r['message']}")
    return EXIT_OK


async def cmd_jobs_cancel(client: ControllerClient, args: argparse.Namespace) -> int:
    answer = await client.call("job_cancel", job=args.id)
    _say(args, answer, answer["message"])
    return EXIT_OK


async def cmd_jobs_priority(client: ControllerClient, args: argparse.Namespace) -> int:
    answer = await client.call("job_set_priority", job=args.id, priority=args.priority)
    _say(args, answer, answer["message"])
    return EXIT_OK


async def cmd_jobs_retry(client: ControllerClient, args: argparse.Namespace) -> int:
    answer = await client.call("job_retry", job=args.id, **({"force": True} if args.force else {}))
    _say(args, answer, answer["message"])
    return EXIT_OK


async def cmd_jobs_logs(client: ControllerClient, args: argparse.Namespace) -> int:
    stream = "stderr" if args.stderr else "stdout"
    out = cli_logs.JsonLog(stream) if args.json else cli_logs.TextLog()  # --json: JSON lines
    try:
        return await _follow_logs(client, args, stream, out)
    finally:
        out.close()


async def _follow_logs(client: ControllerClient, args: argparse.Namespace, stream: str, out: Any) -> int:
    offset, run_id = 0, None
    while True:
        chunk = await client.call("job_logs", job=args.id, stream=stream, offset=offset)
        if chunk.get("run_id") != run_id:  # a retry started a new run: its log starts at 0
            if run_id is not None and offset:
                offset = 0
                chunk = await client.call("job_logs", job=args.id, stream=stream, offset=0)
            run_id = chunk.get("run_id")
        if chunk.get("dropped"):  # the log was cut (logs.max_size): say how much, where it was
            out.dropped(chunk["job_id"], run_id, chunk["dropped"], chunk.get("max_size", 0), earlier=offset == 0)
        if chunk["data"]:
            out.data(chunk["job_id"], run_id, chunk["data"])
        offset = chunk["end"]
        if chunk["end"] > chunk["offset"]:
            continue  # more may be waiting right away
        if not args.follow or (chunk["eof"] and chunk["state"] in TERMINAL_STATES):
            return EXIT_OK
        if chunk["state"] in TERMINAL_STATES and chunk.get("run_id") is None:
            return EXIT_OK
        await asyncio.sleep(0.5)


# ------------------------------------------------------------ hosts, runs

async def cmd_hosts_list(client: ControllerClient, args: argparse.Namespace) -> int:
    hosts = await client.call("hosts_list")
    if args.json:
        _print_json(hosts)
        return EXIT_OK
    rows = []
    for h in hosts:
        t = h["telemetry"] or {}
        mem = f"{render.format_size(t.get('memory_used'))}/{render.format_size(t.get('memory_total'))}" if t else "-"
        gpus = str(len(t.get("gpus", []))) if t.get("gpu_state") == "ok" else t.get("gpu_state", "-").replace("_", " ")
        if h.get("simulated") and t.get("gpu_state") == "ok":
            gpus += " (simulated)"
        state = f"{h['state']}, drained" if h.get("drained") else h["state"]
        rows.append([h["name"], h["kind"], state, render.percent(t.get("cpu_percent")) if t else "-", mem, gpus,
                     h["running_jobs"], h["agent_version"], hostseen.seen_text(h), h["message"] or ""])
    print(render.table(["host", "kind", "state", "cpu", "memory", "gpus", "jobs", "agent", "seen", "problem"], rows))
    return EXIT_OK


def cmd_hosts_add(args: argparse.Namespace) -> int:
    labels = {}
    for item in args.label or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--label {item!r}: write it as KEY=VALUE, e.g. --label region=eu-west")
        labels[key] = value
    identity = str(Path(args.identity).expanduser().absolute()) if args.identity else None
    host = {"name": args.name, "address": args.address, "port": args.port, "user": args.user, "identity": identity,
            "labels": labels, "agent_command": args.agent_command, "state_dir": args.state_dir,
            "simulate_gpus": args.simulate_gpus, "proxy_command": args.proxy_command,
            "proxy_jump": _jump_hops(args.proxy_jump, identity) if args.proxy_jump else None}
    host = {k: v for k, v in host.items() if v is not None}
    return _client_command(_hosts_add)(argparse.Namespace(**vars(args), host=host))


def _jump_hops(text: str, identity: str | None) -> list[dict[str, Any]]:
    """``--proxy-jump [user@]host[:port],...`` as hosts.yaml's proxy_jump (each hop with the host's --identity)."""
    from mlfleet.core.fleet.sshimport import parse_jump

    hops = []
    for spec in text.split(","):
        try:
            user, address, port = parse_jump(spec)
        except ValueError as exc:
            raise UsageError(f"--proxy-jump {exc}; write it as [user@]host[:port], several separated by commas") from None
        hops.append({k: v for k, v in {"address": address, "port": port, "user": user, "identity": identity}.items()
                     if v is not None})
    return hops


async def _hosts_add(client: ControllerClient, args: argparse.Namespace) -> int:
    answer = await client.call("hosts_add", host=args.host)
    _say(args, answer, f"added {args.name}; next: 'mlfleet hosts trust {args.name}' to check and record its host key")
    return EXIT_OK


async def cmd_hosts_remove(client: ControllerClient, args: argparse.Namespace) -> int:
    answer = await client.call("hosts_remove", name=args.name)
    _say(args, answer, f"removed {args.name}")
    return EXIT_OK


async def cmd_hosts_check(client: ControllerClient, args: argparse.Namespace) -> int:
    answer = await client.call("hosts_check", name=args.name, request_timeout=60)
    if args.json:
        _print_json(answer)
    elif answer["ok"]:
        print(f"{args.name}: ok; connected in {answer['connect_s']:.2f} s, round trip {answer['round_trip_ms']:.1f} ms, "
              f"agent {answer['agent_version']}" + (" (simulated GPUs)" if answer["simulated_gpus"] else ""))
    else:
        print(f"{args.name}: {answer['problem']}", file=sys.stderr)
    return EXIT_OK if answer["ok"] else EXIT_UNAVAILABLE


async def cmd_hosts_bootstrap(client: ControllerClient, args: argparse.Namespace) -> int:
    if not args.json:
        print(f"building a wheel and installing the agent on {args.name} (this takes a minute)...", file=sys.stderr)
    answer = await client.call("hosts_bootstrap", name=args.name, prefix=args.prefix, python=args.python,
                               request_timeout=1800)
    _say(args, answer, f"{args.name}: {answer['version']} installed; agent_command is now {answer['agent_command']}")
    return EXIT_OK


async def cmd_hosts_drain(client: ControllerClient, args: argparse.Namespace) -> int:
    drain = args.action == "drain"
    answer = await client.call("hosts_drain", name=args.name, reason=getattr(args, "reason", "") or "", drain=drain)
    running = answer.get("running", 0)
    text = (f"{args.name} drained: no new jobs; {plural(running, 'run')} in flight {'goes' if running == 1 else 'go'} on"
            if drain
            else f"{args.name} takes jobs again")
    _say(args, answer, text)
    return EXIT_OK


async def cmd_hosts_trust(client: ControllerClient, args: argparse.Namespace) -> int:
    hops: list[dict[str, Any]] = []  # jump hosts recorded on the way: their keys are confirmed first, one by one
    while True:
        key = await client.call("host_key", name=args.name)
        where = (f"the jump host {key['address']}:{key['port']} of {args.name}" if key.get("jump_host")
                 else f"{args.name} ({key['address']}:{key['port']})")
        extra = {"jump_hosts": hops} if hops else {}
        if key["trusted"]:
            _say(args, {**key, "recorded": False, **extra},
                 f"{where} is already trusted: {key['key_type']} {key['fingerprint']}")
            return EXIT_OK
        if not args.json:
            print(f"{where} presents {key['key_type']} key {key['fingerprint']}")
            if key["known"]:
                print(f"mlfleet had recorded {', '.join(key['known'])} for it: the key has CHANGED")
        if not args.yes:
            if not sys.stdin.isatty():
                raise UsageError(f"confirm the key of {where} with --yes when there is no terminal to ask")
            try:
                answer = input("Trust this key? [y/N] ").strip().lower()
            except EOFError:
                answer = ""
            if answer not in ("y", "yes"):
                print("nothing recorded")
                return EXIT_FAILED
        result = await client.call("host_trust", name=args.name, fingerprint=key["fingerprint"])
        if result.get("jump_host"):
            hops.append({**result, "address": key["address"], "port": key["port"]})
            if not args.json:
                print(f"recorded {key['fingerprint']} for {where}")
            continue
        _say(args, {**result, "recorded": True, **extra}, f"recorded {key['fingerprint']} for {args.name}")
        return EXIT_OK


def cmd_hosts_import_ssh_config(args: argparse.Namespace) -> int:
    from mlfleet.core.fleet.sshimport import plan_import

    plan = plan_import(Path(args.file).expanduser(), args.host or None)
    if not plan.hosts and not plan.refused:
        for line in plan.warnings:
            print(f"mlfleet: warning: {line}", file=sys.stderr)
        raise UsageError(f"no concrete Host entries to import in {args.file}"
                         + (f" matching {', '.join(args.host)}" if args.host else ""))
    args = argparse.Namespace(**vars(args), plan=plan)
    return _client_command(_import_hosts)(args) if plan.hosts else _import_report(args, [], [])


async def _import_hosts(client: ControllerClient, args: argparse.Namespace) -> int:
    existing = {h["name"] for h in await client.call("hosts_list")}
    added, skipped = [], []
    for host in args.plan.hosts:
        if host["name"] in existing:
            skipped.append(host["name"])
            continue
        try:
            await client.call("hosts_add", host=host)
        except MlfleetError as exc:  # the controller's own check (e.g. a key it cannot read): this host only
            if exc.exit_code != EXIT_USAGE:
                raise
            args.plan.refused[host["name"]] = str(exc)
            continue
        added.append(host["name"])
    return _import_report(args, added, skipped)


def _import_report(args: argparse.Namespace, added: list[str], skipped: list[str]) -> int:
    """Added and already there on stdout; each host not imported, by name and why, on stderr (exit 2)."""
    plan = args.plan
    if args.json:
        _print_json({"added": added, "skipped": skipped, "refused": plan.refused, "jump_hosts": plan.jump_hosts,
                     "warnings": plan.warnings})
    else:
        for line in plan.warnings:
            print(f"mlfleet: warning: {line}", file=sys.stderr)
        for door, users in plan.jump_hosts.items():
            print(f"mlfleet: {door} is the jump host of {', '.join(users)}, not a fleet host: not imported "
                  f"(add --host {door} to import it too)", file=sys.stderr)
        for name, why in plan.refused.items():
            shown = name if len(name) <= 40 else f"{name[:30]}... ({len(name)} characters)"
            print(f"mlfleet: {shown} not imported: {why}", file=sys.stderr)
        print(f"added {', '.join(added) or 'nothing'}" + (f"; already there: {', '.join(skipped)}" if skipped else ""))
    return EXIT_USAGE if plan.refused else EXIT_OK


async def cmd_runs_list(client: ControllerClient, args: argparse.Namespace) -> int:
    runs = await client.call("runs_list", where=args.where, sort=args.sort, limit=args.limit, keys=args.keys,
                             max_keys=args.max_keys)
    if args.json:
        _print_json(runs)
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
        _print_json(result)
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
    return _client_command(_runs_export)(args)


async def _runs_export(client: ControllerClient, args: argparse.Namespace) -> int:
    answer = await client.call("runs_export", output=args.output, format=args.format, where=args.where,
                               sort=args.sort, points=args.metrics, metrics=args.metric or None,
                               mode=0o666 & ~user_umask(), force=args.force, request_timeout=None)
    if answer["kind"] == "points":
        what = f"{plural(answer['rows'], 'metric point')} of {plural(answer['runs'], 'run')}"
    else:
        what = plural(answer["rows"], "run")
    _say(args, answer, f"wrote {what} to {answer['output']} as {answer['format']}")
    return EXIT_OK


async def cmd_runs_show(client: ControllerClient, args: argparse.Namespace) -> int:
    first = cli_run_keys.PAGE if args.all_keys else args.max_keys
    run = await client.call("run_show", run=args.id, keys=args.keys, max_keys=first)
    if args.json:
        if args.all_keys:
            await cli_run_keys.print_all_keys_json(client, run, args.keys)
        else:
            _print_json(run)
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
        _print_json(artifacts)
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
        _print_json(result)
    elif target is not None:
        print(f"{target}: {render.format_size(size)} from {first['host']}, sha256 {first['sha256'][:12]} verified")
    return EXIT_OK


async def cmd_db_query(client: ControllerClient, args: argparse.Namespace) -> int:
    try:
        result = await client.call("db_query", sql=args.sql, limit=args.limit, request_timeout=None)
    except asyncio.CancelledError:  # Ctrl-C: closing the connection makes the controller interrupt the query
        print("mlfleet: query cancelled; the controller stops it as this connection closes", file=sys.stderr)
        raise
    if args.json:
        _print_json(result)
        return EXIT_OK
    print(render.table(render.names(result["columns"]), result["rows"]))  # SQL names keep their case
    if result["truncated"]:
        print(f"(first {len(result['rows'])} rows only; use --limit, or page with LIMIT and OFFSET)",
              file=sys.stderr)
    return EXIT_OK


async def cmd_audit_list(client: ControllerClient, args: argparse.Namespace) -> int:
    events = await client.call("audit_list", limit=args.limit, action=args.action_filter)
    if args.json:
        _print_json(events)
        return EXIT_OK
    print(render.table(["id", "when", "who", "action", "target", "detail"],
                       [[e["id"], render.when(e["ts"]), e["actor"], e["action"], e["target"], e["detail"]] for e in events]))
    return EXIT_OK


# ------------------------------------------------------------- controller

def cmd_controller(args: argparse.Namespace) -> int:
    home = Home.from_env()
    if args.action == "run":
        return _controller_foreground(home)
    return asyncio.run(_controller_action(home, args))


def _controller_foreground(home: Home) -> int:
    from mlfleet.core.controller.loop import Controller

    use_private_umask()  # first: the DuckDB file, its WAL, snapshots and logs are born 0600
    try:
        settings = load_settings(home.config_file)
        logfile.install(home.log_dir / "controller.log", int(settings.controller.log_max_size),
                        settings.controller.log_backups)
        asyncio.run(Controller(home, settings).run())
    except MlfleetError as exc:
        print(f"mlfleet: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    return EXIT_OK


async def _controller_action(home: Home, args: argparse.Namespace) -> int:
    client = await try_connect(home)
    if client is None and controller_pid(home) is not None:
        client = await connect(home, autostart=False)  # one that is busy or starting: waited for, or said why
    if args.action == "status":
        if client is None:
            _say(args, {"running": False}, f"no controller is running for {home.data_dir}")
            return EXIT_UNAVAILABLE
        async with client:
            status = await client.call("status")
        status["running"] = True
        _say(args, status, f"controller {status['pid']} running (mlfleet {status['version']}); db {status['db']}; "
                           f"{status['pending']} pending, {status['active']} active; {_hosts_states(status['hosts'])}; "
                           f"{status['connections']} of {status['max_connections']} connections; "
                           f"log {status['log']} (rotated at {render.format_size(status['log_max_size'])}, "
                           f"{status['log_backups']} kept)")
        return EXIT_OK
    if args.action == "start":
        if client is not None:
            async with client:
                status = await client.call("status")
            _say(args, {"started": False, "pid": status["pid"]}, f"controller already running (pid {status['pid']})")
            return EXIT_OK
        async with await connect(home) as client:
            status = await client.call("status")
        _say(args, {"started": True, "pid": status["pid"]}, f"controller started (pid {status['pid']})")
        return EXIT_OK
    # stop
    if client is None:
        _say(args, {"stopped": False}, "no controller is running")
        return EXIT_OK
    async with client:
        answer = await client.call("shutdown")
    for _ in range(300):  # stopped means its lock is free: the file is closed and checkpointed
        await asyncio.sleep(0.1)
        if not lock_held(home.controller_lock):
            break
    else:
        raise UnavailableError("the controller did not stop within 30 s")
    _say(args, {"stopped": True, **answer}, "controller stopped")
    return EXIT_OK


def _hosts_states(hosts: dict[str, str]) -> str:
    """``2 hosts (local up, gpu1 unreachable)``: the status's {name: state}, in words."""
    return plural(len(hosts), "host") + (f" ({', '.join(f'{n} {s}' for n, s in hosts.items())})" if hosts else "")


def _say(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    if getattr(args, "json", False):
        _print_json(data)
    else:
        print(text)


# ------------------------------------------------------------------ agent

def cmd_agent_serve(args: argparse.Namespace) -> int:
    from mlfleet.agents.daemon import AgentDaemon

    use_private_umask()  # first: run folders, logs and metric files are born 0600 (jobs get the user's umask back)
    log_file = Path(args.log_file).expanduser().absolute() if args.log_file else None
    if log_file is not None:
        logfile.take_over(log_file)
    logfile.install(log_file, args.log_max_size, args.log_backups)
    state_dir = Path(args.state_dir).expanduser().absolute()
    socket_path = Path(args.socket).expanduser().absolute() if args.socket else state_dir / "agent.sock"
    private_agent_state(state_dir, socket_path)
    gpus = None
    if args.simulate_gpus:
        from mlfleet.agents.simulated import SimulatedGpuSource

        gpus = SimulatedGpuSource(Path(args.simulate_gpus).expanduser().absolute())
    daemon = AgentDaemon(state_dir, socket_path, host_name=args.name, sample_interval=args.sample_interval,
                         idle_exit=args.idle_exit, gpu_source=gpus)
    asyncio.run(daemon.serve(max_connections=args.max_connections))
    return EXIT_OK


def cmd_agent_connect(args: argparse.Namespace) -> int:
    from mlfleet.agents.bridge import bridge, ensure_agent

    use_private_umask()
    state_dir = Path(args.state_dir).expanduser().absolute()
    socket_path = state_dir / "agent.sock"
    private_dir(state_dir)
    trusted_socket(socket_path)  # a socket that is not ours is refused before anything is sent to it
    ensure_agent(state_dir, socket_path, args.name, args.simulate_gpus)
    return bridge(socket_path)


def cmd_agent_install_service(args: argparse.Namespace) -> int:
    from mlfleet.agents.service import UNIT_NAME, install

    unit = install(Path(args.state_dir).expanduser().absolute(), args.name, args.simulate_gpus)
    _say(args, {"unit": str(unit)}, f"wrote {unit}\nstart it with: systemctl --user daemon-reload && "
                                    f"systemctl --user enable --now {UNIT_NAME}\n(and 'loginctl enable-linger' "
                                    "to keep it running while you are logged out)")
    return EXIT_OK


def cmd_tui(args: argparse.Namespace) -> int:
    if getattr(args, "json", False):
        raise UsageError("the TUI draws on the terminal and has no JSON output; its batch twins take --json "
                         "(mlfleet --help lists them)")
    # Textual draws at most TEXTUAL_FPS frames a second, and after a frame that ran long (the 1 Hz
    # refresh of a big fleet) it waits one to two frame periods before it draws again: at 60 that
    # is up to 33 ms a key press can sit idle. 120 halves it; frames are drawn only when something
    # changed, so idle cost stays the same. Read when Textual is imported; a user's setting wins.
    os.environ.setdefault("TEXTUAL_FPS", "120")
    from mlfleet.tui.app import run_app

    return run_app(Home.from_env())


# ----------------------------------------------------------------- parser

def _positive(text: str) -> int:
    """A list's --limit: 1 to what one answer may carry (the controller checks the same bound)."""
    return _bounded(1, bounds.MAX_LIST)(text)


def _bounded(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high``, or one sentence saying so."""

    def parse(text: str) -> int:
        try:
            if not text.isascii():  # int() also reads '٣٣' (Arabic-Indic 33) as 33
                raise ValueError(text)
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, got {value}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be {high} or less, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser.CommandParser(prog="mlfleet", description="A terminal control center for GPU fleets. "
                                     "With no command, opens the TUI.")
    parser.add_argument("--version", action="version", version=f"mlfleet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(parent: Any, name: str, fn: Callable[[argparse.Namespace], int], help_text: str,
            json_flag: bool = True) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=fn)
        p.add_argument("--json", action="store_true",  # every command takes it (tests/test_cli_every_command.py)
                       help="print JSON" if json_flag else "print an error as JSON on stdout (there is no data)")
        return p

    p = add(sub, "submit", cmd_submit, "submit a job spec (YAML)")
    p.add_argument("file", help="the job spec, e.g. configs/demo-train.yaml")
    p.add_argument("--wait", action="store_true", help="wait for the job; exit 0 only if it succeeded")
    p.add_argument("--queue-anyway", action="store_true",
                   help="queue a job that no current host could ever run (a host that can is coming)")
    p.add_argument("--key", help="idempotency key: the same key again gives the same job back, never a second one "
                   "(default: a random key per command; give one in CI scripts that retry a whole command)")

    jobs = sub.add_parser("jobs", help="list, inspect, follow and cancel jobs").add_subparsers(dest="action", metavar="ACTION", required=True)
    p = add(jobs, "list", _client_command(cmd_jobs_list), "list jobs, newest first")
    p.add_argument("--state", action="append", choices=SHOWN_JOB_STATES, metavar="STATE",
                   help=f"only jobs in this state (repeatable): {', '.join(SHOWN_JOB_STATES)}")
    p.add_argument("--limit", type=_positive, default=200)
    p.add_argument("--key", help="only the job submitted with this key (mlfleet submit --key)")
    for name, fn, text in (("show", cmd_jobs_show, "show a job, its events and runs"),
                           ("why", cmd_jobs_why, "say why a job is pending, per host"),
                           ("cancel", cmd_jobs_cancel, "cancel a queued or running job")):
        add(jobs, name, _client_command(fn), text).add_argument("id", help="job id (a unique prefix is enough)")
    p = add(jobs, "retry", _client_command(cmd_jobs_retry), "queue an ended job for one more attempt")
    p.add_argument("id", help="job id (a unique prefix is enough)")
    p.add_argument("--force", action="store_true", help="retry a job that already succeeded")
    p = add(jobs, "priority", _client_command(cmd_jobs_priority), "change a job's priority (higher runs first)")
    p.add_argument("id", help="job id (a unique prefix is enough)")
    p.add_argument("priority", type=_bounded(-1000, 1000), help="the new priority, -1000 to 1000, e.g. 10")
    p = add(jobs, "logs", _client_command(cmd_jobs_logs), "print a job's output (--json: one JSON object per line)")
    p.add_argument("id", help="job id (a unique prefix is enough)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    p.add_argument("--stderr", action="store_true", help="print stderr instead of stdout")

    hosts = sub.add_parser("hosts", help="the fleet").add_subparsers(dest="action", metavar="ACTION", required=True)
    add(hosts, "list", _client_command(cmd_hosts_list), "list hosts with live telemetry")
    p = add(hosts, "add", cmd_hosts_add, "add an SSH host to hosts.yaml")
    p.add_argument("name")
    p.add_argument("--address", required=True, help="host name or IP address")
    p.add_argument("--port", type=_bounded(1, 65535), default=22)
    p.add_argument("--user")
    p.add_argument("--identity", help="private key file")
    p.add_argument("--label", action="append", metavar="KEY=VALUE", help="e.g. region=eu-west (repeatable)")
    p.add_argument("--agent-command", help="how to run mlfleet on the node (default: mlfleet)")
    p.add_argument("--state-dir", help="the agent's folder on the node (default: ~/.mlfleet/agent)")
    p.add_argument("--simulate-gpus", metavar="FILE", help="simulated GPUs described in FILE on the node")
    route = p.add_mutually_exclusive_group()
    route.add_argument("--proxy-jump", metavar="[USER@]HOST[:PORT],...",
                       help="reach the host through these SSH jump hosts, like ssh -J (they use --identity too)")
    route.add_argument("--proxy-command", metavar="COMMAND",
                       help="reach the host through this command's input and output, e.g. 'ssh -W %%h:%%p bastion'")
    add(hosts, "remove", _client_command(cmd_hosts_remove), "remove a host from hosts.yaml").add_argument("name")
    add(hosts, "check", _client_command(cmd_hosts_check), "connect to a host now and report").add_argument("name")
    p = add(hosts, "trust", _client_command(cmd_hosts_trust), "show a host's key and record it once you confirm")
    p.add_argument("name")
    p.add_argument("--yes", action="store_true", help="record without asking (batch mode)")
    p = add(hosts, "drain", _client_command(cmd_hosts_drain), "stop placing jobs on a host (runs in flight go on)")
    p.add_argument("name")
    p.add_argument("--reason", default="")
    add(hosts, "undrain", _client_command(cmd_hosts_drain), "place jobs on a drained host again").add_argument("name")
    p = add(hosts, "bootstrap", _client_command(cmd_hosts_bootstrap),
            "install mlfleet's agent on a host that only has Python (into a venv)")
    p.add_argument("name")
    p.add_argument("--prefix", default=".mlfleet", help="folder on the node, relative to its home (default .mlfleet)")
    p.add_argument("--python", default="python3", help="the node's Python 3.11+ (default python3)")
    cli_agents.register_hosts(hosts, add, _client_command)
    p = add(hosts, "import-ssh-config", cmd_hosts_import_ssh_config, "add the hosts of an OpenSSH config file")
    p.add_argument("--file", default="~/.ssh/config")
    p.add_argument("--host", action="append", help="only these Host aliases (repeatable)")

    runs = sub.add_parser("runs", help="tracked runs").add_subparsers(dest="action", metavar="ACTION", required=True)
    where_help = ("only runs that pass this filter, e.g. \"params.lr > 0.01 and metrics.val_loss.min < 0.3\" "
                  "(docs/runs.md)")
    sort_help = "sort by these fields, e.g. metrics.val_loss.min or \"-params.lr, name\" (a leading - or desc: largest first)"
    p = add(runs, "list", _client_command(cmd_runs_list), "list runs, newest first, or filtered and sorted")
    p.add_argument("--where", help=where_help)
    p.add_argument("--sort", help=sort_help)
    p.add_argument("--limit", type=_positive, default=200)
    keys_help = "only metric keys matching this glob, e.g. 'val_*' (* any characters, ? one, [abc] one of)"
    p.add_argument("--keys", metavar="PATTERN", help=keys_help)
    p.add_argument("--max-keys", type=_bounded(1, 1_000_000), default=20, metavar="N",
                   help="metric keys per run in --json, besides those --where and --sort name (default 20)")
    p = add(runs, "compare", _client_command(cmd_runs_compare),
            "compare runs: best values, downsampled curves, params that differ")
    p.add_argument("ids", nargs="+", metavar="ID", help="run ids (a unique prefix is enough)")
    p.add_argument("--metric", action="append", help="only this metric (repeatable; default: the first --max-keys)")
    p.add_argument("--keys", metavar="PATTERN", help=keys_help)
    p.add_argument("--max-keys", type=_bounded(1, 1_000_000), default=20, metavar="N",
                   help="without --metric, compare the first N metrics in key order (default 20, at most 1000)")
    p.add_argument("--points", type=_bounded(1, bounds.MAX_POINTS), default=500, help="buckets per curve (default 500)")
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
    p = add(runs, "show", _client_command(cmd_runs_show), "show a run's params, tags and metrics")
    p.add_argument("id")
    p.add_argument("--keys", metavar="PATTERN", help=keys_help)
    how_many = p.add_mutually_exclusive_group()
    how_many.add_argument("--max-keys", type=_bounded(1, 1_000_000), default=100, metavar="N",
                          help="show the first N metric keys in key order (default 100, at most 10000)")
    how_many.add_argument("--all-keys", action="store_true", help="show every metric key, fetched 10,000 at a time")
    add(runs, "artifacts", _client_command(cmd_runs_artifacts), "list the files a run logged as artifacts").add_argument("id")
    artifact = runs.add_parser("artifact", help="fetch a run's artifact").add_subparsers(dest="artifact_action", metavar="ACTION", required=True)
    p = add(artifact, "get", _checked_output(cmd_runs_artifact_get), "copy an artifact from its node here (sha256 verified)")
    p.add_argument("id", help="run id (a unique prefix is enough)")
    p.add_argument("path", help="the artifact's path as listed, or a unique ending of it (model.pt)")
    p.add_argument("-o", "--output", help="where to write it (default: its file name, here; '-' for stdout)")
    p.add_argument("--force", action="store_true", help="replace an existing regular file (never a link)")

    db = sub.add_parser("db", help="the DuckDB file").add_subparsers(dest="action", metavar="ACTION", required=True)
    p = add(db, "query", _client_command(cmd_db_query), "run a read-only SQL query through the controller")
    p.add_argument("sql")
    p.add_argument("--limit", type=_bounded(1, bounds.MAX_QUERY_ROWS), default=10_000)

    audit = sub.add_parser("audit", help="the audit trail").add_subparsers(dest="action", metavar="ACTION", required=True)
    p = add(audit, "list", _client_command(cmd_audit_list), "list audit events, newest first")
    p.add_argument("--limit", type=_positive, default=200)
    p.add_argument("--action", dest="action_filter", help="only this action, e.g. job.submit")

    p = add(sub, "controller", cmd_controller, "start, stop or inspect the controller")
    p.add_argument("action", choices=["start", "stop", "status", "run"], help="run = in the foreground")

    agent = sub.add_parser("agent", help="the node daemon").add_subparsers(dest="action", metavar="ACTION", required=True)
    p = add(agent, "serve", cmd_agent_serve, "run the agent in the foreground", json_flag=False)
    p.add_argument("--state-dir", required=True, help="where the agent keeps its journal, logs and metrics")
    p.add_argument("--socket", help="Unix socket path (default STATE_DIR/agent.sock)")
    p.add_argument("--name", help="host name to report (default: the machine's)")
    p.add_argument("--idle-exit", type=float, default=None, help="exit after this many idle seconds")
    p.add_argument("--sample-interval", type=float, default=1.0, help="seconds between telemetry samples")
    p.add_argument("--simulate-gpus", metavar="FILE", help="simulated GPUs described in FILE (re-read each sample)")
    p.add_argument("--max-connections", type=_bounded(4, 65536), default=64,
                   help="connections held at once; a newcomer over it is told the agent is busy (default 64)")
    p.add_argument("--log-file", help="write the log (and stdout/stderr) to FILE, rotated by size")
    p.add_argument("--log-max-size", type=_bounded(64 * 1024, 1024**4), default=logfile.DEFAULT_MAX_SIZE,
                   metavar="BYTES", help=f"rotate the log file at this size (default {logfile.DEFAULT_MAX_SIZE})")
    p.add_argument("--log-backups", type=_bounded(0, 100), default=logfile.DEFAULT_BACKUPS,
                   help=f"rotated log files kept (default {logfile.DEFAULT_BACKUPS})")
    p = add(agent, "install-service", cmd_agent_install_service, "write a systemd user unit for the agent")
    p.add_argument("--state-dir", default="~/.mlfleet/agent")
    p.add_argument("--name")
    p.add_argument("--simulate-gpus", metavar="FILE")
    p = add(agent, "connect", cmd_agent_connect, "start the agent if needed and join stdin/stdout to it "
            "(what the controller runs over SSH)", json_flag=False)
    p.add_argument("--state-dir", required=True)
    p.add_argument("--name")
    p.add_argument("--simulate-gpus", metavar="FILE")

    cli_agents.register_agent(agent, add)
    cli_drift.register(sub, add)

    add(sub, "tui", cmd_tui, "open the TUI (the default with no command)", json_flag=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    for position, arg in enumerate(sys.argv[1:] if argv is None else argv, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8 reach us as surrogates and cannot travel
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            print(f"mlfleet: argument {position} ({shown!r}) is not UTF-8 text; check the terminal's or the script's encoding",
                  file=sys.stderr)
            return EXIT_USAGE
    args = argparse.Namespace(json=cli_parser.asked_for_json(argv))  # for a mistake found while parsing
    try:
        args = parser.parse_args(argv)
        if getattr(args, "command", None) is None:
            args.func = cmd_tui
        return args.func(args)
    except MlfleetError as exc:
        if getattr(args, "json", False):
            _print_json({"error": {"kind": getattr(exc, "kind", type(exc).__name__), "message": str(exc),
                                   "exit_code": exc.exit_code}})
        for sentence in str(exc).splitlines() or [""]:  # several spec mistakes: one sentence a line
            print(f"mlfleet: {sentence}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
