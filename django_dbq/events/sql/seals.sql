-- The ledger's proof of its own history (migration 0017): a hash chain per job
-- and signed seals. What is installed now; @schema@ and the search_path rule
-- are explained at the top of projections/sql/apply.sql.
--
-- Each event stores hash = SHA-256(the hash of the job's previous event ||
-- the event's canonical bytes) (dbq_event_hash_v1); a job's first event
-- chains from the empty string. The functions that append on the hot paths
-- (enqueue, claim, outcomes) compute it in their INSERT; every other append
-- gets it from the row trigger below, so no event goes in without one. The
-- projection row keeps its job's head (django_dbq_job.head).
--
-- Every event also stores txid, the appending transaction's id. A seal covers
-- every event whose txid lies in [xid_from, xid_to), where xid_to is the
-- oldest transaction still running when the seal was taken (the snapshot's
-- xmin): every transaction below it has ended, so no event of the window is
-- still in flight, and the next seal starts where this one ended. Its digest
-- chains the previous seal's digest with the window's events (id and hash, in
-- id order); its mac, HMAC-SHA-256 under settings.DBQ_LEDGER_KEY, is computed
-- by the caller (the key never reaches the database). Retention removes a
-- sealed event only with a retirement record (django_dbq_retired) of its id
-- and hash, signed the same way, so the seal still verifies.


-- dbq_event_hash_text_v1: the hash of an event given the hash of the job's
-- previous event (ignored for a job's first: it chains from the empty string;
-- NULL when unknown, and the hash is then NULL) and its payload as jsonb prints
-- it. The canonical bytes of an event are its job id (16 bytes), its version
-- (4 bytes), its time (8 bytes: microseconds since 2000-01-01 UTC; the three
-- big-endian, as PostgreSQL sends them in binary), then its kind, a space and
-- its payload in UTF-8, the payload's keys sorted as jsonb prints them: the
-- database computes the same bytes for an event whenever it reads it. The one
-- definition of an event's hash; inlined where it is used.
CREATE OR REPLACE FUNCTION @schema@.dbq_event_hash_text_v1(
    prev bytea, job_id uuid, version integer, kind text, payload text, at timestamptz
)
RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT sha256(
        CASE WHEN version = 1 THEN '\x'::bytea ELSE prev END
        || uuid_send(job_id) || int4send(version) || timestamptz_send(at)
        || convert_to(kind || ' ' || payload, 'UTF8'))
$$;


-- dbq_event_hash_v1: dbq_event_hash_text_v1 of an event's jsonb payload.
CREATE OR REPLACE FUNCTION @schema@.dbq_event_hash_v1(
    prev bytea, job_id uuid, version integer, kind text, payload jsonb, at timestamptz
)
RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT @schema@.dbq_event_hash_text_v1(prev, job_id, version, kind, payload::text, at)
$$;


-- dbq_chain_event_v1: the BEFORE INSERT ... FOR EACH ROW trigger function of
-- django_dbq_jobevent, fired only for a row that comes without its hash (WHEN
-- NEW.hash IS NULL): it reads the hash of the job's previous event (an earlier
-- row of the same statement included) and sets the row's. Appends on the hot
-- paths bring their hash and skip it.
CREATE OR REPLACE FUNCTION @schema@.dbq_chain_event_v1()
RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    prev bytea;
BEGIN
    IF NEW.version > 1 THEN
        SELECT e.hash INTO prev
        FROM @schema@.django_dbq_jobevent e
        WHERE e.job_id = NEW.job_id AND e.version = NEW.version - 1;
    END IF;
    NEW.hash := @schema@.dbq_event_hash_v1(
        prev, NEW.job_id, NEW.version, NEW.kind::text, NEW.payload, NEW.at);
    RETURN NEW;
END
$$;


-- dbq_protect_proof_v1: the BEFORE UPDATE OR DELETE OR TRUNCATE ... FOR EACH
-- STATEMENT trigger function of django_dbq_seal and django_dbq_retired: seals
-- and retirement records are never changed or removed, retention included.
-- The test suites' flush may empty them (dbq.retention, as the ledger's
-- guard allows), and dbq_sign_retired_v1 signs a retirement record its own
-- transaction wrote (dbq.signing); both only while the tables' owner is the
-- current user.
CREATE OR REPLACE FUNCTION @schema@.dbq_protect_proof_v1()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = TG_RELID)
       = current_user::text::regrole
       AND ((TG_OP = 'TRUNCATE' AND pg_catalog.current_setting('dbq.retention', true) = 'on')
            OR (TG_OP = 'UPDATE' AND TG_TABLE_NAME = 'django_dbq_retired'
                AND pg_catalog.current_setting('dbq.signing', true) = 'on'))
    THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'django_dbq: % keeps the ledger''s proof; % on it is refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Seals and retirement records are only ever appended; retention keeps them.';
