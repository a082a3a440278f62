"""Migration 0018 on an older ledger, and sealing and verifying it after.

    python benchmarks/backfill.py --events 1000000

Builds a ledger of N events at migration 0016 (before the hash chains), as
replay.py builds one, then times `migrate` forward (0017, then 0018, which
hashes every older event), the first `seal_ledger` (which covers them all) and
`replay_events --verify` with the chains and the seal checked.
"""

from __future__ import annotations

import argparse
import json
import time
from io import StringIO

from common import machine, print_table, setup, sql
from replay import build_ledger

KEY = "benchmark-ledger-key-of-32-bytes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()

    from django.core.management import call_command
    from django.test import override_settings

    setup()
    call_command("migrate", "django_dbq", "0016_create_jobs_v3", verbosity=0)
    built = time.perf_counter()
    events = build_ledger(args.events)
    built = time.perf_counter() - built

    started = time.perf_counter()
    call_command("migrate", "django_dbq", "0017_ledger_proof", verbosity=0)
    forward_0017 = time.perf_counter() - started
    started = time.perf_counter()
    call_command("migrate", verbosity=0)
    backfill = time.perf_counter() - started
    assert sql("SELECT count(*) FROM django_dbq_jobevent WHERE hash IS NULL")[0][0] == 0

    with override_settings(DBQ_LEDGER_KEY=KEY):
        started = time.perf_counter()
        call_command("seal_ledger", stdout=StringIO())
        sealed = time.perf_counter() - started
        started = time.perf_counter()
        call_command("replay_events", "--verify", stdout=StringIO())
        verified = time.perf_counter() - started

    per_million = 1_000_000 / events
    results = {
        "benchmark": "backfill",
        "events": events,
        "build_seconds": built,
        "migrate_0017_seconds": forward_0017,
        "migrate_0018_seconds": backfill,
        "migrate_0018_seconds_per_million_events": backfill * per_million,
        "first_seal_seconds": sealed,
        "verify_seconds": verified,
        "verify_events_per_s": events / verified,
        "machine": machine(),
    }
    print_table(
        f"migration 0018 on {events} events",
        [
            ("migrate 0017 (columns, functions)", f"{forward_0017:.1f} s"),
            ("migrate 0018 (hash every event)", f"{backfill:.1f} s"),
            ("  per million events", f"{backfill * per_million:.1f} s"),
            ("first seal (covers them all)", f"{sealed:.1f} s"),
            ("replay_events --verify", f"{verified:.1f} s ({events / verified:,.0f} events/s)"),
        ],
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
