"""Which controller this process talks to: this machine's own, or a shared one over SSH (docs/team.md).

Apart from core/controller/remote.py, which dials it, so that a process
that only asks (a node's ``mlfleet --version``, whose install has no
asyncssh) does not import an SSH client. ``--controller URL`` (sets
MLFLEET_CONTROLLER for the process) > ``MLFLEET_CONTROLLER`` >
``controller.url`` in config.yaml.
"""

from __future__ import annotations

import os
from pathlib import Path

from mlfleet.core.base.controller_url import ENV, ControllerUrl, parse_url
from mlfleet.core.base.errors import UsageError
from mlfleet.core.base.paths import Home
from mlfleet.core.base.settings import load_settings

STARTED_ON_HEAD = ("a shared controller is started on its head node with 'mlfleet controller serve --team GROUP'"
                   " (this command runs this machine's own controller: unset --controller, MLFLEET_CONTROLLER "
                   "and controller.url to use it)")


def configured_target(home: Home, environ: dict[str, str] | None = None) -> ControllerUrl | None:
    """The shared controller this process talks to (see the module's doc), or None for this machine's own."""
    env = os.environ if environ is None else environ
    url = env.get(ENV, "").strip()
    if url:
        try:
            return parse_url(url)
        except ValueError as exc:
            raise UsageError(f"--controller (or {ENV}): {exc}") from None
    if not home.config_file.exists():
        return None
    url = load_settings(home.config_file).controller.url  # checked there, with its line
    return parse_url(url) if url else None


def identity_of(home: Home) -> Path | None:
    """``controller.identity`` from config.yaml (None: ssh-agent and the default ~/.ssh keys)."""
    if not home.config_file.exists():
        return None
    identity = load_settings(home.config_file).controller.identity
    return Path(identity).expanduser() if identity else None
