"""The controller's view of the team policy: the file as it is now, and who belongs to which groups.

One :class:`Access` per controller (``ControllerContext.access``). The
policy is re-read when the file changes (one stat per use tells), so an
admin edits ``policy.yaml`` and the next request follows it.
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
import stat
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from mlfleet.core.base.errors import MlfleetError, PermissionDeniedError, SpecError
from mlfleet.core.base.private import user_name
from mlfleet.core.team.policy import NO_POLICY, POLICY_FILE, LoadedPolicy, Role, load_policy
from mlfleet.core.team.roles import ANY_PROJECT, Decision, Identity, Permission, decide, projects_named, standing

Audit = Callable[[str, str, "str | None", "dict[str, Any] | None"], Awaitable[None]]

log = logging.getLogger(__name__)

RECHECK_S = 0.0  # a stat per use (microseconds): the request right after an edit follows the new file
GROUPS_TTL_S = 10.0
DENIED_AUDIT_EVERY_S = 60.0  # the same refusal again (a TUI polling) is refused but audited once a minute
DENIED_KEPT = 10_000
# A caller chooses much of a refusal's key (a submit's project, a target's name): without a budget per user each
# made-up project is a new row on the audit chain. Past it, one row says so and the rest of the minute is refused
# without a row each.
DENIED_AUDITED_PER_USER = 30


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


def untrusted(path: Path) -> None:
    """Refuse (SpecError) a policy file that someone other than root or the controller's user may have written.

    Whoever may write policy.yaml chooses everyone's role: a file (after
    symlinks) owned by another user, or that its group or every user may
    write, could say anything (secrets.json is refused so too).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SpecError(str(path), None, None, f"cannot be read: {exc.strerror}") from None
    real = os.path.realpath(path)
    shown = str(path) if real == str(path) else f"{path} (-> {real})"
    if st.st_uid not in (0, os.getuid()):
        owners = " or ".join(f"{name}'s" for name in dict.fromkeys(("root", user_name(os.getuid()))))
        raise SpecError(shown, None, None, f"belongs to {user_name(st.st_uid)}, who may give anyone any role",
                        f"make it {owners} own file (chown), not a symlink to someone else's")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise SpecError(shown, None, None, f"is writable by {'every user' if st.st_mode & stat.S_IWOTH else 'its group'}"
                        f" (mode {stat.S_IMODE(st.st_mode):04o}), who may give anyone any role",
                        f"chmod go-w {path}, and check that it says what you meant")


