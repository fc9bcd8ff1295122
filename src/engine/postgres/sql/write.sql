-- A batch's writes, in one prepared statement, on the rows lock.sql locked (or found absent):
-- records, counters and this connection's counts. Sent together with the COMMIT (pipe.rs).
--
-- $1..$5: records that existed and change (digest, value, state, expires_at, owner);
-- $6: records that existed and are removed;
-- $7..$11: records that did not exist and are created, in digest order;
-- $12..$14: counters that existed and change (key, value, idle_at); $15: counters that existed
-- and are removed (idle: equal to a fresh one); $16..$18: counters created, in key order;
-- $19: this connection's row in counts; $20..$23: what the batch adds to its running,
-- completed, failed and rates columns (created if missing; left alone when all four are 0).
--
-- Versions (sql.rs `Tables`), as for lock.sql: a batch without counters leaves out the
-- `-- counters { … }` parts (an unreferenced `SELECT WHERE false` is neither planned nor run),
-- a batch without records the `-- records { … }` parts. (Measured: cycles 4% faster than with
-- every part in every batch, whose unused updates, deletes and inserts were still started.)
--
-- A created row that another transaction created since the lock fails the INSERT with a unique
-- violation (after waiting for that transaction, if it was still running): the batch rolls back
-- and starts over, deciding on the row that now exists. The `= ANY` conditions beside each join
-- keep the statement's cached generic plan on the primary keys.
WITH changed AS (
    -- records {
    UPDATE {s}.records r
       SET value = u.value, state = u.state, expires_at = u.expires_at, owner = u.owner
      FROM unnest($1::bytea[], $2::bytea[], $3::smallint[], $4::bigint[], $5::text[])
           AS u(digest, value, state, expires_at, owner)
     WHERE r.digest = u.digest AND r.digest = ANY($1::bytea[])
    -- } else SELECT WHERE false
), removed AS (
    -- records {
    DELETE FROM {s}.records WHERE digest = ANY($6::bytea[])
    -- } else SELECT WHERE false
), created AS (
    -- records {
    INSERT INTO {s}.records (digest, value, state, expires_at, owner)
    SELECT * FROM unnest($7::bytea[], $8::bytea[], $9::smallint[], $10::bigint[], $11::text[])
    ORDER BY 1
    -- } else SELECT WHERE false
), rates_changed AS (
    -- counters {
    UPDATE {s}.rates c
       SET value = u.value, idle_at = u.idle_at
      FROM unnest($12::bytea[], $13::bytea[], $14::bigint[]) AS u(key, value, idle_at)
     WHERE c.key = u.key AND c.key = ANY($12::bytea[])
    -- } else SELECT WHERE false
), rates_removed AS (
    -- counters {
    DELETE FROM {s}.rates WHERE key = ANY($15::bytea[])
    -- } else SELECT WHERE false
), rates_created AS (
    -- counters {
    INSERT INTO {s}.rates (key, value, idle_at)
    SELECT * FROM unnest($16::bytea[], $17::bytea[], $18::bigint[])
    ORDER BY 1
    -- } else SELECT WHERE false
)
INSERT INTO {s}.counts AS n (slot, running, completed, failed, rates)
SELECT $19::text, $20::bigint, $21::bigint, $22::bigint, $23::bigint
 WHERE $20::bigint <> 0 OR $21::bigint <> 0 OR $22::bigint <> 0 OR $23::bigint <> 0
    ON CONFLICT (slot) DO UPDATE
   SET running = n.running + excluded.running, completed = n.completed + excluded.completed,
       failed = n.failed + excluded.failed, rates = n.rates + excluded.rates
