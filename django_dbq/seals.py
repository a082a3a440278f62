"""The ledger's proof: seals over its hash chains, and their verification.

The database chains every event to its job's previous one (events/sql/seals.sql)
and computes what a seal covers; the seal's mac, HMAC-SHA-256 under
settings.DBQ_LEDGER_KEY, is computed here, so the key never reaches the
database. A holder of the database alone can then neither rewrite nor remove a
sealed event without `verify_proof` naming the seal that no longer matches.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import logging
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections, transaction

from django_dbq.exceptions import DbqError
from django_dbq.sqlfiles import bind, load_queries, schema_of, with_schema


def _pin_search_path(cursor: Any) -> None:
    # The audit reads' pin; imported here, as the projections import this module.
    from django_dbq.projections.replay import _pin_search_path as pin_audit_read

    pin_audit_read(cursor)


logger = logging.getLogger("django_dbq.seals")

KEY_SETTING = "DBQ_LEDGER_KEY"
# The shortest key taken: HMAC-SHA-256 is as strong as its key up to 32 bytes.
MIN_KEY_BYTES = 16
# How often a worker seals when DBQ_SEAL_SECONDS is not set.
DEFAULT_SEAL_SECONDS = 60.0
# Chain breaks and head mismatches listed at most.
LISTED = 10


def _queries() -> dict[str, str]:
    return load_queries("django_dbq.events", "proof.sql")


def ledger_key() -> bytes | None:
    """settings.DBQ_LEDGER_KEY as bytes (text is UTF-8), or None when unset or empty."""
    key = getattr(settings, KEY_SETTING, None)
    if key is None or key in ("", b""):
        return None
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
        raise ImproperlyConfigured(
            f"{KEY_SETTING} must be text or bytes of at least {MIN_KEY_BYTES} bytes; generate "
            "one with: python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    return key


def require_key(doing: str) -> bytes:
    """The ledger key, or ImproperlyConfigured naming what needs it."""
    key = ledger_key()
    if key is None:
        raise ImproperlyConfigured(
            f"{doing} needs {KEY_SETTING} in the Django settings (a secret kept apart from "
            "the database); generate one with: "
            "python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    return key


def seal_seconds() -> float:
    """How often a worker seals the ledger (DBQ_SEAL_SECONDS, 60; 0: never) when a key is set."""
    return float(getattr(settings, "DBQ_SEAL_SECONDS", DEFAULT_SEAL_SECONDS))


def _mac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def seal_message(
    seal_id: int,
    sealed_at: datetime.datetime,
    after_event_id: int,
    last_event_id: int,
    events: int,
    total_events: int,
    digest: bytes,
    prev_mac: bytes,
) -> bytes:
    """The bytes a seal's mac signs: all it says, and the previous seal's mac."""
    at = sealed_at.astimezone(datetime.UTC).isoformat(timespec="microseconds")
    return (
        f"django_dbq seal v1 {seal_id} {at} {after_event_id} {last_event_id} {events} "
        f"{total_events} {digest.hex()} {prev_mac.hex()}"
    ).encode()


def retired_message(retired_id: int, seal_id: int, events: int, entries_digest: bytes) -> bytes:
    """The bytes a retirement record's mac signs."""
    return (
        f"django_dbq retired v1 {retired_id} {seal_id} {events} {entries_digest.hex()}"
    ).encode()


@dataclass(frozen=True)
class Sealed:
    """A seal just appended."""

    id: int
    events: int
    total_events: int
    last_event_id: int
    digest: bytes


# How long a worker's seal waits for another sealer and for the appends in
# flight before it gives up until its next turn; the command waits longer.
WORKER_WAIT_MS = 200
COMMAND_WAIT_MS = 10_000


