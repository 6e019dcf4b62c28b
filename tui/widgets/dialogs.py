"""Small modal screens: confirm, ask for a value, read a text, pick a file, the ``:`` command line.

Each returns its answer through ``dismiss`` (``push_screen(..., callback)`` or
``push_screen_wait``), so the view that asked decides what to do with it.
``esc`` always backs out without doing anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Iterable

from rich.console import RenderableType
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.suggester import SuggestFromList
from textual.widgets import Button, DirectoryTree, Input, Label, Static


class Confirm(ModalScreen[bool]):
    """``y``/enter confirms, ``n``/esc declines."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str, yes: str = "Yes") -> None:
        super().__init__(classes="dialog")
        self.question, self.yes = question, yes

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Label(self.question, classes="dialog-question")
            with Horizontal(classes="dialog-buttons"):
                yield Button(f"{self.yes} (y)", variant="error", id="yes")
                yield Button("No (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()  # the safe answer is the default

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class Prompt(ModalScreen[str | None]):
    """One line of input; enter answers, esc backs out."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss(None)", "Back")]

    def __init__(self, question: str, value: str = "", placeholder: str = "") -> None:
        super().__init__(classes="dialog")
        self.question, self.value, self.placeholder = question, value, placeholder

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Label(self.question, classes="dialog-question")
            yield Input(self.value, placeholder=self.placeholder, id="answer")

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip())


class TextPanel(ModalScreen[None]):
    """A read-only page of text (why pending, a job's details); esc or q closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q", "dismiss(None)", "Back")]

    def __init__(self, title: str, body: RenderableType) -> None:
        super().__init__(classes="dialog")
        self.title_text, self.body = title, body

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog-box text-panel") as box:
            box.border_title = self.title_text
            box.border_subtitle = "esc back"
            yield Static(self.body, id="panel-text")


class SpecTree(DirectoryTree):
    """Folders and YAML files only."""

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        return [p for p in paths if not p.name.startswith(".") and (p.is_dir() or p.suffix in (".yaml", ".yml"))]


class SpecPicker(ModalScreen[Path | None]):
    """Choose a job spec file: a tree of folders and YAML files; enter on a file picks it."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss(None)", "Back")]

    def __init__(self, root: Path) -> None:
        super().__init__(classes="dialog")
        self.root = root

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box picker") as box:
            box.border_title = f"submit a job spec from {self.root}"
            box.border_subtitle = "enter picks a file · esc back"
            yield SpecTree(self.root, id="spec-tree")

    @on(DirectoryTree.FileSelected)
    def _picked(self, event: DirectoryTree.FileSelected) -> None:
        event.stop()
        self.dismiss(Path(event.path))


class CommandLine(ModalScreen[str | None]):
    """k9s's ``:``: a one-line prompt at the bottom, with completion of the known commands."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss(None)", "Back")]

    def __init__(self, commands: list[str]) -> None:
        super().__init__(classes="command-line")
        self.commands = commands

    def compose(self) -> ComposeResult:
        yield Input(placeholder=" ".join(self.commands), id="command",
                    suggester=SuggestFromList(self.commands, case_sensitive=False))

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip().lstrip(":"))

    def on_click(self, event: Any) -> None:  # noqa: ANN401 - a click outside the line backs out
        if event.widget is self:
            self.dismiss(None)
