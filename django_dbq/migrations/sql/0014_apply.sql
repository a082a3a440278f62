-- Migration 0014: dbq_job_row_v1 as projections/sql/apply.sql holds it now,
-- with the unique_key column; the rest of apply.sql is as 0011 installed it.

-- dbq_job_row_v1: the projection row of a `created` event, the one place where
-- an event's payload becomes a new row. A set-returning SQL function of one row,
-- so that PostgreSQL inlines it into the INSERT of each caller
-- (`INSERT ... SELECT r.* FROM events e, LATERAL dbq_job_row_v1(...) r`), where
-- it costs what writing the columns out there would. Its columns are the
-- table's, in the table's order: a migration that adds a column must add it here.
CREATE OR REPLACE FUNCTION @schema@.dbq_job_row_v1(
    job_id uuid, version integer, payload jsonb, at timestamptz
)
RETURNS SETOF @schema@.django_dbq_job
LANGUAGE sql STABLE AS $$
    SELECT job_id,
           COALESCE(@schema@.dbq_time_v1(payload ->> 'created'), at),
           COALESCE(@schema@.dbq_time_v1(payload ->> 'modified'), at),
           (payload ->> 'name')::varchar,
           COALESCE(payload ->> 'state', 'NEW')::varchar,
           COALESCE(payload ->> 'next_task', '')::varchar,
           NULLIF(payload -> 'workspace', 'null'::jsonb),
           COALESCE(payload ->> 'queue_name', 'default')::varchar,
           COALESCE((payload ->> 'priority')::smallint, 0::smallint),
           @schema@.dbq_time_v1(payload ->> 'run_after'),
           version,
           NULL::varchar,
           NULL::timestamptz,
           COALESCE((payload ->> 'attempts')::integer, 0),
           false,
           NULL::varchar,
           (payload ->> 'unique_key')::varchar
$$;
