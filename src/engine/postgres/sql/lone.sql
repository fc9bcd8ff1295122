-- A lone caller's change in one round trip (`batch/lone.rs`): one statement, its own
-- transaction (autocommit), that writes one row if it is still exactly as the writer last saw it.
--
-- The writer decided the change already, with the pure rules, on the row as its node last wrote
-- or read it (`batch/hints.rs`), at a time `decided_at` no later than the database clock's reading
-- here. The statement writes only if that decision is the one the batch path (lock.sql, then
-- write.sql) would take:
-- - the row is still byte for byte what the decision read: an update or a delete matches the
--   expected value (the row is locked by it, and the value compared again on the row's latest
--   version if another transaction changed it meanwhile); a create expects no row, and an insert
--   that meets one fails with a unique violation, which rolls the transaction back;
-- - the decision's time is no later than the clock's reading and at most `bound` ns behind it
--   (exactly the reading while a test has stopped the clock). Deciding a moment earlier is
--   deciding on the rules' safe side: what expired then has expired now; a rate state decided
--   earlier allows less (the rules' "time going backwards mints nothing");
-- - this node's epoch is still its own.
-- Otherwise nothing is written (not even the counts) and the change takes the batch path.
--
-- One statement per table and way of writing (sql.rs puts the guard, a named part below, at
-- `{guard}` and the way at `{write}` in the table's statement), so that each has one plan: with the way as a parameter, the
-- server judged the plan for each value cheaper and planned every execution afresh. The
-- statements run without the batch's `SET LOCAL`s (no transaction of their own to put them in):
-- their parameters are scalars and their tables are reached by primary key, so the server's own
-- choice of plan is the cached generic one on the keys; `statement_timeout` is the session's.
--
-- Each returns one row: whether the row was written, the clock's reading, whether the clock is
-- stopped, and a spare lease token if one was wanted.
--
-- Parameters, the guard's first: $1: decided_at; $2: bound; $3, $4: this node's id and epoch;
-- $5: spare lease tokens wanted (0 or 1). Then the row's, from $6 (each way's statement has them
-- all and leaves out what it does not use, which the prepared types keep typed).

-- statement: guard
guard AS (
    SELECT k.now, k.stopped,
           k.now >= $1::bigint
           AND k.now - $1::bigint <= CASE WHEN k.stopped THEN 0 ELSE $2::bigint END
           AND NOT EXISTS (SELECT 1 FROM {s}.nodes n
                            WHERE n.id = $3::text AND n.epoch <> $4::bigint) AS ok,
           CASE WHEN $5::int > 0 THEN nextval('{s}.tokens') END AS spare
      FROM (SELECT coalesce(c.stopped_at,
                            (extract(epoch FROM clock_timestamp()) * 1000000)::bigint * 1000
                                + c.offset_ns) AS now,
                   c.stopped_at IS NOT NULL AS stopped
              FROM {s}.clock c) AS k
)

-- statement: record
-- $6: digest; $7: the value expected; $8..$11: the new value, state, expires_at, owner (unused by
-- a delete); $12: this connection's row in counts; $13..$15: what to add to its running,
-- completed, failed columns.
WITH {guard}, written AS (
{write}
), counted AS (
    INSERT INTO {s}.counts AS n (slot, running, completed, failed, rates)
    SELECT $12::text, $13::bigint, $14::bigint, $15::bigint, 0
     WHERE ($13::bigint <> 0 OR $14::bigint <> 0 OR $15::bigint <> 0)
       AND (SELECT count(*) FROM written) = 1
        ON CONFLICT (slot) DO UPDATE
       SET running = n.running + excluded.running, completed = n.completed + excluded.completed,
           failed = n.failed + excluded.failed
)
SELECT g.ok AND (SELECT count(*) FROM written) = 1, g.now, g.stopped, g.spare FROM guard g

-- statement: record_create
    INSERT INTO {s}.records (digest, value, state, expires_at, owner)
    SELECT $6::bytea, $8::bytea, $9::smallint, $10::bigint, $11::text
     WHERE (SELECT ok FROM guard)
    RETURNING 1

-- statement: record_update
    UPDATE {s}.records
       SET value = $8::bytea, state = $9::smallint, expires_at = $10::bigint, owner = $11::text
     WHERE digest = $6::bytea AND value = $7::bytea AND (SELECT ok FROM guard)
    RETURNING 1

-- statement: record_delete
    DELETE FROM {s}.records
     WHERE digest = $6::bytea AND value = $7::bytea AND (SELECT ok FROM guard)
    RETURNING 1

-- statement: counter
-- $6: key; $7: the value expected; $8, $9: the new value and idle_at (unused by a delete: the
-- counter is idle, equal to a fresh one); $10: this connection's row in counts; $11: what to add
-- to its rates column.
WITH {guard}, written AS (
{write}
), counted AS (
    INSERT INTO {s}.counts AS n (slot, running, completed, failed, rates)
    SELECT $10::text, 0, 0, 0, $11::bigint
     WHERE $11::bigint <> 0 AND (SELECT count(*) FROM written) = 1
        ON CONFLICT (slot) DO UPDATE SET rates = n.rates + excluded.rates
)
SELECT g.ok AND (SELECT count(*) FROM written) = 1, g.now, g.stopped, g.spare FROM guard g

-- statement: counter_create
    INSERT INTO {s}.rates (key, value, idle_at)
    SELECT $6::bytea, $8::bytea, $9::bigint
     WHERE (SELECT ok FROM guard)
    RETURNING 1

-- statement: counter_update
    UPDATE {s}.rates SET value = $8::bytea, idle_at = $9::bigint
     WHERE key = $6::bytea AND value = $7::bytea AND (SELECT ok FROM guard)
    RETURNING 1

-- statement: counter_delete
    DELETE FROM {s}.rates
     WHERE key = $6::bytea AND value = $7::bytea AND (SELECT ok FROM guard)
    RETURNING 1
