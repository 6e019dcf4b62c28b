"""Where the team policy meets a job: its residency and its owner's quota, as the scheduler takes them.

The rules themselves are the team capability's (core/team/quotas.py and
residency.py, pure); this module turns them into the scheduler's
:class:`~mlfleet.core.jobs.scheduler.Residency` and
:class:`~mlfleet.core.jobs.scheduler.Quotas`, and says when a job's own
constraints contradict the policy (refused at submit: a job that could only
ever wait is a mistake to say at once). The policy may change while jobs
wait, so the controller asks again each cycle; :class:`ResidencyCache`
keeps that cheap (one answer per distinct project, tags and inputs, until
the policy changes).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

import msgspec

from mlfleet.core.base.errors import PermissionDeniedError
from mlfleet.core.base.models import JobSpec
from mlfleet.core.jobs import scheduler
from mlfleet.core.team.policy import LoadedPolicy
from mlfleet.core.team.quotas import limits
from mlfleet.core.team.residency import allowed_regions, region_label, regions_words

if TYPE_CHECKING:
    from mlfleet.core.jobs.service import JobsService


def residency_of(loaded: LoadedPolicy, spec: JobSpec,
                 narrowed: scheduler.Residency | None = None) -> scheduler.Residency | None:
    """The regions ``spec``'s data may go to (None: anywhere); ``narrowed`` intersects more (a model's run)."""
    found = allowed_regions(loaded, spec.project, spec.tags, spec.inputs, spec.workdir)
    if found is None:
        return narrowed
    regions, rule = found
    if narrowed is not None:
        regions, rule = regions & narrowed.regions, f"{rule}, {narrowed.rule}"
    return scheduler.Residency(frozenset(regions), rule, region_label(loaded))


class ResidencyCache:
    """residency_of once per distinct (project, tags, inputs, workdir) while the policy stays the same object."""

    def __init__(self) -> None:
        self._loaded: LoadedPolicy | None = None
        self._answers: dict[tuple, scheduler.Residency | None] = {}

    def get(self, loaded: LoadedPolicy, spec: JobSpec) -> scheduler.Residency | None:
        if loaded is not self._loaded:  # Access gives a new LoadedPolicy when the file changed
            self._loaded, self._answers = loaded, {}
        if loaded.policy is None or not loaded.policy.residency:
            return None
        key = (spec.project, tuple(sorted(spec.tags.items())), tuple(spec.inputs), spec.workdir)
        if key not in self._answers:
            self._answers[key] = residency_of(loaded, spec)
        return self._answers[key]


def quotas_of(loaded: LoadedPolicy, groups_of: Callable[[str], Iterable[str]], owners: Iterable[str],
              running: Iterable[tuple[str, str, int]]) -> scheduler.Quotas:
    """The caps of ``owners`` and the GPUs held now by ``running`` (owner, project, GPUs) runs."""
    if loaded.policy is None or not loaded.policy.quotas:
        return scheduler.Quotas()
    by_user: dict[str, int] = {}
    by_project: dict[str, int] = {}
    for owner, project, gpus in running:
        by_user[owner] = by_user.get(owner, 0) + gpus
        by_project[project] = by_project.get(project, 0) + gpus
    found = limits(loaded, {user: groups_of(user) for user in set(owners)})
    return scheduler.Quotas(found.users, found.projects, by_user, by_project)


def contradiction(residency: scheduler.Residency | None, spec: JobSpec, host_labels: Mapping[str, Mapping[str, str]],
                  actor: str) -> tuple[str, dict] | None:
    """Why ``spec``'s own constraints can never meet its residency: (the sentence, the audit detail), or None.

    ``host_labels`` is the fleet's hosts and their labels: a host in
    ``constraints.hosts`` that the fleet does not know has no region, so it
    is outside every one.
    """
    if residency is None:
        return None
    regions, label = residency.regions, residency.label
    detail = {"rule": residency.rule, "regions": sorted(regions), "job": spec.name, "project": spec.project}
    head = f"{actor} may not submit {spec.name}: {residency.rule} keeps its data in {regions_words(regions)}"
    if not regions:
        return f"{head}, so it could run nowhere", detail
    if spec.constraints.hosts:
        region_of = {h: host_labels.get(h, {}).get(label) for h in spec.constraints.hosts}
        if not any(r in regions for r in region_of.values()):
            where = ", ".join(f"{h} ({r or 'no ' + label})" for h, r in region_of.items())
            return f"{head}, and constraints.hosts are all outside it: {where}", \
                {**detail, "hosts": spec.constraints.hosts}
    pattern = spec.constraints.labels.get(label)
    if pattern is not None and not any(fnmatch.fnmatchcase(r, pattern) for r in regions):
        return f"{head}, and constraints.labels asks for {label}: {pattern}", {**detail, "label": pattern}
    return None


async def refuse_contradictions(jobs: "JobsService", actor: str, specs: Iterable[JobSpec],
                                origin: JobSpec | None = None) -> None:
    """Refuse (PermissionDeniedError, audited as ``policy.denied``) the first spec whose constraints defy residency.

    ``origin`` is the spec of the run whose data the jobs carry (a
    deployment's model version): its residency holds for them too.
    """
    loaded = jobs.ctx.access.loaded
    if loaded.policy is None or not loaded.policy.residency:
        return
    labels = {name: link.labels for name, link in jobs.ctx.links.items()}
    narrowed = residency_of(loaded, origin) if origin is not None else None
    seen: set[bytes] = set()
    for spec in specs:
        key = msgspec.json.encode([spec.project, spec.tags, spec.inputs, spec.workdir, spec.constraints])
        if key in seen:
            continue
        seen.add(key)
        found = contradiction(residency_of(loaded, spec, narrowed), spec, labels, actor)
        if found is not None:
            sentence, detail = found
            await jobs.ctx.audit(actor, "policy.denied", spec.name, {**detail, "action": "submit"})
            raise PermissionDeniedError(sentence)
