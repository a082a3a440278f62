"""Retention: delete_old_jobs over N finished jobs, in batches and in one statement.

    python benchmarks/retention.py --jobs 300000 --batch 5000

Builds N finished jobs of three events each (benchmarks/replay.py's ledger), times
Job.objects.delete_old() in batches of --batch (the longest batch is the longest
any lock is held), then builds them again and times the previous release's one
statement, dbq_delete_old_jobs_v4. Prints both and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import timedelta

from common import machine, setup, sql
from replay import build_ledger


def size_mb() -> float:
    (size,) = sql(
        "SELECT pg_total_relation_size('django_dbq_jobevent') + pg_total_relation_size('django_dbq_job')"
    )[0]
    return size / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=5_000)
    args = parser.parse_args()
    setup()
    from django.utils import timezone

    from django_dbq.events.append import delete_old_jobs

    build_ledger(args.jobs * 3, chunk=100_000)
    before = size_mb()
    marks = [time.perf_counter()]
    started = marks[0]
    deleted = delete_old_jobs(
        timezone.now() + timedelta(hours=1),
        batch_size=args.batch,
        progress=lambda done, batches: marks.append(time.perf_counter()),
    )
    batched = time.perf_counter() - started
    longest = max(b - a for a, b in zip(marks, marks[1:], strict=False))

    build_ledger(args.jobs * 3, chunk=100_000)
    started = time.perf_counter()
    (one,) = sql("SELECT dbq_delete_old_jobs_v4(now() + interval '1 hour')")[0]
    single = time.perf_counter() - started
    result = {
        "benchmark": "retention",
        "jobs": args.jobs,
        "batch": args.batch,
        "batched_seconds": batched,
        "longest_batch_seconds": longest,
        "batched_deleted": deleted,
        "one_statement_seconds": single,
        "one_statement_deleted": one,
        "disk_mb_before": before,
        "machine": machine(),
    }
    print(
        f"\nretention of {args.jobs:,} finished jobs ({before:,.0f} MB)\n"
        f"  in batches of {args.batch:,}: {batched:.1f} s, longest batch {longest * 1000:.0f} ms\n"
        f"  in one statement (dbq_delete_old_jobs_v4): {single:.1f} s, one transaction"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
