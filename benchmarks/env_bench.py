"""Per-job environments (issue 15): warm start through a real job, and a cold build beside pip.

    .venv/bin/python benchmarks/env_bench.py [--wheelhouse DIR] [--repeat 3] [--warm-repeat 5]

The wheelhouse: numpy + scikit-learn + pandas and their dependencies, cp311
wheels for this machine, fetched once with ``pip download --only-binary
:all:`` (needs PyPI) into ``--wheelhouse DIR``; a later run that finds wheels
there reuses them and reaches no index. Everything below installs from that
folder only.

Warm start: an isolated installation (benchmarks/ingest_bench.py's: its own
MLFLEET_HOME, a real controller and local agent started by the CLI), with
``environments: {no_index: true, find_links: [wheelhouse]}``, runs a job
that declares ``requirements: [numpy, scikit-learn, pandas]``. Its first run
builds the environment (a cold build through a real job: fresh controller
and agent uv caches); then, alternately, the same job again (the environment
is built: reused) and the same job without an ``environment:`` block (the
floor: what any job costs). The figure is the time from the job's
``dispatched`` event (the controller's clock, in job_events) to the job's
first output line (it prints ``time.time()`` first, before any import).

Cold build: into a fresh folder each time, from the same wheelhouse, one
after the other in each repeat:

* mlfleet: ``agents.envs.build.ensure_env`` with an EnvPlan of those wheels,
  already in the node's wheelhouse (shipping is the controller's step before
  it), in a fresh state dir: an empty uv cache. uv (the default), and the
  pip fallback (``use_uv=False``). The background bytecode compile that
  follows a real build is not started (the environment is ready before it).
* mlfleet again, a second environment of the same wheels beside the first
  (the uv cache now warm: what a new setup: line or python patch costs).
* the baseline: ``python -m venv`` + ``pip install --no-index --find-links``
  into a fresh venv (pip compiles bytecode, its default), and the same with
  ``--no-compile`` (mlfleet's build compiles none either).

Every installer runs with PIP_*/UV_*/PYTHON* variables removed and no pip
config file. Cold means: an empty uv cache (mlfleet) and ``--no-cache-dir``
(pip); the OS page cache holds the wheelhouse for both after the first read.
Prints Markdown tables for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import msgspec

from ingest_bench import Installation  # benchmarks/ is sys.path[0] when run as a script

from mlfleet.agents.envs.build import ensure_env
from mlfleet.core.base.models import EnvPlan, PinnedWheel
from mlfleet.core.environments.identity import env_hash

PACKAGES = ["numpy", "scikit-learn", "pandas"]

JOB = textwrap.dedent("""\
    import time
    print(f"first={time.time():.6f}", flush=True)
    try:
        import numpy, sklearn, pandas
        print(f"imported={time.time():.6f} numpy={numpy.__version__}", flush=True)
    except ImportError as exc:
        print(f"no-packages={exc}", flush=True)
    """)


def clean_env() -> dict[str, str]:
    """No PIP_*/UV_*/PYTHON* settings and no pip config file: what mlfleet's installer_environment does too."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_", "PYTHON", "VIRTUAL_ENV"))}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def fetch_wheelhouse(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    if not list(folder.glob("*.whl")):
        print(f"fetching {', '.join(PACKAGES)} into {folder} with pip download (PyPI) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(folder),
                        *PACKAGES], env=clean_env(), check=True, timeout=900)
    return sorted(folder.glob("*.whl"))


def base_python() -> str:
    """The interpreter this venv was made from: both builds use it."""
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def plan_for(wheels: list[Path], python: str) -> EnvPlan:
    pinned = []
    for path in wheels:
        name, version = path.name.split("-")[:2]
        pinned.append(PinnedWheel(name=re.sub(r"[-_.]+", "-", name).lower(), version=version, filename=path.name,
                                  sha256=hashlib.sha256(path.read_bytes()).hexdigest(), size=path.stat().st_size))
    glibc = os.confstr("CS_GNU_LIBC_VERSION").split()[-1].split(".")[1]
    target = f"{platform.machine()}-manylinux_2_{glibc}"
    version = platform.python_version()
    return EnvPlan(env_hash=env_hash(version, target, pinned), python=python, python_version=version,
                   platform=target, wheels=pinned, setup=[])


def scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="mlfenvb", dir="/tmp"))


def mlfleet_build(wheels: list[Path], use_uv: bool) -> dict[str, float]:
    """ensure_env into a fresh state dir (empty uv cache), then a second env of the same wheels (warm cache)."""
    state = scratch()
    try:
        plan = plan_for(wheels, base_python())
        house = state / "wheelhouse"
        house.mkdir(parents=True)
        for path, wheel in zip(wheels, plan.wheels):
            os.link(path, house / wheel.sha256)  # what the controller's ship step leaves (a hard link for local)
        lines: list[str] = []
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(clean_env())
        try:
            started = time.perf_counter()
            final = ensure_env(state, plan, lines.append, use_uv=use_uv, compile_after=False)
            cold = time.perf_counter() - started
            check_imports(final / "bin" / "python")
            warm = None
            if use_uv:
                again = msgspec.structs.replace(plan, env_hash=hashlib.sha256(b"again" + plan.env_hash.encode()).hexdigest())
                started = time.perf_counter()
                ensure_env(state, again, lines.append, use_uv=True, compile_after=False)
                warm = time.perf_counter() - started
        finally:
            os.environ.clear()
            os.environ.update(saved)
        return {"cold": cold, "warm": warm}
    finally:
        shutil.rmtree(state, ignore_errors=True)


def pip_build(wheelhouse: Path, compile_pyc: bool) -> float:
    """The baseline: python -m venv + pip install --no-index --find-links, into a fresh venv."""
    folder = scratch()
    try:
        venv = folder / "venv"
        env = clean_env()
        started = time.perf_counter()
        subprocess.run([base_python(), "-m", "venv", str(venv)], env=env, check=True, timeout=600)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-index", "--no-cache-dir", "--find-links",
                        str(wheelhouse), *([] if compile_pyc else ["--no-compile"]), *PACKAGES],
                       env=env, check=True, timeout=900)
        seconds = time.perf_counter() - started
        check_imports(venv / "bin" / "python")
        return seconds
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def check_imports(python: Path) -> None:
    subprocess.run([str(python), "-c", "import numpy, sklearn, pandas"], check=True, timeout=300,
                   stdout=subprocess.DEVNULL, env=clean_env())


def job_times(fleet: Installation, job_id: str) -> dict[str, float]:
    """Dispatched (the controller's event) and the job's first line and import marks (its own clock)."""
    rows = json.loads(fleet.cli("db", "query", f"select state, epoch_us(ts) from job_events where job_id = "
                                               f"'{job_id}' order by id", "--json"))["rows"]
    events = {state: us / 1e6 for state, us in rows}
    logs = fleet.cli("jobs", "logs", job_id)
    marks = dict(line.split("=", 1) for line in logs.splitlines() if line.startswith(("first=", "imported=")))
    if "first" not in marks:
        raise SystemExit(f"job {job_id} printed no first line:\n{logs[-3000:]}")
    built = re.search(r"built in ([0-9.]+) s", logs)
    return {"dispatch_to_first": float(marks["first"]) - events["dispatched"],
            "submit_to_first": float(marks["first"]) - events["pending"],
            "import_s": float(marks["imported"].split()[0]) - float(marks["first"]) if "imported" in marks else None,
            "preparing": "preparing" in events, "built_s": float(built.group(1)) if built else None}


