"""The words of the deployments view, from answers shaped as deploy_show sends them (pure: no app, no controller)."""

from __future__ import annotations

from typing import Any

from mlfleet.tui.widgets.deploy_cells import replica_state, rollback_target, rollout_line, serving_totals


def _show(phase: str, target: int, stable: int | None, target_rev: int, stable_rev: int | None,
          versions: list[int], progress: str = "", reason: str | None = None) -> dict[str, Any]:
    return {"phase": phase, "target_version": target, "stable_version": stable, "target_revision": target_rev,
            "stable_revision": stable_rev, "progress": progress, "reason": reason,
            "revisions": [{"revision": i + 1, "model_version": v} for i, v in enumerate(versions)]}


def test_a_rollout_line_says_from_which_version_to_which_and_how_far() -> None:
    rolling = _show("rolling", 2, 1, 2, 1, [1, 2], "1/2 v2 healthy, 1 v1 draining", "alias production v1\u2192v2")
    assert rollout_line(rolling) == "rolling v1\u2192v2: 1/2 v2 healthy, 1 v1 draining  (alias production v1\u2192v2)"
    assert rollout_line(_show("stable", 2, 2, 2, 2, [1, 2], "2/2 v2 healthy", "done")) == "stable v2: 2/2 v2 healthy"
    first = _show("rolling", 1, None, 1, None, [1], "0/2 v1 healthy, 2 v1 starting")
    assert rollout_line(first) == "rolling v1: 0/2 v1 healthy, 2 v1 starting"


def test_the_rollback_goes_where_the_controller_will_go() -> None:
    assert rollback_target(_show("rolling", 2, 1, 2, 1, [1, 2])) == 1  # mid-rollout: back to what served
    assert rollback_target(_show("stable", 3, 3, 3, 3, [1, 2, 3])) == 2  # settled: the newest earlier version
    assert rollback_target(_show("stable", 2, 2, 3, 3, [1, 2, 2])) == 1  # a spec change of v2 is not "earlier"
    assert rollback_target(_show("stable", 1, 1, 1, 1, [1])) is None  # nothing to go back to
    assert rollback_target({"phase": "stable", "target_version": 1}) is None  # an answer without revisions


def test_serving_totals_add_rates_weigh_errors_and_keep_the_worst_p95() -> None:
    replicas = [{"rps": 10.0, "error_rate": 0.0, "p95": 0.010}, {"rps": 30.0, "error_rate": 0.1, "p95": 0.050},
                {"rps": None, "error_rate": None, "p95": None}]
    totals = serving_totals(replicas)
    assert totals["rps"] == 40.0 and abs(totals["error_rate"] - 0.075) < 1e-12 and totals["p95"] == 0.050
    assert serving_totals([]) == {"rps": None, "p95": None, "error_rate": None}
    assert serving_totals([{"rps": 0.0, "error_rate": 0.0, "p95": None}])["error_rate"] == 0.0  # idle, not unknown


def test_a_replica_being_taken_out_says_so_over_its_health() -> None:
    assert replica_state({"health": "healthy", "draining": True, "stopping": False}) == "draining"
    assert replica_state({"health": "healthy", "draining": True, "stopping": True}) == "stopping"
    assert replica_state({"health": "unhealthy", "draining": False, "stopping": False}) == "unhealthy"
