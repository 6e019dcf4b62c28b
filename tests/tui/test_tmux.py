"""The TUI in a real terminal: ``mlfleet`` in tmux, read back from the screen like a user would.

tmux runs on a private socket inside the test's home, so the test never
touches anyone else's tmux server, and ``kill-server`` at the end stops
exactly what it started.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlfleet.core.base.paths import Home
from tui_fleet import home  # noqa: F401  (a fixture)

SESSION = "mlfleet"
CPU = re.compile(r"CPU\s+\d+\.\d % of \d+ cores")
MEMORY = re.compile(r"MEM\s+\d+(\.\d)? [KMGT]?i?B / \d+(\.\d)? [KMGT]iB")


class Terminal:
    """A tmux session of 160x45 on a private server."""

    def __init__(self, tmux: str, socket: Path) -> None:
        self.tmux = tmux
        self.socket = socket

    def run(self, *args: str) -> str:
        done = subprocess.run([self.tmux, "-S", str(self.socket), *args], capture_output=True, text=True, timeout=10)
        if done.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", SESSION)

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", SESSION, *keys)

    def wait_for(self, what: str, predicate, timeout: float = 30.0) -> str:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if predicate(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; the screen shows:\n{screen}")
            time.sleep(0.3)


def test_mlfleet_opens_the_tui_in_a_terminal_and_switches_views(home: Home) -> None:
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.fail("tmux is not installed: this end-to-end test runs mlfleet in a real terminal. "
                    "Run the tests with the README's command (scripts/test.sh), which installs tmux.")
    term = Terminal(tmux, home.data_dir / "tmux.sock")
    # After mlfleet exits the shell prints its exit status and keeps the pane open, so a crash stays readable.
    command = (f"MLFLEET_HOME={shlex.quote(str(home.data_dir))} {shlex.quote(sys.executable)} -m mlfleet; "
               "echo mlfleet exited $?; sleep 60")
    term.run("new-session", "-d", "-s", SESSION, "-x", "160", "-y", "45", command)
    try:
        first = term.wait_for("the local host with its CPU and memory",
                              lambda s: "local" in s and CPU.search(s) and MEMORY.search(s))
        time.sleep(2.5)
        later = term.screen()
        for screen in (first, later):
            assert "local" in screen and CPU.search(screen) and MEMORY.search(screen), screen
        assert "up · local" in later and "Drain" in later and "Filter" in later, later

        term.keys("2")
        jobs = term.wait_for("the jobs view", lambda s: "JOB" in s and "STATE" in s and "stdout/stderr" in s)
        assert not CPU.search(jobs), jobs

        term.keys("1")
        term.wait_for("the fleet view again", lambda s: CPU.search(s) is not None)

        # k9s habits: ':' and a view's name, '/' to narrow, esc to clear.
        term.keys(":")
        term.wait_for("the command line", lambda s: "hosts" in s and "audit" in s)
        term.keys("runs", "Enter")
        term.wait_for("the runs view", lambda s: "RUN" in s and "Compare" in s)
        term.keys(":", "hosts", "Enter")
        term.wait_for("the fleet view from :hosts", lambda s: CPU.search(s) is not None)
        term.keys("/", "zz-nothing")
        term.wait_for("the filter to hide every host", lambda s: "no host matches the filter" in s)
        term.keys("Escape")
        term.wait_for("the hosts back", lambda s: CPU.search(s) is not None and "no host matches" not in s)

        term.keys("q")
        term.wait_for("mlfleet to exit", lambda s: "mlfleet exited" in s, timeout=10)
        assert "mlfleet exited 0" in term.screen()
        assert "Traceback" not in term.screen()
    finally:
        subprocess.run([tmux, "-S", str(term.socket), "kill-server"], capture_output=True, timeout=10)


def hues(screen_with_escapes: str) -> set[str]:
    """Every colour on screen that is not a grey (``capture-pane -e`` output: 256-colour, RGB or basic SGR)."""
    found = set()
    for params in re.findall(r"\x1b\[([\d;]*)m", screen_with_escapes):
        codes = [int(c) if c else 0 for c in params.split(";")]
        i = 0
        while i < len(codes):
            code = codes[i]
            if code in (38, 48) and i + 2 < len(codes) and codes[i + 1] == 5:
                n = codes[i + 2]
                if 16 <= n <= 231:
                    n -= 16
                    grey = n // 36 == (n // 6) % 6 == n % 6
                else:
                    grey = n >= 232 or n in (0, 7, 8, 15)
                if not grey:
                    found.add(f"{code};5;{codes[i + 2]}")
                i += 3
            elif code in (38, 48) and i + 4 < len(codes) and codes[i + 1] == 2:
                r, g, b = codes[i + 2:i + 5]
                if max(r, g, b) - min(r, g, b) > 8:
                    found.add(f"{code};2;{r};{g};{b}")
                i += 5
            else:
                if 31 <= code <= 36 or 41 <= code <= 46 or 91 <= code <= 96 or 101 <= code <= 106:
                    found.add(str(code))
                i += 1
    return found


def test_no_color_in_the_environment_means_no_colour_on_screen(home: Home) -> None:
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.fail("tmux is not installed; run the tests with the README's command (scripts/test.sh).")
    term = Terminal(tmux, home.data_dir / "tmux.sock")
    command = f"NO_COLOR=1 MLFLEET_HOME={shlex.quote(str(home.data_dir))} {shlex.quote(sys.executable)} -m mlfleet"
    term.run("new-session", "-d", "-s", SESSION, "-x", "160", "-y", "45", command)
    try:
        term.wait_for("the local host", lambda s: "local" in s and CPU.search(s))
        coloured = term.run("capture-pane", "-p", "-e", "-t", SESSION)
        assert "\x1b[" in coloured  # styles (bold, reverse, greys) are still there ...
        assert hues(coloured) == set(), hues(coloured)  # ... but no hue anywhere
        term.keys("q")
    finally:
        subprocess.run([tmux, "-S", str(term.socket), "kill-server"], capture_output=True, timeout=10)
