"""One host's live panel: state, CPU and memory with their history, and its GPUs.

The fleet view shows one card, for the host under the table's cursor.

The card is fed the plain dict that ``hosts_list`` returns for one host and
keeps it in a reactive; the watcher updates the few child widgets in place,
so a tick that changes one number redraws one line, not the screen.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.widgets import Label, Static

from mlfleet.core.fleet.hostseen import is_stale, seen_text
from mlfleet.core.fleet.slurm_cluster import PARTITION_HEADERS, age_text, partition_rows
from mlfleet.core.base.units import format_size
from mlfleet.tui.widgets.spark import SparkLine, spark
from mlfleet.tui.widgets.text import set_text

HOST_STATES = ("up", "unreachable", "connecting", "stopped")  # stopped: 'hosts stop-agent'; kept down


class HostCard(Vertical):
    """Everything the fleet view shows about one host."""

    # No repaint of the whole card per update: the watcher updates the children (and the border) that changed.
    host: reactive[dict[str, Any]] = reactive(dict, init=False, repaint=False)

    def __init__(self, host: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._first = host
        self._gpu_lines = -1

    def compose(self) -> ComposeResult:
        yield Static(classes="host-message")
        with Horizontal(classes="metric"):
            yield Label("CPU", classes="metric-name")
            yield Static(id="cpu-value", classes="metric-value")
            yield SparkLine(id="cpu-history", classes="metric-history")
        with Horizontal(classes="metric"):
            yield Label("MEM", classes="metric-name")
            yield Static(id="memory-value", classes="metric-value")
            yield SparkLine(id="memory-history", classes="metric-history")
        yield Static(id="gpus")

    def on_mount(self) -> None:
        self.host = self._first

    def watch_host(self, host: dict[str, Any]) -> None:
        state = host.get("state", "connecting")
        for known in HOST_STATES:
            self.set_class(state == known, f"-{known}")
        self.set_class(bool(host.get("name")) and is_stale(host), "-stale")  # its numbers are its last answer
        # Setting a border label redraws the whole card: only when its words change.
        title, subtitle = host.get("name", "?"), _subtitle(host)
        if self.border_title != title:
            self.border_title = title
        if self.border_subtitle != subtitle:
            self.border_subtitle = subtitle
        message = self.query_one(".host-message", Static)
        set_text(message, host.get("message") or "")
        message.display = bool(host.get("message"))

        # The value lines are one row each, and the GPU block changes height only with the GPU
        # count: only then is a layout pass (of the whole screen) needed, not on every update.
        telemetry = host.get("telemetry")
        history = host.get("history") or {}
        self.query_one("#cpu-value", Static).update(cpu_text(telemetry), layout=False)
        self.query_one("#memory-value", Static).update(memory_text(telemetry), layout=False)
        for key, selector in (("cpu_percent", "#cpu-history"), ("memory_percent", "#memory-history")):
            sparkline = self.query_one(selector, SparkLine)
            sparkline.values = tuple(history.get(key) or ())
            sparkline.display = bool(sparkline.values)  # no flat line pretending to be history
        gpus = (cluster_view(host.get("info", {}).get("slurm")) if host.get("kind") == "slurm"
                else gpu_view(telemetry, host.get("gpu_history") or {}))
        lines = len(gpus.plain.splitlines()) if isinstance(gpus, Text) else 1
        self.query_one("#gpus", Static).update(gpus, layout=lines != self._gpu_lines)
        self._gpu_lines = lines


def _subtitle(host: dict[str, Any]) -> str:
    parts = [host.get("state", "connecting"), host.get("kind") or "?"]
    seen = seen_text(host)
    if seen != "live":
        parts.insert(1, f"last seen: {seen}")
    if host.get("simulated"):
        parts.append("SIMULATED GPUs")
    if host.get("labels"):
        parts.append(",".join(f"{k}={v}" for k, v in sorted(host["labels"].items())))
    if host.get("drained"):
        parts.append(f"DRAINED {host['drained']}")
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


GPU_HEADER = ("GPU", "NAME", "UTIL", "MEMORY", "TEMP", "POWER", "PROCESSES", "UTIL HISTORY")
NAME_WIDTH = 24
PROCESSES_WIDTH = 40


def gpu_view(telemetry: dict[str, Any] | None, history: dict[int, list[float]] | None = None) -> str | Text:
    """A row per GPU with its recent utilisation, or one sentence that says why there is none.

    Plain fixed-width text rather than a Rich table: the card is redrawn on every cursor move,
    and a table of eight rows costs far more to lay out than eight formatted lines.
    """
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
    history = history or {}
    rows = [GPU_HEADER]
    for gpu in gpus:
        rows.append((str(gpu["index"]), _clip(gpu.get("name") or "n/a", NAME_WIDTH), _num(gpu.get("utilization"), "%"),
                     f"{format_size(gpu.get('memory_used'))} / {format_size(gpu.get('memory_total'))}",
                     _num(gpu.get("temperature"), "°C"),
                     f"{_num(gpu.get('power_draw'), '')} / {_num(gpu.get('power_limit'), 'W')}",
                     _clip(processes_text(gpu.get("processes") or []), PROCESSES_WIDTH),
                     spark(history.get(gpu["index"]) or [], 24)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(GPU_HEADER))]
    left = {0, 1, 6, 7}
    text = Text()
    for n, row in enumerate(rows):
        cells = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        text.append("  ".join(cells).rstrip() + ("\n" if n < len(rows) - 1 else ""), style="bold" if n == 0 else "")
    return text


def cluster_view(shape: dict[str, Any] | None) -> str | Text:
    """A Slurm cluster's partitions, a row each: nodes idle/allocated/down and GPUs free/total by type (sinfo)."""
    if not isinstance(shape, dict):
        return "SLURM  waiting for the first sinfo"
    rows = [tuple(h.upper() for h in PARTITION_HEADERS)]
    rows += [tuple(str(c) for c in row) for row in partition_rows(shape)]
    if len(rows) == 1:
        return "SLURM  sinfo shows no partition"
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    text = Text()
    for n, row in enumerate(rows):
        cells = [c.ljust(w) if i in (0, 1, 6) else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        text.append("  ".join(cells).rstrip() + "\n", style="bold" if n == 0 else "")
    text.append(age_text(shape), style="dim")
    return text


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def processes_text(processes: list[dict[str, Any]]) -> str:
    """``run j1-1 (4 GiB), foreign 1234 python`` : whose processes hold the GPU."""
    if not processes:
        return "-"
    parts = []
    for proc in processes[:3]:
        owner = f"run {proc['run_id']}" if proc.get("run_id") else f"foreign {proc.get('pid')} {proc.get('name') or ''}".rstrip()
        parts.append(f"{owner} ({format_size(proc.get('used_memory'))})" if proc.get("used_memory") else owner)
    if len(processes) > 3:
        parts.append(f"+{len(processes) - 3}")
    return ", ".join(parts)


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f} {unit}".rstrip()
