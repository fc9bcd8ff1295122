-- tollgate's tables in one schema ({s}), format 1. Documented in docs/FORMAT.md.
--
-- Open runs this whole file in one transaction, holding a transaction-level advisory lock on the
-- schema's name, so that nodes opening at once never race a migration. Every statement is
-- idempotent: a schema at this format is left as it is.
--
-- Times are nanoseconds since the Unix epoch on the database server's clock ({s}.now_ns()).
-- Raw idempotency keys and rate subjects never reach these tables: records are named by their
-- SHA-256 digest, counters by a keyed hash whose secret is in {s}.meta.

CREATE SCHEMA IF NOT EXISTS {s};

-- 'format' (8 bytes, big-endian), 'rate_secret' (16 bytes, shared by every node).
CREATE TABLE IF NOT EXISTS {s}.meta (
    key   text PRIMARY KEY,
    value bytea NOT NULL
);

-- One row per node id: its current epoch, bumped by every open of that id.
CREATE TABLE IF NOT EXISTS {s}.nodes (
    id        text PRIMARY KEY,
    epoch     bigint NOT NULL,
    opened_at bigint NOT NULL
);

-- Idempotency records. `value` is the record as engine::codec encodes it (versioned, the same
-- bytes as in a store file); the other columns repeat what statements filter on.
-- Compaction finds expired records through the index on `expires_at`, so it removes them as soon
-- as they expire. (Indexing a coarser time instead, so that a completion would not move the index
-- entry and could update in place, measured no faster in benches/compare.rs.)
CREATE TABLE IF NOT EXISTS {s}.records (
    digest     bytea PRIMARY KEY,
    value      bytea NOT NULL,
    state      smallint NOT NULL,  -- 0 RUNNING, 1 COMPLETED, 2 FAILED
    expires_at bigint NOT NULL,
    owner      text                -- RUNNING: the node id holding the lease
);
CREATE INDEX IF NOT EXISTS records_expires_at ON {s}.records (expires_at);

-- Rate counters: `value` as engine::codec encodes a counter; `idle_at` is when it equals a
-- fresh one (and may be removed).
CREATE TABLE IF NOT EXISTS {s}.rates (
    key     bytea PRIMARY KEY,
    value   bytea NOT NULL,
    idle_at bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS rates_idle_at ON {s}.rates (idle_at);

-- Row counts by state, as deltas: each connection of each node adds to its own row in the
-- transaction that changed the rows, so the sums are exact and no two writers share a row.
CREATE TABLE IF NOT EXISTS {s}.counts (
    slot      text PRIMARY KEY,
    running   bigint NOT NULL DEFAULT 0,
    completed bigint NOT NULL DEFAULT 0,
    failed    bigint NOT NULL DEFAULT 0,
    rates     bigint NOT NULL DEFAULT 0
);

-- Lease tokens, strictly increasing across every node.
CREATE SEQUENCE IF NOT EXISTS {s}.tokens;

-- An offset added to the server's clock: always 0, except in tollgate's own tests, which move
-- time for every node of a schema at once through it. (`clock_stop.sql` adds to this table, and
-- defines now_ns().)
CREATE TABLE IF NOT EXISTS {s}.clock (
    id        boolean PRIMARY KEY DEFAULT true CHECK (id),
    offset_ns bigint NOT NULL DEFAULT 0
);
INSERT INTO {s}.clock DEFAULT VALUES ON CONFLICT DO NOTHING;
