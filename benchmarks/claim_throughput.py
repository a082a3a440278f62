"""Claim throughput: enqueue no-op jobs, drain them with worker processes, report rates.

    python benchmarks/claim_throughput.py --jobs 20000 --workers 2 --repeats 3

Each run: enqueue one by one, enqueue in bulk, drain with W `worker --burst`
processes (rates measured between the first claim and the last outcome in the
ledger, so process start-up is not counted), then time the claim statement itself.
With --paused-queues N, N other queues are paused throughout (claims read the
pause of their own queue; this shows what the others cost them). With
--held-keys N, N jobs with unique keys wait in another queue throughout (keys in
use); with --keyed, the jobs enqueued in bulk and drained carry unique keys.
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

from common import (
    machine,
    percentile,
    print_table,
    reset,
    setup,
    sql,
    start_workers,
    summary,
)


def enqueue_one_by_one(count: int, prepare_threshold: int | None = None) -> float:
    """Job.objects.create in a loop; with prepare_threshold set in the database's
    OPTIONS (as a user would in settings) the INSERT is prepared once, as it would
    be after that many runs."""
    from django.db import connection

    from django_dbq.models import Job

    connection.close()
    connection.settings_dict["OPTIONS"]["prepare_threshold"] = prepare_threshold
    try:
        Job.objects.create(name="noop", queue_name="q0")  # connect outside the timing
        started = time.perf_counter()
        for _ in range(count):
            Job.objects.create(name="noop", queue_name="q0")
        return count / (time.perf_counter() - started)
    finally:
        connection.close()
        del connection.settings_dict["OPTIONS"]["prepare_threshold"]


def enqueue_bulk(count: int, name: str, queues: int, keyed: bool = False) -> float:
    from django_dbq.models import Job

    if keyed:
        jobs = [
            Job(name=name, queue_name=f"q{n % queues}", unique_key=f"key-{n}") for n in range(count)
        ]
    else:
        jobs = [Job(name=name, queue_name=f"q{n % queues}") for n in range(count)]
    started = time.perf_counter()
    created = Job.objects.bulk_create(jobs)
    assert len(created) == count, f"{len(created)} of {count} jobs created"
    return count / (time.perf_counter() - started)


def hold_keys(count: int) -> None:
    """`count` jobs with unique keys, waiting in a queue no worker of the benchmark drains."""
    from django_dbq.models import Job

    Job.objects.bulk_create(
        [Job(name="noop", queue_name="held", unique_key=f"held-{n}") for n in range(count)]
    )


def drain(workers: int, queues: int) -> tuple[float, float, int]:
    """Run the workers to the end; return jobs/s, events/s and the number of jobs."""
    processes = []
    for n in range(workers):
        processes += start_workers(1, f"q{n % queues}", "--burst")
    for process in processes:
        if process.wait() != 0:
            raise SystemExit(f"a worker exited with {process.returncode}")
    ((first, last, events, jobs),) = sql(
        "SELECT min(at) FILTER (WHERE kind = 'claimed'), max(at),"
        " count(*) FILTER (WHERE kind <> 'created'),"
        " count(*) FILTER (WHERE kind = 'completed') FROM django_dbq_jobevent"
    )
    seconds = (last - first).total_seconds()
    return jobs / seconds, events / seconds, jobs


def claim_latency(count: int, batch: int) -> tuple[list[float], list[float]]:
    """Time the claim and the acknowledgement statements on their own (milliseconds)."""
    import orjson

    from django_dbq.events.claims import append_held, claim_jobs, new_worker_key

    enqueue_bulk(count, "noop", 1)
    key = new_worker_key()
    claims, acks = [], []
    payload = orjson.dumps({"task": "benchmarks.tasks.noop", "workspace": {}}).decode()
    while True:
        started = time.perf_counter()
        rows = claim_jobs("q0", batch, "bench", key, "host", 1, 30)
        claims.append((time.perf_counter() - started) * 1000)
        if not rows:
            return claims[:-1], acks
        started = time.perf_counter()
        append_held(key, [(row[0], "completed", payload) for row in rows])
        acks.append((time.perf_counter() - started) * 1000)


def pause_queues(count: int) -> None:
    """Pause `count` queues other than the ones the benchmark drains."""
    from django_dbq.queues import pause_queue

    for n in range(count):
        pause_queue(f"paused{n}", "benchmark", by="claim_throughput")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--queues", type=int, default=1)
    parser.add_argument("--tasks", type=int, choices=(1, 3), default=1)
    parser.add_argument("--one-by-one", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=50, help="claim size for the latency test")
    parser.add_argument(
        "--paused-queues", type=int, default=0, help="pause this many other queues throughout"
    )
    parser.add_argument(
        "--held-keys", type=int, default=0, help="jobs with unique keys waiting in another queue"
    )
    parser.add_argument(
        "--keyed", action="store_true", help="the bulk-enqueued jobs carry unique keys"
    )
    args = parser.parse_args()
    name = "noop" if args.tasks == 1 else "noop3"

    setup()
    if args.paused_queues:
        pause_queues(args.paused_queues)
    if args.held_keys:
        hold_keys(args.held_keys)
    enqueue_bulk(2000, name, args.queues)  # warm-up
    drain(args.workers, args.queues)

    single, prepared, bulk, jobs_s, events_s = [], [], [], [], []
    for _ in range(args.repeats):
        reset()
        single.append(enqueue_one_by_one(args.one_by_one))
        prepared.append(enqueue_one_by_one(args.one_by_one, prepare_threshold=5))
        # The one-by-one jobs are drained too, so the bulk run starts from an empty queue.
        drain(args.workers, 1)
        reset()
        bulk.append(enqueue_bulk(args.jobs, name, args.queues, args.keyed))
        jobs, events, done = drain(args.workers, args.queues)
        assert done == args.jobs, f"{done} of {args.jobs} jobs completed"
        jobs_s.append(jobs)
        events_s.append(events)
    reset()
    claims, acks = claim_latency(args.jobs, args.batch)

    result = {
        "benchmark": "claim_throughput",
        "jobs": args.jobs,
        "workers": args.workers,
        "queues": args.queues,
        "paused_queues": args.paused_queues,
        "held_keys": args.held_keys,
        "keyed": args.keyed,
        "tasks_per_job": args.tasks,
        "repeats": args.repeats,
        "drain_jobs_per_s": summary(jobs_s),
        "drain_events_per_s": summary(events_s),
        "enqueue_bulk_jobs_per_s": summary(bulk),
        "enqueue_one_by_one_jobs_per_s": summary(single),
        "enqueue_one_by_one_prepared_jobs_per_s": summary(prepared),
        "claim_batch": args.batch,
        "claim_ms_p50": percentile(claims, 50),
        "claim_ms_p99": percentile(claims, 99),
        "ack_ms_p50": percentile(acks, 50),
        "ack_ms_p99": percentile(acks, 99),
        "machine": machine(),
    }
    print_table(
        f"claim throughput: {args.jobs} jobs x {args.tasks} task(s), {args.workers} worker "
        f"process(es), {args.queues} queue(s), {args.paused_queues} other(s) paused, "
        f"{args.held_keys} unique keys held, {'keyed' if args.keyed else 'no keys'}, "
        f"median of {args.repeats}",
        [
            ("drain (jobs/s)", result["drain_jobs_per_s"]),
            ("drain (events/s)", result["drain_events_per_s"]),
            ("bulk enqueue (jobs/s)", result["enqueue_bulk_jobs_per_s"]),
            ("Job.objects.create one by one (jobs/s)", result["enqueue_one_by_one_jobs_per_s"]),
            (
                "  the same, OPTIONS prepare_threshold=5",
                result["enqueue_one_by_one_prepared_jobs_per_s"],
            ),
            (
                f"claim of {args.batch}, p50 / p99",
                f"{result['claim_ms_p50']:.2f} / {result['claim_ms_p99']:.2f} ms",
            ),
            (
                f"ack of {args.batch}, p50 / p99",
                f"{result['ack_ms_p50']:.2f} / {result['ack_ms_p99']:.2f} ms",
            ),
            ("machine", json.dumps(result["machine"])),
        ],
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
