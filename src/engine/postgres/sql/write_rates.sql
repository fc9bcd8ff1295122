-- A batch's counter changes, in one statement, on rows lock.sql locked (or found absent). Sent
-- with the counts and COMMIT in one round trip (values as literals, see literal.rs).
--
-- $1..$3: counters that existed and change (key, value, idle_at); $4: counters that existed and
-- are removed (idle: equal to a fresh one); $5..$7: counters created, in key order. A created
-- counter that another transaction created since the lock fails with a unique violation, and
-- the batch starts over (as for records).
WITH changed AS (
    UPDATE {s}.rates c
       SET value = u.value, idle_at = u.idle_at
      FROM unnest($1::bytea[], $2::bytea[], $3::bigint[]) AS u(key, value, idle_at)
     WHERE c.key = u.key
), removed AS (
    DELETE FROM {s}.rates WHERE key = ANY($4::bytea[])
)
INSERT INTO {s}.rates (key, value, idle_at)
SELECT * FROM unnest($5::bytea[], $6::bytea[], $7::bigint[])
ORDER BY 1
