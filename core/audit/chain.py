"""The audit chain: how an event is hashed and linked to the one before it (docs/audit.md).

Every audit row carries ``seq`` (its place, gap-free from 1), ``prev_hash``
(the hash of row ``seq - 1``; :data:`GENESIS` for the first) and ``hash``::

    hash = sha256(utf8(canonical(seq, ts, actor, action, target, detail) + prev_hash))

The canonical encoding is plain text that both Python (:func:`canonical`)
and DuckDB SQL (:data:`CANONICAL_SQL`) build byte for byte, so
``audit verify`` recomputes every row's hash in one vectorised query
instead of a Python loop over a million rows:

    seq "|" ts_us "|" field(actor) field(action) field(target) field(detail)

where ``ts_us`` is the event's time in whole microseconds since the epoch
(what DuckDB stores; no time zone or float formatting in play),
``field(x)`` is ``len(utf8(x)) ":" x`` (a length prefix: no value can
forge a field boundary, whatever quotes, newlines, NULs or ``|`` it holds)
and ``~`` for NULL (distinct from the empty string, ``0:``). ``detail`` is
the JSON text exactly as stored (DuckDB keeps a JSON value's text as given).

Rows are only ever appended by :func:`append_events`, on the store's one
writer thread, inside the capability's own transaction: it reads the head
(``max(seq)``) in that transaction, so two writes can never link to the same
row, and a rolled-back write takes its chain rows with it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from typing import Any, Iterable, NamedTuple

import duckdb
import numpy as np

GENESIS = "0" * 64  # the prev_hash of the first event
_moved: set[int] = set()  # connections whose writes appended events since the head file last looked


def field_sql(column: str) -> str:
    return f"case when {column} is null then '~' else concat(strlen({column}), ':', {column}) end"


# One concat() of every part, not a row of ``||``: each ``||`` makes a string of its own, and at a
# million rows the copies cost a quarter of the check (measured). concat() skips a NULL prev_hash.
_PARTS = "seq, '|', epoch_us(ts), '|', " + ", ".join(field_sql(c) for c in ("actor", "action", "target", "detail::varchar"))
CANONICAL_SQL = f"concat({_PARTS})"
HASH_SQL = f"sha256(concat({_PARTS}, prev_hash))"


class Event(NamedTuple):
    """One event as it is hashed: ``ts_us`` whole microseconds since the epoch, ``detail`` JSON text (or None)."""

    seq: int
    ts_us: int
    actor: str
    action: str
    target: str | None
    detail: str | None


def _field(value: str | None) -> str:
    return "~" if value is None else f"{len(value.encode('utf-8'))}:{value}"


def canonical(event: Event) -> str:
    """The text an event's hash is taken over (before prev_hash): the same as :data:`CANONICAL_SQL` builds."""
    return (f"{event.seq}|{event.ts_us}|" + _field(event.actor) + _field(event.action) + _field(event.target)
            + _field(event.detail))


def event_hash(event: Event, prev_hash: str) -> str:
    return hashlib.sha256((canonical(event) + prev_hash).encode("utf-8")).hexdigest()


class Head(NamedTuple):
    """The chain's newest event: what the head file and a notary keep."""

    seq: int
    hash: str
    ts_us: int


def read_head(con: duckdb.DuckDBPyConnection) -> Head | None:
    """The newest chained event (highest seq; the newest id of a repeated seq), or None for an empty chain.

    ``max(seq)`` is answered from row-group statistics and the row is then
    found by zone maps: a millisecond at a million events, where
    ``order by seq desc limit 1`` would sort-scan the table.
    """
    found = _newest_row(con)
    if found is None or found[1] is None:
        return None
    return Head(int(found[0]), str(found[1]), int(found[2]))


def _newest_row(con: duckdb.DuckDBPyConnection) -> tuple[Any, ...] | None:
    found = con.execute("""select seq, hash, epoch_us(ts) from audit
                           where seq = (select max(seq) from audit) order by id desc limit 1""").fetchall()
    return found[0] if found else None


def micros_to_datetime(ts_us: int) -> datetime.datetime:
    """Exact: DuckDB stores a TIMESTAMPTZ as whole microseconds, and this hands it exactly those."""
    return datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(microseconds=ts_us)


def to_micros(seconds: float) -> int:
    return int(round(seconds * 1_000_000))


def detail_text(detail: dict[str, Any] | str | None) -> str:
    """The JSON text stored (and hashed) for a detail: ASCII-only, so no encoding can differ between writers."""
    if isinstance(detail, str):
        return detail
    return json.dumps(detail or {})


