"""One host's live panel: state, CPU and memory with their history, and its GPUs.

The card is fed the plain dict that ``hosts_list`` returns for one host and
keeps it in a reactive; the watcher updates the few child widgets in place,
so a tick that changes one number redraws one line, not the screen.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.widgets import Label, Sparkline, Static

from mlfleet.core.units import format_size

HOST_STATES = ("up", "unreachable", "connecting")


class HostCard(Vertical):
    """Everything the fleet view shows about one host."""

    host: reactive[dict[str, Any]] = reactive(dict, init=False)

    def __init__(self, host: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._first = host

    def compose(self) -> ComposeResult:
        yield Static(classes="host-message")
        with Horizontal(classes="metric"):
            yield Label("CPU", classes="metric-name")
            yield Static(id="cpu-value", classes="metric-value")
            yield Sparkline([], id="cpu-history", classes="metric-history")
        with Horizontal(classes="metric"):
            yield Label("MEM", classes="metric-name")
            yield Static(id="memory-value", classes="metric-value")
            yield Sparkline([], id="memory-history", classes="metric-history")
        yield Static(id="gpus")

    def on_mount(self) -> None:
        self.host = self._first

    def watch_host(self, host: dict[str, Any]) -> None:
        state = host.get("state", "connecting")
        for known in HOST_STATES:
            self.set_class(state == known, f"-{known}")
        self.border_title = host.get("name", "?")
        self.border_subtitle = _subtitle(host)
        message = self.query_one(".host-message", Static)
        message.update(host.get("message") or "")
        message.display = bool(host.get("message"))

        telemetry = host.get("telemetry")
        history = host.get("history") or {}
        self.query_one("#cpu-value", Static).update(cpu_text(telemetry))
        self.query_one("#memory-value", Static).update(memory_text(telemetry))
        for key, selector in (("cpu_percent", "#cpu-history"), ("memory_percent", "#memory-history")):
            sparkline = self.query_one(selector, Sparkline)
            sparkline.data = list(history.get(key) or [])
            sparkline.display = bool(sparkline.data)  # no flat line pretending to be history
        self.query_one("#gpus", Static).update(gpu_view(telemetry))


def _subtitle(host: dict[str, Any]) -> str:
    parts = [host.get("state", "connecting"), host.get("kind") or "?"]
    if host.get("simulated"):
        parts.append("SIMULATED GPUs")
    if host.get("agent_version"):
        parts.append(f"agent {host['agent_version']}")
    running = host.get("running_jobs") or 0
    parts.append(f"{running} job{'s' if running != 1 else ''} running")
    return " · ".join(parts)


def cpu_text(telemetry: dict[str, Any] | None) -> str:
    """``12.5 % of 8 cores · load 0.42``, or a dash before the first sample."""
    if not telemetry:
        return "no telemetry yet"
    return (f"{telemetry['cpu_percent']:5.1f} % of {telemetry['cpu_count']} cores"
            f" · load {telemetry['load1']:.2f}")


def memory_text(telemetry: dict[str, Any] | None) -> str:
    """``3.1 GiB / 15.5 GiB (20 %)``."""
    if not telemetry:
        return "no telemetry yet"
    used, total = telemetry["memory_used"], telemetry["memory_total"]
    share = 100.0 * used / total if total else 0.0
    return f"{format_size(used)} / {format_size(total)} ({share:.0f} %)"


def gpu_view(telemetry: dict[str, Any] | None) -> str | Table:
    """A row per GPU, or one sentence that says why there is none."""
    if not telemetry:
        return "GPU  unknown until the first sample"
    state = telemetry.get("gpu_state")
    if state == "no_driver":
        return "GPU  no NVIDIA driver"
    if state == "error":
        return f"GPU  error: {telemetry.get('gpu_message') or 'unknown'}"
    gpus = telemetry.get("gpus") or []
    if not gpus:
        return "GPU  none found"
    table = Table(box=None, pad_edge=False, padding=(0, 2, 0, 0), header_style="bold")
    for title in ("GPU", "NAME", "UTIL", "MEMORY", "TEMP", "POWER", "PROCS"):
        table.add_column(title, no_wrap=True, justify="left" if title in ("GPU", "NAME") else "right")
    for gpu in gpus:
        table.add_row(str(gpu["index"]), gpu.get("name") or "n/a", _num(gpu.get("utilization"), "%"),
                      f"{format_size(gpu.get('memory_used'))} / {format_size(gpu.get('memory_total'))}",
                      _num(gpu.get("temperature"), "°C"),
                      f"{_num(gpu.get('power_draw'), '')} / {_num(gpu.get('power_limit'), 'W')}",
                      str(len(gpu.get("processes") or [])))
    return table


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f} {unit}".rstrip()
