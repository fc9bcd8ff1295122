-- An addition within format 1, run after schema.sql on a new schema and at the open of a schema
-- that lacks it (node.rs looks for the column first, so an open runs no DDL once it is there).
-- Builds that predate it keep working on the schema: the column is NULL unless a test sets it,
-- and now_ns() then reads what it read before.
--
-- `stopped_at`: a time the clock stands still at (tollgate's own tests stop the clock at a model's
-- time, so that decisions fall on exact boundaries); NULL in production.
ALTER TABLE {s}.clock ADD COLUMN IF NOT EXISTS stopped_at bigint;

CREATE OR REPLACE FUNCTION {s}.now_ns() RETURNS bigint LANGUAGE sql VOLATILE AS $$
    SELECT coalesce(stopped_at,
                    (extract(epoch FROM clock_timestamp()) * 1000000)::bigint * 1000 + offset_ns)
      FROM {s}.clock
$$;
