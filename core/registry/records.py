"""What the controller writes and reads for the model registry: versions, aliases and the alias history.

Plain functions over a DuckDB connection, run on the store's threads. A
version's number is taken inside the transaction that inserts it, on the
store's one writer thread, so two registrations of one name at the same
moment get 1 and 2, never the same number (the primary key would refuse it
anyway). Alias moves are only ever appended: where an alias points now is
its newest row, where it pointed at a time T its newest row at or before T.

PUBLIC for core/deploy, pipelines and the TUI: :func:`resolve` and
:func:`alias_version`.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb

from mlfleet.core.audit.records import audit
from mlfleet.core.base.errors import NotFoundError, UsageError
from mlfleet.core.registry.refs import check_alias, check_name, parse_ref
from mlfleet.core.store.db import now, transaction
from mlfleet.core.store.rows import rows
from mlfleet.core.tracking import records as tracking

MAX_METRICS = 100  # metric keys summed up in a version's record (the run keeps them all)

_VERSION_COLUMNS = ("name, version, run_id, job_id, artifact_path, file_name, sha256, size, code_hash, spec_hash, "
                    "env_hash, inputs, packages, metrics, lineage, created_by, created_at")
_JSON = ("inputs", "packages", "metrics", "lineage")


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _version_row(row: dict[str, Any]) -> dict[str, Any]:
    for key in _JSON:
        if key in row:
            row[key] = _json(row[key])
    return row


# ------------------------------------------------------------------ PUBLIC

def resolve(con: duckdb.DuckDBPyConnection, ref: str) -> dict[str, Any]:
    """``NAME@ALIAS``, ``NAME:VERSION`` or ``NAME`` (its latest version) as the version it names.

    Returns ``{"name", "version", "sha256", "file_name", "size", "run_id",
    "alias"}`` (``alias`` None unless the reference named one); raises
    :class:`NotFoundError` with a sentence naming what exists.
    """
    name, alias, version = parse_ref(ref)
    _known_model(con, name)
    if alias is not None:
        version = alias_version(con, name, alias)
        if version is None:
            aliases = current_aliases(con, name)
            known = (", ".join(f"{a}=v{v}" for a, v in aliases.items())) if aliases else "none yet"
            raise NotFoundError(f"model {name} has no alias {alias!r} (its aliases: {known}); set one with "
                                f"'mlfleet models alias {name} {alias} VERSION'")
    if version is None:
        version = con.execute("select max(version) from model_versions where name = ?", [name]).fetchall()[0][0]
    found = rows(con, "select name, version, sha256, file_name, size, run_id from model_versions "
                      "where name = ? and version = ?", [name, version])
    if not found:
        latest = con.execute("select max(version) from model_versions where name = ?", [name]).fetchall()[0][0]
        raise NotFoundError(f"model {name} has no version {version} (its versions are 1 to {latest}); "
                            f"see them with 'mlfleet models versions {name}'")
    return {**found[0], "alias": alias}


def alias_version(con: duckdb.DuckDBPyConnection, name: str, alias: str) -> int | None:
    """The version ``NAME@ALIAS`` points to now; None when the alias was never set."""
    found = con.execute("select to_version from model_alias_history where name = ? and alias = ? "
                        "order by id desc limit 1", [name, alias]).fetchall()
    return int(found[0][0]) if found else None


# ------------------------------------------------------------------ reads

def _known_model(con: duckdb.DuckDBPyConnection, name: str) -> None:
    if not con.execute("select 1 from model_versions where name = ? limit 1", [name]).fetchall():
        names = [r[0] for r in con.execute("select distinct name from model_versions order by name limit 6").fetchall()]
        known = f"models are {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}" if names else \
            "no model is registered yet"
        raise NotFoundError(f"no model named {name!r} ({known}); register one with "
                            f"'mlfleet models register {name} --run RUN --artifact PATH'")


def current_aliases(con: duckdb.DuckDBPyConnection, name: str) -> dict[str, int]:
    """Every alias of ``name`` and the version it points to now, by alias."""
    return {a: int(v) for a, v in con.execute(
        "select alias, arg_max(to_version, id) from model_alias_history where name = ? group by alias order by alias",
        [name]).fetchall()}


def list_models(con: duckdb.DuckDBPyConnection, limit: int = 200) -> list[dict[str, Any]]:
    """Each model with its version count, latest version and current aliases, most recently registered first."""
    found = rows(con, """select name, count(*) as versions, max(version) as latest, min(created_at) as created_at,
                                max(created_at) as updated_at, arg_max(run_id, version) as latest_run,
                                arg_max(sha256, version) as latest_sha256
                         from model_versions group by name order by max(created_at) desc, name limit ?""", [limit])
    aliases: dict[str, dict[str, int]] = {}
    for name, alias, version in con.execute(
            "select name, alias, arg_max(to_version, id) from model_alias_history group by name, alias "
            "order by name, alias").fetchall():
        aliases.setdefault(name, {})[alias] = int(version)
    for model in found:
        model["aliases"] = aliases.get(model["name"], {})
    return found


def list_versions(con: duckdb.DuckDBPyConnection, name: str) -> list[dict[str, Any]]:
    """Every version of ``name``, oldest first, with the aliases that point to it now."""
    check_name(name)
    _known_model(con, name)
    found = [_version_row(r) for r in rows(con, f"select {_VERSION_COLUMNS} from model_versions where name = ? "
                                                "order by version", [name])]
    by_version: dict[int, list[str]] = {}
    for alias, version in current_aliases(con, name).items():
        by_version.setdefault(version, []).append(alias)
    for version in found:
        version["aliases"] = by_version.get(version["version"], [])
    return found


def show(con: duckdb.DuckDBPyConnection, ref: str) -> dict[str, Any]:
    """A model (``NAME``: its latest version) or one version (``NAME:3``, ``NAME@production``), whole.

    The answer is the version's record (run, sha256, lineage, metrics) with
    the model's current aliases, its version count and the alias history
    (newest first, at most 50 rows).
    """
    picked = resolve(con, ref)
    name = picked["name"]
    version = _version_row(rows(con, f"select {_VERSION_COLUMNS} from model_versions where name = ? and version = ?",
                                [name, picked["version"]])[0])
    aliases = current_aliases(con, name)
    version["aliases"] = [a for a, v in aliases.items() if v == version["version"]]
    return {"name": name, "ref": ref, "alias": picked["alias"],
            "versions": con.execute("select count(*) from model_versions where name = ?", [name]).fetchall()[0][0],
            "latest": con.execute("select max(version) from model_versions where name = ?", [name]).fetchall()[0][0],
            "model_aliases": aliases, "version": version, "history": history(con, name, None, 50)}


def history(con: duckdb.DuckDBPyConnection, name: str, alias: str | None = None,
            limit: int = 10_000) -> list[dict[str, Any]]:
    """The alias moves of ``name`` (or of one alias), newest first."""
    check_name(name)
    _known_model(con, name)
    where, params = ("and alias = ?", [name, check_alias(alias)]) if alias else ("", [name])
    return rows(con, f"""select id, name, alias, from_version, to_version, actor, moved_at, reason
                         from model_alias_history where name = ? {where} order by id desc limit ?""",
                params + [limit])


# The one query behind "which version was ALIAS at T, trained on what" (docs/models.md shows it for db query).
AT_QUERY = """
select h.alias, h.to_version as version, h.moved_at as since, h.actor, h.reason,
       v.run_id, v.job_id, v.sha256, v.file_name, v.code_hash, v.spec_hash, v.env_hash, v.inputs
