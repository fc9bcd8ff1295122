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
-- One statement per table and way of writing (sql.rs puts the way, a named part below, in the
-- table's statement at `{write}`), so that each has one plan: with the way as a parameter, the
-- server judged the plan for each value cheaper and planned every execution afresh. The
-- statements run without the batch's `SET LOCAL`s (no transaction of their own to put them in):
-- their parameters are scalars and their tables are reached by primary key, so the server's own
-- choice of plan is the cached generic one on the keys; `statement_timeout` is the session's.
--
-- Each returns one row: whether the row was written, the clock's reading, whether the clock is
-- stopped, and a spare lease token if one was wanted.

-- statement: record
-- Parameters (each way's statement has them all; a way leaves out what it does not use, which
-- the prepared types keep typed): $1: digest; $2: the way (0 create, 1 update, 2 delete: kept
-- in the list for the Rust side's one layout, unused here); $3: the value expected; $4..$7: the
-- new value, state, expires_at, owner (unused by a delete); $8: this connection's row in counts;
-- $9..$11: what to add to its running, completed, failed columns; $12: decided_at; $13: bound;
-- $14, $15: this node's id and epoch; $16: spare lease tokens wanted (0 or 1).
WITH guard AS (
    SELECT k.now, k.stopped,
           k.now >= $12::bigint
           AND k.now - $12::bigint <= CASE WHEN k.stopped THEN 0 ELSE $13::bigint END
           AND NOT EXISTS (SELECT 1 FROM {s}.nodes n
                            WHERE n.id = $14::text AND n.epoch <> $15::bigint) AS ok,
           CASE WHEN $16::int > 0 THEN nextval('{s}.tokens') END AS spare
      FROM (SELECT coalesce(c.stopped_at,
                            (extract(epoch FROM clock_timestamp()) * 1000000)::bigint * 1000
                                + c.offset_ns) AS now,
                   c.stopped_at IS NOT NULL AS stopped
              FROM {s}.clock c) AS k
), written AS (
{write}
), counted AS (
    INSERT INTO {s}.counts AS n (slot, running, completed, failed, rates)
    SELECT $8::text, $9::bigint, $10::bigint, $11::bigint, 0
     WHERE ($9::bigint <> 0 OR $10::bigint <> 0 OR $11::bigint <> 0)
       AND (SELECT count(*) FROM written) = 1
        ON CONFLICT (slot) DO UPDATE
       SET running = n.running + excluded.running, completed = n.completed + excluded.completed,
           failed = n.failed + excluded.failed
)
SELECT g.ok AND (SELECT count(*) FROM written) = 1, g.now, g.stopped, g.spare FROM guard g

-- statement: record_create
    INSERT INTO {s}.records (digest, value, state, expires_at, owner)
    SELECT $1::bytea, $4::bytea, $5::smallint, $6::bigint, $7::text
     WHERE (SELECT ok FROM guard)
    RETURNING 1

-- statement: record_update
    UPDATE {s}.records
       SET value = $4::bytea, state = $5::smallint, expires_at = $6::bigint, owner = $7::text
     WHERE digest = $1::bytea AND value = $3::bytea AND (SELECT ok FROM guard)
    RETURNING 1

-- statement: record_delete
    DELETE FROM {s}.records
     WHERE digest = $1::bytea AND value = $3::bytea AND (SELECT ok FROM guard)
    RETURNING 1

-- statement: counter
-- $1: key; $2: the way (unused here, as for records); $3: the value expected (a create expects none); $4, $5: the new
-- value and idle_at (unused by a delete: the counter is idle, equal to a fresh one); $6: this
-- connection's row in counts; $7: what to add to its rates column; $8: decided_at; $9: bound;
-- $10, $11: this node's id and epoch.
WITH guard AS (
    SELECT k.now, k.stopped,
           k.now >= $8::bigint
           AND k.now - $8::bigint <= CASE WHEN k.stopped THEN 0 ELSE $9::bigint END
           AND NOT EXISTS (SELECT 1 FROM {s}.nodes n
                            WHERE n.id = $10::text AND n.epoch <> $11::bigint) AS ok
      FROM (SELECT coalesce(c.stopped_at,
                            (extract(epoch FROM clock_timestamp()) * 1000000)::bigint * 1000
                                + c.offset_ns) AS now,
                   c.stopped_at IS NOT NULL AS stopped
              FROM {s}.clock c) AS k
), written AS (
{write}
), counted AS (
    INSERT INTO {s}.counts AS n (slot, running, completed, failed, rates)
    SELECT $6::text, 0, 0, 0, $7::bigint
     WHERE $7::bigint <> 0 AND (SELECT count(*) FROM written) = 1
        ON CONFLICT (slot) DO UPDATE SET rates = n.rates + excluded.rates
)
SELECT g.ok AND (SELECT count(*) FROM written) = 1, g.now, g.stopped, NULL::bigint FROM guard g

-- statement: counter_create
    INSERT INTO {s}.rates (key, value, idle_at)
    SELECT $1::bytea, $4::bytea, $5::bigint
     WHERE (SELECT ok FROM guard)
    RETURNING 1

-- statement: counter_update
    UPDATE {s}.rates SET value = $4::bytea, idle_at = $5::bigint
     WHERE key = $1::bytea AND value = $3::bytea AND (SELECT ok FROM guard)
    RETURNING 1

-- statement: counter_delete
    DELETE FROM {s}.rates
     WHERE key = $1::bytea AND value = $3::bytea AND (SELECT ok FROM guard)
    RETURNING 1
