"""What the deployments view draws: a deployment's row, a replica's row, the rollout line, the serving totals.

Pure functions over the answers of ``deploy_list`` and ``deploy_show`` (no
client, no clock), so the words can be read and tested alone and the view
only moves rows in and out of its tables. The numbers use the units of
``mlfleet deploy show``: requests per second, p95 in milliseconds, errors
in percent of requests.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from rich.text import Text

from mlfleet.core.cli.render import number
from mlfleet.tui.widgets.table_look import CONTROLS

DEPLOYMENT_COLUMNS = (
    ("name", "DEPLOYMENT"), ("model", "MODEL"), ("target", "TARGET"), ("stable", "STABLE"), ("phase", "PHASE"),
    ("healthy", "HEALTHY"), ("rps", "RPS"), ("p95", "P95 MS"), ("errors", "ERRORS"), ("reason", "REASON"),
)
REPLICA_COLUMNS = (
    ("replica_id", "REPLICA"), ("endpoint", "HOST:PORT"), ("version", "VERSION"), ("health", "HEALTH"),
    ("restarts", "RESTARTS"), ("rps", "RPS"), ("p95", "P95 MS"), ("errors", "ERRORS"), ("job_id", "JOB"),
    ("problem", "PROBLEM"),
)
PHASE_STYLES = {"stable": "green", "rolling": "cyan", "rolling_back": "yellow", "rolled_back": "yellow",
                "failed": "bold red", "stopped": "dim"}
HEALTH_STYLES = {"healthy": "green", "starting": "cyan", "pending": "dim", "unhealthy": "bold red", "gone": "red",
                 "draining": "yellow", "stopping": "dim"}
ROLLING = ("rolling", "rolling_back")


def version(v: int | None) -> str:
    return "-" if v is None else f"v{v}"


def rps(value: float | None) -> str:
    return number(None if value is None else round(float(value), 2))


def millis(seconds: float | None) -> str:
    """p95 in ms: three significant digits are what a person compares (``12.3``, ``250``)."""
    return "-" if seconds is None else f"{seconds * 1000:.3g}"


def error_percent(rate: float | None) -> Text | str:
    """Errors in percent of requests; red as soon as there is one."""
    if rate is None:
        return "-"
    return Text(f"{rate * 100:.2f}%", style="red") if rate > 0 else "0.00%"


def serving_totals(replicas: list[dict[str, Any]]) -> dict[str, float | None]:
    """A deployment's totals from its replicas: request rates add up, errors weigh by rate, p95 is the worst one.

    The worst replica's p95 is an upper bound of the deployment's, which is
    what a person looking for a slow replica needs; the exact figure over all
    replicas is ``mlfleet deploy metrics``'s job.
    """
    known = [r for r in replicas if r.get("rps") is not None]
    if not known:
        return {"rps": None, "p95": None, "error_rate": None}
    total = sum(float(r["rps"]) for r in known)
    weighted = [(float(r["rps"]), float(r["error_rate"])) for r in known if r.get("error_rate") is not None]
    errors = sum(w * e for w, e in weighted) / total if weighted and total > 0 else (0.0 if weighted else None)
    p95s = [float(r["p95"]) for r in known if r.get("p95") is not None]
    return {"rps": total, "p95": max(p95s) if p95s else None, "error_rate": errors}


def deployment_cells(d: dict[str, Any], show: dict[str, Any] | None) -> tuple[str | Text, ...]:
    """One row of the list: ``deploy_list``'s entry, with the serving totals of its ``deploy_show`` when known."""
    totals = serving_totals((show or {}).get("replicas") or [])
    healthy, wanted = d.get("healthy", 0), d.get("replicas") or 0
    health = Text(f"{healthy}/{wanted}", style="green" if healthy >= wanted and wanted else
                  ("red" if healthy == 0 and wanted else "yellow"))
    return (d["name"], d.get("model") or "-", version(d.get("target_version")), version(d.get("stable_version")),
            Text(d["phase"], style=PHASE_STYLES.get(d["phase"], "")), health, rps(totals["rps"]),
            millis(totals["p95"]), error_percent(totals["error_rate"]), d.get("reason") or "-")


