"""The ledger at scale: the hot paths on an empty ledger, then with history behind them.

    python benchmarks/scale.py --events 20000000 --scheduled 1000000 --backlog 1000000

One run, one database, each figure next to the same measurement on the empty
ledger (a ratio measured in the same run):

1. empty ledger: drain of --jobs jobs with --workers workers; enqueue one by one
   (--one-by-one jobs) and in bulk (--per-call jobs per call);
2. the same with --events events of finished jobs behind them (benchmarks/replay.py's
   ledger: set-based INSERTs through the ledger, in other queues);
3. the drain again with --scheduled jobs scheduled for tomorrow in the drained queue;
4. a drain of a --backlog-job backlog, whole, against a drain of --jobs jobs
   measured just before it (in a queue without scheduled jobs).

Each drain is timed between its first claim and its last outcome in the ledger, so
process start-up is not counted; with --repeats R each figure is the median of R.
The idle worker's "seconds until the next due job" query and one claim are timed
as well. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import datetime

from common import machine, setup, sql, start_workers
from replay import CLAIM_ALL, COMPLETE_ALL, build_ledger

BUILD_CHUNK = 100_000


def build_history(events: int) -> float:
    """Finished jobs of three events each (replay.py's ledger, in queues r0, r1, ...); seconds."""
    started = time.perf_counter()
    build_ledger(events, chunk=BUILD_CHUNK)
    return time.perf_counter() - started


def enqueue_in_chunks(jobs: int, queue: str, run_after: datetime | None = None) -> None:
    from django_dbq.models import Job

    for start in range(0, jobs, BUILD_CHUNK):
        Job.objects.bulk_create(
            [
                Job(name="noop", queue_name=queue, run_after=run_after)
                for _ in range(min(BUILD_CHUNK, jobs - start))
            ]
        )


def vacuum() -> None:
    sql("VACUUM ANALYZE django_dbq_job")
    sql("VACUUM ANALYZE django_dbq_jobevent")


def enqueue(jobs: int, per_call: int = 0) -> float:
    """Jobs/s of Job.objects.create one by one (per_call 0) or bulk_create per_call."""
    from django_dbq.models import Job

    Job.objects.create(name="noop", queue_name="e")  # connected outside the timing
    started = time.perf_counter()
    if per_call:
        for _ in range(jobs // per_call):
            Job.objects.bulk_create([Job(name="noop", queue_name="e") for _ in range(per_call)])
    else:
        for _ in range(jobs):
            Job.objects.create(name="noop", queue_name="e")
    rate = jobs / (time.perf_counter() - started)
    finish_queue("e")
    return rate


def finish_queue(queue: str) -> None:
    """Complete the waiting jobs of a queue through the ledger (no worker needed)."""
    sql(CLAIM_ALL, [queue])
    sql(COMPLETE_ALL, [queue])


def drain(jobs: int, workers: int, queue: str = "q0") -> float:
    """Enqueue `jobs` in bulk, drain them with `workers` worker processes: jobs/s."""
    enqueue_in_chunks(jobs, queue)
    sql("ANALYZE django_dbq_job")
    (mark,) = sql("SELECT coalesce(max(id), 0) FROM django_dbq_jobevent")[0]
    processes = start_workers(workers, queue, "--burst")
    for process in processes:
        if process.wait() != 0:
            raise SystemExit(f"a worker exited with {process.returncode}")
    ((first, last, done),) = sql(
        "SELECT min(at) FILTER (WHERE kind = 'claimed'), max(at),"
        " count(*) FILTER (WHERE kind = 'completed') FROM django_dbq_jobevent WHERE id > %s",
        [mark],
    )
    if done != jobs:
        raise SystemExit(f"{done} of {jobs} jobs completed")
    return done / (last - first).total_seconds()


def idle_poll_ms(queue: str = "q0", runs: int = 20) -> float:
    """Median milliseconds of the idle worker's 'seconds until the next due job'."""
    from django_dbq.events.claims import seconds_until_due

    times = []
    for _ in range(runs):
        started = time.perf_counter()
        seconds_until_due(queue)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def claim_ms(queue: str = "q0", ready: int = 100, batch: int = 10) -> tuple[float, int]:
    """Milliseconds and shared buffers of one claim of `batch` among `ready` due jobs,
    rolled back (EXPLAIN ANALYZE of the claim function)."""
    from django.db import connection, transaction

    from django_dbq.models import Job

    with transaction.atomic():
        Job.objects.bulk_create([Job(name="noop", queue_name=queue) for _ in range(ready)])
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL track_io_timing = off")
            cursor.execute(
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT * FROM dbq_claim_jobs_v4("
                "%s, %s, 'bench', %s, 'h', 1, 30.0::float8, NULL)",
                [queue, batch, "k" * 40],
            )
            (plan,) = cursor.fetchone()
        transaction.set_rollback(True)
    top = plan[0]
    buffers = top["Plan"].get("Shared Hit Blocks", 0) + top["Plan"].get("Shared Read Blocks", 0)
    return top["Execution Time"], buffers


def schedule(jobs: int, queue: str = "q0") -> None:
    """`jobs` jobs due tomorrow in `queue`."""
    from datetime import timedelta

    from django.utils import timezone

    enqueue_in_chunks(jobs, queue, run_after=timezone.now() + timedelta(days=1))
    vacuum()


def median_of(repeats: int, measure, *args) -> float:  # noqa: ANN001
    return statistics.median(measure(*args) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000_000)
    parser.add_argument("--scheduled", type=int, default=1_000_000)
    parser.add_argument("--backlog", type=int, default=1_000_000)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--one-by-one", type=int, default=2_000)
    parser.add_argument("--per-call", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    setup()
    r = args.repeats
    figures: dict[str, dict[str, float]] = {}

    def measure_all(label: str) -> None:
        figures[label] = {
            "drain_jobs_per_s": median_of(r, drain, args.jobs, args.workers),
            "create_jobs_per_s": median_of(r, enqueue, args.one_by_one),
            "bulk_jobs_per_s": median_of(r, enqueue, args.per_call * 20, args.per_call),
            "claim_ms": claim_ms()[0],
            "idle_poll_ms": idle_poll_ms(),
        }

    vacuum()
    measure_all("empty")
    build_seconds = build_history(args.events)
    (events,) = sql("SELECT count(*) FROM django_dbq_jobevent")[0]
    measure_all("history")
    schedule(args.scheduled)
    measure_all("scheduled")
    # In a queue of its own, without the scheduled jobs.
    backlog_small = median_of(r, drain, args.jobs, args.workers, "b0")
    backlog = drain(args.backlog, args.workers, "b0")
    (size,) = sql(
        "SELECT pg_total_relation_size('django_dbq_jobevent') + pg_total_relation_size('django_dbq_job')"
    )[0]

    base = figures["empty"]
    print(f"\nscale: {events:,} events behind ({build_seconds:.0f} s to build), median of {r}")
    print(f"  {'measure':<34} {'empty':>12} {'history':>12} {'+scheduled':>12}  ratios")
    for key in base:
        row = [figures[label][key] for label in ("empty", "history", "scheduled")]
        ratios = " ".join(f"{value / base[key]:.2f}x" for value in row[1:])
        print(f"  {key:<34} {row[0]:>12,.2f} {row[1]:>12,.2f} {row[2]:>12,.2f}  {ratios}")
    print(
        f"  backlog of {args.backlog:,}: {backlog:,.0f} jobs/s against {backlog_small:,.0f}"
        f" for {args.jobs:,} ({backlog / backlog_small:.2f}x)"
    )
    print(f"  disk: {size / 1e6:,.0f} MB, {size / events * 1e6 / 1e6:,.1f} MB per million events")
    print(
        json.dumps(
            {
                "benchmark": "scale",
                "events": events,
                "scheduled": args.scheduled,
                "figures": figures,
                "backlog_jobs_per_s": backlog,
                "backlog_small_jobs_per_s": backlog_small,
                "bytes_per_event": size / events,
                "machine": machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
