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
-- A seal covers the events of ids after the previous seal's last and up to its
-- own last_event_id, below which no append is still in flight: the sealer
-- waits, without a lock, for the transactions that were appending when it read
-- the id sequence to end (dbq_committed_event_id_v1), so every event of an id
-- up to that value is committed, and the next ones get higher ids. Its digest chains the previous seal's digest with the
-- covered events (id and hash, in id order); its mac, HMAC-SHA-256 under
-- settings.DBQ_LEDGER_KEY, is computed by the caller (the key never reaches
-- the database). Retention removes a sealed event only with a retirement
-- record (django_dbq_retired) of its id and hash, signed the same way, so the
-- seal still verifies.


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
-- guard allows), and dbq_sign_seal_v1 and dbq_sign_retired_v1 sign a seal or
-- retirement record their own transaction wrote (dbq.signing); both only while
-- the tables' owner is the current user.
CREATE OR REPLACE FUNCTION @schema@.dbq_protect_proof_v1()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = TG_RELID)
       = current_user::text::regrole
       AND ((TG_OP = 'TRUNCATE' AND pg_catalog.current_setting('dbq.retention', true) = 'on')
            OR (TG_OP = 'UPDATE' AND pg_catalog.current_setting('dbq.signing', true) = 'on'))
    THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'django_dbq: % keeps the ledger''s proof; % on it is refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Seals and retirement records are only ever appended; retention keeps them.';
END
$$;


-- dbq_require_mac_v1: the DEFERRABLE INITIALLY DEFERRED constraint trigger
-- function of django_dbq_seal and django_dbq_retired (AFTER INSERT, FOR EACH
-- ROW): at commit, a seal or retirement record must be signed. A transaction
-- that appends one and does not sign it (a role without the key, a process
-- that died) fails whole, so nothing it removed goes.
CREATE OR REPLACE FUNCTION @schema@.dbq_require_mac_v1()
RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    signed boolean;
BEGIN
    IF TG_TABLE_NAME = 'django_dbq_seal' THEN
        SELECT s.mac IS NOT NULL INTO signed FROM @schema@.django_dbq_seal s WHERE s.id = NEW.id;
    ELSE
        SELECT r.mac IS NOT NULL INTO signed FROM @schema@.django_dbq_retired r WHERE r.id = NEW.id;
    END IF;
    IF signed IS DISTINCT FROM true THEN
        RAISE EXCEPTION 'django_dbq: % row % is not signed; the transaction is refused', TG_TABLE_NAME, NEW.id
            USING ERRCODE = 'integrity_constraint_violation',
                  HINT = 'Seal with manage.py seal_ledger and remove old jobs with manage.py delete_old_jobs, both with DBQ_LEDGER_KEY set.';
    END IF;
    RETURN NULL;
END
$$;


