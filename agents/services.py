"""Health of the model servers this node supervises (service runs: a deployment's replicas).

The runner keeps a server's process going (agents/runner.py: restarts with
backoff, ``restarts.json``); this module tells whether it *serves*. One
asyncio task of the agent (:class:`ServiceWatch`) finds the service runs
from their run folders, so an agent started while replicas run (an upgrade,
a crash) picks them up again, and probes each on 127.0.0.1 with
agents/httpprobe.py: liveness (``health``) and, if set, a deep probe that
makes a real prediction. Results live in memory only (:data:`ProbeViews`):
an agent that restarts says ``starting`` until its first probes answer.

Cost is bounded by design: one timer tick every 0.25 s, file changes seen
by ``stat`` before any read, one short-lived TCP connection per probe, no
thread and no process scan per probe.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal

import msgspec

from mlfleet.core.base.models import ByteSize, HealthProbe, ScrapeSample, Seconds, ServiceHealth, ServicePlan, \
    ServiceStatus

from mlfleet.agents.httpprobe import answered_wrong, check
from mlfleet.agents.rundir import RunDir, read_json

log = logging.getLogger(__name__)

TICK_S = 0.25
SCAN_S = 2.0  # new run folders are looked for this often (and at once after a launch: ServiceWatch.nudge)
ALIVE_S = 2.0  # how often a watched run's processes are checked (a vanished runner and server end the watch)
Generation = tuple[Any, ...]
ProbeKind = Literal["health", "deep"]


# ------------------------------------------------------------------ decoding

def _plain_units(kind: type, value: Any) -> Any:
    """Durations and sizes travel as plain numbers (core/base/models.to_plain)."""
    if isinstance(kind, type) and issubclass(kind, (Seconds, ByteSize)) and isinstance(value, (int, float)) \
            and not isinstance(value, bool):  # Seconds' subclasses too (ZeroOrSeconds: a probe's initial_delay)
        return kind(value)
    raise NotImplementedError(kind)


def decode(data: Any, kind: type) -> Any:
    """A model from builtins where durations are plain seconds (a launch request, launch.json)."""
    return msgspec.convert(data, kind, dec_hook=_plain_units)


# ------------------------------------------------------------- what is shown

@dataclass(frozen=True)
class ProbeView:
    """What the agent's probes found about one generation of a server (replaced whole, never changed)."""

    generation: Generation
    health: ServiceHealth
    since: float
    deep_ok: bool | None
    last_error: str
    probed_at: float | None
    scrape: ScrapeSample | None


ProbeViews = dict[str, ProbeView]  # run id -> latest view; written by the loop, read by RPC threads


def generation(started: dict | None, restarts: dict | None) -> Generation:
    """Which server process this is: a new pid, or an exit since, is a new generation (health starts over)."""
    started, restarts = started or {}, restarts or {}
    return (started.get("pid"), started.get("start_ticks"), restarts.get("count", 0), restarts.get("last_exit_at"))


def process_started_at(started: dict | None) -> float | None:
    """When the server process now running started (the run's ``started_at`` is its first start)."""
    if not started:
        return None
    return started.get("process_started_at") or started.get("started_at")


def is_down(started: dict | None, restarts: dict | None) -> bool:
    """The server exited and the runner waits to start it again (nothing to probe)."""
    exited_at = (restarts or {}).get("last_exit_at")
    begun = process_started_at(started)
    return exited_at is not None and (begun is None or float(exited_at) >= float(begun))


def crash_words(restarts: dict | None) -> str:
    """The last exit of a server, in words: "exited 1, restarting in 4 s" ("" when it never exited)."""
    if not restarts or restarts.get("last_exit_at") is None:
        return ""
    code, sig = restarts.get("last_exit_code"), restarts.get("last_exit_signal")
    if sig:
        try:
            how = f"killed by {signal.Signals(int(sig)).name}"
        except ValueError:
            how = f"killed by signal {sig}"
    else:
        how = f"exited {code}"
    backoff = restarts.get("backoff")
    return f"{how}, restarting in {float(backoff):g} s" if backoff is not None else how


