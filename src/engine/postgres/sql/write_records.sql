-- A batch's record changes, in one statement, on rows lock.sql locked (or found absent). Sent
-- with the counts and COMMIT in one round trip (values as literals, see literal.rs).
--
-- $1..$5: records that existed and change (digest, value, state, expires_at, owner);
-- $6: records that existed and are removed;
-- $7..$11: records that did not exist and are created, in digest order.
-- A created record that another transaction created since the lock fails the INSERT with a
-- unique violation (after waiting for that transaction, if it was still running): the batch
-- rolls back and starts over, deciding on the row that now exists.
WITH changed AS (
    UPDATE {s}.records r
       SET value = u.value, state = u.state, expires_at = u.expires_at, owner = u.owner
      FROM unnest($1::bytea[], $2::bytea[], $3::smallint[], $4::bigint[], $5::text[])
           AS u(digest, value, state, expires_at, owner)
     WHERE r.digest = u.digest
), removed AS (
    DELETE FROM {s}.records WHERE digest = ANY($6::bytea[])
)
INSERT INTO {s}.records (digest, value, state, expires_at, owner)
SELECT * FROM unnest($7::bytea[], $8::bytea[], $9::smallint[], $10::bigint[], $11::text[])
ORDER BY 1
