"""What a launch of a job with an ``environment:`` block waits for, on the controller: its EnvPlan on that host.

Steps (docs/environments.md): learn the host's interpreters and platform
from its agent; pick the interpreter the spec asks for; read the
requirements (the list in the spec, or the file or uv project in the job's
code snapshot, which is the workdir as it was at submit); resolve them for
that interpreter and platform (cached); fetch the wheels into the
workstation's wheelhouse (each once); ship to the node's wheelhouse those it
lacks (each once per host; a hard link for the local host); and name the
result by its env_hash. The node then builds ``<state>/envs/<env_hash>`` from
its wheelhouse alone, never from an index.

A mistake in the requirements, or a host without the Python asked for, is
an :class:`~mlfleet.core.environments.resolve.ResolutionError` of one
sentence: the job fails with it. Trouble reaching the host is any other
error: the launch is tried again next tick.
"""

from __future__ import annotations

import asyncio
import logging
import re
import tarfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec

from mlfleet.core.base.errors import RemoteError
from mlfleet.core.base.models import EnvPlan, Environment, NodePython, PinnedWheel
from mlfleet.core.base.paths import Home
from mlfleet.core.base.settings import Settings
from mlfleet.core.environments.identity import env_hash
from mlfleet.core.environments.resolve import IndexSettings, ResolutionError, ResolvedWheel, Resolver, Target
from mlfleet.core.environments.requirement_files import expand
from mlfleet.core.environments.warm import WarmEnvironments, env_key
from mlfleet.core.environments.wheelhouse import Wheelhouse

log = logging.getLogger(__name__)

FACTS_FRESH_S = 60.0  # a host's interpreters are asked for again after this long (they rarely change)


class NodeFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What the controller needs to know of a node to resolve and ship for it."""

    host: str
    pythons: list[NodePython]
    platform: str  # uv's --python-platform value, e.g. x86_64-manylinux_2_36
    state_dir: str  # the agent's; wheels go to <state_dir>/wheelhouse/<sha256>


def facts_from_probe(host: str, probe: dict[str, Any], state_dir: str) -> NodeFacts:
    """The facts from the agent's ``env_probe`` answer (agents/envs/probe.py) and its state dir (``info``)."""
    pythons = msgspec.convert(probe.get("interpreters") or [], list[NodePython])
    platform = probe.get("platform")
    if not platform:
        raise ResolutionError(f"{host} cannot take built environments: no wheel platform is known for "
                              f"{probe.get('machine') or 'its machine'} with glibc {probe.get('glibc') or 'unknown'}; "
                              "run the job with environment: {inherit: true}")
    if not pythons:
        raise ResolutionError(f"{host} has no Python 3 interpreter the agent could find; install one there")
    return NodeFacts(host=host, pythons=pythons, platform=str(platform), state_dir=state_dir)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def choose_python(pythons: list[NodePython], wanted: str | None, host: str) -> NodePython:
    """The interpreter for ``python: wanted``: the highest version with that prefix ("3.11" -> 3.11.x).

    Without ``python:``, the agent's first one (its preferred: the login
    PATH's ``python3``). None fitting is one sentence naming what the host has.
    """
    if wanted is None:
        return pythons[0]
    fitting = [p for p in pythons if p.version == wanted or p.version.startswith(wanted + ".")]
    if fitting:
        return max(fitting, key=lambda p: _version_key(p.version))
    has = ", ".join(sorted({p.version for p in pythons}, key=_version_key)) or "none"
    raise ResolutionError(f"{host} has no Python {wanted} (it has {has}); install it there, or ask for one of those "
                          "in environment.python")


def requirements_text(env: Environment, archive: Path | None) -> tuple[str, tuple[str, str] | None]:
    """The requirements as requirements.txt text, or a uv project's (pyproject.toml, uv.lock) to export first.

    Files are read from the job's code snapshot: the workdir as it was at
    submit, the same bytes the job's code comes from.
    """
    if isinstance(env.requirements, list):
        return "\n".join(env.requirements) + "\n", None
    if isinstance(env.requirements, str):
        return expand(env.requirements, lambda name: _member(archive, name), ResolutionError), None
    if env.project is not None:
        folder = PurePosixPath(env.project)
        return "", (_member(archive, str(folder / "pyproject.toml")), _member(archive, str(folder / "uv.lock")))
    return "", None


def _member(archive: Path | None, name: str) -> str:
    wanted = str(PurePosixPath(name))  # "./a/../b" is refused at submit; "./req.txt" -> "req.txt"
    if archive is None or not archive.exists():
        raise ResolutionError(f"the job's code snapshot is gone, so {wanted} cannot be read; submit the job again")
    with tarfile.open(archive, "r:gz") as tar:
        try:
            member = tar.extractfile(wanted)
        except KeyError:
            member = None
        if member is None:
            raise ResolutionError(f"{wanted} is not in the job's code snapshot (is it ignored by .gitignore?)")
        return member.read().decode("utf-8", errors="replace")


