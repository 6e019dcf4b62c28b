"""The installer commands of an environment build, and the one sentence a failed one comes to.

WHY these flags: the node never uses an index (``--offline --no-index``,
every index variable of uv and pip removed, no config file read), installs
only the exact wheels the workstation pinned (``--require-hashes``, wheels
only), and compiles no bytecode during the build (it would make a cold
build several times slower; ``build.py`` compiles afterwards, in the
background). uv's cache sits in the state dir, beside ``envs/``, so that
installs hardlink from it instead of copying.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from mlfleet.core.base.errors import MlfleetError
from mlfleet.core.base.models import EnvPlan

Log = Callable[[str], None]
Cancelled = Callable[[], bool]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_POLL_S = 0.1
MAX_SENTENCE = 400


class EnvBuildError(MlfleetError):
    """An environment could not be built; ``str()`` is one sentence: the installer's first real error."""

    def __init__(self, env_hash: str, sentence: str) -> None:
        self.env_hash = env_hash
        self.sentence = sentence
        super().__init__(sentence)


class EnvBuildCancelled(EnvBuildError):
    """The run was cancelled while its environment was being built (nothing is left half-built)."""


def uv_binary() -> str | None:
    """The uv of the agent's own installation, or None (an agent bootstrapped before uv was a dependency)."""
    try:
        import uv

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError):
        return None


def installer_environment(state_dir: Path) -> dict[str, str]:
    """The agent's environment without anything that could send an installer to an index or a config file."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("UV_", "PIP_", "PYTHON", "VIRTUAL_ENV", "CONDA"))}
    env.update({
        "UV_NO_CONFIG": "1",  # no stray uv.toml or [tool.uv] in the cwd or the home folder
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_OFFLINE": "1",
        "UV_NO_PROGRESS": "1",
        "UV_CACHE_DIR": str(state_dir / "uv-cache"),  # same filesystem as envs/: hardlinks, not copies
        "PIP_CONFIG_FILE": os.devnull,  # pip reads no config file at all
        "PIP_NO_INDEX": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
        "NO_COLOR": "1",
    })
    return env


def requirements_text(plan: EnvPlan) -> str:
    """One ``name==version --hash=sha256:...`` line per pinned wheel: what ``--require-hashes`` checks."""
    return "".join(f"{w.name}=={w.version} --hash=sha256:{w.sha256}\n" for w in plan.wheels)


def _find_links(folders: list[Path]) -> list[str]:
    return [arg for folder in folders for arg in ("--find-links", str(folder))]


def uv_commands(uv: str, plan: EnvPlan, target: Path, links: list[Path], requirements: Path) -> list[list[str]]:
    """A relocatable venv (its scripts find their interpreter wherever the folder is renamed to), then the wheels.

    ``links``: one find-links folder per wheel (build.py says why).
    """
    venv = [uv, "venv", "--quiet", "--relocatable", "--no-python-downloads", "--python", plan.python, str(target)]
    if not plan.wheels:
        return [venv]
    return [venv, [uv, "pip", "install", "--offline", "--no-index", "--no-build", *_find_links(links),
                   "--require-hashes", "-r", str(requirements), "--python", str(target / "bin" / "python")]]


def pip_commands(plan: EnvPlan, target: Path, links: list[Path], requirements: Path) -> list[list[str]]:
    """Without uv: a venv without pip (instant), filled by the agent's own pip (``--python`` needs pip >= 22.3).

    Its scripts get absolute shebangs, so this builds at the final path.
    """
    venv = [plan.python, "-m", "venv", "--without-pip", str(target)]
    if not plan.wheels:
        return [venv]
    return [venv, [sys.executable, "-m", "pip", "--python", str(target / "bin" / "python"), "install",
                   "--no-index", *_find_links(links), "--only-binary=:all:", "--no-compile",
                   "--require-hashes", "-r", str(requirements)]]


def run_logged(argv: list[str], env: dict[str, str], cwd: Path, log: Log, cancelled: Cancelled,
               env_hash: str) -> tuple[int, list[str]]:
    """Run one step, each output line to ``log`` as it comes; its own process group, stopped on cancel."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = _ANSI.sub("", raw.decode("utf-8", "replace")).rstrip()
            lines.append(line)
            log(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    while proc.poll() is None:
        if cancelled():
            with_group(proc.pid, signal.SIGKILL)
            proc.wait()
            reader.join(2)
            raise EnvBuildCancelled(env_hash, "cancelled while its environment was being built")
        time.sleep(_POLL_S)
    # A step's background children (setup: "serve &") would outlive the build, hold its output open (the
    # reader waited 5 s for them) and run on the node outside any job: the step's group ends with the step.
    with_group(proc.pid, signal.SIGKILL)
    reader.join(5)
    return proc.returncode, lines


def with_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def first_error(lines: list[str], code: int) -> str:
    """The installer's first real error: uv's first ``cause:`` line, else its ``error:`` line (pip's ``ERROR:``)."""
    stripped = [line.strip() for line in lines if line.strip()]
    if any("DO NOT MATCH THE HASHES" in line for line in stripped):  # pip names the wheel on a later line
        wheel = next((line.split(" from ")[0] for line in stripped if "==" in line and " from " in line), "a wheel")
        return f"Hash mismatch for `{wheel}`"
    for prefix in ("cause:", "error:"):
        for line in stripped:
            if line.lower().startswith(prefix):
                return _sentence(line[len(prefix):])
    if stripped:
        return _sentence(stripped[-1])
    return f"the installer exited with status {code} and said nothing"


def _sentence(text: str) -> str:
    text = "".join(ch for ch in " ".join(text.split()) if ch.isprintable()).rstrip(".")
    return text if len(text) <= MAX_SENTENCE else text[: MAX_SENTENCE - 3] + "..."