def warm_start(wheelhouse: Path, repeat: int) -> dict[str, list[dict[str, float]]]:
    fleet = Installation()
    try:
        (fleet.root / "config.yaml").write_text(f"environments:\n  no_index: true\n  find_links: [{wheelhouse}]\n")
        specs = fleet.root / "specs"
        specs.mkdir()
        (specs / "job.py").write_text(JOB)
        env_block = "environment:\n  requirements: [" + ", ".join(PACKAGES) + "]\n"
        (specs / "env.yaml").write_text("name: env-bench\ncommand: [python, job.py]\n" + env_block)
        (specs / "floor.yaml").write_text("name: env-bench-floor\ncommand: [python, job.py]\n")
        fleet.cli("controller", "start")
        out: dict[str, list[dict[str, float]]] = {"cold": [], "warm": [], "floor": []}
        for kind, spec in [("cold", "env"), *[(k, s) for _ in range(repeat) for k, s in (("warm", "env"),
                                                                                         ("floor", "floor"))]]:
            answer = json.loads(fleet.cli("submit", str(specs / f"{spec}.yaml"), "--wait", "--json", timeout=900))
            out[kind].append(job_times(fleet, answer["job_id"]))
        return out
    finally:
        fleet.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--wheelhouse", type=Path, default=Path("/tmp/mlfleet-env-bench-wheels"),
                        help="the wheels (fetched once with pip download when the folder has none)")
    parser.add_argument("--repeat", type=int, default=3, help="cold builds of each kind")
    parser.add_argument("--warm-repeat", type=int, default=5, help="warm-start jobs (and as many floor jobs)")
    args = parser.parse_args()
    wheels = fetch_wheelhouse(args.wheelhouse)
    size = sum(p.stat().st_size for p in wheels) / 1e6
    pip_version = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True).stdout
    import uv

    uv_version = subprocess.run([uv.find_uv_bin(), "--version"], capture_output=True, text=True).stdout.strip()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()} "
          f"({base_python()}), {uv_version}, pip {pip_version.split()[1]}, {time.strftime('%Y-%m-%d')}, "
          f"load average at start {os.getloadavg()[0]:.1f}")
    print(f"wheelhouse: {len(wheels)} wheels, {size:.0f} MB ({', '.join(p.name.split('-')[0] for p in wheels)})\n")

    runs = warm_start(args.wheelhouse, args.warm_repeat)
    print("| job (local host, real controller and agent) | jobs | dispatch -> first line, median (s) | min - max (s) "
          "| submit -> first line, median (s) | notes |")
    print("|---|---|---|---|---|---|")
    labels = {"cold": "with environment, first run (builds it)", "warm": "with environment, built (warm start)",
              "floor": "without environment (floor)"}
    for kind in ("cold", "warm", "floor"):
        got = runs[kind]
        d = [r["dispatch_to_first"] for r in got]
        notes = []
        if any(r["built_s"] for r in got):
            notes.append(f"agent build {statistics.median(r['built_s'] for r in got if r['built_s']):.2f} s")
        imports = [r["import_s"] for r in got if r["import_s"] is not None]
        if imports:
            notes.append(f"then import numpy, sklearn, pandas {statistics.median(imports):.2f} s")
        print(f"| {labels[kind]} | {len(got)} | {statistics.median(d):.2f} | {min(d):.2f} - {max(d):.2f} | "
              f"{statistics.median(r['submit_to_first'] for r in got):.2f} | {'; '.join(notes)} |", flush=True)
    print(f"\nload average after the jobs: {os.getloadavg()[0]:.1f}\n")

    builds: dict[str, list[float]] = {}
    for _ in range(args.repeat):
        ours = mlfleet_build(wheels, use_uv=True)
        builds.setdefault("uv", []).append(ours["cold"])
        builds.setdefault("uv-warm", []).append(ours["warm"])
        builds.setdefault("pipfallback", []).append(mlfleet_build(wheels, use_uv=False)["cold"])
        builds.setdefault("pip", []).append(pip_build(args.wheelhouse, compile_pyc=True))
        builds.setdefault("pip-nocompile", []).append(pip_build(args.wheelhouse, compile_pyc=False))
        print(f"  repeat done, load average {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    floor = statistics.median(builds["pip"])
    print("| build of numpy + scikit-learn + pandas, offline from the wheelhouse | runs | median (s) | min - max (s) "
          "| baseline pip / this |")
    print("|---|---|---|---|---|")
    labels = {"uv": "mlfleet ensure_env, uv, empty uv cache (cold)",
              "uv-warm": "mlfleet ensure_env, uv, a second env of the same wheels (uv cache filled by the first)",
              "pipfallback": "mlfleet ensure_env, pip fallback (no uv on the node), no bytecode",
              "pip": "baseline: python -m venv + pip install --no-index --find-links (compiles .pyc)",
              "pip-nocompile": "baseline with pip --no-compile"}
    for kind in ("uv", "uv-warm", "pipfallback", "pip", "pip-nocompile"):
        got = builds[kind]
        median = statistics.median(got)
        print(f"| {labels[kind]} | {len(got)} | {median:.2f} | {min(got):.2f} - {max(got):.2f} | "
              f"{floor / median:.1f}x |")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
