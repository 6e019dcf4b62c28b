"""``audit verify``: check the whole chain in one vectorised query, then name the first broken link in words.

DuckDB recomputes every row's hash from its content (chain.HASH_SQL, the
same bytes Python hashes) and compares each row with the one before it in
``seq`` order (``lag``): the hash must match the content, ``prev_hash``
must be the previous row's hash, and ``seq`` must be the previous seq + 1.
That is a parallel scan and a hash join (and, only when they find a fault, one sort); Python only looks
at the few rows around the first failure to say what happened there
(edited, deleted, inserted, reordered, replaced), and at the head file to
catch a cut tail, which leaves a chain that checks on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from mlfleet.core.audit import chain, head_file

# The content check is a boolean before the window: the sort then carries seq, id, both hashes and a flag,
# not a third 64-character string (measured: 2.5x faster at a million rows than sorting the recomputed hash).
CHECK_SQL = f"""
with checked as (
    select seq, id, hash, prev_hash, {chain.HASH_SQL} is distinct from hash as bad_content from audit
), linked as (
    select seq, bad_content,
           prev_hash is distinct from coalesce(lag(hash) over w, '{chain.GENESIS}') as bad_link,
           seq is distinct from coalesce(lag(seq) over w, 0) + 1 as bad_seq
    from checked window w as (order by seq, id)
)
select count(*) as events, max(seq) as head_seq,
       min(seq) filter (where bad_content or bad_link or bad_seq) as broken_seq
from linked
"""

# The check without a sort or an unpartitioned window (both run on one thread): a parallel scan recomputes
# every hash, and a hash join of each row with the row of seq - 1 checks the links. Sound on its own terms:
# seqs 1..N each once, seq 1 on the genesis, every other row's prev_hash the hash of the row before it, is
# the chain in seq order with nothing missing, repeated or out of place. Measured at a million rows on two
# cores: 1.1 s against 1.6 s for the same check in scan order with lag() over (). Any flag sends verify to
# CHECK_SQL's sorted answer, which alone names a row.
FAST_SQL = f"""
with content as (
    select count(*) as events, max(seq) as head_seq, min(seq) as low, count(distinct seq) as seqs,
           min(seq) filter (where {chain.HASH_SQL} is distinct from hash) as bad_content,
           min(seq) filter (where seq = 1 and prev_hash is distinct from '{chain.GENESIS}') as bad_genesis
    from audit
), links as (
    select min(b.seq) as bad_link from audit b left join audit a on a.seq = b.seq - 1
    where b.seq > 1 and (a.hash is null or a.hash is distinct from b.prev_hash)
)
select events, head_seq,
       coalesce(bad_content, bad_genesis, bad_link,
                case when events > 0 and (low <> 1 or seqs <> events or head_seq <> events) then low end)
from content, links
"""


def verify(con: duckdb.DuckDBPyConnection, head_path: Path) -> dict[str, Any]:
    """The chain's state: ``ok``, ``events``, the table's and the file's heads, and, when broken, where and how.

    The head file is read *before* the table: the writer appends a head only
    after its commit, so every head in the file read first is in any
    snapshot taken after, and a write racing this check is no false alarm.
    """
    lines = head_file.read_all(head_path)
    newest = None if lines is None or not len(lines) else head_file.parse(lines, int(head_file.seqs(lines).argmax()))
    events, head_seq, broken_seq = con.execute(FAST_SQL).fetchall()[0]
    if broken_seq is not None:  # something is off, or only the scan's order: the sorted check says which
        events, head_seq, broken_seq = con.execute(CHECK_SQL).fetchall()[0]
    head = chain.read_head(con)
    answer: dict[str, Any] = {
        "ok": True, "events": int(events), "head": _head(head), "head_file": str(head_path),
        "file_head": newest._asdict() if newest else None, "kind": None, "broken": None, "message": None}
    if broken_seq is not None:
        kind, row, why = explain(con, int(broken_seq))
        return _broken(answer, kind, row, why)
    problem = _check_file(con, events, head_seq, newest, head_path, lines is None)
    if problem:
        return _broken(answer, *problem)
    answer["message"] = (f"the audit chain is intact: {events:,} events, head seq {head_seq} "
                         f"({head.hash[:16]}…)" if head else "the audit chain is empty")
    if newest is not None and head is not None and newest.seq < head.seq:
        answer["message"] += f"; the head file is {head.seq - newest.seq} behind (it catches up at the next write)"
    return answer


def _head(head: chain.Head | None) -> dict[str, Any] | None:
    if head is None:
        return None
    return {"seq": head.seq, "hash": head.hash, "ts": head_file.iso(head.ts_us)}


def _broken(answer: dict[str, Any], kind: str, row: dict[str, Any] | None, why: str) -> dict[str, Any]:
    where = f" at seq {row['seq']} (id {row['id']}, {row['action']}, {row['ts']})" if row else ""
    answer.update(ok=False, kind=kind, broken=row, message=f"the audit chain is broken{where}: {why}")
    return answer


def _check_file(con: duckdb.DuckDBPyConnection, events: int, head_seq: int | None, newest: head_file.FileHead | None,
                path: Path, missing: bool) -> tuple[str, dict[str, Any] | None, str] | None:
    """The table's chain checks; does it still hold the newest head the file recorded?"""
    if newest is None:
        if events:
            what = "is missing" if missing else "is empty"
            return ("head-file", None, f"the head file {path} {what}, so a cut tail cannot be ruled out "
                                       f"({events:,} events in the table); a controller start writes it anew")
        return None
    found = con.execute("select hash from audit where seq = ?", [newest.seq]).fetchall()
    if not found:
        row = _rows(con, head_seq, head_seq)
        return ("truncated", row[0] if row else None,
                f"the tail was cut: the head file ({path}, line {newest.line}) recorded seq {newest.seq} at "
                f"{newest.ts}, but the table ends at seq {head_seq or 0}: "
                f"{newest.seq - (head_seq or 0)} newer events were deleted")
    if found[0][0] != newest.hash:
        row = _rows(con, newest.seq, newest.seq)[0]
        return ("rewritten", row, f"the head file ({path}, line {newest.line}) recorded hash {newest.hash[:16]}… for "
                                  f"seq {newest.seq} at {newest.ts}, the table's row has {str(found[0][0])[:16]}…: "
                                  "the chain up to here was rewritten (rows changed and re-hashed, or cut and re-grown)")
    return None