class EnvironmentPreparer:
    """The controller's environments: one per controller, shared by every launch."""

    def __init__(self, home: Home, settings: Settings) -> None:
        conf = settings.environments
        index = IndexSettings(index_url=conf.index_url, find_links=tuple(conf.find_links), no_index=conf.no_index)
        self.resolver = Resolver(home.env_cache_dir / "resolutions", index, home.env_cache_dir / "uv-cache")
        self.wheelhouse = Wheelhouse(home.env_wheel_dir, conf.find_links)
        self.code_cache_dir = home.code_cache_dir
        self._facts: dict[str, tuple[float, NodeFacts]] = {}
        self._shipping: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._shipped: set[tuple[str, str]] = set()  # (host, sha256) this controller uploaded, for old agents
        self.warm = WarmEnvironments()  # which hosts have which environments built: placement prefers them

    async def facts(self, link: Any) -> NodeFacts:
        """The host's interpreters and platform, from its agent (asked again after FACTS_FRESH_S)."""
        known = self._facts.get(link.name)
        if known is not None and time.monotonic() - known[0] < FACTS_FRESH_S:
            return known[1]
        try:
            probe = await link.request("env_probe", request_timeout=120.0)  # the first probe runs each interpreter
        except RemoteError as exc:
            if "unknown method" not in str(exc):
                raise
            raise ResolutionError(f"the agent on {link.name} cannot build environments; update it with "
                                  f"'mlfleet hosts bootstrap {link.name}'") from None
        info = await link.request("info")
        facts = facts_from_probe(link.name, probe, str(info["state_dir"]))
        self._facts[link.name] = (time.monotonic(), facts)
        return facts

    async def plan(self, link: Any, env: Environment, code_hash: str | None) -> EnvPlan:
        """Resolve, fetch and ship ``env`` for the host behind ``link``; the plan its agent builds from."""
        facts = await self.facts(link)
        python = choose_python(facts.pythons, env.python, link.name)
        target = Target(python_version=python.version, platform=facts.platform, implementation=python.implementation)
        archive = self.code_cache_dir / f"{code_hash}.tar.gz" if code_hash else None
        resolved = await asyncio.to_thread(self._resolve, env, archive, target)
        await asyncio.to_thread(self.wheelhouse.ensure, resolved)
        wheels = [r.wheel for r in resolved]
        await self.ship(link, facts, wheels)
        plan = EnvPlan(env_hash=env_hash(python.version, facts.platform, wheels, env.setup, python.implementation),
                       python=python.path, python_version=python.version, platform=facts.platform, wheels=wheels,
                       setup=list(env.setup))
        self.warm.planned(link.name, env_key(env, code_hash), plan.env_hash)
        return plan

    def _resolve(self, env: Environment, archive: Path | None, target: Target) -> list[ResolvedWheel]:
        text, project = requirements_text(env, archive)
        if project is not None:
            text = self.resolver.export_project(*project)
        return self.resolver.resolve(text, target)

    async def ship(self, link: Any, facts: NodeFacts, wheels: list[PinnedWheel]) -> None:
        """Every wheel the node lacks into its wheelhouse; launches at the same time share each upload."""
        missing = await self._missing(link, facts, wheels)
        tasks = []
        for wheel in missing:
            key = (link.name, wheel.sha256)
            task = self._shipping.get(key)
            if task is None:
                task = self._shipping[key] = asyncio.get_running_loop().create_task(self._ship_one(link, facts, wheel))
                task.add_done_callback(lambda _, key=key: self._shipping.pop(key, None))
            tasks.append(asyncio.shield(task))
        await asyncio.gather(*tasks)

    async def _missing(self, link: Any, facts: NodeFacts, wheels: list[PinnedWheel]) -> list[PinnedWheel]:
        if link.transport.on_this_machine:  # the local agent's wheelhouse is a folder on this machine
            folder = Path(facts.state_dir) / "wheelhouse"
            return [w for w in wheels if not (folder / w.sha256).is_file()]
        # WHY ask every time: the node is the truth. Its wheelhouse may have been wiped (cleaned by hand, a
        # reinstalled disk under the same name) since this controller shipped there; one round trip is cheap.
        try:
            absent = set(await link.request("env_wheels_missing", sha256=[w.sha256 for w in wheels]))
        except RemoteError as exc:
            if "unknown method" not in str(exc):
                raise
            return [w for w in wheels if (link.name, w.sha256) not in self._shipped]  # an agent that cannot say
        return [w for w in wheels if w.sha256 in absent]

    async def _ship_one(self, link: Any, facts: NodeFacts, wheel: PinnedWheel) -> None:
        if link.transport.on_this_machine:
            await asyncio.to_thread(self.wheelhouse.link_into, wheel, Path(facts.state_dir) / "wheelhouse")
        else:
            await link.transport.upload(self.wheelhouse.path(wheel.sha256), f"{facts.state_dir}/wheelhouse/{wheel.sha256}")
        self._shipped.add((link.name, wheel.sha256))
        log.info("shipped %s to %s", wheel.filename, link.name)
