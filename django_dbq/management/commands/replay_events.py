from __future__ import annotations

import re
import threading
import time
from argparse import ArgumentTypeError
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connections

from django_dbq.management.selection import parse_when
from django_dbq.projections.replay import (
    REPLAY_SLICE_BYTES,
    projection_as_of,
    replay_events,
    verify_projection,
)
from django_dbq.seals import Proof, verify_proof

# What dbq_replay_events_v5 (and its audit variants) say after each slice.
SLICE_NOTICE = re.compile(r"dbq replay: slice (\d+) of (\d+), (\d+) events")


def megabytes(text: str) -> int:
    """A positive whole number of megabytes, as bytes."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ArgumentTypeError(
            f"{text!r} is not a positive whole number of megabytes; e.g. --slice-mb 64"
        )
    return value * 1024 * 1024


def seal_and_digest(text: str) -> tuple[int, str | None]:
    """SEAL or SEAL:DIGEST, e.g. 12 or 12:3f9a0c5be1d2477a."""
    number, _, digest = text.partition(":")
    try:
        seal = int(number)
    except ValueError:
        seal = 0
    hexdigits = set("0123456789abcdefABCDEF")
    if seal < 1 or (digest and (len(digest) < 16 or not set(digest) <= hexdigits)):
        raise ArgumentTypeError(
            f"{text!r} is not SEAL or SEAL:DIGEST (a seal number, and the start of the digest "
            "seal_ledger printed for it, 16 hex digits or more); e.g. --since 12:3f9a0c5be1d2477a"
        )
    return seal, digest or None


class Command(BaseCommand):
    help = (
        "Rebuild the Job and Queue projections from their ledgers, or --verify that a rebuild "
        "matches them."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--verify",
            action="store_true",
            help="Rebuild into a scratch table of this session and diff it against the live "
            "table, reading both in one snapshot and locking nothing; recompute every job's "
            "hash chain and check every seal (DBQ_LEDGER_KEY); exit 1 on drift or tampering.",
        )
        parser.add_argument(
            "--as-of",
            help="Rebuild the projection as it was at this time (ISO 8601) into a scratch table "
            "of this session and print jobs per queue and state then; the live table is untouched.",
        )
        parser.add_argument(
            "--slice-mb",
            type=megabytes,
            default=REPLAY_SLICE_BYTES,
            dest="slice_bytes",
            help="Replay a ledger larger than this many megabytes in slices of jobs, one at a "
            "time; the server holds a few times a slice in memory (4x measured with small "
            "payloads, 8x with 2 KB workspaces) "
            f"(default {REPLAY_SLICE_BYTES // 1024 // 1024}).",
        )
        parser.add_argument(
            "--since",
            type=seal_and_digest,
            metavar="SEAL[:DIGEST]",
            help="With --verify: check only the hash chains and seals after this seal, which "
            "you trust (its mac is still checked), and with the digest seal_ledger printed for "
            "it (16 hex digits or more), that it is still that seal; the projection is still "
            "compared whole.",
        )
        parser.add_argument("--database", default="default", help="Database alias.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            self._replay(options)
        except DatabaseError as exc:
            # The ledger's own refusals name the problem and the fix.
            if not str(exc).startswith("django_dbq:"):
                raise
            hint = getattr(getattr(exc.__cause__, "diag", None), "message_hint", None)
            raise CommandError(f"{str(exc).splitlines()[0]}\n{hint or ''}".strip()) from None

    def _replay(self, options: dict[str, Any]) -> None:
        with self._progress(options):
            self._replay_reporting(options)

    @contextmanager
    def _progress(self, options: dict[str, Any]) -> Iterator[None]:
        """On a terminal (or with --verbosity 2), a line per slice of the rebuild: events, events/s, time left.

        The replay functions send a NOTICE after each slice of a ledger larger than
        --slice-mb; one slice says nothing.
        """
        if not (self.stderr.isatty() or options["verbosity"] >= 2):
            yield
            return
        connection = connections[options["database"]]
        connection.ensure_connection()
        raw = connection.connection
        started = time.perf_counter()

        def show(diagnostic: Any) -> None:
            found = SLICE_NOTICE.search(diagnostic.message_primary or "")
            if found is None:
                return
            done, slices, events = (int(n) for n in found.groups())
            elapsed = time.perf_counter() - started
            left = elapsed / done * (slices - done)
            self.stderr.write(
                f"slice {done} of {slices}: {events:,} events, "
                f"{events / max(elapsed, 1e-9):,.0f} events/s, about {left:.0f} s left"
            )

        raw.add_notice_handler(show)
        try:
            yield
        finally:
            raw.remove_notice_handler(show)

    def _replay_reporting(self, options: dict[str, Any]) -> None:
        started = time.perf_counter()
        if options["since"] is not None and not options["verify"]:
            raise CommandError("--since SEAL goes with --verify: replay_events --verify --since 12")
        if options["as_of"]:
            self._print_as_of(parse_when(options["as_of"]), options["database"])
            return
        if not options["verify"]:
            events = replay_events(using=options["database"], slice_bytes=options["slice_bytes"])
            self.stdout.write(f"replayed {events} events in {time.perf_counter() - started:.2f}s")
            return
        result, proof = self._verify_beside(
            options,
            lambda: verify_projection(
                using=options["database"], slice_bytes=options["slice_bytes"]
            ),
        )
        elapsed = time.perf_counter() - started
        if result.ok and proof.ok:
            self.stdout.write(
                f"ok: replaying {result.events} events gives the live projection "
                f"({result.jobs} jobs) in {elapsed:.2f}s; {result.queue_events} queue events "
                f"give the live queues ({result.queues} ever paused)"
            )
            since = options["since"][0] if options["since"] else None
            self.stdout.write(f"ok: {self._describe_proof(proof, since)}")
            return
        for problem in proof.problems:
            self.stderr.write(f"tampered: {problem}")
        if result.drift_count:
            self.stderr.write(f"drift: {result.drift_count} jobs differ between live and replay")
        for drift in result.drift:
            self.stderr.write(f"  {drift.describe()}")
        if result.drift_count > len(result.drift):
            self.stderr.write(f"  ... and {result.drift_count - len(result.drift)} more")
        if result.queue_drift:
            self.stderr.write(
                f"drift: {len(result.queue_drift)} queues differ between live and replay"
            )
        for queue_drift in result.queue_drift:
            self.stderr.write(f"  {queue_drift.describe()}")
        raise SystemExit(1)

    def _verify_beside(
        self, options: dict[str, Any], rebuild: Callable[[], Any]
    ) -> tuple[Any, Proof]:
        """`rebuild`'s result, and the chains and seals checked while it compares the projection.

        Outside a transaction the check runs on a connection of its own, in a
        thread, at the same time as the rebuild (each reads its own snapshot);
        inside one it runs after, in the caller's transaction, which may hold
        events no other connection sees yet.
        """
        using = options["database"]
        if connections[using].in_atomic_block:
            result = rebuild()
            return result, self._verify_proof(options)
        found: dict[str, Any] = {}

        def check() -> None:
            try:
                found["proof"] = self._verify_proof(options)
            except BaseException as exc:  # re-raised in the command's thread
                found["error"] = exc
            finally:
                connections[using].close()

        thread = threading.Thread(target=check, name="dbq-verify-proof")
        thread.start()
        try:
            result = rebuild()
        finally:
            thread.join()
        if "error" in found:
            raise found["error"]
        return result, found["proof"]

    def _verify_proof(self, options: dict[str, Any]) -> Proof:
        try:
            since, digest = options["since"] or (None, None)
            return verify_proof(using=options["database"], since=since, since_digest=digest)
        except (ValueError, ImproperlyConfigured) as exc:
            raise CommandError(str(exc)) from None

    @staticmethod
    def _describe_proof(proof: Proof, since: int | None) -> str:
        if not proof.chained:
            return "the ledger has no hash chains yet: migrate django_dbq to 0018"
        after = f" after seal {since}" if since is not None else ""
        text = f"the hash chains of {proof.events} events{after} hold"
        if proof.last_seal is None and since is None:
            return (
                f"{text}; no seal yet ({proof.unsealed} events unsealed; set DBQ_LEDGER_KEY "
                "and run seal_ledger, or a worker, to seal them)"
            )
        return (
            f"{text}; {proof.seals} seals verify, the last is seal "
            f"{proof.last_seal if proof.last_seal is not None else since}; "
            f"{proof.unsealed} events since are not sealed yet"
        )

    def _print_as_of(self, when: Any, using: str) -> None:
        jobs = projection_as_of(when, using=using)
        counts = Counter((job.queue_name, job.state) for job in jobs)
        self.stdout.write(f"as of {when.isoformat()}: {len(jobs)} jobs")
        for (queue, state), count in sorted(counts.items()):
            self.stdout.write(f"  {queue} {state} {count}")