def seal_ledger(using: str = DEFAULT_DB_ALIAS, wait_ms: int = COMMAND_WAIT_MS) -> Sealed | None:
    """Append a seal over every event committed since the last one; None when there is none.

    The seal covers event ids up to the highest one below which no append is in
    flight: the database waits at most `wait_ms` for the transactions appending
    now to end, holding off new appends meanwhile, and for another sealer
    (lock_not_available, a DatabaseError, after). It appends the seal and this
    process signs it in the same transaction.
    """
    key = require_key("Sealing the ledger")
    queries = _queries()
    connection = connections[using]
    outermost = not connection.in_atomic_block
    with transaction.atomic(using=using), connection.cursor() as cursor:
        if outermost:
            # The database takes a seal in READ COMMITTED only.
            cursor.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        cursor.execute(*bind(queries["prepare_seal"], {"wait_ms": wait_ms}))
        row = cursor.fetchone()
        if row is None:
            return None
        seal_id, at, after_id, last_id, events, total, digest, prev_mac = row
        digest, prev_mac = bytes(digest), bytes(prev_mac)
        mac = _mac(
            key, seal_message(seal_id, at, after_id, last_id, events, total, digest, prev_mac)
        )
        cursor.execute(*bind(queries["sign_seal"], {"id": seal_id, "mac": mac}))
        if not cursor.fetchone()[0]:
            raise DbqError(f"django_dbq: seal {seal_id} could not be signed")
    return Sealed(seal_id, events, total, last_id, digest)


def sign_retired(cursor: Any) -> int:
    """Sign the retirement records the cursor's transaction wrote; how many.

    Called by retention after dbq_delete_old_jobs_v4, in its transaction: a
    sealed event is removed only with a signed record of it.
    """
    queries = _queries()
    cursor.execute(with_schema(queries["unsigned_retired"], schema_of(cursor), cursor.connection))
    unsigned = cursor.fetchall()
    if not unsigned:
        return 0
    key = require_key("Removing sealed jobs (retention)")
    ids = [row[0] for row in unsigned]
    macs = [_mac(key, retired_message(rid, sid, n, bytes(d))) for rid, sid, n, d in unsigned]
    cursor.execute(*bind(queries["sign_retired"], {"ids": ids, "macs": macs}))
    return cursor.fetchone()[0]


@dataclass
class Proof:
    """What verify_proof found: the chains and seals it checked, and what does not hold."""

    # False on a database not yet migrated to 0017: there is nothing to check.
    chained: bool = True
    events: int = 0
    seals: int = 0
    last_seal: int | None = None
    unsealed: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_proof(
    using: str = DEFAULT_DB_ALIAS, since: int | None = None, since_digest: str | None = None
) -> Proof:
    """Recompute every job's hash chain and check every seal and retirement record.

    The projection's heads are compared with the chains by verify_projection
    (the replayed rows hold the hash of each job's last event).

    With `since`, a seal the caller trusts: only the later events and seals are
    checked (that seal's own mac still is), and with `since_digest` (the start of
    the digest seal_ledger printed for it, kept apart from the database) that
    the seal is still the one the caller kept.
    Reads in one snapshot (REPEATABLE READ, read only) and locks nothing; inside
    a caller's transaction, in that transaction's snapshots.
    """
    proof = Proof()
    queries = _queries()
    connection = connections[using]
    outermost = not connection.in_atomic_block
    with transaction.atomic(using=using), connection.cursor() as cursor:
        if outermost:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        # No TEMP table of the session stands in for a table of the app's schema.
        _pin_search_path(cursor)
        cursor.execute(queries["chained"])
        if not cursor.fetchone()[0]:
            proof.chained = False
            transaction.set_rollback(True, using)
            return proof
        seals = _read_seals(cursor, queries, since)
        if since is not None and (not seals or seals[0][0] != since):
            raise ValueError(
                f"there is no seal {since}; list the seals with: "
                "python manage.py seal_ledger --list"
            )
        if since is not None and since_digest is not None:
            if not seals[0][6].hex().startswith(since_digest.lower()):
                proof.problems.append(
                    f"seal {since}'s digest is not the {since_digest} you kept: the seals "
                    "were removed and taken again over a rewritten history"
                )
        since_id = seals[0][3] if since is not None else None
        _check_chains(cursor, queries, since_id, proof)
        if seals:
            _check_seals(cursor, queries, seals, since, proof)
            last_id = seals[-1][3]
        else:
            last_id = 0
        cursor.execute(*bind(queries["unsealed"], {"since_id": last_id}))
        proof.unsealed = cursor.fetchone()[0]
        # Read only; rolling back its savepoint also takes back the pinned path.
        transaction.set_rollback(True, using)
    return proof


def _read_seals(cursor: Any, queries: dict[str, str], since: int | None) -> list[tuple[Any, ...]]:
    cursor.execute(*bind(queries["seals_from"], {"first": since if since is not None else 0}))
    return [
        (sid, at, after, last, n, total, bytes(digest), bytes(mac) if mac is not None else None)
        for sid, at, after, last, n, total, digest, mac in cursor.fetchall()
    ]


