-- A batch's record changes, in one statement, on rows lock.sql locked (or found absent).
--
-- $1..$5: records that existed and change (digest, value, state, expires_at, owner);
-- $6: records that existed and are removed;
-- $7..$11: records that did not exist and are created, in digest order.
-- Returns how many of the created ones were inserted: fewer than asked means another
-- transaction created one of them since the lock, and the batch starts over.
WITH changed AS (
    UPDATE {s}.records r
       SET value = u.value, state = u.state, expires_at = u.expires_at, owner = u.owner
      FROM unnest($1::bytea[], $2::bytea[], $3::smallint[], $4::bigint[], $5::text[])
           AS u(digest, value, state, expires_at, owner)
     WHERE r.digest = u.digest
), removed AS (
    DELETE FROM {s}.records WHERE digest = ANY($6::bytea[])
), created AS (
    INSERT INTO {s}.records (digest, value, state, expires_at, owner)
    SELECT * FROM unnest($7::bytea[], $8::bytea[], $9::smallint[], $10::bigint[], $11::text[])
    ORDER BY 1
    ON CONFLICT (digest) DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM created