def append_events(con: duckdb.DuckDBPyConnection, ts: float,
                  events: Iterable[tuple[str, str, str | None, str]]) -> Head | None:
    """Append (actor, action, target, detail JSON text) events at ``ts``, chained after the head, in order.

    Called inside the caller's transaction (or as one statement of its own):
    the head it links to is the one that transaction sees. Returns the new head.
    """
    batch = list(events)
    if not batch:
        return None
    newest = _newest_row(con)
    if newest is not None and newest[1] is None and seal_unchained(con):  # the first write after an upgrade
        newest = _newest_row(con)
    # After the newest row, whatever it is: a hand-made row without a hash stays for ``audit verify`` to name.
    seq, prev = (int(newest[0]), newest[1] or GENESIS) if newest else (0, GENESIS)
    ts_us = to_micros(ts)
    cols: dict[str, list[Any]] = {"seq": [], "actor": [], "action": [], "target": [], "detail": [],
                                  "prev_hash": [], "hash": []}
    for actor, action, target, detail in batch:
        actor, action, target, detail = (_text(actor), _text(action), _text(target), _json_text(_text(detail)))
        seq += 1
        digest = event_hash(Event(seq, ts_us, actor, action, target, detail), prev)
        for name, value in (("seq", seq), ("actor", actor), ("action", action), ("target", target),
                            ("detail", detail), ("prev_hash", prev), ("hash", digest)):
            cols[name].append(value)
        prev = digest
    if len(batch) == 1:
        con.execute("""insert into audit (ts, actor, action, target, detail, seq, prev_hash, hash)
                       values (?, ?, ?, ?, ?, ?, ?, ?)""",
                    [micros_to_datetime(ts_us), cols["actor"][0], cols["action"][0], cols["target"][0],
                     cols["detail"][0], cols["seq"][0], cols["prev_hash"][0], cols["hash"][0]])
    else:
        arrays = {name: np.array(values, dtype=np.int64 if name == "seq" else object) for name, values in cols.items()}
        con.register("_audit_batch", arrays)
        try:
            con.execute("""insert into audit (ts, actor, action, target, detail, seq, prev_hash, hash)
                           select ?, actor, action, target, detail, seq, prev_hash, hash from _audit_batch
                           order by seq""", [micros_to_datetime(ts_us)])
        finally:
            con.unregister("_audit_batch")
    _moved.add(id(con))
    return Head(seq, prev, ts_us)


def _text(value: str | None) -> str | None:
    """``value`` as UTF-8 can carry it: a lone surrogate (possible in a decoded JSON string) becomes '?', as it is
    stored and hashed, instead of failing the capability's whole transaction at the hash."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")


def take_moved(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether events were appended on ``con`` since the last call (the head file's cue to look at the head)."""
    if id(con) in _moved:
        _moved.discard(id(con))
        return True
    return False


def seal_unchained(con: duckdb.DuckDBPyConnection) -> int:
    """Chain the rows written before the chain existed (migration 0013 numbered them; hashes are done here).

    Only a table with no hashed row at all is sealed: once the chain exists,
    a row without a hash is no legacy row but one written around mlfleet
    (by hand, while the controller was down), and sealing it would make it
    look genuine; it is left for ``audit verify`` to name. Returns how many
    were sealed.
    """
    if con.execute("select count(*) from audit where hash is not null").fetchall()[0][0]:
        return 0
    rows = con.execute("""select id, seq, epoch_us(ts), actor, action, target, detail::varchar from audit
                          order by seq, id""").fetchall()
    if not rows:
        return 0
    prev = GENESIS
    ids, prevs, hashes = [], [], []
    for ident, seq, ts_us, actor, action, target, detail in rows:
        digest = event_hash(Event(int(seq), int(ts_us), actor, action, target, detail), prev)
        ids.append(ident)
        prevs.append(prev)
        hashes.append(digest)
        prev = digest
    con.register("_audit_seal", {"id": np.array(ids, dtype=np.int64), "prev_hash": np.array(prevs, dtype=object),
                                 "hash": np.array(hashes, dtype=object)})
    try:
        con.execute("""update audit set prev_hash = s.prev_hash, hash = s.hash from _audit_seal s
                       where audit.id = s.id""")
    finally:
        con.unregister("_audit_seal")
    _moved.add(id(con))
    return len(rows)


def _json_text(detail: str | None) -> str | None:
    """JSON text DuckDB's JSON type takes: an escaped lone surrogate (``"\\ud800"``, from a file name decoded
    with surrogateescape, say) becomes U+FFFD; DuckDB refuses it, and with it the capability's whole write."""
    if detail is None or "\\ud" not in detail.lower():
        return detail
    try:
        value = json.loads(detail)
    except ValueError:
        return detail  # not JSON at all: the insert says so, as before
    return json.dumps(_whole(value))


def _whole(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [_whole(v) for v in value]
    if isinstance(value, dict):
        return {_whole(k): _whole(v) for k, v in value.items()}
    return value
