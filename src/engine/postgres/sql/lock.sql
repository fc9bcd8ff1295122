-- The first statement of every write batch: the database clock, `$3` fresh lease tokens, and
-- every record (`$1`) and counter (`$2`) the batch touches, locked.
--
-- Locks: records FOR UPDATE, then counters FOR UPDATE (the outer UNION ALL reads the two CTEs in
-- that order), each in key order (ORDER BY is applied before the lock), so two batches that
-- share keys lock them in the same order and never deadlock on them. Rows that do not exist are
-- not locked: a batch that creates one inserts it (write_*.sql), which fails with a unique violation
-- if another transaction created it first; the batch then starts over.
--
-- Versions (sql.rs `Tables`): a batch without counters runs this statement with the
-- `-- counters { … } else …` part replaced by what follows `else` (no rows, nothing to plan or
-- start), a batch without records likewise; a batch with both runs it as written.
--
-- kind 4: this node's current epoch ($4: its id), which must still be this store's: a store whose
-- node id was opened again since (a second process with the same id) is superseded and may not
-- take leases as that node any more.
-- kind 0: the clock (in `number`; {s}.now_ns() written out, which saves a function call); 1: a token; 2: a record with its owner's current epoch
-- (0 if its owner never registered: a node without a node id); 3: a counter.
WITH locked_records AS (
    -- records {
    SELECT r.digest, r.value, coalesce(n.epoch, 0) AS owner_epoch
      FROM {s}.records r LEFT JOIN {s}.nodes n ON n.id = r.owner
     WHERE r.digest = ANY($1::bytea[])
     ORDER BY r.digest
       FOR UPDATE OF r
    -- } else SELECT NULL::bytea AS digest, NULL::bytea AS value, 0::bigint AS owner_epoch WHERE false
), locked_rates AS (
    -- counters {
    SELECT c.key, c.value
      FROM {s}.rates c
     WHERE c.key = ANY($2::bytea[])
     ORDER BY c.key
       FOR UPDATE OF c
    -- } else SELECT NULL::bytea AS key, NULL::bytea AS value WHERE false
)
SELECT 0 AS kind, NULL::bytea AS key, NULL::bytea AS value,
       coalesce(c.stopped_at,
                (extract(epoch FROM clock_timestamp()) * 1000000)::bigint * 1000 + c.offset_ns)
           AS number
  FROM {s}.clock c
UNION ALL
SELECT 1, NULL, NULL, nextval('{s}.tokens') FROM generate_series(1, $3::int)
UNION ALL
SELECT 2, digest, value, owner_epoch FROM locked_records
UNION ALL
SELECT 3, key, value, 0 FROM locked_rates
UNION ALL
SELECT 4, NULL, NULL, epoch FROM {s}.nodes WHERE id = $4
