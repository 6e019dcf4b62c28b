"""The models view: every registered model with its versions and aliases; enter opens one.

The list polls ``models_list`` every 2 s (the CLI twin: ``mlfleet models
list``). Enter opens :class:`ModelScreen`: the model's versions (with the
aliases pointing at each), the alias history newest first (who moved which
alias from where to where, and why), and the lineage of the version under
the cursor: its run, file, code, environment, data and metrics, as
``mlfleet models show NAME:V`` prints it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from mlfleet.core.base.errors import MlfleetError
from mlfleet.core.base.units import format_size
from mlfleet.core.cli.render import elapsed, lineage_rows, number, value, when
from mlfleet.core.controller.client import ControllerClient
from mlfleet.tui.screens.base import PollingScreen
from mlfleet.tui.widgets.keyed_table import KeyedTable
from mlfleet.tui.widgets.text import set_text

MODEL_COLUMNS = (("name", "MODEL"), ("versions", "VERSIONS"), ("latest", "LATEST"), ("aliases", "ALIASES"),
                 ("latest_run", "LATEST RUN"), ("updated", "UPDATED"))
VERSION_COLUMNS = (("version", "VERSION"), ("aliases", "ALIASES"), ("run", "RUN"), ("file", "FILE"),
                   ("size", "SIZE"), ("sha256", "SHA256"), ("by", "BY"), ("registered", "REGISTERED"))
HISTORY_COLUMNS = (("at", "AT"), ("alias", "ALIAS"), ("from", "FROM"), ("to", "TO"), ("by", "BY"),
                   ("reason", "REASON"))


def aliases_text(aliases: dict[str, int]) -> str:
    return ", ".join(f"{a}=v{v}" for a, v in aliases.items()) or "-"


def model_cells(m: dict[str, Any]) -> tuple[str | Text, ...]:
    return (m["name"], str(m["versions"]), f"v{m['latest']}", aliases_text(m.get("aliases") or {}),
            m.get("latest_run") or "-", elapsed(m.get("updated_at")))


def version_cells(v: dict[str, Any]) -> tuple[str | Text, ...]:
    aliases = ", ".join(v.get("aliases") or [])
    return (f"v{v['version']}", Text(aliases, style="bold green") if aliases else "-", v["run_id"], v["file_name"],
            format_size(v["size"]), v["sha256"][:12], v["created_by"], when(v["created_at"]))


def move_cells(m: dict[str, Any]) -> tuple[str | Text, ...]:
    return (when(m["moved_at"]), m["alias"], f"v{m['from_version']}" if m["from_version"] is not None else "-",
            f"v{m['to_version']}", m["actor"], m.get("reason") or "-")


def version_lineage(v: dict[str, Any]) -> str:
    """The version under the cursor in words: run, file, environment, then the run's lineage and metrics."""
    lines = [f"v{v['version']} · run {v['run_id']} (job {value(v.get('job_id'))}) · {v['file_name']} "
             f"{format_size(v['size'])} · sha256 {v['sha256'][:16]} · env {str(v.get('env_hash') or '-')[:12]}"]
    lineage = {**(v.get("lineage") or {}), "code_hash": v.get("code_hash"), "spec_hash": v.get("spec_hash")}
    lines += [f"{label:<10} {text}" for label, text in lineage_rows(lineage)]
    metrics = v.get("metrics") or {}
    if metrics:
        lines.append("metrics    " + "  ".join(
            f"{k}={number(m.get('summary') if m.get('mode') else m.get('last'))}" for k, m in list(metrics.items())[:8]))
    return "\n".join(lines)


