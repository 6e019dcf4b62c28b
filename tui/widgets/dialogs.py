"""Small modal screens: confirm, ask for a value, read a text, pick a file, the ``:`` command line.

Each returns its answer through ``dismiss`` (``push_screen(..., callback)`` or
``push_screen_wait``), so the view that asked decides what to do with it.
``esc`` always backs out without doing anything.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Picked:
    """A spec file and what to change in it, as ``mlfleet submit FILE --name N --set A=B ...`` would."""

    path: Path
    name: str | None = None  # blank: the spec's own
    sets: tuple[str, ...] = ()  # each PATH=VALUE


class SpecPicker(ModalScreen["Picked | None"]):
    """Choose a job spec file: a tree of folders and YAML files, and a line to type a path into.

    Above the tree, a name and ``--set`` overrides (``params.lr=0.1
    resources.gpus=2``, split as a shell would) for the submit, checked by
    the same schema as the file when the spec is loaded.

    Enter on a file picks it; backspace in the tree goes up a folder (the
    tree starts where ``mlfleet`` was run, and a spec is often beside it,
    not below it); a typed path, absolute, ``~/...`` or relative to the
    folder shown, picks that file or opens that folder. Any file may be
    typed, YAML or not: ``load_job_spec`` says what is wrong with it.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss(None)", "Back"),
        Binding("backspace", "up", "Up a folder"),  # the path line keeps its own backspace
    ]

    def __init__(self, root: Path) -> None:
        super().__init__(classes="dialog")
        self.root = root.absolute()

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box picker") as box:
            box.border_title = f"submit a job spec from {self.root}"
            box.border_subtitle = "enter picks · backspace up a folder · tab to type a path · esc back"
            yield Input(placeholder="or type a path: a spec file, or a folder to open (enter)", id="spec-path")
            with Horizontal(classes="picker-options"):
                yield Input(placeholder="name (blank: the spec's)", id="spec-name", classes="picker-option")
                yield Input(placeholder="--set PATH=VALUE ... e.g. params.lr=0.1 resources.gpus=2", id="spec-set",
                            classes="picker-option")
            yield Static("", id="spec-problem")
            yield SpecTree(self.root, id="spec-tree")

    def on_mount(self) -> None:
        self.query_one("#spec-problem", Static).display = False
        self.query_one(SpecTree).focus()

    @property
    def folder(self) -> Path:
        """The folder the tree shows."""
        return Path(self.query_one(SpecTree).path)

    def open_folder(self, folder: Path) -> None:
        self.query_one(SpecTree).path = folder
        self.query_one(".picker", Vertical).border_title = f"submit a job spec from {folder}"
        self._problem("")

    def action_up(self) -> None:
        folder = self.folder
        if folder.parent == folder:
            self._problem(f"{folder} has no folder above it")
            return
        self.open_folder(folder.parent)

    def _problem(self, text: str) -> None:
        line = self.query_one("#spec-problem", Static)
        line.update(text)
        line.display = bool(text)

    @on(Input.Submitted, "#spec-path")
    def _typed(self, event: Input.Submitted) -> None:
        event.stop()
        typed = event.value.strip()
        if not typed:
            return
        try:
            path = Path(typed).expanduser()  # ~nobody/…: RuntimeError
            if not path.is_absolute():
                path = self.folder / path
            is_dir, is_file = path.is_dir(), path.is_file()
        except (OSError, ValueError, RuntimeError) as exc:  # too long, a NUL byte, no such user, no permission
            self._problem(f"cannot use {typed!r}: {getattr(exc, 'strerror', None) or exc}")
            return
        if is_dir:
            self.open_folder(path.resolve())
            event.input.value = ""
            self.query_one(SpecTree).focus()
        elif is_file:
            self._pick(path)
        else:
            self._problem(f"no file or folder {path}; type another path, or pick one below")

    @on(DirectoryTree.FileSelected)
    def _picked(self, event: DirectoryTree.FileSelected) -> None:
        event.stop()
        self._pick(Path(event.path))

    @on(Input.Submitted, ".picker-option")
    def _option_entered(self, event: Input.Submitted) -> None:
        """Enter in the name or --set line submits the file under the tree's cursor (else goes to the tree)."""
        event.stop()
        node = self.query_one(SpecTree).cursor_node
        path = Path(node.data.path) if node is not None and node.data is not None else None
        if path is not None and path.is_file():
            self._pick(path)
        else:
            self.query_one(SpecTree).focus()

    def _pick(self, path: Path) -> None:
        text = self.query_one("#spec-set", Input).value
        try:
            sets = tuple(shlex.split(text))
        except ValueError as exc:  # an unclosed quote
            self._problem(f"--set line: {exc}")
            return
        name = self.query_one("#spec-name", Input).value.strip() or None
        self.dismiss(Picked(path, name, sets))


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
