"""``mlfleet submit`` and ``mlfleet jobs ...``: queue a job spec, then list, inspect, follow, retry and cancel jobs.

``submit`` checks the spec and its idempotency key here, before any
controller is started for them, and asks again with the same key when the
controller is lost mid-submit (core/controller/client.py), so a retried
command never queues a second job. ``jobs logs`` writes what
core/jobs/log_output.py formats: the terminal's text, or JSON lines.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from pathlib import Path
from typing import Any

from mlfleet.core.base.errors import EXIT_FAILED, EXIT_OK
from mlfleet.core.base.models import SHOWN_JOB_STATES, TERMINAL_STATES, to_plain
from mlfleet.core.base.paths import Home
from mlfleet.core.base.settings import load_settings
from mlfleet.core.base.yamlsource import read_yaml
from mlfleet.core.cli import render
from mlfleet.core.cli.output import Add, bounded, client_command, positive, print_json, say
from mlfleet.core.controller.client import ControllerClient, connect, submit_with_retry
from mlfleet.core.jobs import log_output as cli_logs
from mlfleet.core.jobs.code_send import with_code
from mlfleet.core.jobs.overrides import parse_overrides
from mlfleet.core.jobs.spec import load_job_spec
from mlfleet.core.jobs.submit_key import check_submit_key, new_submit_key
from mlfleet.core.sweeps import commands as sweep_commands
from mlfleet.core.sweeps.children import children as sweep_children


def cmd_submit(args: argparse.Namespace) -> int:
    """Validate the spec and the key here, before any controller is started for them."""
    args.spec = load_job_spec(args.file, parse_overrides(args.set, args.name))
    if args.spec.sweep is not None:  # every child checked here, each mistake at the sweep's line
        located = read_yaml(args.file)
        sweep_children(args.spec, args.file, located.line_of)
    args.key = check_submit_key(args.key) if args.key is not None else new_submit_key()  # one per command
    home = Home.from_env()
    args.retry_for = float(load_settings(home.config_file).client.submit_retry)
    return asyncio.run(_submit(home, args))


def _resubmit_command(args: argparse.Namespace) -> str:
    """This command again, with its key: what to run when its outcome is unknown."""
    flags = [flag for flag, given in (("--queue-anyway", args.queue_anyway), ("--wait", args.wait),
                                      ("--json", args.json)) if given]
    sets = [f"--set {shlex.quote(text)}" for text in args.set or []]
    named = [f"--name {shlex.quote(args.name)}"] if args.name is not None else []
    return " ".join(["mlfleet", "submit", shlex.quote(args.file), *sets, *named, "--key", args.key, *flags])


async def _submit(home: Home, args: argparse.Namespace) -> int:
    first = await connect(home)  # nothing is sent before this: if it fails, no job exists and its sentence says why
    args.lost = False

    def asking_again(why: str) -> None:
        args.lost = True
        print(f"mlfleet: lost the controller during the submit ({why}); asking again with the same key for up to "
              f"{args.retry_for:.0f} s", file=sys.stderr)

    try:
        params = await with_code(first, {"spec": to_plain(args.spec), "spec_path": str(Path(args.file).absolute()),
                                         "queue_anyway": args.queue_anyway, "key": args.key}, home)
        answer, client = await submit_with_retry(
            first, params,
            retry_for=args.retry_for, resubmit=_resubmit_command(args), on_retry=asking_again)
        try:
            return await _submitted(client, args, answer)
        finally:
            if client is not first:
                await client.close()
    finally:
        await first.close()


async def _submitted(client: ControllerClient, args: argparse.Namespace, answer: dict[str, Any]) -> int:
    if "sweep_id" in answer:
        return await sweep_commands.submitted(client, args, answer)
    job_id = answer["job_id"]
    for sentence in answer.get("code_skipped") or []:  # symlinks that would reach outside the workdir
        print(f"mlfleet: warning: {sentence}", file=sys.stderr)
    if answer.get("existing") and not args.lost and not args.json:  # the user ran a submit again, with its key
        print(f"mlfleet: key {args.key} was already submitted as job {job_id}; nothing new was queued", file=sys.stderr)
    if not args.wait:
        if args.json:
            print_json(answer)
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
        print_json(result)
    else:
        print(f"{job_id} {job['state']} ({job['reason']}); run {job['run_id']}")
    return EXIT_OK if job["state"] == "succeeded" else EXIT_FAILED


async def cmd_jobs_list(client: ControllerClient, args: argparse.Namespace) -> int:
    jobs = await client.call("jobs_list", limit=args.limit, states=args.state or None, key=args.key)
    if args.json:
        print_json(jobs)
        return EXIT_OK
    if args.key is not None and not jobs:
        print(f"no job of yours was submitted with key {args.key}")
        return EXIT_OK
    print(render.table(
        ["id", "name", "project", "state", "host", "elapsed", "submitted", "reason"],
        [[j["job_id"], j["name"], j["project"], j["state"], j["host"],
          render.elapsed(j["started_at"] or j.get("preparing_since"), j["finished_at"]),
          render.when(j["submitted_at"]), j["reason"]] for j in jobs]))
    return EXIT_OK


async def cmd_jobs_show(client: ControllerClient, args: argparse.Namespace) -> int:
    job = await client.call("job_show", job=args.id)
    if args.json:
        print_json(job)
        return EXIT_OK
    print(f"job {job['job_id']}  {job['name']}  (project {job['project']}, owner {job['owner']})")
    print(f"state: {job['state']}" + (f"  ({job['reason']})" if job["reason"] else "")
          + (f"  for {render.elapsed(job['preparing_since'])}" if job["state"] == "preparing"
             and job.get("preparing_since") else ""))
    gpus = ",".join(map(str, job["gpus"] or [])) or "-"
    print(f"attempt {job['attempt']} of {job['max_attempts']}; host {job['host'] or '-'}; GPUs {gpus}")
    params = (job.get("spec") or {}).get("params") or {}
    if params:
        print("params: " + ", ".join(f"{k}={render.value(v)}" for k, v in params.items()))
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
    # Launches a node refused (its GPUs held by another controller's run): no attempt spent, placed again
    refused = [{"run_id": r["run_id"], "host": r["host"], "reason": r["end_reason"]}
               for r in job.get("runs", []) if r["state"] == "refused"]
    if args.json:
        print_json({"job_id": job["job_id"], "state": job["state"], "reason": job["reason"],
                    "why_pending": job["why_pending"], "waiting_on_host": job.get("waiting_on_host"),
                    "refused": refused})
        return EXIT_OK
    if job.get("waiting_on_host"):  # placed, and queued there: Slurm's reason, in words
        where = job["waiting_on_host"]
        cluster = f"; {where['cluster']}" if where.get("cluster") else ""  # a Slurm partition's free GPUs
        print(f"{job['job_id']} is {job['state']} on {where['host']}, waiting to start: {where['message']}{cluster}")
        return EXIT_OK
    if job["state"] != "pending":
        print(f"{job['job_id']} is not pending: it is {job['state']}" + (f" ({job['reason']})" if job["reason"] else ""))
        return EXIT_OK
    print(f"{job['job_id']} is pending: {job['reason']}")
    for r in job["why_pending"]:
        print(f"  {r['host']}: {r['message']}")
    if refused:
        last = refused[-1]
        print(f"  its last launch, run {last['run_id']} on {last['host']}, was {last['reason']} "
              f"({len(refused)} refused so far; none counts as an attempt)")
    return EXIT_OK


async def cmd_jobs_cancel(client: ControllerClient, args: argparse.Namespace) -> int:
    answer = await client.call("job_cancel", job=args.id)
    say(args, answer, answer["message"])
    return EXIT_OK


async def cmd_jobs_priority(client: ControllerClient, args: argparse.Namespace) -> int:
    answer = await client.call("job_set_priority", job=args.id, priority=args.priority)
    say(args, answer, answer["message"])
    return EXIT_OK


async def cmd_jobs_retry(client: ControllerClient, args: argparse.Namespace) -> int:
    answer = await client.call("job_retry", job=args.id, **({"force": True} if args.force else {}))
    say(args, answer, answer["message"])
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


def register(sub: Any, add: Add) -> None:
    """Add ``submit`` and the ``jobs`` command group to the top-level subparsers."""
    p = add(sub, "submit", cmd_submit, "submit a job spec (YAML)")
    p.add_argument("file", help="the job spec, e.g. configs/demo-train.yaml")
    p.add_argument("--wait", action="store_true", help="wait for the job; exit 0 only if it succeeded")
    p.add_argument("--queue-anyway", action="store_true",
                   help="queue a job that no current host could ever run (a host that can is coming)")
    p.add_argument("--key", help="idempotency key: the same key again gives the same job back, never a second one "
                   "(default: a random key per command; give one in CI scripts that retry a whole command)")
    p.add_argument("--set", action="append", metavar="PATH=VALUE",
                   help="set a spec field before it is checked (repeatable): params.lr=0.1, resources.gpus=2, "
                   "command[1]=eval.py; VALUE is YAML ('0.1' stays text, [a, b] is a list)")
    p.add_argument("--name", help="the job's name (instead of the spec's name:)")

    jobs = sub.add_parser("jobs", help="list, inspect, follow and cancel jobs").add_subparsers(dest="action", metavar="ACTION", required=True)
    p = add(jobs, "list", client_command(cmd_jobs_list), "list jobs, newest first")
    p.add_argument("--state", action="append", choices=SHOWN_JOB_STATES, metavar="STATE",
                   help=f"only jobs in this state (repeatable): {', '.join(SHOWN_JOB_STATES)}")
    p.add_argument("--limit", type=positive, default=200)
    p.add_argument("--key", help="only the job submitted with this key (mlfleet submit --key)")
    for name, fn, text in (("show", cmd_jobs_show, "show a job, its events and runs"),
                           ("why", cmd_jobs_why, "say why a job is pending, per host"),
                           ("cancel", cmd_jobs_cancel, "cancel a queued or running job")):
        add(jobs, name, client_command(fn), text).add_argument("id", help="job id (a unique prefix is enough)")
    p = add(jobs, "retry", client_command(cmd_jobs_retry), "queue an ended job for one more attempt")
    p.add_argument("id", help="job id (a unique prefix is enough)")
    p.add_argument("--force", action="store_true", help="retry a job that already succeeded")
    p = add(jobs, "priority", client_command(cmd_jobs_priority), "change a job's priority (higher runs first)")
    p.add_argument("id", help="job id (a unique prefix is enough)")
    p.add_argument("priority", type=bounded(-1000, 1000), help="the new priority, -1000 to 1000, e.g. 10")
    p = add(jobs, "logs", client_command(cmd_jobs_logs), "print a job's output (--json: one JSON object per line)")
    p.add_argument("id", help="job id (a unique prefix is enough)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    p.add_argument("--stderr", action="store_true", help="print stderr instead of stdout")
