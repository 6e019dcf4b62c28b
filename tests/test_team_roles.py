"""Roles and permissions as pure rules: every role x permission x own/other x in/out of the project.

docs/team.md's table is the contract; each row here is one call of
``decide`` (no controller, no I/O), so a change to the rules shows up as the
row it breaks. The table of RPC methods is checked against what a real
controller answers, so a new request cannot slip in without a permission.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from mlfleet.core.base.errors import SpecError
from mlfleet.core.base.paths import Home
from mlfleet.core.base.settings import Settings
from mlfleet.core.team.permissions import ANYWHERE, HANDLER_CHECKED, METHOD_PERMISSIONS
from mlfleet.core.team.policy import NO_POLICY, ROLES, load_policy, policy_mistakes, role_rank
from mlfleet.core.team.roles import ANY_PROJECT, Identity, Permission, decide, standing

OWNER = "carol"  # the controller's OS user


def policy(tmp_path: Path, text: str):
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return load_policy(path)


# One user per role in project vision, plus a global viewer through a group.
POLICY = """\
roles:
  - {user: vic, role: viewer, projects: [vision]}
  - {user: olga, role: operator, projects: [vision]}
  - {user: max, role: maintainer, projects: [vision]}
  - {user: ada, role: admin, projects: [vision]}
  - {group: readers, role: viewer}
"""
BY_ROLE = {"viewer": "vic", "operator": "olga", "maintainer": "max", "admin": "ada"}


@pytest.fixture
def loaded(tmp_path: Path):
    return policy(tmp_path, POLICY)


def allowed(loaded, user: str, permission: Permission, project: str | None, owner: str | None = None,
            groups: frozenset[str] = frozenset(), team_group: str | None = None) -> bool:
    return decide(loaded, Identity(user, groups), permission, project=project, owner=owner,
                  controller_user=OWNER, team_group=team_group).allowed


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("permission", [p for p in Permission if p.role is not None])
@pytest.mark.parametrize("whose", ["own", "other", None])
def test_every_role_permission_and_owner_in_the_project(loaded, role: str, permission: Permission, whose) -> None:
    user = BY_ROLE[role]
    owner = {"own": user, "other": "someone", None: None}[whose]
    needed = permission.role
    if permission.owned and whose == "other":
        needed = "maintainer" if role_rank(needed) < role_rank("maintainer") else needed
    assert allowed(loaded, user, permission, "vision", owner) is (role_rank(role) >= role_rank(needed))
    # Outside vision the same user has no role at all: nothing is allowed.
    assert allowed(loaded, user, permission, "audio", owner) is False
    assert allowed(loaded, user, permission, None, owner) is False


def test_the_highest_matching_rule_names_the_refusal(loaded) -> None:
    who = Identity("olga", frozenset({"readers"}))
    d = decide(loaded, who, Permission.CANCEL, project="vision", owner="bob", target="job j42", controller_user=OWNER)
    assert not d.allowed and d.role == "operator" and d.needed == "maintainer"
    assert d.sentence == ("olga (operator in vision, policy.yaml:3 (roles[1])) may not cancel bob's job j42: "
                          "that needs maintainer in vision")
    d = decide(loaded, who, Permission.SUBMIT, project="audio", controller_user=OWNER)
    assert d.sentence == "olga (viewer, policy.yaml:6 (roles[4])) may not submit jobs in audio: that needs operator in audio"
    d = decide(loaded, Identity("eve"), Permission.READ, controller_user=OWNER)
    assert d.sentence == "eve (no role) may not read: that needs viewer"


def test_a_role_in_any_project_passes_the_gate_and_the_handler_decides(loaded) -> None:
    assert allowed(loaded, "olga", Permission.CANCEL, ANY_PROJECT)
    assert allowed(loaded, "olga", Permission.READ, ANY_PROJECT)
    assert not allowed(loaded, "olga", Permission.DEPLOY, ANY_PROJECT)
    d = decide(loaded, Identity("eve"), Permission.SUBMIT, project=ANY_PROJECT, controller_user=OWNER)
    assert d.sentence == "eve (no role) may not submit jobs: that needs operator in at least one project"
    # an admin in one project is no admin of the hosts
    assert not allowed(loaded, "ada", Permission.HOSTS, None)


def test_no_policy_everyone_is_admin_and_the_controller_user_always_is(loaded) -> None:
    for permission in Permission:
        assert allowed(NO_POLICY, "anyone", permission, "vision", owner="bob")
        assert allowed(loaded, OWNER, permission, "audio", owner="bob")  # not in the file, still admin
    assert standing(loaded, Identity(OWNER), controller_user=OWNER).rule == "the controller's own user"


def test_serve_team_without_a_policy_makes_members_operators() -> None:
    member, stranger = frozenset({"ml"}), frozenset({"users"})
    assert allowed(NO_POLICY, "alice", Permission.SUBMIT, "x", groups=member, team_group="ml")
    assert allowed(NO_POLICY, "alice", Permission.CANCEL, "x", owner="alice", groups=member, team_group="ml")
    assert not allowed(NO_POLICY, "alice", Permission.CANCEL, "x", owner="bob", groups=member, team_group="ml")
    assert not allowed(NO_POLICY, "alice", Permission.HOSTS, None, groups=member, team_group="ml")
    assert not allowed(NO_POLICY, "eve", Permission.READ, None, groups=stranger, team_group="ml")
    assert allowed(NO_POLICY, OWNER, Permission.SHUTDOWN, None, team_group="ml")
    d = decide(NO_POLICY, Identity("eve", stranger), Permission.READ, controller_user=OWNER, team_group="ml")
    assert d.sentence == "eve (no role, not in the team group ml, no policy file) may not read: that needs viewer"


def test_a_group_rule_and_a_user_rule_the_higher_wins(tmp_path: Path) -> None:
    loaded = policy(tmp_path, "roles:\n  - {group: ml, role: maintainer}\n  - {user: alice, role: viewer}\n")
    d = decide(loaded, Identity("alice", frozenset({"ml"})), Permission.CANCEL, project="p", owner="bob",
               controller_user=OWNER)
    assert d.allowed and d.rule == "policy.yaml:2 (roles[0])"


def test_load_errors_name_their_lines(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("roles:\n  - {user: a, role: viewer}\n  - {user: b, role: boss}\n  - {user: c, group: g, role: admin}\n"
                    "quotas:\n  - {gpus: 2}\nresidency:\n  - {regions: [eu]}\nextra: 1\n")
    with pytest.raises(SpecError) as first:
        load_policy(path)
    assert first.value.line == 3
    found = [str(m) for m in policy_mistakes(path)]
    assert found[1:] == [
        f"{path}:3: roles[1].role: 'boss' is not one of admin, maintainer, operator, viewer",
        f"{path}:4: roles[2]: names both user and group; give exactly one of user, group",
        f"{path}:6: quotas[0]: names none of user, group, project; give exactly one of user, group, project",
        f"{path}:8: residency[0]: says which regions but not for what; give a project, tags or inputs",
    ]
    assert found[0].startswith(f"{path}:9: ") and "extra" in found[0]
    path.write_text("roles:\n  - {user: a, role: viewer}\n")
    assert policy_mistakes(path) == []


def test_every_rpc_the_controller_answers_has_a_permission() -> None:
    """The table covers exactly the controller's methods: a new RPC must say who may call it."""
    from mlfleet.core.controller.api import ControllerApi
    from mlfleet.core.controller.capabilities import services
    from mlfleet.core.controller.service import ControllerContext

    root = Path(tempfile.mkdtemp(prefix="mlf", dir="/tmp"))
    ctx = ControllerContext(Home(config_dir=root, data_dir=root), Settings())
    api = ControllerApi(ctx, services(ctx))
    assert set(METHOD_PERMISSIONS) == set(api.table)
    assert ANYWHERE <= set(METHOD_PERMISSIONS) and HANDLER_CHECKED <= set(METHOD_PERMISSIONS)
    assert METHOD_PERMISSIONS["hello"] is Permission.CONNECT and METHOD_PERMISSIONS["shutdown"] is Permission.SHUTDOWN
    root.rmdir()