from model_alias_history h
join model_versions v on v.name = h.name and v.version = h.to_version
where h.name = ? and h.moved_at <= to_timestamp(?) {alias}
qualify row_number() over (partition by h.alias order by h.moved_at desc, h.id desc) = 1
order by h.alias
"""


def aliases_at(con: duckdb.DuckDBPyConnection, name: str, at: float, alias: str | None = None) -> dict[str, Any]:
    """Where each alias of ``name`` (or just ``alias``) pointed at ``at`` (Unix seconds), with that version's run
    and data: ``{"name", "at", "aliases": [...], "unset": [aliases that did not exist yet at that time]}``."""
    check_name(name)
    _known_model(con, name)
    params: list[Any] = [name, at]
    clause = ""
    if alias is not None:
        clause, params = "and h.alias = ?", params + [check_alias(alias)]
    found = [_version_row(r) for r in rows(con, AT_QUERY.format(alias=clause), params)]
    named = {r["alias"] for r in found}
    every = [alias] if alias is not None else list(current_aliases(con, name))
    if alias is not None and alias not in current_aliases(con, name):
        raise NotFoundError(f"model {name} has no alias {alias!r}; 'mlfleet models show {name}' lists its aliases")
    return {"name": name, "at": at, "aliases": found, "unset": [a for a in every if a not in named]}


def run_facts(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    """What a version keeps of its run: job, hashes, inputs, packages, a metrics summary and the whole lineage."""
    run = tracking.get_run(con, run_id, None, MAX_METRICS)
    lineage = dict(run.get("lineage") or {})
    packages = {n: v for n, v in con.execute("select name, version from run_packages where run_id = ? order by name",
                                             [run["run_id"]]).fetchall()}
    if not packages and lineage.get("packages") is not None:  # no environment of its own: what the node counted
        packages = {"count": lineage.get("packages"), "sha256": lineage.get("packages_hash")}
    summary = run.get("summary") or {}
    metrics = {}
    for m in run.get("metrics") or []:
        key = m.get("key")
        metrics[key] = {"last": m.get("last"), "min": m.get("min"), "max": m.get("max"),
                        **({"summary": (summary.get(key) or {}).get("value"), "mode": (summary.get(key) or {}).get("mode")}
                           if key in summary else {})}
    return {"run_id": run["run_id"], "job_id": run.get("job_id"), "run_name": run.get("name"),
            "state": run.get("state"), "code_hash": run.get("code_hash"), "spec_hash": run.get("spec_hash"),
            "env_hash": run.get("env_hash"), "inputs": lineage.get("inputs") or [], "packages": packages,
            "metrics": metrics, "lineage": lineage}


# ------------------------------------------------------------------ writes

def insert_version(con: duckdb.DuckDBPyConnection, name: str, artifact: dict[str, Any], file_name: str,
                   facts: dict[str, Any], actor: str, alias: str | None = None,
                   reason: str | None = None) -> dict[str, Any]:
    """Version N+1 of ``name`` (and ``alias`` moved to it), with their audit rows, in one transaction."""
    check_name(name)
    with transaction(con):
        number = int(con.execute("select coalesce(max(version), 0) + 1 from model_versions where name = ?",
                                 [name]).fetchall()[0][0])
        con.execute(f"""insert into model_versions ({_VERSION_COLUMNS})
                        values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, to_timestamp(?))""",
                    [name, number, artifact["run_id"], facts.get("job_id"), artifact["path"], file_name,
                     artifact["sha256"], artifact["size"], facts.get("code_hash"), facts.get("spec_hash"),
                     facts.get("env_hash"), json.dumps(facts.get("inputs") or []),
                     json.dumps(facts.get("packages") or {}), json.dumps(facts.get("metrics") or {}, default=str),
                     json.dumps(facts.get("lineage") or {}, default=str), actor, now()])
        audit(con, actor, "model.register", f"{name}:{number}",
              {"run_id": artifact["run_id"], "artifact": artifact["path"], "sha256": artifact["sha256"],
               "size": artifact["size"]})
        moved = _move(con, name, alias, number, actor, reason) if alias is not None else None
    found = _version_row(rows(con, f"select {_VERSION_COLUMNS} from model_versions where name = ? and version = ?",
                              [name, number])[0])
    found["alias_moved"] = moved
    return found


def move_alias(con: duckdb.DuckDBPyConnection, name: str, alias: str, version: int, actor: str,
               reason: str | None = None) -> dict[str, Any]:
    """Point ``NAME@ALIAS`` at ``version`` (appending a history row and an audit row, in one transaction)."""
    check_name(name)
    check_alias(alias)
    with transaction(con):
        _known_model(con, name)
        if not con.execute("select 1 from model_versions where name = ? and version = ?", [name, version]).fetchall():
            latest = con.execute("select max(version) from model_versions where name = ?", [name]).fetchall()[0][0]
            raise NotFoundError(f"model {name} has no version {version} (its versions are 1 to {latest})")
        return _move(con, name, alias, version, actor, reason)


def _move(con: duckdb.DuckDBPyConnection, name: str, alias: str, version: int, actor: str,
          reason: str | None) -> dict[str, Any]:
    before = alias_version(con, name, alias)
    if before == version:  # no row: the history says only what changed
        return {"name": name, "alias": alias, "from_version": before, "to_version": version, "changed": False}
    at = now()
    con.execute("""insert into model_alias_history (name, alias, from_version, to_version, actor, moved_at, reason)
                   values (?, ?, ?, ?, ?, to_timestamp(?), ?)""", [name, alias, before, version, actor, at, reason])
    audit(con, actor, "model.alias", f"{name}@{alias}", {"from_version": before, "to_version": version,
                                                         "reason": reason})
    return {"name": name, "alias": alias, "from_version": before, "to_version": version, "changed": True,
            "actor": actor, "moved_at": at, "reason": reason}


def known_run(con: duckdb.DuckDBPyConnection, ident: str) -> str:
    """The run id ``ident`` names (a whole id or a unique prefix), or the tracking's one sentence."""
    return tracking.resolve_run_id(con, ident)


__all__ = ["resolve", "alias_version", "UsageError"]
