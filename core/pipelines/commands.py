"""``mlfleet pipeline check|graph|run|list|show|why|cancel|triggers``: pipelines from the terminal and from CI.

``check`` and ``graph`` read the file here and need no controller: a
mistake is one sentence at its file:line (exit 2), as for job specs.
``run`` checks the file here too, before any controller is started, and
sends the resolved pipeline as data (``to_plain(pipeline)``); the other
commands ask the controller's pipelines service (docs/pipelines.md, "The
service"). What they print is core/pipelines/pages.py's, the words the
TUI's Pipelines view uses as well.

``run --wait`` exits 0 when the run succeeded with every gate passed, 1
when a step failed, a gate did not pass or the run was cancelled, and 1
with a sentence naming the run when ``--timeout`` passes first (the run
goes on; ``pipeline show RUN`` follows it).
"""

from __future__ import annotations

import argparse
import difflib
import shutil
import sys
import time
from typing import Any

from mlfleet.core.base.errors import EXIT_FAILED, EXIT_OK, MlfleetError, UsageError
from mlfleet.core.base.models import to_plain
from mlfleet.core.base.units import parse_duration
from mlfleet.core.cli.output import Add, client_command, positive, print_json
from mlfleet.core.controller.client import ControllerClient
from mlfleet.core.jobs.overrides import parse_overrides
from mlfleet.core.pipelines import drawing, graph, pages
from mlfleet.core.pipelines.models import Pipeline
from mlfleet.core.pipelines.spec import load_pipeline_spec

WAIT_SLICE_S = 30.0  # one pipeline_wait asks for at most this long, so a lost controller is noticed


class WaitTimeout(MlfleetError):
    """``pipeline run --wait --timeout S`` passed before the run ended (exit 1: the run goes on)."""


def load(args: argparse.Namespace) -> Pipeline:
    """The pipeline file of ``args.file`` with ``--set`` applied; a mistake is a SpecError at its line (exit 2)."""
    return load_pipeline_spec(args.file, parse_overrides(args.set))