def replica_state(r: dict[str, Any]) -> str:
    """Stopping and draining say more than the health the replica still reports."""
    if r.get("stopping"):
        return "stopping"
    if r.get("draining"):
        return "draining"
    return r.get("health") or "pending"


def replica_cells(r: dict[str, Any]) -> tuple[str | Text, ...]:
    state = replica_state(r)
    where = f"{r['host']}:{r['port']}" if r.get("host") and r.get("port") else (r.get("host") or "-")
    restarts = r.get("restarts") or 0
    return (r["replica_id"], where, version(r.get("version")), Text(state, style=HEALTH_STYLES.get(state, "")),
            Text(str(restarts), style="yellow") if restarts else "0", rps(r.get("rps")), millis(r.get("p95")),
            error_percent(r.get("error_rate")), r.get("job_id") or "-", problem(r))


def problem(r: dict[str, Any]) -> Text | str:
    """Why a replica does not serve (its last failed probe); a healthy one's old failure is no news."""
    if r.get("health") in ("healthy", None) or not r.get("last_error"):
        return ""
    return Text(r["last_error"], style="red")


def rollout_line(show: dict[str, Any]) -> str:
    """``rolling v1→v2: 1/2 v2 healthy, 1 v1 draining``; a settled one says its phase and version only."""
    phase, target, stable = show["phase"], show.get("target_version"), show.get("stable_version")
    progress = show.get("progress") or ""
    if phase in ROLLING and stable is not None and stable != target:
        head = f"{phase.replace('_', ' ')} v{stable}\u2192v{target}"
    elif phase == "rolled_back" and stable is not None:
        head = f"rolled back to v{target} (from v{stable})" if stable != target else f"rolled back to v{target}"
    else:
        head = f"{phase.replace('_', ' ')} {version(target)}"
    line = f"{head}: {progress}" if progress else head
    reason = show.get("reason")
    return f"{line}  ({reason})" if reason and phase != "stable" else line


def rollback_target(show: dict[str, Any]) -> int | None:
    """The model version ``deploy_rollback`` without ``--to`` goes back to, read from ``deploy_show``.

    The controller's rule: the stable version while a rollout to another one
    is under way, else the newest earlier revision of another model version;
    None when there is none (the controller would refuse).
    """
    target_rev, stable_rev = show.get("target_revision"), show.get("stable_revision")
    revisions = {r["revision"]: r for r in show.get("revisions") or []}
    if stable_rev is not None and stable_rev != target_rev and stable_rev in revisions:
        return revisions[stable_rev]["model_version"]
    earlier = [r for n, r in sorted(revisions.items()) if target_rev is not None and n < target_rev
               and r["model_version"] != show.get("target_version")]
    return earlier[-1]["model_version"] if earlier else None


def rollback_question(name: str, target: int | None, to: int | None) -> str:
    """What a rollback will do, in the words of the confirmation dialog."""
    where = version(to) if to is not None else "the version that served before it"
    return (f"Roll {name} back from {version(target)} to {where}? Replicas of {where} start first; each "
            f"{version(target)} replica is drained and stopped once one of them is healthy in its place.")


def plain(text: str) -> Text:
    """Words from the controller (reasons, actors) shown as they are: never read as markup, no control characters."""
    return Text("\n".join(line.translate(CONTROLS) for line in text.split("\n")))


def at(epoch: float | None) -> str:
    """An event's time (epoch seconds, as deploy_history sends it) as local ``YYYY-mm-dd HH:MM:SS``."""
    return "-" if epoch is None else dt.datetime.fromtimestamp(float(epoch)).strftime("%Y-%m-%d %H:%M:%S")


def event_line(e: dict[str, Any]) -> str:
    """One event of ``deploy_history``: when, what, which version, who, and why when it says."""
    detail = e.get("detail") or {}
    why = detail.get("cause") or detail.get("reason") or detail.get("replica_id") or ""
    if e["kind"] == "scale":
        why = f"{detail.get('before', '?')} -> {detail.get('replicas', '?')} replicas"
    who = e.get("actor") or "-"
    return f"{at(e.get('ts'))}  {e['kind']:<9} {version(e.get('version')):<4} {who:<10} {why}".rstrip()