def test_a_method_without_a_permission_is_refused_before_its_handler_runs() -> None:
    import asyncio
    import types

    from mlfleet.core.base.errors import PermissionDeniedError
    from mlfleet.core.controller.api import ControllerApi
    from mlfleet.core.controller.service import ControllerContext

    root = Path(tempfile.mkdtemp(prefix="mlf", dir="/tmp"))
    ran = []

    async def mystery(peer) -> str:
        ran.append(peer)
        return "answered"

    class Mystery:
        name = "mystery"

        def rpcs(self):
            return {"mystery": mystery}

    api = ControllerApi(ControllerContext(Home(config_dir=root, data_dir=root), Settings()), [Mystery()])
    peer = types.SimpleNamespace(info={"actor": "anyone"})
    with pytest.raises(PermissionDeniedError, match="'mystery' has no permission in core/team/permissions.py"):
        asyncio.run(api.handler(peer, "mystery", {}))
    assert ran == []
    root.rmdir()


def test_access_check_audits_a_refusal_with_the_permission_and_rule(tmp_path: Path) -> None:
    import asyncio

    from mlfleet.core.base.errors import PermissionDeniedError
    from mlfleet.core.team.access import Access

    (tmp_path / "policy.yaml").write_text("roles:\n  - {user: nobody, role: operator, projects: [vision]}\n")
    access = Access(tmp_path)
    access.load()
    rows: list[tuple] = []

    async def audit(actor, action, target, detail) -> None:
        rows.append((actor, action, target, detail))

    asyncio.run(access.check(audit, "nobody", Permission.CANCEL, method="job_cancel", project="vision",
                             owner="nobody", target="job j1"))
    assert rows == [] and access.role_of("nobody", "vision") == "operator" and access.role_of("nobody") is None
    with pytest.raises(PermissionDeniedError) as refused:
        asyncio.run(access.check(audit, "nobody", Permission.CANCEL, method="job_cancel", project="vision",
                                 owner="bob", target="job j2"))
    assert refused.value.exit_code == 6
    assert str(refused.value) == ("nobody (operator in vision, policy.yaml:2 (roles[0])) may not cancel bob's job j2: "
                                  "that needs maintainer in vision")
    assert rows == [("nobody", "policy.denied", "job j2", {
        "permission": "cancel", "rule": "policy.yaml:2 (roles[0])", "role": "operator", "needed": "maintainer",
        "method": "job_cancel", "project": "vision", "owner": "bob"})]
    with pytest.raises(PermissionDeniedError):  # the same refusal at once: refused, not audited again
        asyncio.run(access.check(audit, "nobody", Permission.CANCEL, method="job_cancel", project="vision",
                                 owner="bob", target="job j2"))
    assert len(rows) == 1
    me = access.whoami("nobody")
    assert me["projects"] == [{"project": "vision", "role": "operator", "rule": "policy.yaml:2 (roles[0])"}]
    assert me["policy"] is True and me["role"] is None