class Access:
    """The policy in force and the OS facts it is checked against."""

    def __init__(self, config_dir: Path, team_group: str | None = None) -> None:
        self.path = config_dir / POLICY_FILE
        self.controller_user = user_name(os.getuid())  # always an admin: an admin cannot lock themselves out
        self.team_group = team_group  # set by ``controller serve --team GROUP``
        self.error: str | None = None  # the mistake of a file that turned bad while running (the last good one rules)
        self._loaded: LoadedPolicy = NO_POLICY
        self._stamp: tuple[int, ...] | None = None
        self._checked = 0.0
        self._groups: dict[str, tuple[float, frozenset[str]]] = {}
        self._denied: dict[tuple[str, str, str | None, str | None], float] = {}  # last audited refusal of each kind
        self._denied_by_user: dict[str, tuple[float, int]] = {}  # user -> (their minute's start, rows audited in it)

    def load(self) -> None:
        """Read the file now; a mistake is raised (the controller's start stops on it)."""
        self._stamp = self._file_stamp()
        self._loaded = self._read()
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
                    self._loaded = self._read()
                    self._stamp = stamp
                    self.error = None
                    log.info("policy %s: %s", "reloaded" if stamp else "removed", self.path)
                except MlfleetError as exc:
                    if self.error != str(exc):
                        log.error("policy.yaml changed and is not valid, the last good policy stays in force: %s", exc)
                    self.error = str(exc)
        return self._loaded

    def _read(self) -> LoadedPolicy:
        """The file, once it is known that only root or the controller's user could have written it."""
        untrusted(self.path)
        return load_policy(self.path)

    def groups_of(self, user: str) -> frozenset[str]:
        """``user``'s OS groups, kept for a few seconds (a request must not cost a group-database walk)."""
        now = time.monotonic()
        hit = self._groups.get(user)
        if hit is not None and now - hit[0] < GROUPS_TTL_S:
            return hit[1]
        groups = groups_of(user)
        self._groups[user] = (now, groups)
        return groups

    @property
    def team_mode(self) -> bool:
        """A policy file is in force or the controller serves a team group: roles are more than "everyone is admin"."""
        return self.loaded.active or self.team_group is not None

    def identity(self, user: str) -> Identity:
        return Identity(user, self.groups_of(user))

    def role_of(self, user: str, project: str | None = None) -> Role | None:
        """``user``'s role in ``project`` (None: the role that holds everywhere); None when they have none."""
        return standing(self.loaded, self.identity(user), project, controller_user=self.controller_user,
                        team_group=self.team_group).role

    def decide(self, user: str, permission: Permission, *, project: str | None = None, owner: str | None = None,
               target: str | None = None) -> Decision:
        """:func:`roles.decide` with the policy in force, the user's OS groups and this controller's facts."""
        return decide(self.loaded, self.identity(user), permission, project=project, owner=owner, target=target,
                      controller_user=self.controller_user, team_group=self.team_group)

    async def check(self, audit: Audit, user: str, permission: Permission, *, method: str,
                    project: str | None = None, owner: str | None = None, target: str | None = None) -> Decision:
        """The decision, or PermissionDeniedError (exit 6) with its sentence after a ``policy.denied`` audit row."""
        decision = self.decide(user, permission, project=project, owner=owner, target=target)
        if not decision.allowed:
            assert decision.sentence is not None
            named = None if project == ANY_PROJECT else project  # the gate asked about any project: none to name
            due = self._audit_due((user, method, named, target))
            if due:
                await audit(user, "policy.denied", target or named, {
                    "permission": permission.name.lower(), "rule": decision.rule, "role": decision.role,
                    "needed": decision.needed, "method": method, **({"project": named} if named else {}),
                    **({"owner": owner} if owner else {}),
                    **({"flood": f"{user}'s further refusals this minute are not audited (more than "
                                 f"{DENIED_AUDITED_PER_USER})"} if due == "last" else {})})
            raise PermissionDeniedError(decision.sentence)
        return decision

    def _audit_due(self, key: tuple[str, str, str | None, str | None]) -> str | None:
        """Whether this refusal goes on the audit trail now: once a minute per user, method and target, and at
        most DENIED_AUDITED_PER_USER a minute per user ("last": the one that reaches that budget, which says so)."""
        now = time.monotonic()
        last = self._denied.get(key)
        if last is not None and now - last < DENIED_AUDIT_EVERY_S:
            return None
        user = key[0]
        start, count = self._denied_by_user.get(user, (now, 0))
        if now - start >= DENIED_AUDIT_EVERY_S:
            start, count = now, 0
        if count >= DENIED_AUDITED_PER_USER:
            return None
        self._denied_by_user[user] = (start, count + 1)
        if len(self._denied) >= DENIED_KEPT:
            self._denied = {k: t for k, t in self._denied.items() if now - t < DENIED_AUDIT_EVERY_S}
            self._denied_by_user = {u: v for u, v in self._denied_by_user.items() if now - v[0] < DENIED_AUDIT_EVERY_S}
        self._denied[key] = now
        return "last" if count + 1 == DENIED_AUDITED_PER_USER else "yes"

    def whoami(self, user: str) -> dict[str, Any]:
        """What ``policy show`` prints: the caller, their groups and roles (everywhere and per project) with the rules."""
        loaded = self.loaded
        who = self.identity(user)
        facts = dict(controller_user=self.controller_user, team_group=self.team_group)
        overall = standing(loaded, who, None, **facts)
        projects = []
        for project in projects_named(loaded):
            found = standing(loaded, who, project, **facts)
            projects.append({"project": project, "role": found.role, "rule": found.rule})
        return {"user": user, "groups": sorted(who.groups), "role": overall.role, "rule": overall.rule,
                "projects": projects, "owner": self.controller_user, "team": self.team_group,
                "policy": loaded.active, "policy_path": str(self.path), "policy_error": self.error}

    def _file_stamp(self) -> tuple[int, ...] | None:
        """What tells a changed file: its content's stamp, and its owner and mode (a chmod makes it untrusted)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode, st.st_uid)