def service_status(run: RunDir, view: ProbeView | None, started: dict | None, ended: str | None) -> ServiceStatus | None:
    """A service run's ServiceStatus from its folder and the agent's latest view (None: not a service run).

    ``ended`` is the run's exit reason once it exited: a stopped server is
    unhealthy, whatever its probes said before. A view of an older
    generation is not shown: the process it describes is gone.
    """
    service = read_json(run.file("service.json"))
    if service is None:
        return None
    restarts = read_json(run.file("restarts.json"))
    port = service.get("port")
    count = int((restarts or {}).get("count", 0))
    if ended is not None:
        return ServiceStatus(port=port, health="unhealthy", restarts=count, last_error=f"not running ({ended})",
                             since=view.since if view else None, probed_at=view.probed_at if view else None,
                             scrape=view.scrape if view else None)
    if view is not None and view.generation == generation(started, restarts):
        return ServiceStatus(port=port, health=view.health, since=view.since, restarts=count, deep_ok=view.deep_ok,
                             last_error=view.last_error, probed_at=view.probed_at, scrape=view.scrape)
    return ServiceStatus(port=port, health="starting", since=process_started_at(started), restarts=count,
                         last_error=crash_words(restarts), scrape=view.scrape if view else None)


# ------------------------------------------------------------ state machine

@dataclass(frozen=True)
class Health:
    """The probe state of one server generation."""

    state: ServiceHealth = "starting"
    since: float = 0.0
    live_ok: bool | None = None  # the last liveness probe passed
    deep_ok: bool | None = None  # the last deep probe passed (None: none yet, or no deep probe)
    live_failures: int = 0  # consecutive
    deep_failures: int = 0
    deep_wrong: int = 0  # consecutive deep probes the server answered, with another status than expected
    last_error: str = ""


def after_probe(health: Health, kind: ProbeKind, error: str, plan: ServicePlan, now: float) -> Health:
    """The state after one probe result ("" = passed). Pure.

    ``starting`` until the latest liveness *and* deep probes both passed,
    then ``healthy``; a healthy server whose ``failures`` consecutive probes
    of either kind failed is ``unhealthy``; both passing again, ``healthy``.
    A starting server that fails stays starting (a model may take minutes
    to load; the deployment's ``ready_timeout`` judges that), except one that
    is up and broken: its liveness passes, yet ``deep.failures`` real
    predictions in a row were *answered* with another status (a 500, not a
    refused connection or a timeout). That one is ``unhealthy`` at once, so a
    broken version is rolled back within a few probe intervals, not at its
    ready timeout.
    """
    ok = not error
    if kind == "health":
        health = replace(health, live_ok=ok, live_failures=0 if ok else health.live_failures + 1)
    else:
        wrong = bool(error) and answered_wrong(error)
        health = replace(health, deep_ok=ok, deep_failures=0 if ok else health.deep_failures + 1,
                         deep_wrong=health.deep_wrong + 1 if wrong else 0)
    if error:
        health = replace(health, last_error=f"{'health' if kind == 'health' else 'deep'} probe {error}")
    passing = health.live_ok is True and (plan.deep is None or health.deep_ok is True)
    failing = health.live_failures >= plan.health.failures or (
        plan.deep is not None and health.deep_failures >= plan.deep.failures)
    if health.state != "healthy" and passing:
        return replace(health, state="healthy", since=now)
    if health.state == "healthy" and failing:
        return replace(health, state="unhealthy", since=now)
    if health.state == "starting" and plan.deep is not None and health.live_ok is True \
            and health.deep_wrong >= plan.deep.failures:
        return replace(health, state="unhealthy", since=now)
    return health


# -------------------------------------------------------------------- watch

