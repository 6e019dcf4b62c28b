"""The words of a rollout's progress and a replica's serving numbers, for ``deploy show``/``list`` and the TUI.

Pure: the replicas as the API lists them (version, health, draining,
stopping) in, one line out, e.g. ``2/3 v2 healthy, 1 v1 draining``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any



def progress_words(d: dict[str, Any], replicas: list[dict[str, Any]]) -> str:
    """How many target replicas serve out of how many wanted, then every other group of replicas."""
    if d["phase"] == "stopped" and not replicas:
        return "stopped"
    wanted = (d.get("spec") or {}).get("replicas", 0)
    target = d.get("target_version")

    def what(r: dict[str, Any]) -> str:
        if r["stopping"]:
            return "stopping"
        if r["draining"]:
            return "draining"
        return r["health"]

    serving = sum(1 for r in replicas if r["version"] == target and what(r) == "healthy")
    parts = [f"{serving}/{wanted} v{target} healthy"]
    others = Counter((r["version"], what(r)) for r in replicas if not (r["version"] == target and what(r) == "healthy"))
    for (version, state), n in sorted(others.items(), key=lambda kv: (kv[0][0] != target, kv[0][0], kv[0][1])):
        parts.append(f"{n} v{version} {state}")
    return ", ".join(parts)


def replica_stats(scrapes: list[dict[str, Any]], since: float, now: float) -> dict[str, Any]:
    """One replica's request rate, error rate and p95 over its scrapes since ``since`` (None where unknown)."""
    empty = {"rps": None, "error_rate": None, "p95": None}
    if not scrapes:
        return empty
    from mlfleet.core.deploy import serving_stats

    found = serving_stats.compare_versions(scrapes, since, now)
    if not found:
        return empty
    one = found[0]
    return {"rps": one.get("rps", one.get("request_rate")), "error_rate": one.get("error_rate"),
            "p95": one.get("p95")}
