"""``policy.yaml``: who may do what (roles), how many GPUs each may hold (quotas), where data may go (residency).

The file lives beside config.yaml in the controller's config folder and is
read by the controller only; it is the team's one place for these rules
(docs/team.md). Without it nothing changes for a single user: whoever can
reach the controller's socket is an admin, as before team mode existed.

Every rule keeps where it was written (:attr:`LoadedPolicy.where`), so a
refusal names it: "policy.yaml:7 (roles[2])". Checking a rule is left to pure
functions (core/team/roles.py, quotas.py, residency.py); this module only
reads and validates the file.

The shape::

    roles:                       # each rule gives its users a role, everywhere or in some projects
      - {user: carol, role: admin}
      - {group: ml, role: operator}
      - {user: alice, role: maintainer, projects: [vision]}
    protected_aliases: [production]   # only admins move these (default: [production])
    quotas:                      # concurrent GPUs, held by running jobs
      - {user: alice, gpus: 4}   # that user
      - {group: interns, gpus: 1}     # each member of the group, on their own
      - {project: vision, gpus: 8}    # the project, all its users together
    region_label: region         # the host label that names a host's region (default: region)
    residency:                   # data that must stay in some regions
      - {project: eu-health, regions: [eu-west]}
      - {tags: {pii: "yes"}, regions: [eu-west, eu-central]}
      - {inputs: "/data/eu/**", regions: [eu-west]}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from mlfleet.core.base.errors import SpecError
from mlfleet.core.base.validation import spec_error_from_validation
from mlfleet.core.base.yamlsource import Located, read_yaml

Role = Literal["viewer", "operator", "maintainer", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "maintainer", "admin")  # each may do what the ones before it may


def role_rank(role: Role | None) -> int:
    """0 for no role, 1 for viewer ... 4 for admin: a higher role may do everything a lower one may."""
    return 0 if role is None else ROLES.index(role) + 1


POLICY_FILE = "policy.yaml"
_NAME = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.@-]*$")]
_PROJECT = Annotated[str, Meta(min_length=1, max_length=64)]


class RoleRule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``{user: alice, role: operator}`` or ``{group: ml, role: viewer, projects: [vision]}``: exactly one of user/group.

    No ``projects``: the role holds in every project. With them: only there
    (a user's role in a project is the highest rule that matches).
    """

    role: Role
    user: _NAME | None = None
    group: _NAME | None = None
    projects: list[_PROJECT] = msgspec.field(default_factory=list)


class QuotaRule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """At most ``gpus`` GPUs held at once: by a user, by each member of a group, or by a project (one of the three)."""

    gpus: Annotated[int, Meta(ge=0, le=100_000)]
    user: _NAME | None = None
    group: _NAME | None = None
    project: _PROJECT | None = None


