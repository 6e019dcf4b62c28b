"""Quotas and residency as the team policy says them (pure): the caps and regions a policy.yaml gives, and the
scheduler keeping to them (a quota-blocked job waits with the rule's words and holds nobody else up)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlfleet.core.base.errors import PermissionDeniedError
from mlfleet.core.base.models import Constraints, JobSpec
from mlfleet.core.jobs.policy_limits import contradiction, quotas_of, residency_of
from mlfleet.core.jobs.scheduler import GiB, GpuView, HostView, Quotas, QueuedJob, Residency, schedule
from mlfleet.core.team.policy import load_policy
from mlfleet.core.team.quotas import limits
from mlfleet.core.team.residency import allowed_regions, glob_regex

POLICY = """\
quotas:
  - {user: alice, gpus: 4}
  - {group: interns, gpus: 1}
  - {project: vision, gpus: 8}
  - {user: alice, gpus: 6}
region_label: zone
residency:
  - {project: eu-health, regions: [eu-west]}
  - {tags: {pii: "yes"}, regions: [eu-west, eu-central]}
  - {inputs: "/data/eu/**", regions: [eu-west, eu-north]}
"""


@pytest.fixture
def loaded(tmp_path: Path):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return load_policy(path)


def test_a_users_cap_is_the_smallest_rule_that_matches_them_by_name_or_group(loaded) -> None:
    found = limits(loaded, {"alice": {"ml"}, "ivan": {"interns", "ml"}, "bob": {"ml"}, "ann": {"interns"}})
    assert found.users["alice"] == (4, "policy.yaml:2 (quotas[0])")
    assert found.users["ivan"] == (1, "policy.yaml:3 (quotas[1])")
    assert found.users["ann"][0] == 1  # each member of the group on their own
    assert "bob" not in found.users  # no rule: no cap
    assert found.projects == {"vision": (8, "policy.yaml:4 (quotas[2])")}
    alice_intern = limits(loaded, {"alice": {"interns"}})
    assert alice_intern.users["alice"] == (1, "policy.yaml:3 (quotas[1])")


def test_quotas_count_what_running_jobs_hold_by_owner_and_project(loaded) -> None:
    quotas = quotas_of(loaded, lambda user: {"interns"} if user == "ivan" else set(), ["alice", "ivan"],
                       [("alice", "vision", 2), ("alice", "nlp", 1), ("bob", "vision", 3)])
    assert quotas.held_by_user == {"alice": 3, "bob": 3}
    assert quotas.held_by_project == {"vision": 5, "nlp": 1}
    assert quotas.users == {"alice": (4, "policy.yaml:2 (quotas[0])"), "ivan": (1, "policy.yaml:3 (quotas[1])")}


def test_residency_intersects_every_matching_rule_and_names_them(loaded) -> None:
    assert allowed_regions(loaded, "nlp", {}, []) is None  # no rule: anywhere
    assert allowed_regions(loaded, "eu-health", {}, []) == (frozenset({"eu-west"}), "policy.yaml:8 (residency[0])")
    regions, rule = allowed_regions(loaded, "nlp", {"pii": "yes"}, ["/data/eu/scans/a.parquet"])
    assert regions == {"eu-west"} and rule == "policy.yaml:9 (residency[1]), policy.yaml:10 (residency[2])"
    assert allowed_regions(loaded, "nlp", {"pii": "no"}, []) is None  # tag values are exact
    # ** crosses folders; a relative input is also matched as the absolute path it names in the workdir
    assert allowed_regions(loaded, "nlp", {}, ["scans/x.csv"], workdir="/data/eu")[0] == {"eu-west", "eu-north"}
    assert allowed_regions(loaded, "nlp", {}, ["/data/us/x.csv"]) is None


def test_globs_keep_single_stars_inside_one_folder() -> None:
    assert glob_regex("/data/eu/**").fullmatch("/data/eu/a/b/c")
    assert glob_regex("/data/*/x").fullmatch("/data/eu/x") and not glob_regex("/data/*/x").fullmatch("/data/eu/a/x")
    assert glob_regex("data/**/x.csv").fullmatch("data/x.csv") and glob_regex("data/**/x.csv").fullmatch("data/a/b/x.csv")
    assert not glob_regex("/data/eu/**").fullmatch("/data/eu-copy/a")


def _spec(**kw) -> JobSpec:
    return JobSpec(name="train", command="true", workdir="/w", **kw)


def test_constraints_that_defy_residency_are_a_contradiction_in_one_sentence(loaded) -> None:
    labels = {"gpu-eu": {"zone": "eu-west"}, "gpu-us": {"zone": "us-east"}}
    spec = _spec(project="eu-health", constraints=Constraints(hosts=["gpu-us"]))
    sentence, detail = contradiction(residency_of(loaded, spec), spec, labels, "alice")
    assert sentence == ("alice may not submit train: policy.yaml:8 (residency[0]) keeps its data in eu-west, and "
                        "constraints.hosts are all outside it: gpu-us (us-east)")
    assert detail["rule"] == "policy.yaml:8 (residency[0])" and detail["regions"] == ["eu-west"]
    spec = _spec(project="eu-health", constraints=Constraints(hosts=["gpu-us", "gpu-eu"]))
    assert contradiction(residency_of(loaded, spec), spec, labels, "alice") is None  # one host may do
    spec = _spec(project="eu-health", constraints=Constraints(labels={"zone": "us-*"}))
    assert "constraints.labels asks for zone: us-*" in contradiction(residency_of(loaded, spec), spec, labels, "a")[0]
    spec = _spec(project="eu-health", constraints=Constraints(labels={"zone": "eu-*"}))
    assert contradiction(residency_of(loaded, spec), spec, labels, "alice") is None
    spec = _spec(project="eu-health", tags={"pii": "yes"}, inputs=["/data/eu/a"])  # eu-west is in all three
    assert contradiction(residency_of(loaded, spec), spec, labels, "alice") is None
    assert PermissionDeniedError("x").exit_code == 6


# ------------------------------------------------------------------ the scheduler

H100 = "NVIDIA H100 80GB HBM3"


def _host(name: str, gpus: int, region: str = "eu-west") -> HostView:
    return HostView(name=name, up=True, labels={"zone": region}, cpu_count=64, memory_total=512 * GiB,
                    gpus=tuple(GpuView(index=i, name=H100, memory_total=80 * GiB, memory_free=80 * GiB, utilization=0)
                               for i in range(gpus)))


def test_a_job_past_its_owners_cap_waits_with_the_rules_words_and_others_look_alikes_go_ahead() -> None:
    quotas = Quotas(users={"alice": (4, "policy.yaml:9 (quotas[0])")}, held_by_user={"alice": 4})
    queue = [QueuedJob("a1", priority=10, gpus=1, owner="alice"), QueuedJob("b1", gpus=1, owner="bob")]
    decision = schedule([_host("h", 2)], queue, quotas=quotas)
    assert [p.job_id for p in decision.placements] == ["b1"]  # same shape, same project, other owner
    assert decision.short_reason("a1") == "quota: alice holds 4 of 4 GPUs (policy.yaml:9 (quotas[0]))"
    assert decision.reservation is None  # a job held by its quota reserves nothing


def test_a_cap_counts_what_this_cycle_places_and_a_project_cap_holds_for_all_its_users() -> None:
    quotas = Quotas(users={"alice": (3, "u")}, projects={"vision": (4, "p")})
    queue = [QueuedJob(f"a{i}", gpus=2, owner="alice", submitted=i) for i in range(3)] + \
        [QueuedJob(f"b{i}", gpus=1, owner="bob", project="vision", submitted=10 + i) for i in range(6)]
    decision = schedule([_host("h1", 8), _host("h2", 8)], queue, quotas=quotas)
    placed = {p.job_id for p in decision.placements}
    assert placed == {"a0", "b0", "b1", "b2", "b3"}
    assert decision.short_reason("a1") == "quota: alice holds 2 of 3 GPUs and the job needs 2 (u)"
    assert decision.short_reason("b5") == "quota: project vision holds 4 of 4 GPUs (p)"


def test_a_shape_that_fits_nowhere_still_tells_a_job_past_its_cap_about_the_cap() -> None:
    quotas = Quotas(users={"alice": (1, "u")}, held_by_user={"alice": 1})
    queue = [QueuedJob("b1", gpus=4, owner="bob", submitted=0), QueuedJob("a1", gpus=4, owner="alice", submitted=1)]
    decision = schedule([_host("h", 2)], queue, quotas=quotas)
    assert decision.waiting["b1"][0].check == "gpu-count"
    assert decision.short_reason("a1") == "quota: alice holds 1 of 1 GPUs (u)"


def test_residency_keeps_a_job_off_hosts_of_other_regions_even_when_they_fit_tighter() -> None:
    eu = Residency(frozenset({"eu-west"}), "policy.yaml:8 (residency[0])", "zone")
    hosts = [_host("gpu-eu", 4), _host("gpu-us", 1, "us-east"),
             HostView(name="bare", up=True, labels={}, gpus=_host("x", 1).gpus, cpu_count=8, memory_total=8 * GiB)]
    decision = schedule(hosts, [QueuedJob("e1", gpus=1, residency=eu), QueuedJob("n1", gpus=1, submitted=1)])
    assert {p.job_id: p.host for p in decision.placements} == {"e1": "gpu-eu", "n1": "bare"}  # best fit: 1-GPU hosts
    full = schedule([_host("gpu-eu", 0), _host("gpu-us", 4, "us-east"), hosts[2]], [QueuedJob("e1", gpus=1, residency=eu)])
    words = {r.host: (r.check, r.message) for r in full.waiting["e1"]}
    assert words["gpu-us"] == ("residency", "region us-east; data may go to eu-west only (policy.yaml:8 (residency[0]))")
    assert words["bare"] == ("residency", "no zone label; data may go to eu-west only (policy.yaml:8 (residency[0]))")