def _rows(con: duckdb.DuckDBPyConnection, low: int | None, high: int | None) -> list[dict[str, Any]]:
    if low is None or high is None:
        return []
    found = con.execute("""select id, seq, epoch_us(ts), actor, action, target, detail::varchar, prev_hash, hash
                           from audit where seq between ? and ? order by seq, id""", [low, high]).fetchall()
    out = []
    for ident, seq, ts_us, actor, action, target, detail, prev, digest in found:
        event = chain.Event(int(seq), int(ts_us), actor, action, target, detail)
        out.append({"id": int(ident), "seq": int(seq), "action": action, "actor": actor, "target": target,
                    "ts": head_file.iso(int(ts_us)),
                    "prev_hash": prev, "hash": digest,
                    "content_ok": digest is not None and prev is not None and chain.event_hash(event, prev) == digest})
    return out


def explain(con: duckdb.DuckDBPyConnection, seq: int) -> tuple[str, dict[str, Any], str]:
    """What happened at the first broken link ``seq``: (kind, the row to name, a sentence why)."""
    below, above = con.execute("select (select max(seq) from audit where seq < ?), "
                               "(select min(seq) from audit where seq > ?)", [seq, seq]).fetchall()[0]
    rows = _rows(con, seq if below is None else below, seq if above is None else above)
    before = [r for r in rows if r["seq"] < seq]
    at = [r for r in rows if r["seq"] == seq]
    after = [r for r in rows if r["seq"] > seq]
    p = before[-1] if before else None
    expected_prev = p["hash"] if p else chain.GENESIS
    if len(at) > 1:
        nxt = after[0] if after else None
        genuine = [x for x in at if nxt and x["hash"] == nxt["prev_hash"]]
        forged = [x for x in at if x not in genuine] or at[1:]
        f = forged[0]
        return "inserted", f, (f"seq {seq} appears {len(at)} times (ids {', '.join(str(x['id']) for x in at)}): "
                               f"the row id {f['id']} was inserted"
                               + (f"; the next row links to id {genuine[0]['id']}" if genuine else ""))
    r = at[0]
    if r["hash"] is None or r["prev_hash"] is None:
        return "unchained", r, "the row has no hash: it was written around the chain (by hand, not by mlfleet)"
    gap = r["seq"] - (p["seq"] + 1 if p else 1)
    if gap > 0:
        first = p["seq"] + 1 if p else 1
        gone = f"seq {first}" if gap == 1 else f"seqs {first} to {r['seq'] - 1}"
        return "deleted", r, (f"{gone} {'is' if gap == 1 else 'are'} missing before it: "
                              f"{'that row was' if gap == 1 else 'those rows were'} deleted"
                              + (f" (after seq {p['seq']}, id {p['id']})" if p else ""))
    if r["prev_hash"] != expected_prev:
        later = con.execute("select seq, id from audit where hash = ? order by seq limit 1",
                            [r["prev_hash"]]).fetchall()
        if later and later[0][0] > r["seq"]:
            return "reordered", r, (f"the row is out of order: it follows the event now at seq {later[0][0]} "
                                    f"(id {later[0][1]}), so rows were moved (their seqs swapped)")
        if r["content_ok"]:
            if later and later[0][0] < r["seq"] - 1:
                return "deleted", r, (f"it links to seq {later[0][0]} (id {later[0][1]}): the rows between were "
                                      "deleted and the rest renumbered")
            if not later and not after:
                return "inserted", r, ("a forged row: its hash matches its content, but its prev_hash is the hash "
                                       f"of no row (the row before it, seq {seq - 1}, has {expected_prev[:16]}…)")
            return "replaced", r, (f"its prev_hash is not the hash of seq {seq - 1}: the row before it was "
                                   "changed and re-hashed, or this row is a forgery with a hash of its own")
        return "edited", r, "its content no longer matches its hash, nor does it link to the row before it"
    return "edited", r, "its content (time, actor, action, target or detail) no longer matches its hash: it was edited"