def _check_chains(cursor: Any, queries: dict[str, str], since_id: int | None, proof: Proof) -> None:
    cursor.execute(*bind(queries["chain_check"], {"since_id": since_id}))
    proof.events, broken = cursor.fetchone()
    if not broken:
        return
    cursor.execute(*bind(queries["chain_breaks"], {"since_id": since_id, "limit": LISTED}))
    for event_id, job_id, version, kind, unhashed, orphan, unsealable in cursor.fetchall():
        if unsealable:
            why = "has an id no append gives (below 1): no seal covers it"
        elif unhashed:
            why = "has no hash (run manage.py migrate django_dbq to the end)"
        elif orphan:
            why = f"follows no event {version - 1}: the job's earlier history was removed"
        else:
            why = "does not match its chain: it, or an earlier event of the job, was rewritten"
        proof.problems.append(f"job {job_id} event {version} ({kind}, id {event_id}) {why}")
    if broken > LISTED:
        proof.problems.append(f"... and {broken - LISTED} more events whose hash does not hold")


def _check_seals(
    cursor: Any,
    queries: dict[str, str],
    seals: list[tuple[Any, ...]],
    since: int | None,
    proof: Proof,
) -> None:
    key = ledger_key()
    if key is None:
        proof.problems.append(
            f"the ledger has seals, and {KEY_SETTING} is not set: they cannot be checked"
        )
        return
    cursor.execute(*bind(queries["retired_from"], {"first": seals[0][0]}))
    for rid, sid, n, entries_digest, mac in cursor.fetchall():
        if mac is None or not hmac.compare_digest(
            bytes(mac), _mac(key, retired_message(rid, sid, n, bytes(entries_digest)))
        ):
            proof.problems.append(
                f"retirement record {rid} (of seal {sid}) is not signed with {KEY_SETTING}: "
                "it was not written by retention, or the key changed"
            )
    prev: tuple[Any, ...] | None = None
    for seal in seals:
        sid, at, after_id, last_id, events, total, digest, mac = seal
        prev_mac = prev[7] if prev is not None else b""
        if sid == since and sid > 1:
            # Trusted: its window is not recounted, its mac still checked.
            cursor.execute(*bind(queries["seal_mac"], {"id": sid - 1}))
            before = cursor.fetchone()
            prev_mac = bytes(before[0]) if before is not None and before[0] is not None else b""
        expected = _mac(
            key, seal_message(sid, at, after_id, last_id, events, total, digest, prev_mac)
        )
        # Each finding is reported and the check goes on from the seal as it
        # stands, so one bad seal does not hide what comes after it.
        if mac is None or not hmac.compare_digest(mac, expected):
            proof.problems.append(
                f"seal {sid} is not signed with {KEY_SETTING}: it was forged or changed, "
                "a seal before it was removed, or the key changed"
            )
        if prev is not None and (sid != prev[0] + 1 or after_id != prev[3]):
            proof.problems.append(f"seal {sid} does not follow seal {prev[0]}")
        if prev is None and since is None and (sid != 1 or after_id != 0):
            proof.problems.append(f"seal {sid} is the first one left: seals before it were removed")
        if sid != since:
            cursor.execute(
                *bind(queries["seal_window"], {"id": sid, "after_id": after_id, "last_id": last_id})
            )
            now_events, now_last, window, _unhashed = cursor.fetchone()
            prev_digest = prev[6] if prev is not None else b""
            if hashlib.sha256(prev_digest + bytes(window)).digest() != digest:
                proof.problems.append(_seal_mismatch(seal, now_events, now_last))
        proof.seals += 1
        proof.last_seal = sid
        prev = seal


def _seal_mismatch(seal: tuple[Any, ...], now_events: int, now_last: int | None) -> str:
    sid, at, _after, last_id, events = seal[:5]
    said = f"seal {sid} ({at:%Y-%m-%d %H:%M:%S}) covered {events} events up to id {last_id}"
    if now_events < events:
        return f"{said}; {now_events} of them are left: {events - now_events} events were removed"
    if now_events > events:
        return f"{said}; it now holds {now_events}: events were added among them"
    return f"{said}; they are all there, and one of them was rewritten"
