-- Named statements of the ledger's proof (django_dbq/seals.py): sealing,
-- signing retirement records, verifying chains and seals. The functions they
-- call are in sql/seals.sql.

-- name: chained
-- Whether the database has the hash chains and seals (migration 0017).
SELECT to_regclass('django_dbq_seal') IS NOT NULL

-- name: prepare_seal
-- Appends the next seal, unsigned; waits at most wait_ms for the seals' lock
-- and the appends in flight.
SELECT id, sealed_at, after_event_id, last_event_id, events, total_events, digest, prev_mac
FROM dbq_prepare_seal_v1(%(wait_ms)s::integer)

-- name: sign_seal
SELECT dbq_sign_seal_v1(%(id)s::bigint, %(mac)s::bytea)

-- name: unsigned_retired
-- The retirement records this transaction wrote (retention), to sign; the
-- table named with its schema, so that no TEMP table of the session (a pooled
-- server session another client left one in) stands in for it.
SELECT id, seal_id, events, sha256(entries)
FROM @schema@.django_dbq_retired
WHERE mac IS NULL AND txid = pg_current_xact_id()::text::bigint
ORDER BY id

-- name: sign_retired
SELECT dbq_sign_retired_v1(%(ids)s::bigint[], %(macs)s::bytea[])

-- name: chain_check
-- How many events (of ids above `since_id`, unless NULL) the chain check read, and
-- how many of them have a hash that is not the one their job's chain gives (a
-- missing hash, a rewritten event, an event whose previous one is gone, an id
-- no append gives and no seal covers). One
-- read of the ledger and one of its (job_id, version) pairs, in parallel where
-- the server allows it (plain aggregates, functions PARALLEL SAFE).
SELECT count(*),
       count(*) FILTER (WHERE
           e.id < 1
           OR e.hash IS NULL
           OR (e.version > 1 AND p.id IS NULL)
           OR e.hash <> dbq_event_hash_v1(p.hash, e.job_id, e.version::integer, e.kind::text,
                                          e.payload, e.at))
FROM django_dbq_jobevent e
LEFT JOIN django_dbq_jobevent p ON p.job_id = e.job_id AND p.version = e.version - 1
WHERE %(since_id)s::bigint IS NULL OR e.id > %(since_id)s::bigint

-- name: chain_breaks
-- The first of those events, by id (read only when there are some).
SELECT e.id, e.job_id, e.version, e.kind, e.hash IS NULL AS unhashed,
       e.version > 1 AND p.id IS NULL AS orphan, e.id < 1 AS unsealable
FROM django_dbq_jobevent e
LEFT JOIN django_dbq_jobevent p ON p.job_id = e.job_id AND p.version = e.version - 1
WHERE (%(since_id)s::bigint IS NULL OR e.id > %(since_id)s::bigint)
  AND (e.id < 1
       OR e.hash IS NULL
       OR (e.version > 1 AND p.id IS NULL)
       OR e.hash <> dbq_event_hash_v1(p.hash, e.job_id, e.version::integer, e.kind::text,
                                      e.payload, e.at))
ORDER BY e.id
LIMIT %(limit)s

-- name: seals_from
SELECT id, sealed_at, after_event_id, last_event_id, events, total_events, digest, mac
FROM django_dbq_seal
WHERE id >= %(first)s
ORDER BY id

-- name: seal_mac
SELECT mac FROM django_dbq_seal WHERE id = %(id)s

-- name: seal_window
-- What a seal's window holds now (events, retirement records).
SELECT events, last_event_id, digest, unhashed
FROM dbq_seal_window_v1(%(id)s::bigint, %(after_id)s::bigint, %(last_id)s::bigint)

-- name: retired_from
SELECT id, seal_id, events, sha256(entries), mac
FROM django_dbq_retired
WHERE seal_id >= %(first)s
ORDER BY id

-- name: unsealed
-- Events not yet sealed: after the last seal's last.
SELECT count(*) FROM django_dbq_jobevent e WHERE e.id > %(since_id)s