class ResidencyRule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Jobs of ``project``, or with these ``tags``, or reading paths that match ``inputs``, run only in ``regions``.

    At least one of project/tags/inputs; all given must match. ``inputs`` is
    a glob over the paths a job declares in its ``inputs:`` (``**`` crosses
    folders), as written, relative to the workdir or absolute.
    """

    regions: Annotated[list[Annotated[str, Meta(min_length=1, max_length=64)]], Meta(min_length=1)]
    project: _PROJECT | None = None
    tags: dict[str, str] = msgspec.field(default_factory=dict)
    inputs: Annotated[str, Meta(min_length=1, max_length=4096)] | None = None


class Policy(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    roles: list[RoleRule] = msgspec.field(default_factory=list)
    protected_aliases: list[Annotated[str, Meta(min_length=1, max_length=64)]] = \
        msgspec.field(default_factory=lambda: ["production"])
    quotas: list[QuotaRule] = msgspec.field(default_factory=list)
    region_label: Annotated[str, Meta(min_length=1, max_length=64)] = "region"
    residency: list[ResidencyRule] = msgspec.field(default_factory=list)


@dataclass(frozen=True)
class LoadedPolicy:
    """A policy and where each of its rules was written (None: there is no policy file)."""

    policy: Policy | None
    path: str = POLICY_FILE
    lines: dict[tuple[str, int], int] = field(default_factory=dict)  # ("roles", 2) -> line 7

    @property
    def active(self) -> bool:
        """Whether a policy file exists (without one, everyone who reaches the socket is an admin)."""
        return self.policy is not None

    def where(self, section: str, index: int) -> str:
        """``policy.yaml:7 (roles[2])``: how a refusal names the rule behind it."""
        line = self.lines.get((section, index))
        name = Path(self.path).name
        return f"{name}:{line} ({section}[{index}])" if line else f"{name} ({section}[{index}])"


NO_POLICY = LoadedPolicy(None)


def load_policy(path: Path) -> LoadedPolicy:
    """The policy in ``path`` (:data:`NO_POLICY` when the file does not exist); a mistake is a SpecError at its line."""
    if not path.exists():
        return NO_POLICY
    located = read_yaml(path, allow_empty=True)
    data = located.data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(located.path, located.line_of(()), None, "must be a mapping (roles:, quotas:, residency:)",
                        "see docs/team.md")
    try:
        policy = msgspec.convert(data, Policy, str_keys=True)
    except msgspec.ValidationError as exc:
        raise spec_error_from_validation(str(exc), data, located, {
            (): Policy, ("roles", "*"): RoleRule, ("quotas", "*"): QuotaRule, ("residency", "*"): ResidencyRule,
        }) from None
    _check_one_of(located, "roles", policy.roles, ("user", "group"))
    _check_one_of(located, "quotas", policy.quotas, ("user", "group", "project"))
    for i, rule in enumerate(policy.residency):
        if rule.project is None and not rule.tags and rule.inputs is None:
            raise SpecError(located.path, located.line_of(("residency", i)), f"residency[{i}]",
                            "says which regions but not for what", "give a project, tags or inputs")
    lines = {(section, i): located.line_of((section, i)) or 0
             for section in ("roles", "quotas", "residency") for i in range(len(getattr(policy, section)))}
    return LoadedPolicy(policy, str(path), {k: v for k, v in lines.items() if v})


_SECTIONS: dict[str, tuple[type[msgspec.Struct], tuple[str, ...]]] = {
    "roles": (RoleRule, ("user", "group")), "quotas": (QuotaRule, ("user", "group", "project")),
    "residency": (ResidencyRule, ()),
}


def policy_mistakes(path: Path) -> list[SpecError]:
    """Every mistake in ``path``, one SpecError each at its line (``policy check``: fix them all in one go).

    :func:`load_policy` stops at the first; this checks each rule on its own
    so one bad rule does not hide the next.
    """
    try:
        load_policy(path)
        return []
    except SpecError as exc:
        first = exc
    try:
        located = read_yaml(path, allow_empty=True)
    except SpecError as exc:  # not YAML at all: that one sentence
        return [exc]
    data = located.data
    if not isinstance(data, dict):
        return [first]
    mistakes: list[SpecError] = []
    top = {k: ([] if k in _SECTIONS and isinstance(v, list) else v) for k, v in data.items()}
    try:
        msgspec.convert(top, Policy, str_keys=True)
    except msgspec.ValidationError as exc:
        mistakes.append(spec_error_from_validation(str(exc), top, located, {(): Policy}))
    for section, (kind, one_of) in _SECTIONS.items():
        items = data.get(section)
        if not isinstance(items, list):
            continue
        for i, item in enumerate(items):
            try:
                rule = msgspec.convert(item, kind, str_keys=True)
            except msgspec.ValidationError as exc:
                message = str(exc)
                message = message.replace("`$", f"`$.{section}[{i}]", 1) if "`$" in message else \
                    f"{message} - at `$.{section}[{i}]`"
                mistakes.append(spec_error_from_validation(message, data, located, {("roles", "*"): RoleRule,
                                ("quotas", "*"): QuotaRule, ("residency", "*"): ResidencyRule}))
                continue
            try:
                if one_of:
                    _check_one_of(located, section, [rule], one_of, start=i)
                elif rule.project is None and not rule.tags and rule.inputs is None:
                    raise SpecError(located.path, located.line_of((section, i)), f"{section}[{i}]",
                                    "says which regions but not for what", "give a project, tags or inputs")
            except SpecError as exc:
                mistakes.append(exc)
    return mistakes or [first]


def _check_one_of(located: Located, section: str, rules: list[Any], keys: tuple[str, ...], start: int = 0) -> None:
    for i, rule in enumerate(rules, start):
        given = [k for k in keys if getattr(rule, k) is not None]
        if len(given) != 1:
            said = "both " + " and ".join(given) if given else "none of " + ", ".join(keys)
            raise SpecError(located.path, located.line_of((section, i)), f"{section}[{i}]",
                            f"names {said}", f"give exactly one of {', '.join(keys)}")
