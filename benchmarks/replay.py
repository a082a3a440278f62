"""Replay speed: build a ledger of N events, then time replay_events and --verify.

    python benchmarks/replay.py --events 1000000 --repeats 3

The ledger is built through the ledger itself: jobs are enqueued in bulk, then
claimed and completed by set-based INSERTs of events (three events per job), so
the trigger writes the projection as it does in production.
"""

from __future__ import annotations

import argparse
import json
import time

from common import machine, print_table, setup, sql, summary

CLAIM_ALL = """
INSERT INTO django_dbq_jobevent (job_id, version, kind, payload)
SELECT id, version + 1, 'claimed',
       jsonb_build_object('worker', 'bench', 'host', 'h', 'pid', 1,
                          'lease_until', now() + interval '30 seconds')
FROM django_dbq_job WHERE state = 'NEW' AND queue_name = %s
"""
COMPLETE_ALL = """
INSERT INTO django_dbq_jobevent (job_id, version, kind, payload)
SELECT id, version + 1, 'completed',
       jsonb_build_object('task', 'benchmarks.tasks.noop', 'worker', 'bench',
                          'duration', 0.0001, 'workspace', '{}'::jsonb)
FROM django_dbq_job WHERE state = 'PROCESSING' AND queue_name = %s
"""


def build_ledger(events: int, chunk: int = 50000) -> int:
    from django_dbq.models import Job

    jobs = events // 3
    for start in range(0, jobs, chunk):
        queue = f"r{start // chunk}"
        Job.objects.bulk_create(
            [Job(name="noop", queue_name=queue) for _ in range(min(chunk, jobs - start))]
        )
        sql(CLAIM_ALL, [queue])
        sql(COMPLETE_ALL, [queue])
    sql("VACUUM ANALYZE django_dbq_job")
    sql("VACUUM ANALYZE django_dbq_jobevent")
    return sql("SELECT count(*) FROM django_dbq_jobevent")[0][0]


def timed(*args: str) -> float:
    from io import StringIO

    from django.core.management import call_command

    started = time.perf_counter()
    call_command("replay_events", *args, stdout=StringIO())
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    setup()
    started = time.perf_counter()
    events = build_ledger(args.events)
    built = time.perf_counter() - started
    timed()  # warm-up
    replay = [events / timed() for _ in range(args.repeats)]
    verify = [events / timed("--verify") for _ in range(args.repeats)]
    result = {
        "benchmark": "replay",
        "events": events,
        "repeats": args.repeats,
        "build_seconds": built,
        "replay_events_per_s": summary(replay),
        "verify_events_per_s": summary(verify),
        "machine": machine(),
    }
    print_table(
        f"replay of {events:,} events ({events // 3:,} jobs), median of {args.repeats}",
        [
            ("replay_events (events/s)", result["replay_events_per_s"]),
            ("replay_events --verify (events/s)", result["verify_events_per_s"]),
            ("ledger built in", f"{built:.1f} s"),
        ],
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
