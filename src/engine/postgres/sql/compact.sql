-- One compaction step: up to $2 records expired at $1 and up to $2 idle counters, removed.
--
-- Rows another transaction holds are skipped (SKIP LOCKED), so many nodes can compact at once
-- without waiting on each other or on traffic; a row whose expiry moved since the scan is not
-- removed (the condition is checked again on the locked row). Returns the removed records by
-- state (kind 0..2) and the number of counters (kind 3).
WITH due AS (
    SELECT digest FROM {s}.records WHERE expires_at <= $1 ORDER BY expires_at
     LIMIT $2 FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM {s}.records r USING due WHERE r.digest = due.digest AND r.expires_at <= $1
    RETURNING r.state
), idle AS (
    SELECT key FROM {s}.rates WHERE idle_at <= $1 ORDER BY idle_at
     LIMIT $2 FOR UPDATE SKIP LOCKED
), idle_gone AS (
    DELETE FROM {s}.rates c USING idle WHERE c.key = idle.key AND c.idle_at <= $1
    RETURNING 1
)
SELECT state::int AS kind, count(*) FROM gone GROUP BY state
UNION ALL
SELECT 3, count(*) FROM idle_gone
