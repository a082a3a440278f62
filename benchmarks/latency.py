"""Enqueue-to-start latency: with one idle worker, enqueue jobs one at a time.

    python benchmarks/latency.py --jobs 200 --repeats 3

The latency of a job is its `claimed` event's time minus its `created` event's
time, both taken by the database clock, so the figure is what the ledger shows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from common import machine, percentile, print_table, reset, setup, sql, start_workers


def measure(jobs: int, gap: float) -> list[float]:
    from django_dbq.models import Job

    created = []
    for _ in range(jobs):
        created.append(Job.objects.create(name="noop", queue_name="latency").pk)
        time.sleep(gap)  # the worker is idle again before the next job
    deadline = time.monotonic() + 30
    while sql(
        "SELECT count(*) FROM django_dbq_job WHERE queue_name = 'latency' AND state <> 'COMPLETE'"
    )[0][0]:
        if time.monotonic() > deadline:
            raise SystemExit("the worker did not finish the jobs")
        time.sleep(0.05)
    rows = sql(
        "SELECT extract(epoch FROM c.at - e.at) * 1000 FROM django_dbq_jobevent e"
        " JOIN django_dbq_jobevent c ON c.job_id = e.job_id AND c.kind = 'claimed'"
        " WHERE e.kind = 'created' AND e.job_id = ANY(%s)",
        [created],
    )
    return [float(row[0]) for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between enqueues")
    args = parser.parse_args()

    setup()
    (worker,) = start_workers(1, "latency")
    try:
        measure(20, args.gap)  # warm-up: the worker starts and is listening
        medians, p99s = [], []
        for _ in range(args.repeats):
            reset()
            values = measure(args.jobs, args.gap)
            medians.append(statistics.median(values))
            p99s.append(percentile(values, 99))
    finally:
        worker.terminate()
        worker.wait()
    result = {
        "benchmark": "latency",
        "jobs": args.jobs,
        "repeats": args.repeats,
        "p50_ms": {"median": statistics.median(medians), "min": min(medians), "max": max(medians)},
        "p99_ms": {"median": statistics.median(p99s), "min": min(p99s), "max": max(p99s)},
        "machine": machine(),
    }
    print_table(
        f"enqueue-to-start latency, idle worker, {args.jobs} jobs one at a time, "
        f"median of {args.repeats} runs",
        [("p50 (ms)", result["p50_ms"]), ("p99 (ms)", result["p99_ms"])],
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