@dataclass
class _Watched:
    run: RunDir
    plan: ServicePlan
    port: int
    stamps: dict[str, tuple[int, int, int] | None] = field(default_factory=dict)  # file -> (ino, mtime_ns, size)
    started: dict | None = None
    restarts: dict | None = None
    generation: Generation = ()
    health: Health = field(default_factory=Health)
    next_at: dict[str, float] = field(default_factory=dict)  # health | deep | metrics -> when next
    busy: set[str] = field(default_factory=set)  # probes in flight
    probed_at: float | None = None
    scrape: ScrapeSample | None = None
    alive_checked: float = 0.0
    paths: dict[str, str] = field(default_factory=dict)  # record -> its path, made once (pathlib costs, per tick)

    def __post_init__(self) -> None:
        self.paths = {name: str(self.run.file(f"{name}.json")) for name in ("started", "restarts", "exit")}


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class ServiceWatch:
    """The agent's prober of its live service runs (one asyncio task: :meth:`run`).

    ``still_running(run_id)`` is the supervisor's word on whether the run
    is over (called every ALIVE_S per run, never per probe).
    """

    def __init__(self, runs_dir: Path, views: ProbeViews, still_running: Callable[[str], bool]) -> None:
        self.runs_dir = runs_dir
        self.views = views
        self.still_running = still_running
        self._watched: dict[str, _Watched] = {}
        self._done: set[str] = set()  # run ids looked at for good: not a service, or over
        self._next_scan = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._scrape: Callable[..., Any] | None | bool = False  # False: not imported yet; None: not available

    def nudge(self) -> None:
        """Look for new service runs at the next tick (a launch just made one)."""
        self._next_scan = 0.0

    async def run(self) -> None:
        try:
            while True:
                try:
                    self.tick(time.time())
                except Exception:  # health must never take the agent down
                    log.exception("service probing failed")
                await asyncio.sleep(TICK_S)
        finally:
            for task in list(self._tasks):
                task.cancel()

    # ---------------------------------------------------------- each tick
    def tick(self, now: float) -> None:
        if time.monotonic() >= self._next_scan:
            self._scan()
            self._next_scan = time.monotonic() + SCAN_S
        for run_id, watched in list(self._watched.items()):
            try:
                if self._over(run_id, watched, now):
                    continue
                self._refresh(run_id, watched, now)
                if not is_down(watched.started, watched.restarts) and watched.started:
                    self._start_due(run_id, watched, now)
            except Exception:  # one run's trouble (a record removed under us) must not stop the others' probes
                log.exception("probing service run %s failed", run_id)

    def _scan(self) -> None:
        try:
            names = [e.name for e in os.scandir(self.runs_dir) if not e.name.startswith(".")]
        except OSError:
            return
        for run_id in names:
            if run_id in self._done or run_id in self._watched:
                continue
            run = RunDir(self.runs_dir / run_id)
            if run.file("exit.json").exists():
                self._done.add(run_id)
                continue
            if not run.file("launch.json").exists():
                continue  # still being launched (service.json comes before launch.json): look again next scan
            service = read_json(run.file("service.json"))
            if service is None:
                self._done.add(run_id)
                continue
            try:
                plan = decode((run.launch or {})["service"], ServicePlan)
                port = int(service["port"])
            except (KeyError, TypeError, ValueError, msgspec.ValidationError) as exc:
                log.warning("service run %s cannot be probed: %s", run_id, exc)
                self._done.add(run_id)
                continue
            self._watched[run_id] = _Watched(run=run, plan=plan, port=port)

    def _over(self, run_id: str, watched: _Watched, now: float) -> bool:
        over = os.path.exists(watched.paths["exit"])
        if not over and now - watched.alive_checked >= ALIVE_S:
            watched.alive_checked = now
            try:
                over = not self.still_running(run_id)
            except Exception:  # a folder removed under us
                over = True
        if over:
            del self._watched[run_id]
            self._done.add(run_id)
            self.views.pop(run_id, None)
        return over

    def _refresh(self, run_id: str, watched: _Watched, now: float) -> None:
        """Read started.json / restarts.json when they changed; a new generation starts over as ``starting``."""
        changed = False
        for name in ("started", "restarts"):
            path = watched.paths[name]
            stamp = _stamp(path)
            if stamp != watched.stamps.get(name):
                watched.stamps[name] = stamp
                setattr(watched, name, read_json(Path(path)))
                changed = True
        if not changed and watched.generation:
            return
        gen = generation(watched.started, watched.restarts)
        if gen == watched.generation:
            return
        first = not watched.generation
        watched.generation = gen
        begun = process_started_at(watched.started) or now
        since = begun if first else now
        watched.health = Health(state="starting", since=since, last_error=crash_words(watched.restarts))
        plan = watched.plan
        watched.next_at = {"health": begun + float(plan.health.initial_delay)}
        if plan.deep is not None:
            watched.next_at["deep"] = begun + float(plan.deep.initial_delay)
        if plan.metrics is not None:
            watched.next_at["metrics"] = now
        self._publish(run_id, watched)

    def _start_due(self, run_id: str, watched: _Watched, now: float) -> None:
        plan = watched.plan
        for kind, due in watched.next_at.items():
            if now < due or kind in watched.busy:
                continue
            if kind == "metrics":
                assert plan.metrics is not None
                watched.next_at[kind] = now + float(plan.metrics.interval)
                scrape = self._scraper()
                if scrape is None:
                    continue
                coro = self._scrape_once(run_id, watched, scrape)
            else:
                probe: HealthProbe = plan.health if kind == "health" else plan.deep  # type: ignore[assignment]
                watched.next_at[kind] = now + float(probe.interval)
                coro = self._probe_once(run_id, watched, kind, probe)  # type: ignore[arg-type]
            watched.busy.add(kind)
            task = asyncio.get_running_loop().create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(lambda t, k=kind: (self._tasks.discard(t), watched.busy.discard(k)))

    # --------------------------------------------------------------- probes
    async def _probe_once(self, run_id: str, watched: _Watched, kind: ProbeKind, probe: HealthProbe) -> None:
        gen = watched.generation
        error = await check(watched.port, probe)
        if watched.generation != gen or self._watched.get(run_id) is not watched:
            return  # the process restarted (or the run ended) meanwhile: this answer is about another
        now = time.time()
        watched.probed_at = now
        watched.health = after_probe(watched.health, kind, error, watched.plan, now)
        self._publish(run_id, watched)

    def _scraper(self) -> Callable[..., Any] | None:
        if self._scrape is False:
            # By name: agents/scrape.py comes with the scrape helper's branch; a node without it skips scrapes.
            # (Once it is on main this can be a plain ``from mlfleet.agents.scrape import scrape``.)
            try:
                self._scrape = getattr(importlib.import_module("mlfleet.agents.scrape"), "scrape")
            except (ImportError, AttributeError):
                self._scrape = None
        return self._scrape  # type: ignore[return-value]

    async def _scrape_once(self, run_id: str, watched: _Watched, scrape: Callable[..., Any]) -> None:
        metrics = watched.plan.metrics
        assert metrics is not None
        try:
            sample = await scrape(watched.port, metrics, float(watched.plan.health.timeout))
        except Exception as exc:  # scrape promises not to raise; a bug there must not stop the probes
            sample = ScrapeSample(ts=time.time(), error=f"scrape failed: {exc}")
        if self._watched.get(run_id) is watched:
            watched.scrape = sample
            self._publish(run_id, watched)

    def _publish(self, run_id: str, watched: _Watched) -> None:
        health = watched.health
        self.views[run_id] = ProbeView(generation=watched.generation, health=health.state, since=health.since,
                                       deep_ok=health.deep_ok if watched.plan.deep is not None else None,
                                       last_error=health.last_error, probed_at=watched.probed_at,
                                       scrape=watched.scrape)
