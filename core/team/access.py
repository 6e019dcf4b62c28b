"""The controller's view of the team policy: the file as it is now, and who belongs to which groups.

One :class:`Access` per controller (``ControllerContext.access``). The
policy is re-read when the file changes (looked at no more than once a
second), so an admin edits ``policy.yaml`` and the next request follows it.
A file that turns bad while the controller runs keeps the last good policy
in force (a typo must not open or close the doors for everyone) and the
mistake is logged and shown by ``controller status``; a bad file at start
stops the start, like a bad config.yaml.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import time
from pathlib import Path

from mlfleet.core.base.errors import MlfleetError
from mlfleet.core.base.private import user_name
from mlfleet.core.team.policy import NO_POLICY, POLICY_FILE, LoadedPolicy, load_policy

log = logging.getLogger(__name__)

RECHECK_S = 1.0
GROUPS_TTL_S = 10.0


def groups_of(user: str) -> frozenset[str]:
    """The OS groups ``user`` belongs to (primary and supplementary), by name; none for an unknown user."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return frozenset()
    names: set[str] = set()
    for gid in os.getgrouplist(user, entry.pw_gid):
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            names.add(str(gid))
    return frozenset(names)


class Access:
    """The policy in force and the OS facts it is checked against."""

    def __init__(self, config_dir: Path, team_group: str | None = None) -> None:
        self.path = config_dir / POLICY_FILE
        self.controller_user = user_name(os.getuid())  # always an admin: an admin cannot lock themselves out
        self.team_group = team_group  # set by ``controller serve --team GROUP``
        self.error: str | None = None  # the mistake of a file that turned bad while running (the last good one rules)
        self._loaded: LoadedPolicy = NO_POLICY
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._groups: dict[str, tuple[float, frozenset[str]]] = {}

    def load(self) -> None:
        """Read the file now; a mistake is raised (the controller's start stops on it)."""
        self._stamp = self._file_stamp()
        self._loaded = load_policy(self.path)
        self._checked = time.monotonic()
        self.error = None

    @property
    def loaded(self) -> LoadedPolicy:
        """The policy in force (re-read when the file changed; a file that turned bad keeps the last good one)."""
        now = time.monotonic()
        if now - self._checked >= RECHECK_S:
            self._checked = now
            stamp = self._file_stamp()
            if stamp != self._stamp:
                try:
                    self._loaded = load_policy(self.path)
                    self._stamp = stamp
                    self.error = None
                    log.info("policy %s: %s", "reloaded" if stamp else "removed", self.path)
                except MlfleetError as exc:
                    if self.error != str(exc):
                        log.error("policy.yaml changed and is not valid, the last good policy stays in force: %s", exc)
                    self.error = str(exc)
        return self._loaded

    def groups_of(self, user: str) -> frozenset[str]:
        """``user``'s OS groups, kept for a few seconds (a request must not cost a group-database walk)."""
        now = time.monotonic()
        hit = self._groups.get(user)
        if hit is not None and now - hit[0] < GROUPS_TTL_S:
            return hit[1]
        groups = groups_of(user)
        self._groups[user] = (now, groups)
        return groups

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)
