-- A batch's counter changes, in one statement, on rows lock.sql locked (or found absent).
--
-- $1..$3: counters that existed and change (key, value, idle_at); $4: counters that existed and
-- are removed (idle: equal to a fresh one); $5..$7: counters created, in key order.
-- Returns how many of the created ones were inserted (fewer: start over, as for records).
WITH changed AS (
    UPDATE {s}.rates c
       SET value = u.value, idle_at = u.idle_at
      FROM unnest($1::bytea[], $2::bytea[], $3::bigint[]) AS u(key, value, idle_at)
     WHERE c.key = u.key
), removed AS (
    DELETE FROM {s}.rates WHERE key = ANY($4::bytea[])
), created AS (
    INSERT INTO {s}.rates (key, value, idle_at)
    SELECT * FROM unnest($5::bytea[], $6::bytea[], $7::bigint[])
    ORDER BY 1
    ON CONFLICT (key) DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM created