END
$$;


-- dbq_xmin_v1: the oldest transaction id still running, as a number: every
-- transaction below it has ended.
CREATE OR REPLACE FUNCTION @schema@.dbq_xmin_v1()
RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint
$$;


-- dbq_seal_window_v1: what seal `seal_id` covers, the events of txid in
-- [xid_from, xid_to) and the entries of the retirement records for that seal
-- (events retention removed since): how many, the highest event id, their
-- digest, and how many of the events have no hash yet (migration 0018 computes
-- those of older ledgers). The digest is SHA-256 over the SHA-256 of each block
-- of 65,536 event ids (`id (8 bytes) || hash` of each event, in id order), in
-- block order: no value grows past what PostgreSQL holds in one (1 GB),
-- however many events a window covers.
CREATE OR REPLACE FUNCTION @schema@.dbq_seal_window_v1(seal_id bigint, xid_from bigint, xid_to bigint)
RETURNS TABLE (events bigint, last_event_id bigint, digest bytea, unhashed bigint)
LANGUAGE sql STABLE AS $$
    WITH covered AS (
        SELECT e.id, int8send(e.id) || e.hash AS entry, e.hash IS NULL AS unhashed
        FROM @schema@.django_dbq_jobevent e
        WHERE e.txid >= xid_from AND e.txid < xid_to
        UNION ALL
        SELECT ('x' || encode(substring(r.entries FROM n * 40 + 1 FOR 8), 'hex'))::bit(64)::bigint,
               substring(r.entries FROM n * 40 + 1 FOR 40), false
        FROM @schema@.django_dbq_retired r,
             generate_series(0, length(r.entries) / 40 - 1) AS n
        WHERE r.seal_id = dbq_seal_window_v1.seal_id
    ), blocks AS (
        SELECT c.id >> 16 AS block, count(*) AS events, max(c.id) AS last_id,
               count(*) FILTER (WHERE c.unhashed) AS unhashed,
               sha256(string_agg(c.entry, '\x'::bytea ORDER BY c.id)) AS digest
        FROM covered c
        GROUP BY 1
    )
    SELECT COALESCE(sum(b.events), 0)::bigint, max(b.last_id),
           sha256(COALESCE(string_agg(b.digest, '\x'::bytea ORDER BY b.block), '\x'::bytea)),
           COALESCE(sum(b.unhashed), 0)::bigint
    FROM blocks b
$$;


-- dbq_prepare_seal_v1: the next seal, for the caller to sign and hand to
-- dbq_seal_ledger_v1 in the same transaction: its number, window, counts and
-- digest (sha256(the previous seal's digest || the window's digest)), and the
-- previous seal's mac, which the new one signs too. No row when no event has
-- ended since the last seal. Takes the seals' table lock for the caller's
-- transaction, so that sealers follow each other; refuses while events of the
-- window still wait for their hash.
CREATE OR REPLACE FUNCTION @schema@.dbq_prepare_seal_v1()
RETURNS TABLE (
    id bigint, xid_from bigint, xid_to bigint, events bigint, total_events bigint,
    last_event_id bigint, digest bytea, prev_mac bytea
)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    prev record;
    upto bigint;
    window_ record;
BEGIN
    LOCK TABLE @schema@.django_dbq_seal IN EXCLUSIVE MODE;
    upto := @schema@.dbq_xmin_v1();
    SELECT s.id, s.xid_to, s.total_events, s.last_event_id, s.digest, s.mac INTO prev
    FROM @schema@.django_dbq_seal s ORDER BY s.id DESC LIMIT 1;
    IF upto <= COALESCE(prev.xid_to, 0) THEN
        RETURN;
    END IF;
    SELECT * INTO window_
    FROM @schema@.dbq_seal_window_v1(COALESCE(prev.id, 0) + 1, COALESCE(prev.xid_to, 0), upto);
    IF window_.events = 0 THEN
        RETURN;
    END IF;
    IF window_.unhashed > 0 THEN
        RAISE EXCEPTION 'django_dbq: % events of the ledger have no hash yet; nothing is sealed', window_.unhashed
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Run manage.py migrate django_dbq to the end (migration 0018 hashes older events), then seal.';
    END IF;
    RETURN QUERY SELECT
        COALESCE(prev.id, 0) + 1, COALESCE(prev.xid_to, 0), upto, window_.events,
        COALESCE(prev.total_events, 0) + window_.events,
        greatest(prev.last_event_id, window_.last_event_id),
        sha256(COALESCE(prev.digest, '\x'::bytea) || window_.digest),
        COALESCE(prev.mac, '\x'::bytea);
