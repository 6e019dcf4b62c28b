"""Quotas and residency over random fleets and queues (hypothesis): no cap is ever passed by a placement, no job
lands outside its regions, and a job held by its quota changes nothing for anyone else."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from test_scheduler_properties import fleets, jobs

from mlfleet.core.jobs.scheduler import Quotas, QueuedJob, Residency, schedule

USERS = ["alice", "bob", "carol"]
REGIONS = ["eu-west", "eu-north", "us-east"]


@st.composite
def owned_jobs(draw, i: int) -> QueuedJob:
    job = draw(jobs(i))
    regions = draw(st.one_of(st.none(), st.sets(st.sampled_from(REGIONS), max_size=2)))
    residency = None if regions is None else Residency(frozenset(regions), f"policy.yaml:{i} (residency[0])")
    return QueuedJob(**{**job.__dict__, "owner": draw(st.sampled_from(USERS)), "residency": residency,
                        "timeout": draw(st.sampled_from([None, 600.0]))})


@st.composite
def queues(draw) -> list[QueuedJob]:
    return [draw(owned_jobs(i)) for i in range(draw(st.integers(0, 25)))]


@st.composite
def quotas(draw) -> Quotas:
    users = draw(st.dictionaries(st.sampled_from(USERS), st.integers(0, 6), max_size=3))
    projects = draw(st.dictionaries(st.sampled_from(["vision", "nlp"]), st.integers(0, 8), max_size=2))
    return Quotas(users={u: (n, f"u-{u}") for u, n in users.items()},
                  projects={p: (n, f"p-{p}") for p, n in projects.items()},
                  held_by_user=draw(st.dictionaries(st.sampled_from(USERS), st.integers(0, 4), max_size=3)),
                  held_by_project=draw(st.dictionaries(st.sampled_from(["vision", "nlp"]), st.integers(0, 4),
                                                       max_size=2)))


@settings(max_examples=150, deadline=None)
@given(fleets(), queues(), quotas())
def test_no_placement_takes_a_user_or_project_past_its_cap(hosts, queue, caps) -> None:
    decision = schedule(hosts, queue, quotas=caps)
    by_id = {job.job_id: job for job in queue}
    placed_user: dict[str, int] = {}
    placed_project: dict[str, int] = {}
    for p in decision.placements:
        job = by_id[p.job_id]
        placed_user[job.owner] = placed_user.get(job.owner, 0) + job.gpus
        placed_project[job.project] = placed_project.get(job.project, 0) + job.gpus
    for user, (cap, _) in caps.users.items():
        if placed_user.get(user, 0):
            assert caps.held_by_user.get(user, 0) + placed_user[user] <= cap
    for project, (cap, _) in caps.projects.items():
        if placed_project.get(project, 0):
            assert caps.held_by_project.get(project, 0) + placed_project[project] <= cap
    for job_id, reasons in decision.waiting.items():
        if any(r.check == "quota" for r in reasons):
            assert len(reasons) == 1 and reasons[0].host == "quota"
            assert decision.reservation is None or decision.reservation[0] != job_id


@settings(max_examples=150, deadline=None)
@given(fleets(), queues())
def test_no_job_lands_outside_its_regions(hosts, queue) -> None:
    decision = schedule(hosts, queue)
    by_id = {job.job_id: job for job in queue}
    region = {h.name: h.labels.get("region") for h in hosts}
    for p in decision.placements:
        residency = by_id[p.job_id].residency
        assert residency is None or region[p.host] in residency.regions
    if decision.reservation is not None:
        residency = by_id[decision.reservation[0]].residency
        assert residency is None or region[decision.reservation[1]] in residency.regions


@settings(max_examples=150, deadline=None)
@given(fleets(), queues(), quotas())
def test_a_job_held_by_its_quota_changes_nothing_for_the_others(hosts, queue, caps) -> None:
    with_caps = schedule(hosts, queue, quotas=caps)
    held = {job_id for job_id, reasons in with_caps.waiting.items() if any(r.check == "quota" for r in reasons)}
    without = schedule(hosts, [job for job in queue if job.job_id not in held])
    assert with_caps.placements == without.placements
    assert with_caps.reservation == without.reservation
    for job_id, reasons in without.waiting.items():
        assert with_caps.waiting[job_id] == reasons