class ModelsScreen(PollingScreen):
    """Every model, most recently registered first, as ``mlfleet models list``."""

    TITLE = "mlfleet · models"
    POLL_S = 2.0

    def __init__(self) -> None:
        super().__init__()
        self.models: list[dict[str, Any]] = []

    def compose_body(self) -> ComposeResult:
        yield KeyedTable(MODEL_COLUMNS, id="models-table")
        yield Static("no models yet: register one with 'mlfleet models register NAME --run RUN --artifact PATH' "
                     "(docs/models.md)", id="models-empty")

    @property
    def table(self) -> KeyedTable:
        return self.query_one("#models-table", KeyedTable)

    def focus_body(self) -> None:
        self.table.focus()

    async def refresh_from(self, client: ControllerClient) -> None:
        self.show_models(await client.call("models_list", limit=200))

    def show_models(self, models: list[dict[str, Any]]) -> None:
        self.models = models
        needle = self.filter_text.lower()
        rows = [(m["name"], model_cells(m)) for m in models]
        if needle:
            rows = [(k, c) for k, c in rows if needle in " ".join(str(x) for x in c).lower()]
        self.table.show(rows)
        self.query_one("#models-empty", Static).display = not models

    def filter_changed(self) -> None:
        self.show_models(self.models)

    @on(KeyedTable.RowSelected, "#models-table")
    def _open(self, event: KeyedTable.RowSelected) -> None:
        if event.key is not None:
            screen = ModelScreen(event.key)
            screen.client = self.client
            self.app.push_screen(screen)


class ModelScreen(Screen[None]):
    """One model: versions, alias history and the lineage of the version under the cursor, refreshed while on view."""

    TITLE = "mlfleet · model"
    POLL_S = 2.0
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "app.pop_screen", "Back"),
        Binding("tab", "app.focus_next", "Next table", show=False),
    ]

    def __init__(self, name: str) -> None:
        super().__init__()
        self.model_name = name
        self.client: ControllerClient | None = None
        self.versions: list[dict[str, Any]] = []
        self.moves: list[dict[str, Any]] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"model {self.model_name}…", id="model-title")
        yield KeyedTable(VERSION_COLUMNS, id="model-versions")
        yield Static("", id="model-lineage")
        yield Static("alias history (newest first)", id="model-history-title")
        yield KeyedTable(HISTORY_COLUMNS, id="model-history")
        yield Footer()

    @property
    def table(self) -> KeyedTable:
        return self.query_one("#model-versions", KeyedTable)

    @property
    def history_table(self) -> KeyedTable:
        return self.query_one("#model-history", KeyedTable)

    def on_mount(self) -> None:
        self.table.focus()
        if self.client is not None:
            self.load()
            self.set_interval(self.POLL_S, self.load)

    @work(exclusive=True, group="load")
    async def load(self) -> None:
        if self.client is None or not self.is_current:
            return
        try:
            versions = await self.client.call("model_versions", name=self.model_name)
            history = await self.client.call("model_history", name=self.model_name)
        except MlfleetError as exc:
            set_text(self.query_one("#model-title", Static), f"cannot show model {self.model_name}: {exc}")
            return
        self.show_model(versions, history["moves"])

    def show_model(self, versions: list[dict[str, Any]], moves: list[dict[str, Any]]) -> None:
        """Draw what ``model_versions`` and ``model_history`` answered."""
        self.versions, self.moves = versions, moves
        aliases: dict[str, int] = {}
        for v in versions:
            for a in v.get("aliases") or []:
                aliases[a] = v["version"]
        latest = versions[-1]["version"] if versions else 0
        set_text(self.query_one("#model-title", Static),
                 f"model {self.model_name} · {len(versions)} version{'s' if len(versions) != 1 else ''} · "
                 f"latest v{latest} · aliases {aliases_text(dict(sorted(aliases.items())))}")
        newest_first = list(reversed(versions))
        self.table.show([(str(v["version"]), version_cells(v)) for v in newest_first])
        self.history_table.show([(str(m["id"]), move_cells(m)) for m in moves])
        self._show_lineage(self.table.current_key)

    @on(KeyedTable.RowHighlighted, "#model-versions")
    def _follow(self, event: KeyedTable.RowHighlighted) -> None:
        self._show_lineage(event.key)

    def _show_lineage(self, key: str | None) -> None:
        version = next((v for v in self.versions if str(v["version"]) == key), None)
        if version is None and self.versions:
            version = self.versions[-1]
        set_text(self.query_one("#model-lineage", Static), version_lineage(version) if version else "")
