"""An isolated mlfleet installation for the TUI tests, stopped afterwards.

This is a plain module rather than a ``conftest.py``: conftest files outside
a package all import as the module ``conftest``, and a second one here would
shadow ``tests/conftest.py`` for the tests that do ``from conftest import``.

The home is set in ``MLFLEET_HOME`` as well as passed to the app, because
the controller that :func:`mlfleet.core.client.connect` starts on demand
reads its home from the environment.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import pytest
from textual.pilot import Pilot

from mlfleet.core.client import try_connect
from mlfleet.core.errors import MlfleetError
from mlfleet.core.paths import Home


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Home]:
    """A fresh installation under a short /tmp path (Unix socket paths must stay under 100 bytes)."""
    root = Path(tempfile.mkdtemp(prefix="mlf", dir="/tmp"))
    monkeypatch.setenv("MLFLEET_HOME", str(root))
    installation = Home(config_dir=root, data_dir=root)
    try:
        yield installation
    finally:
        stop_installation(installation)
        shutil.rmtree(root, ignore_errors=True)


def stop_installation(home: Home) -> None:
    """Ask the controller to stop (and the idle local agent with it), then kill what is left of this home."""
    # A thread of its own: the test's event loop may still be set on this one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _ask_controller_to_stop(home)).result(timeout=30)
    _wait_gone(_pid_in(home.controller_lock), 5.0)
    for pid in (_pid_in(home.controller_lock), _pid_in(home.local_agent_dir / "agent.lock")):
        if pid is not None:
            _kill(pid)
    _kill_processes_of(home)


async def _ask_controller_to_stop(home: Home) -> None:
    client = await try_connect(home)
    if client is None:
        return
    try:
        await client.call("shutdown", request_timeout=10)
    except MlfleetError:
        pass
    finally:
        await client.close()


def _pid_in(lock: Path) -> int | None:
    try:
        pid = int(lock.read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    try:
        return pid if pid > 0 and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE else None
    except psutil.Error:
        return None


def _wait_gone(pid: int | None, timeout: float) -> None:
    if pid is None:
        return
    try:
        psutil.Process(pid).wait(timeout)
    except (psutil.Error, psutil.TimeoutExpired):
        pass


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _kill_processes_of(home: Home) -> None:
    """Runners and job processes of this home (they carry its path in their environment or argv)."""
    root = str(home.data_dir)
    mine = []
    for proc in psutil.process_iter(["pid", "environ", "cmdline"]):
        try:
            env = proc.info.get("environ") or {}
            cmd = " ".join(proc.info.get("cmdline") or [])
        except (psutil.Error, OSError):
            continue
        if proc.pid != os.getpid() and (env.get("MLFLEET_HOME") == root or root in cmd):
            mine.append(proc)
    for proc in mine:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(mine, timeout=5)


async def until(pilot: Pilot[Any], predicate: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Let the app run until ``predicate()`` is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await pilot.pause(0.2)


def text_of(widget: Any) -> str:
    """The plain text a Static shows."""
    return str(widget.render())
