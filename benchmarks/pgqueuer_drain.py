"""The same no-op drain with PgQueuer, for a ratio measured on the same machine.

Runs in a virtualenv of its own (PgQueuer is not a dependency of django-dbq):

    python3 -m venv .venv-pgq && .venv-pgq/bin/pip install pgqueuer asyncpg
    .venv-pgq/bin/python benchmarks/pgqueuer_drain.py --jobs 20000 --workers 2

It enqueues N jobs in one batch (timed), then drains them with W worker
processes started through pgqueuer.run(..., mode=drain) (PgQueuer's defaults
otherwise). Like claim_throughput.py, the drain rate counts from the first job
started to the last one finished, so process start-up is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from urllib.parse import urlparse, urlunparse

SERVER = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
DSN = urlunparse(urlparse(SERVER)._replace(path="/pgq_bench"))


async def fresh_database() -> None:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries

    admin = await asyncpg.connect(SERVER)
    await admin.execute("DROP DATABASE IF EXISTS pgq_bench WITH (FORCE)")
    await admin.execute("CREATE DATABASE pgq_bench")
    await admin.close()
    conn = await asyncpg.connect(DSN)
    await Queries(AsyncpgDriver(conn)).install()
    await conn.close()


async def enqueue(count: int) -> float:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries

    conn = await asyncpg.connect(DSN)
    queries = Queries(AsyncpgDriver(conn))
    started = time.perf_counter()
    await queries.enqueue(["noop"] * count, [None] * count, [0] * count)
    rate = count / (time.perf_counter() - started)
    await conn.close()
    return rate


def worker(times_file: str) -> None:
    """One PgQueuer worker process: drain the queue, then write first start and last end."""
    import asyncpg
    from pgqueuer import AsyncpgDriver, PgQueuer, run
    from pgqueuer.types import QueueExecutionMode

    seen: list[float] = []

    @contextlib.asynccontextmanager
    async def factory() -> AsyncIterator[PgQueuer]:
        conn = await asyncpg.connect(DSN)
        pgq = PgQueuer(AsyncpgDriver(conn))

        @pgq.entrypoint("noop")
        async def noop(job: object) -> None:
            seen.append(time.time())

        yield pgq
        await conn.close()

    asyncio.run(run(factory, mode=QueueExecutionMode.drain, dequeue_timeout=timedelta(seconds=1)))
    with open(times_file, "w") as out:
        json.dump([min(seen, default=0), max(seen, default=0), len(seen)], out)


def drain(workers: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as folder:
        files = [os.path.join(folder, f"w{n}.json") for n in range(workers)]
        processes = [
            subprocess.Popen([sys.executable, __file__, "--worker", path]) for path in files
        ]
        for process in processes:
            process.wait()
        spans = [json.load(open(path)) for path in files]
    done = sum(span[2] for span in spans)
    first = min(span[0] for span in spans if span[2])
    last = max(span[1] for span in spans if span[2])
    return done / (last - first), done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return

    asyncio.run(fresh_database())
    asyncio.run(enqueue(2000))  # warm-up
    drain(args.workers)
    enqueue_rates, drain_rates = [], []
    for _ in range(args.repeats):
        enqueue_rates.append(asyncio.run(enqueue(args.jobs)))
        rate, done = drain(args.workers)
        assert done == args.jobs, f"{done} of {args.jobs} jobs ran"
        drain_rates.append(rate)
    import pgqueuer

    result = {
        "benchmark": "pgqueuer_drain",
        "pgqueuer": pgqueuer.__version__,
        "jobs": args.jobs,
        "workers": args.workers,
        "repeats": args.repeats,
        "drain_jobs_per_s": statistics.median(drain_rates),
        "drain_spread": [min(drain_rates), max(drain_rates)],
        "enqueue_bulk_jobs_per_s": statistics.median(enqueue_rates),
    }
    print(
        f"PgQueuer {pgqueuer.__version__}: drain {result['drain_jobs_per_s']:,.0f} jobs/s "
        f"(min {min(drain_rates):,.0f}, max {max(drain_rates):,.0f}) with {args.workers} "
        f"process(es); bulk enqueue {result['enqueue_bulk_jobs_per_s']:,.0f} jobs/s"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
