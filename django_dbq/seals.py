"""The ledger's proof: seals over its hash chains, and their verification.

The database chains every event to its job's previous one (events/sql/seals.sql)
and computes what a seal covers; the seal's mac, HMAC-SHA-256 under
settings.DBQ_LEDGER_KEY, is computed here, so the key never reaches the
database. A holder of the database alone can then neither rewrite nor remove a
sealed event without `verify_proof` naming the seal that no longer matches.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections, transaction

from django_dbq.sqlfiles import bind, load_queries

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
    xid_from: int,
    xid_to: int,
    events: int,
    total_events: int,
    last_event_id: int | None,
    digest: bytes,
    prev_mac: bytes,
) -> bytes:
    """The bytes a seal's mac signs: all it says, and the previous seal's mac."""
    return (
        f"django_dbq seal v1 {seal_id} {xid_from} {xid_to} {events} {total_events} "
        f"{last_event_id if last_event_id is not None else '-'} {digest.hex()} {prev_mac.hex()}"
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
    last_event_id: int | None


def seal_ledger(using: str = DEFAULT_DB_ALIAS) -> Sealed | None:
    """Append a seal over every event committed since the last one; None when there is none.

    Sealers follow each other (the seals' table lock); a long open transaction
    anywhere on the server holds back what a seal covers (nothing still in
    flight is ever sealed), never what it proves.
    """
    key = require_key("Sealing the ledger")
    queries = _queries()
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute(queries["prepare_seal"])
        row = cursor.fetchone()
        if row is None:
            return None
        seal_id, xid_from, xid_to, events, total, last_id, digest, prev_mac = row
        digest, prev_mac = bytes(digest), bytes(prev_mac)
        mac = _mac(
            key, seal_message(seal_id, xid_from, xid_to, events, total, last_id, digest, prev_mac)
        )
        cursor.execute(
            *bind(queries["seal"], {"id": seal_id, "xid_to": xid_to, "digest": digest, "mac": mac})
        )
    return Sealed(seal_id, events, total, last_id)


def sign_retired(cursor: Any) -> int:
    """Sign the retirement records the cursor's transaction wrote; how many.

    Called by retention after dbq_delete_old_jobs_v4, in its transaction: a
    sealed event is removed only with a signed record of it.
    """
    queries = _queries()
    cursor.execute(queries["unsigned_retired"])
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


def verify_proof(using: str = DEFAULT_DB_ALIAS, since: int | None = None) -> Proof:
    """Recompute every job's hash chain and check every seal and retirement record.

    The projection's heads are compared with the chains by verify_projection
    (the replayed rows hold the hash of each job's last event).

    With `since`, a seal the caller trusts: only the events of later
    transactions and the later seals are checked (that seal's own mac still is).
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
        cursor.execute(queries["chained"])
        if not cursor.fetchone()[0]:
            proof.chained = False
            return proof
        seals = _read_seals(cursor, queries, since)
        if since is not None and (not seals or seals[0][0] != since):
            raise ValueError(
                f"there is no seal {since}; list the seals with: "
                "python manage.py seal_ledger --list"
            )
        since_xid = seals[0][3] if since is not None else 0
        _check_chains(cursor, queries, since_xid, proof)
        if seals:
            _check_seals(cursor, queries, seals, since, proof)
            last_xid = seals[-1][3]
        else:
            last_xid = 0
        cursor.execute(*bind(queries["unsealed"], {"since_xid": last_xid}))
        proof.unsealed = cursor.fetchone()[0]
    return proof


def _read_seals(cursor: Any, queries: dict[str, str], since: int | None) -> list[tuple[Any, ...]]:
    cursor.execute(*bind(queries["seals_from"], {"first": since if since is not None else 0}))
    return [
        (sid, at, xf, xt, n, total, last, bytes(digest), bytes(mac))
        for sid, at, xf, xt, n, total, last, digest, mac in cursor.fetchall()
    ]


def _check_chains(cursor: Any, queries: dict[str, str], since_xid: int, proof: Proof) -> None:
    cursor.execute(*bind(queries["chain_check"], {"since_xid": since_xid}))
    proof.events, broken = cursor.fetchone()
    if not broken:
        return
    cursor.execute(*bind(queries["chain_breaks"], {"since_xid": since_xid, "limit": LISTED}))
    for event_id, job_id, version, kind, unhashed, orphan in cursor.fetchall():
        if unhashed:
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
        sid, _at, xid_from, xid_to, events, total, last_id, digest, mac = seal
        prev_mac = prev[8] if prev is not None else b""
        if sid == since:
            # Trusted: its window is not recounted, its mac still checked.
            if prev is None and sid > 1:
                cursor.execute(*bind(queries["seals_from"], {"first": sid - 1}))
                before = cursor.fetchone()
                prev_mac = bytes(before[8]) if before is not None else b""
        expected = _mac(
            key, seal_message(sid, xid_from, xid_to, events, total, last_id, digest, prev_mac)
        )
        if not hmac.compare_digest(mac, expected):
            proof.problems.append(
                f"seal {sid} is not signed with {KEY_SETTING}: it was forged or changed, "
                "a seal before it was removed, or the key changed"
            )
            return
        if prev is not None and (sid != prev[0] + 1 or xid_from != prev[3]):
            proof.problems.append(f"seal {sid} does not follow seal {prev[0]}")
            return
        if prev is None and since is None and (sid != 1 or xid_from != 0):
            proof.problems.append(f"seal {sid} is the first one left: seals before it were removed")
            return
        if sid != since:
            cursor.execute(
                *bind(queries["seal_window"], {"id": sid, "xid_from": xid_from, "xid_to": xid_to})
            )
            now_events, now_last, window, _unhashed = cursor.fetchone()
            prev_digest = prev[7] if prev is not None else b""
            if hashlib.sha256(prev_digest + bytes(window)).digest() != digest:
                proof.problems.append(_seal_mismatch(seal, now_events, now_last))
                return
        proof.seals += 1
        proof.last_seal = sid
        prev = seal


def _seal_mismatch(seal: tuple[Any, ...], now_events: int, now_last: int | None) -> str:
    sid, at, _xf, _xt, events, _total, last_id = seal[:7]
    said = f"seal {sid} ({at:%Y-%m-%d %H:%M:%S}) covered {events} events up to id {last_id}"
    if now_events < events:
        return f"{said}; {now_events} of them are left: {events - now_events} events were removed"
    if now_events > events:
        return f"{said}; its window now holds {now_events}: events were added to it"
    return f"{said}; they are all there, and one of them was rewritten"
