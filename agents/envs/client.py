"""``from mlfleet import track`` (and ``serve``) inside a job's environment, without installing mlfleet into it.

WHY: a job in its own environment runs that environment's ``python``, which
has none of the agent's packages; yet ``mlfleet.track`` is how it reports
metrics. track is standard library only, so the agent keeps a copy of just
that module (and the two package files above it) in ``envs/.client/``, and
each environment gets a ``.pth`` line that appends that folder to
``sys.path``: after site-packages, so an environment that pins a real
mlfleet keeps its own. The runner refreshes the copy before every job, so
it always matches the running agent.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

PTH_NAME = "_mlfleet_track.pth"


def client_dir(state_dir: Path) -> Path:
    return state_dir / "envs" / ".client"


def refresh_client(state_dir: Path) -> Path:
    """Write the agent's track and serve clients under ``envs/.client`` where they differ (by rename: a job may
    be reading one). Both are standard library only; serve is what a model server in an environment captures with."""
    import mlfleet
    from mlfleet.agents import serve, track

    root = client_dir(state_dir)
    package = Path(mlfleet.__file__).parent  # mlfleet/track.py sits beside it (package/ in a checkout)
    files = {
        Path("mlfleet/__init__.py"): (package / "__init__.py").read_bytes(),
        Path("mlfleet/track.py"): (package / "track.py").read_bytes(),
        Path("mlfleet/agents/__init__.py"): b"",
        Path("mlfleet/agents/track.py"): Path(track.__file__).read_bytes(),
        Path("mlfleet/serve.py"): (package / "serve.py").read_bytes(),
        Path("mlfleet/agents/serve.py"): Path(serve.__file__).read_bytes(),
    }
    for relative, data in files.items():
        target = root / relative
        try:
            if target.read_bytes() == data:
                continue
        except OSError:
            pass
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return root


def link_client(env_root: Path, state_dir: Path) -> None:
    """The environment's ``.pth`` line to the client folder (written while it is built, before its marker)."""
    for site in glob.glob(str(env_root / "lib" / "python*" / "site-packages")):
        (Path(site) / PTH_NAME).write_text(f"{client_dir(state_dir)}\n")
