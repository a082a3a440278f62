-- dbq_job_row_v1 as 0014 installed it: the way back from 0017 installs it again once
-- the projection's head column is gone.

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
