-- A node's life on the schema (`node.rs`): the migration under a schema-wide lock, the node's
-- own advisory lock, its epoch, and folding an anonymous node's counts when it closes.
--
-- Named statements: each opens with `-- statement: NAME` (`sql.rs` reads them by name; a name
-- the Rust side asks for and this file lacks, or one here that nothing asks for, fails the
-- `sql.rs` unit tests).

-- statement: lock_schema
-- The migration's lock, held to the end of its transaction: two processes opening a new schema
-- at once create it once. $1: the lock key of the schema's name.
SELECT pg_advisory_xact_lock($1)

-- statement: has_schema
-- Whether the schema has tollgate's tables (its `meta` table). $1: the schema's name.
SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = $1 AND tablename = 'meta'

-- statement: has_clock_stop
-- Whether the clock has its stop column (an addition within format 1, see clock_stop.sql).
-- $1: the schema's name.
SELECT 1 FROM pg_catalog.pg_attribute a
  JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1 AND c.relname = 'clock'
   AND a.attname = 'stopped_at' AND NOT a.attisdropped

-- statement: read_format
SELECT value FROM {s}.meta WHERE key = 'format'

-- statement: write_format
-- A new schema's format. $1: the encoded format number.
INSERT INTO {s}.meta (key, value) VALUES ('format', $1)

-- statement: put_secret
-- The counter-key secret of a new schema; the first writer wins. $1: its 16 bytes.
INSERT INTO {s}.meta (key, value) VALUES ('rate_secret', $1) ON CONFLICT DO NOTHING

-- statement: read_secret
SELECT value FROM {s}.meta WHERE key = 'rate_secret'

-- statement: try_node_lock
-- The node's advisory lock, taken on the connection the store holds for its whole life: one
-- live store per node id (DESIGN, P4). $1: the lock key of (schema, node id).
SELECT pg_try_advisory_lock($1)

-- statement: bump_epoch
-- This open's epoch: one more than the node's last, so that its earlier leases are freed at
-- once (DESIGN, P3). Locks the node's row until the statement ends. $1: the node id.
INSERT INTO {s}.nodes AS n (id, epoch, opened_at) VALUES ($1, 1, {s}.now_ns())
    ON CONFLICT (id) DO UPDATE SET epoch = n.epoch + 1, opened_at = EXCLUDED.opened_at
RETURNING epoch

-- statement: fold_counts
-- The count rows of a node without an id (`$1`: its slot prefix, `<node>/%`) moved into the
-- shared `retired` row, so that the sums stay while the rows do not pile up; a node that wrote
-- nothing changes no row (HAVING).
WITH gone AS (
    DELETE FROM {s}.counts WHERE slot LIKE $1 RETURNING running, completed, failed, rates
)
INSERT INTO {s}.counts AS c (slot, running, completed, failed, rates)
SELECT 'retired', coalesce(sum(running), 0), coalesce(sum(completed), 0),
       coalesce(sum(failed), 0), coalesce(sum(rates), 0)
  FROM gone
HAVING count(*) > 0
    ON CONFLICT (slot) DO UPDATE SET running = c.running + EXCLUDED.running,
       completed = c.completed + EXCLUDED.completed, failed = c.failed + EXCLUDED.failed,
       rates = c.rates + EXCLUDED.rates