-- dbq_committed_event_id_v1: an event id below which no append is still in
-- flight (0 for an empty ledger), as CREATE INDEX CONCURRENTLY waits for the
-- writers before it: the id sequence's last value, once every transaction that
-- then held a write lock on the ledger has ended. Every append takes that lock
-- before it takes an id, so whoever holds an id up to that value held the lock
-- when it was read; later appends get higher ids (the sequence must not cache:
-- cached ids come out of order). Nothing waits for it: it polls, at most
-- `wait_ms` (lock_not_available after), each look at pg_locks (which takes the
-- lock manager's partition locks) twice as far from the last, up to 20 ms
-- apart. The caller's own transaction is not
-- waited for; its appends are sealed or rolled back with the seal. Called by
-- the seal function only (not granted).
CREATE OR REPLACE FUNCTION @schema@.dbq_committed_event_id_v1(wait_ms integer)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    ids regclass := pg_get_serial_sequence('@schema@.django_dbq_jobevent', 'id')::regclass;
    highest bigint;
    writers text[];
    until timestamptz := clock_timestamp() + make_interval(secs => wait_ms / 1000.0);
    here oid := (SELECT d.oid FROM pg_database d WHERE d.datname = current_database());
    pause float8 := 0.001;
BEGIN
    IF (SELECT s.seqcache FROM pg_sequence s WHERE s.seqrelid = ids) > 1 THEN
        RAISE EXCEPTION 'django_dbq: the event id sequence % caches ids, so they come out of order; nothing is sealed', ids
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('ALTER SEQUENCE %s CACHE 1', ids);
    END IF;
    EXECUTE format('SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM %s', ids) INTO highest;
    SELECT array_agg(l.virtualtransaction) INTO writers
    FROM pg_locks l
    WHERE l.locktype = 'relation' AND l.database = here
      AND l.relation = '@schema@.django_dbq_jobevent'::regclass
      AND l.mode = 'RowExclusiveLock' AND l.granted AND l.pid <> pg_backend_pid();
    WHILE writers IS NOT NULL AND EXISTS (
        SELECT FROM pg_locks l
        WHERE l.locktype = 'relation' AND l.database = here
          AND l.relation = '@schema@.django_dbq_jobevent'::regclass
          AND l.virtualtransaction = ANY(writers)
    ) LOOP
        IF clock_timestamp() > until THEN
            RAISE EXCEPTION 'django_dbq: appends in flight outlasted the seal''s wait of % ms', wait_ms
                USING ERRCODE = 'lock_not_available',
                      HINT = 'A transaction that appends and stays open holds back the seals; the next seal tries again.';
        END IF;
        PERFORM pg_sleep(pause);
        pause := least(pause * 2, 0.02);
    END LOOP;
    RETURN highest;
END
$$;


-- dbq_seal_window_v1: what seal `seal_id` covers, the events of ids in
-- (after_id, last_id] and the entries of the retirement records for that seal
-- (events retention removed since): how many, the highest event id, their
-- digest, and how many of the events have no hash yet (migration 0018 computes
-- those of older ledgers). The digest is SHA-256 over the SHA-256 of each block
-- of 65,536 event ids (`id (8 bytes) || hash` of each event, in id order), in
-- block order: no value grows past what PostgreSQL holds in one (1 GB),
-- however many events a window covers.
CREATE OR REPLACE FUNCTION @schema@.dbq_seal_window_v1(seal_id bigint, after_id bigint, last_id bigint)
RETURNS TABLE (events bigint, last_event_id bigint, digest bytea, unhashed bigint)
LANGUAGE sql STABLE AS $$
    WITH covered AS (
        SELECT e.id, int8send(e.id) || e.hash AS entry, e.hash IS NULL AS unhashed
        FROM @schema@.django_dbq_jobevent e
        WHERE e.id > after_id AND e.id <= last_id
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


-- dbq_prepare_seal_v1: append the next seal, unsigned, for the caller to sign
-- in the same transaction (dbq_sign_seal_v1), and return it: its number, the
-- ids it covers (after_event_id, last_event_id], how many events, the running
-- total, its digest (sha256(the previous seal's digest || the window's
-- digest)), and the previous seal's mac, which the new one signs too. No row
-- when no event has been committed since the last seal. Sealers follow each
-- other (the seals' table lock, for the caller's transaction); it waits at
-- most `wait_ms` for that lock and for the appends in flight
-- (lock_not_available after), and refuses while events of the window still
-- wait for their hash.
CREATE OR REPLACE FUNCTION @schema@.dbq_prepare_seal_v1(wait_ms integer)
RETURNS TABLE (
    id bigint, sealed_at timestamptz, after_event_id bigint, last_event_id bigint,
    events bigint, total_events bigint, digest bytea, prev_mac bytea
)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    prev record;
    upto bigint;
    window_ record;
    waited text := current_setting('lock_timeout');
BEGIN
    IF wait_ms IS NULL OR wait_ms < 1 OR wait_ms > 60000 THEN
        RAISE EXCEPTION 'django_dbq: a sealer waits 1 to 60000 ms, not %', wait_ms
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Each statement below must see what committed before it (the appends the
    -- lock waited for): READ COMMITTED.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'django_dbq: a seal is taken in READ COMMITTED, not %', current_setting('transaction_isolation')
            USING ERRCODE = 'invalid_transaction_state',
                  HINT = 'Seal with manage.py seal_ledger, outside a REPEATABLE READ or SERIALIZABLE transaction.';
    END IF;
    PERFORM set_config('lock_timeout', wait_ms::text || 'ms', true);
    LOCK TABLE @schema@.django_dbq_seal IN EXCLUSIVE MODE;
    PERFORM set_config('lock_timeout', waited, true);
    upto := @schema@.dbq_committed_event_id_v1(wait_ms);
    SELECT s.id, s.last_event_id, s.total_events, s.digest, s.mac INTO prev
    FROM @schema@.django_dbq_seal s ORDER BY s.id DESC LIMIT 1;
    IF upto <= COALESCE(prev.last_event_id, 0) THEN
        RETURN;
    END IF;
    SELECT * INTO window_
    FROM @schema@.dbq_seal_window_v1(COALESCE(prev.id, 0) + 1, COALESCE(prev.last_event_id, 0), upto);
    IF window_.events = 0 THEN
        RETURN;
    END IF;
    IF window_.unhashed > 0 THEN
        RAISE EXCEPTION 'django_dbq: % events of the ledger have no hash yet; nothing is sealed', window_.unhashed
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Run manage.py migrate django_dbq to the end (migration 0018 hashes older events), then seal.';
    END IF;
    RETURN QUERY
    INSERT INTO @schema@.django_dbq_seal AS s
        (id, sealed_at, after_event_id, last_event_id, events, total_events, digest, mac, txid)
    VALUES (COALESCE(prev.id, 0) + 1, clock_timestamp(), COALESCE(prev.last_event_id, 0),
            window_.last_event_id, window_.events, COALESCE(prev.total_events, 0) + window_.events,
            sha256(COALESCE(prev.digest, '\x'::bytea) || window_.digest), NULL,
            pg_current_xact_id()::text::bigint)
    RETURNING s.id, s.sealed_at, s.after_event_id, s.last_event_id, s.events, s.total_events,
              s.digest, COALESCE(prev.mac, '\x'::bytea);
END
$$;


-- dbq_sign_seal_v1: sign the seal this transaction appended (dbq_prepare_seal_v1)
-- and that is not signed yet; whether it was. No other seal can be signed, so
-- none can be signed again.
CREATE OR REPLACE FUNCTION @schema@.dbq_sign_seal_v1(seal_id bigint, mac bytea)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    signed bigint;
BEGIN
    IF octet_length(mac) IS DISTINCT FROM 32 THEN
        RAISE EXCEPTION 'django_dbq: a seal''s mac is an HMAC-SHA-256 (32 bytes)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM set_config('dbq.signing', 'on', true);
    UPDATE @schema@.django_dbq_seal s SET mac = dbq_sign_seal_v1.mac
    WHERE s.id = seal_id AND s.mac IS NULL AND s.txid = pg_current_xact_id()::text::bigint;
    GET DIAGNOSTICS signed = ROW_COUNT;
    PERFORM set_config('dbq.signing', '', true);
    RETURN signed = 1;
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
