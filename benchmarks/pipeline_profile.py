"""Where a no-op re-run of the 200-step fan-out spends its time: the controller's driver, profiled in this process.

    .venv/bin/python benchmarks/pipeline_profile.py [--fanout 199] [--repeat 3] [--top 25]

The companion of benchmarks/pipeline_bench.py, for when its goal is missed.
The controller has no profiling switch, so this fills the step cache the
real way (a real controller runs the pipeline once in a private
MLFLEET_HOME, then stops), opens that store file here and drives no-op runs
with the controller's own code (``RunDriver.drive``, the records, the
planner, the output check), under cProfile: one profiler for the event loop
and one per store call or ``to_thread`` call on its worker thread (the
driver's reads, writes, ``measure`` and ``verify_outputs``), merged. Nothing
of mlfleet is changed; the service around the driver is a stand-in holding
the store and the home (a no-op run needs nothing else of it).

Beside the driver, the parts a ``pipeline run`` pays outside it, timed
alone: the client's ``load_pipeline_spec`` and ``to_plain``, the RPC's
``pipeline_from_data`` (each job step's spec checked again), and the answer
(``pipeline_show`` of the run). Prints each phase's wall time, then the
profile's top functions by cumulative time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import io
import pstats
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline_bench import Controller, fanout_pipeline, first_run  # noqa: E402

from mlfleet.core.base.models import to_plain  # noqa: E402
from mlfleet.core.base.paths import Home  # noqa: E402
from mlfleet.core.pipelines import driver as driver_module  # noqa: E402
from mlfleet.core.pipelines.spec import load_pipeline_spec  # noqa: E402
from mlfleet.core.store.db import Store  # noqa: E402

PROFILES: list[cProfile.Profile] = []
SPENT: dict[str, list[float]] = defaultdict(list)


def profiled(label: str, fn: Any) -> Any:
    """``fn`` run under its own profiler (on whatever thread calls it), its wall time added to ``label``."""
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        profile = cProfile.Profile()
        t0 = time.perf_counter()
        try:
            return profile.runcall(fn, *args, **kwargs)
        finally:
            SPENT[label].append(time.perf_counter() - t0)
            PROFILES.append(profile)
    return call


class Service:
    """What RunDriver reads of the pipelines service on a no-op run: the store, the home, the change signals."""

    def __init__(self, store: Store, home: Home) -> None:
        self.ctx = SimpleNamespace(store=store, home=home, links={})
        self.jobs = SimpleNamespace(job_changed=asyncio.Condition())

    async def changed(self) -> None:
        return None

    async def ended(self, run_id: str) -> None:
        return None


def instrument(store: Store) -> None:
    """Every store call profiled on its thread, named by the function it runs; measure and verify_outputs too."""
    read, run = store.read, store.run
    store.read = lambda fn, *a, **k: read(profiled(f"store.read {fn.__name__}", fn), *a, **k)  # type: ignore[method-assign]
    store.run = lambda fn, *a, **k: run(profiled(f"store.run {fn.__name__}", fn), *a, **k)  # type: ignore[method-assign]
    driver_module.measure = profiled("measure (code snapshot, input hashes)", driver_module.measure)
    driver_module.verify_outputs = profiled("verify_outputs (re-read cached outputs)", driver_module.verify_outputs)
    driver_module.plan = profiled("plan (pure planner)", driver_module.plan)


async def noop_run(store: Store, home: Home, pipeline: Any) -> tuple[float, str]:
    from mlfleet.core.pipelines.service import _new_run

    run_id = await store.run(_new_run, pipeline, "bench", "manual", None, {"force": [], "no_cache": False})
    t0 = time.perf_counter()
    await driver_module.RunDriver(Service(store, home), run_id, pipeline, "bench", [], False).drive()  # type: ignore[arg-type]
    return time.perf_counter() - t0, run_id


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fanout", type=int, default=199)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mlfpp-work", dir="/tmp"))
    fleet = Controller(Path(tempfile.mkdtemp(prefix="mlfpp", dir="/tmp")))
    try:
        path = fanout_pipeline(work / "fanout", args.fanout)
        fleet.start()
        first_run(fleet, path)
        fleet.stop()
        home = Home(config_dir=fleet.root, data_dir=fleet.root)
        client = {}
        t0 = time.perf_counter()
        pipeline = load_pipeline_spec(path)
        client["client: load_pipeline_spec (first call, imports included)"] = time.perf_counter() - t0
        spec_profile = cProfile.Profile()
        t0 = time.perf_counter()
        spec_profile.runcall(load_pipeline_spec, path)
        client["client: load_pipeline_spec (again, profiled)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        plain = to_plain(pipeline)
        client["client: to_plain"] = time.perf_counter() - t0
        from mlfleet.core.pipelines.api import pipeline_from_data

        t0 = time.perf_counter()
        pipeline_from_data(plain)
        client["rpc: pipeline_from_data (checks every job spec)"] = time.perf_counter() - t0
        store = Store(home.db_path)
        instrument(store)
        loop_profile = cProfile.Profile()
        walls = []
        for _ in range(args.repeat):
            SPENT.clear()
            PROFILES.clear()
            loop_profile = cProfile.Profile()
            loop_profile.enable()
            wall, run_id = asyncio.run(noop_run(store, home, pipeline))
            loop_profile.disable()
            walls.append(wall)
            states = {s["state"] for s in store.con.cursor().execute(
                "select state from pipeline_steps where run_id = ?", [run_id]).fetchall() for s in [{"state": s[0]}]}
            assert states == {"cached"}, states
        # the first run's planning pass after the root ended asks the cache about every fan-out key (all
        # misses) and each submitted step's upstream outputs: the same per-step statements, timed alone
        from mlfleet.core.pipelines import records

        cursor = store.con.cursor()
        t0 = time.perf_counter()
        for i in range(args.fanout):
            assert records.cached_step(cursor, pipeline.project, f"{i:064x}") is None
        client[f"first run: {args.fanout} cache misses (records.cached_step)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for name, step in pipeline.steps.items():
            if name != "root":
                driver_module._upstream_outputs(cursor, run_id, step)
        client[f"first run: {args.fanout} reads of upstream outputs (driver._upstream_outputs)"] = \
            time.perf_counter() - t0
        t0 = time.perf_counter()
        from mlfleet.core.pipelines.views import show  # the answer pipeline_run / pipeline_wait send

        show(store.con.cursor(), run_id)
        client["rpc: the answer (pipeline_show of the run)"] = time.perf_counter() - t0
    finally:
        fleet.stop()
        shutil.rmtree(fleet.root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"no-op drive of {args.fanout + 1} cached steps, in process: " +
          ", ".join(f"{w * 1000:,.0f}" for w in walls) + " ms\n")
    print("| phase (last drive) | calls | total ms |")
    print("|---|---:|---:|")
    for label, spent in sorted(SPENT.items(), key=lambda kv: -sum(kv[1])):
        print(f"| {label} | {len(spent)} | {sum(spent) * 1000:,.1f} |")
    for label, spent in client.items():
        print(f"| {label} | 1 | {spent * 1000:,.1f} |")
    stats = pstats.Stats(loop_profile, stream=(out := io.StringIO()))
    for profile in PROFILES:
        stats.add(profile)
    stats.sort_stats("cumulative").print_stats(args.top)
    print(out.getvalue())
    stats = pstats.Stats(loop_profile, stream=(out := io.StringIO()))
    for profile in PROFILES:
        stats.add(profile)
    stats.sort_stats("tottime").print_stats(args.top)
    print(out.getvalue())
    print("load_pipeline_spec of the file, by cumulative time:")
    pstats.Stats(spec_profile, stream=(out := io.StringIO())).sort_stats("cumulative").print_stats(args.top)
    print(out.getvalue())


if __name__ == "__main__":
    main()
