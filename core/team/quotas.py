"""How many GPUs each user and each project may hold at once, from ``policy.yaml``'s ``quotas:`` (pure).

The scheduler enforces the caps (core/jobs/scheduler.py, ``Quotas``); this
module only says what they are, so a refusal can name the rule behind it.
A user's cap is the smallest of the rules that match them: a ``user:`` rule
for them, or a ``group:`` rule for a group they are in (each member of the
group on their own). A project's cap is the smallest ``project:`` rule for it.
Without a rule there is no cap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from mlfleet.core.team.policy import LoadedPolicy

Cap = tuple[int, str]  # (GPUs, where the rule is written: "policy.yaml:9 (quotas[0])")


@dataclass(frozen=True)
class Limits:
    """The caps in force: per user and per project, each with the rule that set it."""

    users: dict[str, Cap] = field(default_factory=dict)
    projects: dict[str, Cap] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.users or self.projects)


NO_LIMITS = Limits()


def limits(loaded: LoadedPolicy, users: Mapping[str, Iterable[str]]) -> Limits:
    """The caps of ``users`` (each with their groups) and of every project a rule names.

    Only the users given are looked at: the scheduler asks for the owners
    of the jobs it sees (waiting and running), nobody else.
    """
    policy = loaded.policy
    if policy is None or not policy.quotas:
        return NO_LIMITS
    by_user: dict[str, Cap] = {}
    by_project: dict[str, Cap] = {}
    for user, groups in users.items():
        groups = set(groups)
        for i, rule in enumerate(policy.quotas):
            if rule.user == user or (rule.group is not None and rule.group in groups):
                _keep_smallest(by_user, user, (rule.gpus, loaded.where("quotas", i)))
    for i, rule in enumerate(policy.quotas):
        if rule.project is not None:
            _keep_smallest(by_project, rule.project, (rule.gpus, loaded.where("quotas", i)))
    return Limits(by_user, by_project)


def _keep_smallest(caps: dict[str, Cap], key: str, cap: Cap) -> None:
    """The first of equally small rules wins, so the same file always names the same rule."""
    if key not in caps or cap[0] < caps[key][0]:
        caps[key] = cap
