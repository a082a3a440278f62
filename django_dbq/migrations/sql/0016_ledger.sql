-- Migration 0016: dbq_create_jobs_v3, as in django_dbq/events/sql/ledger.sql.

-- dbq_create_jobs_v3: dbq_create_jobs_v2 with the payloads said once. Jobs
-- created together mostly share one payload (the same name, first task, queue
-- and priority, an empty workspace), so `payloads` is a JSON array of the
-- distinct ones, each checked once, and job i gets payloads[which[i]] (from 0).
-- One `created` event per job id, in the order given, at = clock_timestamp()
-- per row; the times come back in the same order.
CREATE OR REPLACE FUNCTION @schema@.dbq_create_jobs_v3(job_ids uuid[], payloads jsonb, which integer[])
RETURNS SETOF float8
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    checked jsonb[];
    mismatch boolean;
BEGIN
    -- Each test apart: an OR's operands may be evaluated in any order.
    IF jsonb_typeof(payloads) IS DISTINCT FROM 'array' THEN
        mismatch := true;
    ELSIF cardinality(job_ids) IS DISTINCT FROM cardinality(which)
       OR array_ndims(job_ids) > 1 OR array_ndims(which) > 1 THEN
        mismatch := true;
    ELSE
        mismatch := EXISTS (SELECT FROM unnest(which) w
                            WHERE w IS NULL OR w < 0 OR w >= jsonb_array_length(payloads));
    END IF;
    IF mismatch THEN
        RAISE EXCEPTION 'django_dbq: dbq_create_jobs_v3 takes as many job ids as payload numbers, each a position in the JSON array of payloads'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Create jobs with Job.objects.bulk_create().';
    END IF;
    checked := ARRAY(
        SELECT CASE
            WHEN @schema@.dbq_is_creatable_v2(p.payload) THEN p.payload
            ELSE @schema@.dbq_check_created_v2(
                job_ids[array_position(which, (p.n - 1)::integer)], p.payload)
            END
        FROM jsonb_array_elements(payloads) WITH ORDINALITY AS p(payload, n)
        ORDER BY p.n);
    RETURN QUERY
    INSERT INTO @schema@.django_dbq_jobevent (job_id, version, kind, payload)
    SELECT j.id, 1, 'created', checked[j.w + 1]
    FROM unnest(job_ids, which) WITH ORDINALITY AS j(id, w, n)
    ORDER BY j.n
    RETURNING extract(epoch FROM at)::float8;
END
$$;