def check_force(pipeline: Pipeline, force: list[str]) -> list[str]:
    """``--force`` names steps of this pipeline; one that is not is a UsageError with the closest name."""
    for name in force:
        if name not in pipeline.steps:
            close = difflib.get_close_matches(name, list(pipeline.steps), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"its steps are {', '.join(pipeline.steps)}"
            raise UsageError(f"--force {name}: pipeline {pipeline.name} has no step {name!r}; {hint}")
    return list(dict.fromkeys(force))


def terminal_width(given: int | None) -> int:
    return given if given is not None else shutil.get_terminal_size((100, 24)).columns


# ---------------------------------------------------------------- no controller

def cmd_check(args: argparse.Namespace) -> int:
    pipeline = load(args)
    if args.json:
        print_json(pages.check_answer(pipeline))
    else:
        print(pages.check_text(pipeline))
    return EXIT_OK


def cmd_graph(args: argparse.Namespace) -> int:
    pipeline = load(args)
    upstream = graph.upstream_of(pipeline)
    text = drawing.draw_pipeline(pipeline, terminal_width(args.width))
    if args.json:
        print_json({"name": pipeline.name, "layers": drawing.layers(upstream),
                    "edges": [list(e) for e in drawing.edges(upstream)], "text": text})
    else:
        print(text)
    return EXIT_OK


# ------------------------------------------------------------------- controller

def cmd_run(args: argparse.Namespace) -> int:
    """Checked here (the file, ``--force``), before any controller is started for it."""
    if args.timeout is not None and not args.wait:
        raise UsageError("--timeout is how long --wait waits: give --wait with it")
    args.pipeline = load(args)
    args.force = check_force(args.pipeline, args.force or [])
    return client_command(_run)(args)


async def _run(client: ControllerClient, args: argparse.Namespace) -> int:
    run = await client.call("pipeline_run", pipeline=to_plain(args.pipeline), force=args.force,
                            no_cache=args.no_cache, reason=args.reason)
    if not args.wait:
        if args.json:
            print_json(run)
        else:
            print(run["run_id"])
        return EXIT_OK
    if not args.json:
        print(f"{run['run_id']} started; waiting for it to end (Ctrl-C stops waiting, not the run)", file=sys.stderr)
    run = await wait_for(client, run, args.timeout)
    if args.json:
        print_json(run)
    else:
        print(pages.show_text(run))
        print(pages.run_outcome(run))
    return EXIT_OK if pages.run_passed(run) else EXIT_FAILED


async def wait_for(client: ControllerClient, run: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    """The run once it has ended, asking ``pipeline_wait`` a slice at a time; WaitTimeout past ``timeout``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while run.get("state") == "running":
        left = WAIT_SLICE_S if deadline is None else min(WAIT_SLICE_S, deadline - time.monotonic())
        if left <= 0:
            raise WaitTimeout(f"pipeline run {run['run_id']} is still running after {timeout:g} s; it goes on: "
                              f"follow it with 'mlfleet pipeline show {run['run_id']}'")
        run = await client.call("pipeline_wait", request_timeout=left + 30, run_id=run["run_id"], timeout=left)
    return run


async def cmd_list(client: ControllerClient, args: argparse.Namespace) -> int:
    runs = await client.call("pipeline_list", name=args.name, limit=args.limit)
    if args.json:
        print_json(runs)
    else:
        print(pages.list_text(runs, args.name))
    return EXIT_OK


async def cmd_show(client: ControllerClient, args: argparse.Namespace) -> int:
    run = await client.call("pipeline_show", run_id=args.run)
    if args.json:
        print_json(run)
        return EXIT_OK
    if args.graph:
        print(drawing.draw_run(run, terminal_width(None)))
        print()
    print(pages.show_text(run))
    return EXIT_OK


async def cmd_why(client: ControllerClient, args: argparse.Namespace) -> int:
    answer = await client.call("pipeline_why", run_id=args.run, step=args.step)
    if args.json:
        print_json(answer)
    else:
        print(pages.why_text(answer, args.run))
    return EXIT_OK


async def cmd_cancel(client: ControllerClient, args: argparse.Namespace) -> int:
    answer = await client.call("pipeline_cancel", run_id=args.run)
    if args.json:
        print_json(answer)
    else:
        print(pages.cancel_text(answer))
    return EXIT_OK


async def cmd_triggers(client: ControllerClient, args: argparse.Namespace) -> int:
    answer = await client.call("pipeline_triggers", name=args.name)
    if args.json:
        print_json(answer)
    else:
        print(pages.triggers_page(answer, args.name))
    return EXIT_OK


def _seconds(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be longer than 0, got {text!r}")
    return seconds


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="the pipeline file, e.g. configs/pipelines/closed-loop.yaml")
    p.add_argument("--set", action="append", metavar="PATH=VALUE",
                   help="set a field of the file before it is checked (repeatable): params.lr=0.3, "
                        "steps.train.job.set.params.epochs=10; VALUE is YAML")


def register(sub: Any, add: Add) -> None:
    """Add the ``pipeline`` command group to the top-level subparsers."""
    pipe = sub.add_parser("pipeline", help="check, draw, run and follow pipelines (docs/pipelines.md)") \
        .add_subparsers(dest="action", metavar="ACTION", required=True)
    p = add(pipe, "check", cmd_check, "check a pipeline file: its steps in the order they run, kinds and edges")
    _spec_args(p)
    p = add(pipe, "graph", cmd_graph, "draw a pipeline file's steps as a DAG in the terminal")
    _spec_args(p)
    p.add_argument("--width", type=positive, help="the width to draw in (default: the terminal's)")
    p = add(pipe, "run", cmd_run, "start a run of a pipeline file; prints the run id (--wait: waits for its end)")
    _spec_args(p)
    p.add_argument("--force", action="append", metavar="STEP",
                   help="run this step even if its key is cached (repeatable); the steps below it are decided by "
                        "their keys")
    p.add_argument("--no-cache", action="store_true", help="run every step, reusing nothing")
    p.add_argument("--reason", help="why this run (kept with it and on the audit chain)")
    p.add_argument("--wait", action="store_true",
                   help="wait for the run; exit 0 only if it succeeded with every gate passed")
    p.add_argument("--timeout", type=_seconds, metavar="S",
                   help="with --wait: stop waiting after this long, e.g. 600, 30m (exit 1; the run goes on)")
    p = add(pipe, "list", client_command(cmd_list), "list pipeline runs, newest first, with their steps' states")
    p.add_argument("name", nargs="?", help="only the runs of this pipeline")
    p.add_argument("--limit", type=positive, default=50)
    p = add(pipe, "show", client_command(cmd_show),
            "show a run: its steps (state, reason, job, key), gate decisions with their numbers, outputs")
    p.add_argument("run", help="a pipeline run id, or a pipeline's name for its newest run")
    p.add_argument("--graph", action="store_true", help="draw the run's DAG with each step's state first")
    p = add(pipe, "why", client_command(cmd_why), "say why a step of a run ran or was cached: what changed in its key")
    p.add_argument("run", help="a pipeline run id")
    p.add_argument("step", help="a step of the run")
    p = add(pipe, "cancel", client_command(cmd_cancel), "cancel a run: its running and queued steps")
    p.add_argument("run", help="a pipeline run id")
    p = add(pipe, "triggers", client_command(cmd_triggers),
            "the pipelines whose triggers (on:) are armed, and what fired lately")
    p.add_argument("name", nargs="?", help="only this pipeline")
