"""An environment's identity: ``env_hash``, a pure function of what makes two environments the same.

Why these inputs: two jobs get the same built environment exactly when the
node would build the same thing: the same interpreter (full version and
implementation), the same platform the wheels were chosen for, the same
wheels (by content: name, version and the sha256 of the one file
installed), the same setup commands in the same order, and the same way of
building (``LAYOUT``). The uv version and the link mode are left out: they
do not change what the environment holds. The text hashed is canonical JSON
(sorted keys, wheels sorted by name), so the order requirements were written
in, or the resolver's output order, never makes a new environment.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import msgspec

from mlfleet.core.base.models import PinnedWheel

# How the node builds: a relocatable uv venv, no bytecode compiled at build time, setup commands run
# after the rename (docs/environments.md). Bump it when that changes, so old environments are not reused.
LAYOUT = "mlfleet-env-v1"


def env_hash(python_version: str, platform: str, wheels: Iterable[PinnedWheel], setup: Sequence[str] = (),
             implementation: str = "cpython") -> str:
    """sha256 (hex) of the canonical description of an environment."""
    canonical = {
        "layout": LAYOUT,
        "python": f"{implementation.lower()}-{python_version}",
        "platform": platform,
        "wheels": sorted([w.name, w.version, w.sha256.lower()] for w in wheels),
        "setup": list(setup),
    }
    return hashlib.sha256(msgspec.json.encode(canonical, order="sorted")).hexdigest()


def package_versions(wheels: Iterable[PinnedWheel]) -> dict[str, str]:
    """name -> version of an environment's wheels (lineage: what `runs compare` and `env.<package>` read)."""
    return {w.name: w.version for w in sorted(wheels, key=lambda w: w.name)}
