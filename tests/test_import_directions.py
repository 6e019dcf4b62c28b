"""The rules of direction (docs/architecture.md) hold: every import arrow in core/, agents/, tui/ and package/ points the allowed way.

The imports are read from the source with :mod:`ast` (nothing is imported),
including those inside functions and under ``TYPE_CHECKING``: a lazy import
is still an arrow, it only fails later. Relative imports are resolved, and
``from pkg import name`` counts as an arrow to ``pkg.name`` when that is a
module. A failure lists every wrong arrow with its file, line and the rule
it breaks, so one run says all there is to fix.
"""

from __future__ import annotations

import ast
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Source folder -> the import name it is shipped as (pyproject.toml's package-dir).
SOURCE_ROOTS = {"core": "mlfleet.core", "agents": "mlfleet.agents", "tui": "mlfleet.tui", "package": "mlfleet"}

CORE = "mlfleet.core"
BASE, STORE = f"{CORE}.base", f"{CORE}.store"
CONTROLLER, CLI = f"{CORE}.controller", f"{CORE}.cli"
NOT_CAPABILITIES = {"base", "store", "controller", "cli"}  # every other folder of core/ is a capability
CLI_MAIN = f"{CLI}.main"
CLI_TOOLKIT = {f"{CLI}.output", f"{CLI}.render", f"{CLI}.parser"}  # what a capability's commands print and parse with
CONTROLLER_CLIENT = f"{CONTROLLER}.client"  # how a capability's commands reach the controller
# What a capability may take from the controller: the client its commands call it with, and the
# Service interface (with its context) that it implements so the loop can run it without knowing it.
CONTROLLER_FACES = {CONTROLLER_CLIENT, f"{CONTROLLER}.service"}
ENTRY = "mlfleet.main"  # picks TUI or CLI: above both, imported by nothing in core/

# What the agents may take from core: a node runs only mlfleet.agents plus these, so each one is a
# cost on every node and a reason the agent could break when core changes.
AGENT_CORE = {
    f"{BASE}.protocol": "the wire protocol: Peer, the method dispatcher the agent serves with",
    f"{BASE}.frames": "the wire protocol: how a frame is encoded, read and bounded",
    f"{BASE}.hello": "the wire protocol: its version and the check of a peer's hello",
    f"{BASE}.rpc": "the wire protocol: which handler answers a method name",
    f"{BASE}.send_budget": "the wire protocol: the bound on answers a server holds unsent",
    f"{BASE}.models": "the plain records that cross the wire: samples, launch requests, lineage, byte sizes",
    f"{BASE}.errors": "the typed errors a reply carries back to the controller",
    f"{BASE}.listener": "the 0600 Unix socket listener the agent accepts the controller on",
    f"{BASE}.private": "USER_UMASK_ENV: the environment variable that gives a job the user's umask",
    f"{BASE}.spawn": "own_python: the interpreter the agent and its jobs are started with",
    f"{BASE}.tree_hash": "the one file/folder content hash: what an agent packs or records hashes as the controller's",
}

@dataclass(frozen=True)
class Module:
    name: str
    path: str  # shown in messages: repo-relative for the real tree
    source: str
    is_package: bool


@dataclass(frozen=True)
class Arrow:
    src: str
    dst: str
    where: str  # path:line

    def __str__(self) -> str:
        return f"{self.where}: {self.src} -> {self.dst}"


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def source_modules(repo: Path = REPO) -> dict[str, Module]:
    """Every module of the four source folders, by the dotted name it is imported as."""
    modules = {}
    for folder, root in SOURCE_ROOTS.items():
        for path in sorted((repo / folder).rglob("*.py")):
            parts = list(path.relative_to(repo / folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            name = ".".join([root, *(parts[:-1] if is_package else parts)])
            modules[name] = Module(name, str(path.relative_to(repo)), path.read_text(encoding="utf-8"), is_package)
    return modules


def arrows_of(module: Module, known: Collection[str]) -> list[Arrow]:
    """The mlfleet modules ``module`` imports, anywhere in its body, relative imports resolved."""
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(module.source, module.path)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for target in dict.fromkeys(targets):
            if within(target, "mlfleet"):
                found.append(Arrow(module.name, target, f"{module.path}:{node.lineno}"))
    return found


def capabilities_of(modules: dict[str, Module]) -> set[str]:
    """The capability packages: every folder directly under core/ but base, store, controller and cli."""
    return {name for name, module in modules.items()
            if module.is_package and name.count(".") == 2 and within(name, CORE)
            and name.rpartition(".")[2] not in NOT_CAPABILITIES}


def public_of(module: Module) -> tuple[str, ...] | None:
    """The ``PUBLIC = (...)`` tuple a capability's ``__init__`` declares (read, not imported), None without one."""
    for node in ast.parse(module.source, module.path).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "PUBLIC" for t in node.targets):
            value = ast.literal_eval(node.value)
            if not (isinstance(value, tuple) and all(isinstance(v, str) for v in value)):
                raise AssertionError(f"{module.path}: PUBLIC must be a tuple of module names, not {value!r}")
            return value
    return None


def layout_problems(modules: dict[str, Module]) -> list[str]:
    """Capabilities that declare no PUBLIC, or list a module they do not have."""
    problems = []
    for cap in sorted(capabilities_of(modules)):
        public = public_of(modules[cap])
        if public is None:
            problems.append(f"{modules[cap].path}: declares no PUBLIC = (...) tuple of the modules other "
                            f"capabilities may import (an empty tuple if none)")
            continue
        problems += [f"{modules[cap].path}: PUBLIC names {name!r}, but {cap}.{name} is no module"
                     for name in public if f"{cap}.{name}" not in modules]
    return problems


def public_modules(modules: dict[str, Module]) -> dict[str, set[str]]:
    """Capability package -> the full names of its public modules (the package itself is always reachable)."""
    return {cap: {cap} | {f"{cap}.{name}" for name in public_of(modules[cap]) or ()}
            for cap in capabilities_of(modules)}


def capability_of(name: str, public: dict[str, set[str]]) -> str | None:
    return next((cap for cap in public if within(name, cap)), None)


# package/: the import root must stay empty (agents import it for __version__ on every node), the short
# `from mlfleet import track` path must stay as light as the agent side it re-exports, the entry
# points sit above everything.
PACKAGE_RULES = {
    "mlfleet": lambda dst: False,
    "mlfleet.track": lambda dst: within(dst, "mlfleet.agents"),
    "mlfleet.serve": lambda dst: within(dst, "mlfleet.agents"),  # the capture client, like track
    "mlfleet.main": lambda dst: True,
    "mlfleet.__main__": lambda dst: True,
}


def why_wrong(src: str, dst: str, public: dict[str, set[str]]) -> str | None:
    """The rule the arrow ``src -> dst`` breaks, None when it is allowed."""
    if dst == "mlfleet":
        return None  # the import root holds __version__ only
    if within(src, CORE) and within(dst, "mlfleet.tui"):
        return "nothing in core/ imports tui/: the entry point mlfleet.main sits above both"
    if within(src, CORE) and within(dst, ENTRY):
        return "nothing in core/ imports the entry point mlfleet.main: it sits above core/ and tui/"
    if within(src, BASE):
        return None if within(dst, BASE) else "core/base imports nothing of mlfleet outside core/base"
    if within(src, STORE):
        # The store's own face (db query's RPC and command) uses the CLI toolkit and the controller's
        # interfaces like a capability does, but the store never imports a capability.
        allowed = within(dst, BASE) or within(dst, STORE) or dst in CLI_TOOLKIT or dst in CONTROLLER_FACES
        return None if allowed else ("core/store imports only core/base, core/store, the CLI toolkit and the "
                                     "controller's client and service interface")
    if within(src, CONTROLLER):
        if within(dst, CLI_MAIN):
            return "core/controller does not import core/cli's main (the CLI is a client of the controller)"
        return None if within(dst, CORE) else "core/controller imports only core/ (agents are reached over the wire)"
    if within(src, CLI):
        # cli may import everything in core; the `mlfleet agent ...` subcommands run the daemon in this process.
        return None if within(dst, CORE) or within(dst, "mlfleet.agents") else "core/cli imports only core/ and agents/"
    cap = capability_of(src, public)
    if cap is not None:
        if within(dst, cap) or within(dst, BASE) or within(dst, STORE) or dst in CLI_TOOLKIT or dst in CONTROLLER_FACES:
            return None
        other = capability_of(dst, public)
        if other is not None:
            if dst in public[other]:
                return None
            faces = ", ".join(sorted(name.rpartition(".")[2] for name in public[other] - {other})) or "none"
            return (f"{dst} is internal to {other}: a capability imports another only through its PUBLIC "
                    f"modules ({faces}); list it in {other}'s __init__ PUBLIC if it is meant as that face")
        if within(dst, CONTROLLER):
            return (f"a capability reaches the controller only through {CONTROLLER_CLIENT} and the Service "
                    f"interface ({CONTROLLER}.service)")
        if within(dst, CLI):
            return "a capability uses only the CLI toolkit (core.cli.output, core.cli.render, core.cli.parser)"
        return "a capability imports core/base, core/store, its own modules and other capabilities' PUBLIC modules"
    if within(src, CORE):
        return "mlfleet.core's own __init__ imports nothing of mlfleet"
    if within(src, "mlfleet.agents"):
        if within(dst, "mlfleet.agents") or dst in AGENT_CORE:
            return None
        return f"agents/ import from core only {', '.join(sorted(AGENT_CORE))} (a node runs nothing else of core)"
    if within(src, "mlfleet.tui"):
        other = capability_of(dst, public)
        if within(dst, "mlfleet.tui") or within(dst, BASE) or dst in (CONTROLLER_CLIENT, f"{CLI}.render"):
            return None
        if other is not None and dst in public[other]:
            return None
        return (f"tui/ imports only tui/, core.base, {CONTROLLER_CLIENT}, {CLI}.render and capabilities' "
                f"PUBLIC modules")
    rule = PACKAGE_RULES.get(src)
    if rule is None:
        return f"package/{src.rpartition('.')[2]}.py has no rule: add one to PACKAGE_RULES in this test"
    return None if rule(dst) else f"{src} may not import {dst} (PACKAGE_RULES)"


def wrong_arrows(modules: dict[str, Module]) -> list[tuple[Arrow, str]]:
    """Every arrow of ``modules`` that breaks a rule, or points at a module that does not exist, with why."""
    public = public_modules(modules)
    wrong = []
    for module in modules.values():
        for arrow in arrows_of(module, modules):
            if arrow.dst not in modules:
                wrong.append((arrow, "no such module in the source tree"))
            elif (why := why_wrong(arrow.src, arrow.dst, public)) is not None:
                wrong.append((arrow, why))
    return wrong


def _listing(wrong: list[tuple[Arrow, str]]) -> str:
    return "\n".join(f"  {arrow}\n      {why}" for arrow, why in wrong)


def test_every_import_arrow_points_the_allowed_way() -> None:
    modules = source_modules()
    wrong = [(a, why) for a, why in wrong_arrows(modules)]
    assert not wrong, f"{len(wrong)} import(s) break the rules of direction (docs/architecture.md):\n{_listing(wrong)}"


def test_each_capability_declares_its_public_modules() -> None:
    modules = source_modules()
    assert {"mlfleet.core.fleet", "mlfleet.core.jobs", "mlfleet.core.tracking", "mlfleet.core.drift"} <= \
        capabilities_of(modules)
    problems = layout_problems(modules)
    assert not problems, "\n".join(problems)


def test_the_reader_sees_the_whole_tree() -> None:
    """A reader that found no files or no imports would let every rule pass: it must see them all."""
    modules = source_modules()
    assert {"mlfleet", f"{BASE}.protocol", "mlfleet.agents.daemon", "mlfleet.tui.app", CLI_MAIN} <= set(modules)
    arrows = [a for m in modules.values() for a in arrows_of(m, modules)]
    assert len(modules) > 100 and len(arrows) > 300, (len(modules), len(arrows))
    lazy = [a for a in arrows if a.src == f"{CORE}.drift.commands" and a.dst == f"{CORE}.drift.check"]
    assert lazy, "imports inside functions must be read as well"


def _synthetic(sources: dict[str, str]) -> dict[str, Module]:
    """A made-up tree: names ending in ``/`` are packages (their ``__init__``)."""
    modules = {}
    for key, source in sources.items():
        name = key.rstrip("/")
        modules[name] = Module(name, f"<{name}>", source, key.endswith("/"))
    return modules


def test_the_checker_catches_wrong_arrows() -> None:
    """Fed a tree with one wrong arrow per rule (and some right ones), it names exactly the wrong ones."""
    tree = _synthetic({
        "mlfleet/": "__version__ = '0'",
        "mlfleet.main": "import mlfleet.tui.app\nfrom mlfleet.core.cli import main",
        "mlfleet.core/": "",
        "mlfleet.core.base/": "",
        "mlfleet.core.base.errors": "from . import units\nfrom mlfleet import __version__",
        "mlfleet.core.base.units": "def f():\n    from mlfleet.core.jobs import spec",           # wrong: base -> jobs
        "mlfleet.core.store/": "",
        "mlfleet.core.store.records": "from ..base import errors\nfrom ..jobs.queue import Q",  # wrong: store -> jobs
        "mlfleet.core.jobs/": "PUBLIC = ('spec',)",
        "mlfleet.core.jobs.spec": "from .queue import Q\nfrom mlfleet.core.cli import render",
        "mlfleet.core.jobs.queue": "from mlfleet.core.drift.stats import ks\n"                # wrong: drift internal
                                   "from mlfleet.core.drift import report\n"
                                   "from mlfleet.core.controller import loop\n"               # wrong: controller
                                   "from mlfleet.core.controller.client import connect\n"
                                   "from mlfleet.core.cli.main import _say",                  # wrong: cli main
        "mlfleet.core.drift/": "PUBLIC = ('report', 'nothing_here')",                          # wrong: no such module
        "mlfleet.core.drift.stats": "import mlfleet.main",                                     # wrong: entry point
        "mlfleet.core.drift.report": "from . import stats\nfrom mlfleet.core.jobs.spec import load",
        "mlfleet.core.audit/": "",                                                             # wrong: no PUBLIC
        "mlfleet.core.controller/": "",
        "mlfleet.core.controller.loop": "from mlfleet.core.drift import stats\nfrom mlfleet.core.cli import main",
        "mlfleet.core.controller.client": "from mlfleet.core.jobs import queue",
        "mlfleet.core.cli/": "",
        "mlfleet.core.cli.render": "",
        "mlfleet.core.cli.main": "from mlfleet.tui import app\nimport mlfleet.agents.daemon",   # wrong: core -> tui
        "mlfleet.agents/": "",
        "mlfleet.agents.daemon": "from mlfleet.core.base.errors import E\nfrom mlfleet.core.base import units\n"
                                 "from .gone import x",                                        # wrong: units, gone
        "mlfleet.tui/": "",
        "mlfleet.tui.app": "from mlfleet.core.drift import report\nfrom mlfleet.core.jobs import queue",
    })
    got = {(a.src, a.dst) for a, _ in wrong_arrows(tree)}
    assert got == {
        ("mlfleet.core.base.units", "mlfleet.core.jobs.spec"),
        ("mlfleet.core.store.records", "mlfleet.core.jobs.queue"),
        ("mlfleet.core.jobs.queue", "mlfleet.core.drift.stats"),
        ("mlfleet.core.jobs.queue", "mlfleet.core.controller.loop"),
        ("mlfleet.core.jobs.queue", "mlfleet.core.cli.main"),
        ("mlfleet.core.drift.stats", "mlfleet.main"),
        ("mlfleet.core.controller.loop", "mlfleet.core.cli.main"),
        ("mlfleet.core.cli.main", "mlfleet.tui.app"),
        ("mlfleet.agents.daemon", "mlfleet.core.base.units"),
        ("mlfleet.agents.daemon", "mlfleet.agents.gone"),
        ("mlfleet.tui.app", "mlfleet.core.jobs.queue"),
    }, got
    assert sorted(layout_problems(tree)) == [
        "<mlfleet.core.audit>: declares no PUBLIC = (...) tuple of the modules other capabilities may import "
        "(an empty tuple if none)",
        "<mlfleet.core.drift>: PUBLIC names 'nothing_here', but mlfleet.core.drift.nothing_here is no module",
    ]
    why = dict(((a.src, a.dst), w) for a, w in wrong_arrows(tree))
    assert "internal to mlfleet.core.drift" in why[("mlfleet.core.jobs.queue", "mlfleet.core.drift.stats")]
    assert "nothing in core/ imports tui/" in why[("mlfleet.core.cli.main", "mlfleet.tui.app")]
