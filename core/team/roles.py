"""Who may do what: a caller's role in a project and whether it allows a permission (pure, no I/O).

The controller asks :func:`decide` before a request runs (the method's base
permission, core/team/permissions.py) and again inside the handlers where
the target decides (whose job, which project, a protected alias). Keeping
the rule pure makes every row of docs/team.md's table a test of a function,
and the refusal sentence the same everywhere:

    alice (operator in vision, policy.yaml:3 (roles[1])) may not cancel bob's job 42: that needs maintainer in vision
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mlfleet.core.team.policy import ROLES, LoadedPolicy, Role, role_rank


ANY_PROJECT = "*"  # as ``project``: a role in any project counts (the gate before a handler that checks the project)


@dataclass(frozen=True)
class Identity:
    """The OS user behind the socket and their OS groups (never what the client says about itself)."""

    user: str
    groups: frozenset[str] = frozenset()


class Permission(enum.Enum):
    """What a request needs: the words a refusal uses, the least role that has it, whether an owner matters.

    ``owned``: acting on your own job, sweep or run needs the role given; on
    someone else's it needs maintainer (in that project) as well.
    ``None`` as the role: anyone who reaches the socket (hello, whoami).
    """

    CONNECT = ("connect", None, False)
    READ = ("read", "viewer", False)
    SUBMIT = ("submit jobs", "operator", False)
    RECORD = ("record drift reports", "operator", False)
    CANCEL = ("cancel", "operator", True)  # a job or a sweep
    RETRY = ("retry", "operator", True)
    PRIORITISE = ("re-prioritise", "operator", True)
    TRIGGER = ("record a drift trigger for", "operator", True)  # tie a job to the drift report that started it
    REGISTER_MODEL = ("register models", "maintainer", False)
    MOVE_ALIAS = ("move aliases", "maintainer", False)
    MOVE_PROTECTED_ALIAS = ("move protected aliases", "admin", False)
    DEPLOY = ("change deployments", "maintainer", False)  # apply, scale, roll back, stop
    SECRETS = ("set or remove secrets", "maintainer", False)
    HOSTS = ("manage hosts", "admin", False)
    SHUTDOWN = ("stop the controller", "admin", False)
    SERVER_FILES = ("read or write files on the controller's machine", "admin", False)

    def __init__(self, words: str, role: Role | None, owned: bool) -> None:
        self.words = words
        self.role = role
        self.owned = owned


@dataclass(frozen=True)
class Standing:
    """A caller's role somewhere and the rule that gave it (``rule``: how a sentence names it)."""

    role: Role | None
    rule: str | None  # "policy.yaml:3 (roles[1])", "the controller's own user", "no policy file"...
    project: str | None = None  # the project the rule was scoped to (None: everywhere)


@dataclass(frozen=True)
class Decision:
    """Whether the request may run; when not, ``sentence`` says who, what, the rule and what it needs."""

    allowed: bool
    permission: Permission
    role: Role | None
    rule: str | None
    needed: Role | None
    sentence: str | None = None


def standing(loaded: LoadedPolicy, who: Identity, project: str | None = None, *, controller_user: str,
             team_group: str | None = None) -> Standing:
    """``who``'s role in ``project`` (None: the role that holds everywhere) and the rule behind it.

    The controller's own user is always admin; no policy file makes everyone
    admin, except under ``serve --team GROUP`` where the group's members are
    operators and others have no role. With a policy, the highest rule that
    matches the user or one of their groups (rules without projects hold
    everywhere; the first of equal rules names it).
    """
    if who.user == controller_user:
        return Standing("admin", "the controller's own user")
    policy = loaded.policy
    if policy is None:
        if team_group is None:
            return Standing("admin", "no policy file")
        if team_group in who.groups:
            return Standing("operator", f"member of the team group {team_group}, no policy file")
        return Standing(None, f"not in the team group {team_group}, no policy file")
    best: Standing = Standing(None, None)
    for i, rule in enumerate(policy.roles):
        matches = rule.user == who.user if rule.user is not None else rule.group in who.groups
        if not matches or (rule.projects and project != ANY_PROJECT and project not in rule.projects):
            continue
        if role_rank(rule.role) > role_rank(best.role):
            scope = (rule.projects[0] if project == ANY_PROJECT else project) if rule.projects else None
            best = Standing(rule.role, loaded.where("roles", i), scope)
    return best


def needed_role(permission: Permission, who: Identity, owner: str | None) -> Role | None:
    """The least role the permission needs here: maintainer as well when the target is someone else's."""
    role = permission.role
    if permission.owned and owner is not None and owner != who.user and role_rank(role) < role_rank("maintainer"):
        role = "maintainer"
    return role


def decide(loaded: LoadedPolicy, who: Identity, permission: Permission, *, project: str | None = None,
           owner: str | None = None, target: str | None = None, controller_user: str,
           team_group: str | None = None) -> Decision:
    """Whether ``who`` may do ``permission`` (on ``owner``'s ``target`` in ``project``), and the sentence if not.

    ``target`` names the thing for the sentence ("job 42"); ``owner`` is
    whose it is (own: the base role; others': maintainer too).
    """
    found = standing(loaded, who, project, controller_user=controller_user, team_group=team_group)
    needed = needed_role(permission, who, owner)
    if role_rank(found.role) >= role_rank(needed):
        return Decision(True, permission, found.role, found.rule, needed)
    return Decision(False, permission, found.role, found.rule, needed,
                    refusal(who, permission, found, needed, project=project, owner=owner, target=target))


def refusal(who: Identity, permission: Permission, found: Standing, needed: Role | None, *,
            project: str | None, owner: str | None, target: str | None) -> str:
    """``alice (operator in vision, policy.yaml:3 (roles[1])) may not cancel bob's job 42: that needs maintainer in vision``."""
    where = f" in {project}" if project is not None and project != ANY_PROJECT else ""
    needs = f"{needed} in at least one project" if project == ANY_PROJECT else f"{needed}{where}"
    has = found.role or "no role"
    if found.role is not None and found.project is not None:
        has += f" in {found.project}"
    elif found.role is None and project is not None and project != ANY_PROJECT:
        has += where
    said = f"{has}, {found.rule}" if found.rule else has
    if target is None:
        action = f"{permission.words}{' jobs or sweeps' if permission.owned else ''}{where}"
    elif owner is not None and owner != who.user:
        action = f"{permission.words} {owner}'s {target}"
    elif owner is not None:
        action = f"{permission.words} their own {target}"
    else:
        action = f"{permission.words} ({target})"
    return f"{who.user} ({said}) may not {action}: that needs {needs}"


def projects_named(loaded: LoadedPolicy) -> list[str]:
    """Every project a role rule names, in order of first mention (``policy show`` lists the role in each)."""
    seen: dict[str, None] = {}
    if loaded.policy is not None:
        for rule in loaded.policy.roles:
            for project in rule.projects:
                seen.setdefault(project, None)
    return list(seen)


__all__ = ["ANY_PROJECT", "ROLES", "Decision", "Identity", "Permission", "Standing", "decide", "needed_role", "projects_named",
           "refusal", "standing"]