END
$$;


-- dbq_seal_ledger_v1: append seal `seal_id` up to `xid_to` with its digest
-- and mac, as dbq_prepare_seal_v1 gave them (its snapshot may be older than
-- this statement's). The database checks what it can without the key: that the
-- seal follows the last one, covers only ended transactions, and that its
-- digest is what the window holds now; the mac is the caller's (seal_ledger,
-- the worker). Returns the seal's number.
CREATE OR REPLACE FUNCTION @schema@.dbq_seal_ledger_v1(
    seal_id bigint, xid_to bigint, digest bytea, mac bytea
)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    prev record;
    window_ record;
BEGIN
    LOCK TABLE @schema@.django_dbq_seal IN EXCLUSIVE MODE;
    SELECT s.id, s.xid_to, s.total_events, s.last_event_id, s.digest INTO prev
    FROM @schema@.django_dbq_seal s ORDER BY s.id DESC LIMIT 1;
    IF seal_id IS DISTINCT FROM COALESCE(prev.id, 0) + 1 OR xid_to IS NULL
       OR xid_to <= COALESCE(prev.xid_to, 0) OR xid_to > @schema@.dbq_xmin_v1() THEN
        RAISE EXCEPTION 'django_dbq: seal % up to transaction % does not follow the ledger''s last seal', seal_id, xid_to
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Seal with manage.py seal_ledger.';
    END IF;
    SELECT * INTO window_
    FROM @schema@.dbq_seal_window_v1(seal_id, COALESCE(prev.xid_to, 0), xid_to);
    IF window_.unhashed > 0 OR window_.events = 0
       OR digest IS DISTINCT FROM sha256(COALESCE(prev.digest, '\x'::bytea) || window_.digest) THEN
        RAISE EXCEPTION 'django_dbq: seal %''s digest is not that of the events it covers', seal_id
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Seal with manage.py seal_ledger.';
    END IF;
    IF octet_length(mac) IS DISTINCT FROM 32 THEN
        RAISE EXCEPTION 'django_dbq: a seal''s mac is an HMAC-SHA-256 (32 bytes)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO @schema@.django_dbq_seal
        (id, sealed_at, xid_from, xid_to, events, total_events, last_event_id, digest, mac)
    VALUES (seal_id, clock_timestamp(), COALESCE(prev.xid_to, 0), xid_to, window_.events,
            COALESCE(prev.total_events, 0) + window_.events,
            greatest(prev.last_event_id, window_.last_event_id), digest, mac);
    RETURN seal_id;
END
$$;


-- dbq_sign_retired_v1: sign the retirement records this transaction wrote
-- (retention, dbq_delete_old_jobs_v4) and that are not signed yet, record ids[i]
-- with macs[i]; returns how many were signed. No other record can be signed,
-- so none can be signed again.
CREATE OR REPLACE FUNCTION @schema@.dbq_sign_retired_v1(ids bigint[], macs bytea[])
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    signed bigint;
BEGIN
    IF cardinality(ids) IS DISTINCT FROM cardinality(macs)
       OR EXISTS (SELECT FROM unnest(macs) m WHERE octet_length(m) IS DISTINCT FROM 32) THEN
        RAISE EXCEPTION 'django_dbq: dbq_sign_retired_v1 takes one HMAC-SHA-256 (32 bytes) per record'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM set_config('dbq.signing', 'on', true);
    UPDATE @schema@.django_dbq_retired r SET mac = s.mac
    FROM unnest(ids, macs) AS s(id, mac)
    WHERE r.id = s.id AND r.mac IS NULL
      AND r.txid = pg_current_xact_id()::text::bigint;
    GET DIAGNOSTICS signed = ROW_COUNT;
    PERFORM set_config('dbq.signing', '', true);
    RETURN signed;
END
$$;
