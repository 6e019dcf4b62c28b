"""The interpreters and the platform of this node, as the workstation needs them to resolve wheels.

WHY our own scan and not ``uv python find``: uv stops at the first broken
pyenv shim, prefers whatever venv is active and does not look in
``~/.pyenv/versions``. So the agent lists the usual folders itself, runs
each candidate once (isolated, with a timeout) for its full version and
implementation, and keeps the answer for its lifetime.

WHY ``os.confstr`` for glibc: ``platform.libc_ver()`` reads the interpreter's
binary and under-reports (2.34 for an old pyenv build on a 2.36 system);
the C library's own answer is what decides which wheels load.
"""

from __future__ import annotations

import concurrent.futures
import glob
import json
import os
import platform
import re
import subprocess
from pathlib import Path

from mlfleet.core.base.models import NodePython

MAX_INTERPRETERS = 32  # candidates run, at most: a PATH full of pythons must not stall the probe
PROBE_TIMEOUT_S = 5.0  # per candidate; a hung shim costs this much and is skipped
_NAME = re.compile(r"^python3(\.\d{1,2})?$")
# Printed by each candidate, run with -I (no site, no env, no cwd on the path): standard library only.
_SCRIPT = ("import json, sys; print(json.dumps({'executable': sys.executable, "
           "'version': '.'.join(map(str, sys.version_info[:3])), 'implementation': sys.implementation.name, "
           "'prefix': sys.prefix}))")

# uv's --python-platform names for glibc Linux: manylinux_2_17, _2_28, then every minor from _2_31 to _2_40.
_UV_MANYLINUX = (17, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40)
_UV_MACHINES = ("x86_64", "aarch64")


def search_folders(path_env: str | None = None, home: Path | None = None) -> list[Path]:
    """Where interpreters are looked for, in order: PATH, then the usual places."""
    home = home or Path.home()
    folders = [Path(p) for p in (os.environ.get("PATH", "") if path_env is None else path_env).split(os.pathsep) if p]
    folders += [Path("/usr/local/bin"), Path("/usr/bin")]
    folders += sorted((Path(p) for p in glob.glob(str(home / ".pyenv" / "versions" / "*" / "bin"))),
                      key=lambda p: _version_key(p.parent.name), reverse=True)  # newest first
    folders += [home / ".local" / "bin", Path("/opt/conda/bin")]
    folders += [Path(p) for p in sorted(glob.glob(str(home / ".local" / "share" / "uv" / "python" / "*" / "bin")))]
    seen: set[Path] = set()
    return [f for f in folders if not (f in seen or seen.add(f))]  # type: ignore[func-returns-value]


def _version_key(name: str) -> tuple:
    return tuple(int(x) if x.isdigit() else -1 for x in re.split(r"[.-]", name))


def candidates(folders: list[Path], limit: int = MAX_INTERPRETERS) -> list[Path]:
    """``python3`` and ``python3.N`` files in ``folders``, one per binary and venv, at most ``limit``."""
    found: list[Path] = []
    keys: set[tuple[str, str]] = set()
    for folder in folders:
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for name in names:
            path = folder / name
            if not _NAME.match(name) or not os.access(path, os.X_OK) or path.is_dir():
                continue
            venv = folder.parent if (folder.parent / "pyvenv.cfg").exists() else ""
            key = (os.path.realpath(path), str(venv))  # python3 -> python3.11 is one interpreter; a venv is its own
            if key in keys:
                continue
            keys.add(key)
            found.append(path)
            if len(found) >= limit:
                return found
    return found


def _ask(path: Path, timeout: float) -> dict | None:
    try:
        out = subprocess.run([str(path), "-I", "-c", _SCRIPT], capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL, cwd="/", env={"PATH": os.environ.get("PATH", os.defpath),
                                                                    "HOME": str(Path.home())})
        if out.returncode != 0:  # a pyenv shim for a version that is not installed, a broken link
            return None
        facts = json.loads(out.stdout.strip().splitlines()[-1])
        return facts if isinstance(facts, dict) and facts.get("version") else None
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def interpreters(folders: list[Path] | None = None, timeout: float = PROBE_TIMEOUT_S,
                 limit: int = MAX_INTERPRETERS) -> list[NodePython]:
    """Each working interpreter once, in the order found (PATH first), with its full version.

    The path reported is the one that ran (a pyenv shim reports the real
    binary behind it), so a build names an interpreter, not a shim whose
    answer depends on the folder it runs in.
    """
    paths = candidates(search_folders() if folders is None else folders, limit)
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda p: _ask(p, timeout), paths))
    out: list[NodePython] = []
    seen: set[tuple[str, str]] = set()
    for path, facts in zip(paths, answers):
        if facts is None:
            continue
        executable = str(facts.get("executable") or "")
        reported = executable if os.path.isabs(executable) and os.path.exists(executable) else str(path)
        key = (os.path.realpath(reported), str(facts.get("prefix")))
        if key in seen:
            continue
        seen.add(key)
        out.append(NodePython(path=reported, version=str(facts["version"]),
                              implementation=str(facts.get("implementation") or "cpython")))
    return out


def glibc_version() -> tuple[int, int] | None:
    """The C library's own (major, minor), or None on musl and other libcs."""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        return None
    match = re.fullmatch(r"glibc (\d+)\.(\d+).*", text.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


def uv_platform(machine: str, glibc: tuple[int, int] | None) -> str | None:
    """uv's ``--python-platform`` for this node: ``x86_64-manylinux_2_36``; None when uv names none for it.

    The newest manylinux uv knows that is not newer than the node's glibc
    (2_29 and 2_30 are not in uv's list: they map to 2_28; past 2_40, 2_40).
    """
    if machine not in _UV_MACHINES or glibc is None or glibc[0] != 2:
        return None
    fitting = [m for m in _UV_MANYLINUX if m <= glibc[1]]
    return f"{machine}-manylinux_2_{fitting[-1]}" if fitting else None


def uv_version() -> str | None:
    """The version of the uv the agent would build with, or None without one."""
    try:
        import uv  # the agent's dependency; an old bootstrap may lack it (then builds use pip)

        out = subprocess.run([uv.find_uv_bin(), "--version"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                             stdin=subprocess.DEVNULL)
        return out.stdout.split()[1] if out.returncode == 0 and len(out.stdout.split()) > 1 else None
    except (ImportError, OSError, subprocess.SubprocessError, FileNotFoundError):
        return None


def node_facts() -> dict:
    """The ``env_probe`` answer: interpreters, machine, glibc, uv's platform name and uv itself."""
    machine = platform.machine()
    glibc = glibc_version()
    version = uv_version()
    return {
        "interpreters": [{"path": p.path, "version": p.version, "implementation": p.implementation}
                         for p in interpreters()],
        "machine": machine,
        "glibc": f"{glibc[0]}.{glibc[1]}" if glibc else None,
        "platform": uv_platform(machine, glibc),
        "uv": version is not None,
        "uv_version": version,
    }
