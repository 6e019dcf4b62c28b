"""An isolated mlfleet installation for the TUI tests, stopped afterwards.

This is a plain module rather than a ``conftest.py``: conftest files outside
a package all import as the module ``conftest``, and a second one here would
shadow ``tests/conftest.py`` for the tests that do ``from conftest import``.

The home is also set in ``MLFLEET_HOME`` so that every process started
under the test (controller, agent, jobs) is found and stopped afterwards.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from textual.pilot import Pilot

from conftest import Fleet
from mlfleet.core.controller.client import try_connect
from mlfleet.core.base.errors import MlfleetError
from mlfleet.core.base.paths import Home


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Home]:
    """A fresh installation under a short /tmp path (Unix socket paths must stay under 100 bytes)."""
    root = Path(tempfile.mkdtemp(prefix="mlf", dir="/tmp"))
    monkeypatch.setenv("MLFLEET_HOME", str(root))
    installation = Fleet(root)
    try:
        yield installation.home
    finally:
        # Ask the controller to stop (and the idle local agent with it), then kill what is left.
        # A thread of its own: the test's event loop may still be set on this one.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, _ask_controller_to_stop(installation.home)).result(timeout=30)
        installation.kill_everything()
        shutil.rmtree(root, ignore_errors=True)


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
