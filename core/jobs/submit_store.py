"""Submit keys: a retry of a submit with the same key gets the first submit's job back.

The key is written in the job's own transaction, so there is no moment at
which the job exists and its key does not: a controller killed after the
commit but before its answer reached the client still knows the key after
its restart, and the client's retry (same key) makes no second job and runs
nothing twice. Keys are per OS user.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import duckdb

from mlfleet.core.base.errors import UsageError

from mlfleet.core.store.db import now, transaction
from mlfleet.core.jobs.records import _JOB_COLUMNS, insert_job_rows
from mlfleet.core.store.rows import rows


@dataclass(frozen=True)
class EarlierSubmit:
    """A submit that already used a key: its job, its spec and what it answered."""

    key: str
    job_id: str
    spec_hash: str
    answer: dict[str, Any]
    state: str | None  # the job's state now
    spec: dict[str, Any] | None  # the job's spec, to say what differs when another spec comes with the key


def find(con: duckdb.DuckDBPyConnection, owner: str, key: str) -> EarlierSubmit | None:
    found = con.execute("""select k.job_id, k.spec_hash, k.answer, j.state, j.spec from submit_keys k
                           left join jobs j on j.job_id = k.job_id where k.owner = ? and k.key = ?""",
                        [owner, key]).fetchall()
    if not found:
        return None
    job_id, spec_hash, answer, state, spec = found[0]
    return EarlierSubmit(key, job_id, spec_hash, _json(answer), state, _json(spec) if spec is not None else None)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def record(con: duckdb.DuckDBPyConnection, job: dict[str, Any], actor: str, key: str,
           answer: dict[str, Any]) -> EarlierSubmit | None:
    """Write the job with its key and return None, or write nothing and return the submit that had the key.

    The look-up and the insert share one transaction on the store's one writer
    thread, so two attempts of one submit racing each other make one job.
    """
    with transaction(con):
        earlier = find(con, actor, key)
        if earlier is not None:
            return earlier
        insert_job_rows(con, {**job, "key": key}, actor)
        con.execute("""insert into submit_keys (owner, key, job_id, spec_hash, answer, created_at)
                       values (?, ?, ?, ?, ?, to_timestamp(?))""",
                    [actor, key, job["job_id"], job["spec_hash"], json.dumps(answer), now()])
    return None


def same_job(earlier: EarlierSubmit, spec_hash: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The answer to a retry: the first answer again, marked ``existing``, with the job's state now.

    The same key with another spec is a mistake (a script that reuses a fixed
    key for a changed spec): refused rather than answered with the old job,
    naming the fields that differ.
    """
    if earlier.spec_hash != spec_hash:
        before, spec = earlier.spec or {}, json.loads(json.dumps(spec))  # both as the file holds them
        fields = sorted(k for k in set(before) | set(spec) if before.get(k) != spec.get(k))
        differ = f" ({', '.join(fields[:6])} {'differs' if len(fields) == 1 else 'differ'})" if fields else ""
        raise UsageError(f"submit key {earlier.key!r} was already used for job {earlier.job_id} with a different "
                         f"spec{differ}; submit this spec with a new key (or without --key)")
    return {**earlier.answer, "state": earlier.state or earlier.answer.get("state"), "existing": True}


def jobs_with_key(con: duckdb.DuckDBPyConnection, owner: str, key: str) -> list[dict[str, Any]]:
    """The caller's job submitted with ``key`` (none or one), as ``jobs list`` shows jobs."""
    return rows(con, f"""select {_JOB_COLUMNS} from jobs
                         where job_id in (select job_id from submit_keys where owner = ? and key = ?)""",
                [owner, key])


def key_of(con: duckdb.DuckDBPyConnection, job_id: str) -> str | None:
    found = con.execute("select key from submit_keys where job_id = ?", [job_id]).fetchall()
    return found[0][0] if found else None
