"""Config files on the audit trail: a change to config.yaml or hosts.yaml is recorded, with who owns the file.

Checked at every controller start and whenever the fleet picks up a hand
edit of hosts.yaml, so a change made while the controller was down is on
record too.
"""

from __future__ import annotations

import os
from pathlib import Path

from mlfleet.core.audit.records import audit
from mlfleet.core.base.paths import Home
from mlfleet.core.base.settings import file_digest
from mlfleet.core.store.db import Store
from mlfleet.core.store.rows import rows


async def audit_config_change(store: Store, home: Home) -> None:
    """Record a config file that changed since the controller last saw it (who: the file's owner)."""
    for path in (home.config_file, home.hosts_file):
        digest = file_digest(path)
        found = await store.read(rows, """select detail->>'sha256' as sha256 from audit
                                    where action = 'config.change' and target = ? order by id desc limit 1""",
                                 [str(path)])
        last = found[0]["sha256"] if found else None
        if digest != last and (digest is not None or last is not None):
            owner = file_owner(path) if digest else os_user()
            await store.run(audit, owner, "config.change", str(path), {"sha256": digest, "previous": last})


def file_owner(path: Path) -> str:
    import pwd

    try:
        return pwd.getpwuid(path.stat().st_uid).pw_name
    except (KeyError, OSError):
        return os_user()


def os_user() -> str:
    """The user this process runs as (the actor of what the controller does on its own)."""
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())
