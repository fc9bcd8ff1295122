-- The reader connections' jobs (`maintenance.rs`): reads that lock nothing, the compaction
-- step's counts, the bulk load, the counts and sizes `stats` reads; and the test support that
-- moves the schema's clock (`mod.rs`). The writer's batch is `lock.sql` and `write.sql`.
--
-- Named statements: each opens with `-- statement: NAME` (see node.sql).

-- statement: now
SELECT {s}.now_ns()

-- statement: read_record
-- One record and the clock, in one round trip; locks nothing. $1: the digest.
SELECT {s}.now_ns(), (SELECT value FROM {s}.records WHERE digest = $1)

-- statement: list_records
-- A page of records in digest order, after $1, at most $2.
SELECT digest, value FROM {s}.records WHERE digest > $1 ORDER BY digest LIMIT $2

-- statement: peek_counters
-- The clock and the counters $1 (those that exist), for a peek; locks nothing. The clock comes
-- on a row of its own even when no counter exists.
SELECT {s}.now_ns(), c.key, c.value
  FROM (SELECT 1) AS one LEFT JOIN {s}.rates c ON c.key = ANY($1::bytea[])

-- statement: count_removed
-- A compaction step's removals, taken from the step's count slot ($1): $2 running, $3
-- completed, $4 failed records and $5 counters.
INSERT INTO {s}.counts AS c (slot, running, completed, failed, rates)
VALUES ($1, -$2::bigint, -$3::bigint, -$4::bigint, -$5::bigint)
    ON CONFLICT (slot) DO UPDATE SET running = c.running - $2, completed = c.completed - $3,
       failed = c.failed - $4, rates = c.rates - $5

-- statement: counts
-- The exact counts (the sums of every connection's deltas) and the bytes the two tables take.
SELECT coalesce(sum(running), 0)::bigint, coalesce(sum(completed), 0)::bigint,
       coalesce(sum(failed), 0)::bigint, coalesce(sum(rates), 0)::bigint,
       pg_total_relation_size('{s}.records') + pg_total_relation_size('{s}.rates')
  FROM {s}.counts

-- statement: bulk_lock
-- The records a bulk load's chunk replaces, locked, with their states (they leave their
-- state's count). $1: the chunk's digests.
SELECT state FROM {s}.records WHERE digest = ANY($1) FOR UPDATE

-- statement: bulk_write
-- A bulk load's chunk: new records, or replacements of finished or running ones (no owner).
INSERT INTO {s}.records (digest, value, state, expires_at, owner)
SELECT d, v, s, e, NULL
  FROM unnest($1::bytea[], $2::bytea[], $3::smallint[], $4::bigint[]) AS u(d, v, s, e)
    ON CONFLICT (digest) DO UPDATE SET value = EXCLUDED.value, state = EXCLUDED.state,
       expires_at = EXCLUDED.expires_at, owner = NULL

-- statement: bulk_count
-- A bulk load's record deltas, added to its count slot ($1).
INSERT INTO {s}.counts AS c (slot, running, completed, failed)
VALUES ($1, $2, $3, $4)
    ON CONFLICT (slot) DO UPDATE SET running = c.running + $2, completed = c.completed + $3,
       failed = c.failed + $4

-- statement: stop_clock
-- Test support: the schema's clock stopped at $1 for every node; returns the new reading.
WITH moved AS (UPDATE {s}.clock SET stopped_at = $1) SELECT $1

-- statement: advance_clock
-- Test support: the schema's clock moved forward by $1 for every node; returns the new reading.
WITH moved AS (UPDATE {s}.clock SET offset_ns = offset_ns + $1, stopped_at = stopped_at + $1)
SELECT {s}.now_ns() + $1
