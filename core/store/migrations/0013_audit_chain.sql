-- The audit chain (docs/audit.md): every event carries its place in the chain (seq, gap-free, from 1),
-- the hash of the event before it (prev_hash) and its own hash: sha256 over the canonical encoding of
-- (seq, ts, actor, action, target, detail) followed by prev_hash (core/audit/chain.py says it exactly,
-- in Python and in SQL). seq is not the id: ids come from a sequence, which a rolled-back transaction
-- may skip, and a chain must have no gaps a reader has to explain. seq has no UNIQUE index: an ART
-- index costs every insert and `audit verify` finds a repeated seq anyway.
-- Rows written before this migration get their seq here, in id order; their hashes are computed by the
-- controller at its first start after the upgrade (core/audit/chain.py, seal_unchained): a hash chain
-- is sequential, which SQL would do one recursive step per row.
ALTER TABLE audit ADD COLUMN seq BIGINT;
ALTER TABLE audit ADD COLUMN prev_hash VARCHAR;
ALTER TABLE audit ADD COLUMN hash VARCHAR;
UPDATE audit SET seq = numbered.n
FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM audit) AS numbered
WHERE audit.id = numbered.id;
