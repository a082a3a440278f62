"""Enqueue rates the way applications enqueue: django-dbq and PgQueuer in one run.

    python3 -m venv .venv-pgq && .venv-pgq/bin/pip install 'pgqueuer>=1.6,<1.7' asyncpg
    .venv/bin/python benchmarks/enqueue.py --repeats 3

django-dbq, in this process (Django's default OPTIONS, so nothing is prepared
server-side; the Job objects are built inside the timed loop):

- `Job.objects.create(name="noop")` one by one, autocommit (each job its own commit);
- the same inside one `transaction.atomic()` (one commit for all of them);
- `Job.objects.bulk_create([...])` of 100, 1,000 and 10,000 jobs per call.

PgQueuer, in a child process run with .venv-pgq's interpreter (`--pgqueuer-python`),
through its public `Queries.enqueue` on one asyncpg connection, as its docs enqueue:
one job per call (each its own commit), and lists of 100, 1,000 and 10,000 per call.

How the two are made comparable:

- the same PostgreSQL server and the same connection kind: both connect with the
  DATABASE_URL given (by default TCP to 127.0.0.1; a URL naming a socket directory
  would put both on the Unix socket). Each side reports the address and the SSL state
  of its own backend, and the run stops if they differ;
- each side on a fresh database of its own (dbq_bench_enq, pgq_bench_enq), dropped at
  the end (`--keep` keeps them); before every measurement the tables are emptied
  (TRUNCATE) and vacuumed and analyzed, after a warm-up on the same connection, so
  connecting and first plans are outside the timing;
- the same work per measurement: N jobs of one name, no payload, default priority;
  the same number of jobs at every batch size (`--bulk-jobs`, 20,000 by default:
  200 calls of 100, 20 of 1,000, 2 of 10,000);
- the same durability: both write two rows per job (django-dbq the event and the
  projection row, PgQueuer the job and its `queued` log row, PgQueuer's default
  "durable" tables) and both NOTIFY from a trigger; synchronous_commit is the server's;
- in each repetition both sides run one after the other, alternating which goes
  first, so slow drift on a shared machine hits both; ratios are of the medians.

What differs, by design (it is the way each library is used): asyncpg prepares
PgQueuer's statement on its connection, while Django's default OPTIONS do not
prepare ours; PgQueuer's loop runs in asyncio.

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

from common import ROOT, machine, summary

DBQ_DATABASE = "dbq_bench_enq"
PGQ_DATABASE = "pgq_bench_enq"
BACKEND_SQL = (
    "SELECT host(inet_server_addr()), (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())"
)


# django-dbq, in this process.


def dbq_setup() -> dict[str, Any]:
    """A fresh dbq_bench_enq database, warmed up; return how this side is connected."""
    os.environ["DBQ_BENCH_DATABASE"] = DBQ_DATABASE
    from common import setup, sql

    from django_dbq.testing import allow_flush

    setup()
    allow_flush()  # the ledger's guards refuse TRUNCATE otherwise
    dbq_create(200)
    dbq_bulk(10000, 10000)
    ((host, ssl),) = sql(BACKEND_SQL)
    return {"server_addr": host, "ssl": ssl}


def dbq_empty() -> None:
    from django.core.management import call_command
    from django.db import connection

    call_command("flush", interactive=False, verbosity=0, inhibit_post_migrate=True)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE django_dbq_job")
        cursor.execute("VACUUM ANALYZE django_dbq_jobevent")


def dbq_create(count: int, atomic: bool = False) -> float:
    """Job.objects.create one by one; jobs/s."""
    from django.db import transaction

    from django_dbq.models import Job

    started = time.perf_counter()
    with transaction.atomic() if atomic else nullcontext():
        for _ in range(count):
            Job.objects.create(name="noop")
    return count / (time.perf_counter() - started)


def dbq_bulk(jobs: int, per_call: int) -> float:
    """Job.objects.bulk_create of per_call jobs, jobs // per_call calls; jobs/s."""
    from django_dbq.models import Job

    calls = jobs // per_call
    started = time.perf_counter()
    for _ in range(calls):
        Job.objects.bulk_create([Job(name="noop") for _ in range(per_call)])
    return calls * per_call / (time.perf_counter() - started)


def dbq_measure(one_by_one: int, bulk_jobs: int, sizes: list[int]) -> dict[str, float]:
    """One repetition of every django-dbq measurement, each on emptied tables."""
    rates = {}
    for key, run in [
        ("create", lambda: dbq_create(one_by_one)),
        ("create_atomic", lambda: dbq_create(one_by_one, atomic=True)),
        *[(f"bulk_{size}", lambda size=size: dbq_bulk(bulk_jobs, size)) for size in sizes],
    ]:
        dbq_empty()
        rates[key] = run()
    return rates


def dbq_drop() -> None:
    import psycopg
    from django.conf import settings
    from django.db import connection
    from psycopg import sql

    connection.close()
    with psycopg.connect(settings.SERVER_URL, autocommit=True) as conn:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(drop.format(sql.Identifier(DBQ_DATABASE)))


# PgQueuer, in a child process with its own interpreter (--pgqueuer-side).


def pgq_dsn(database: str) -> str:
    server = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    return urlunparse(urlparse(server)._replace(path=f"/{database}"))


async def pgq_side(action: str, one_by_one: int, bulk_jobs: int, sizes: list[int]) -> Any:
    """Create or drop pgq_bench_enq, or run one repetition of PgQueuer's measurements."""
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries

    if action in ("setup", "drop"):
        admin = await asyncpg.connect(pgq_dsn("postgres"))
        await admin.execute("DROP DATABASE IF EXISTS pgq_bench_enq WITH (FORCE)")
        if action == "setup":
            await admin.execute("CREATE DATABASE pgq_bench_enq")
            conn = await asyncpg.connect(pgq_dsn(PGQ_DATABASE))
            await Queries(AsyncpgDriver(conn)).install()
            await conn.close()
        await admin.close()
        return None
    conn = await asyncpg.connect(pgq_dsn(PGQ_DATABASE))
    queries = Queries(AsyncpgDriver(conn))
    for _ in range(200):  # warm-up: asyncpg prepares the statement once per connection
        await queries.enqueue("noop", None, 0)
    await pgq_bulk(queries, 10000, 10000)
    rates = {}
    for key, run in [
        ("create", lambda: pgq_one_by_one(queries, one_by_one)),
        *[(f"bulk_{size}", lambda size=size: pgq_bulk(queries, bulk_jobs, size)) for size in sizes],
    ]:
        await conn.execute("TRUNCATE pgqueuer, pgqueuer_log")
        await conn.execute("VACUUM ANALYZE pgqueuer")
        await conn.execute("VACUUM ANALYZE pgqueuer_log")
        rates[key] = await run()
    host, ssl = await conn.fetchrow(BACKEND_SQL)
    await conn.close()
    import pgqueuer

    return {"rates": rates, "server_addr": host, "ssl": ssl, "pgqueuer": pgqueuer.__version__}


async def pgq_one_by_one(queries: Any, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        await queries.enqueue("noop", None, 0)
    return count / (time.perf_counter() - started)


async def pgq_bulk(queries: Any, jobs: int, per_call: int) -> float:
    calls = jobs // per_call
    started = time.perf_counter()
    for _ in range(calls):
        await queries.enqueue(["noop"] * per_call, [None] * per_call, [0] * per_call)
    return calls * per_call / (time.perf_counter() - started)


def run_pgq(args: argparse.Namespace, action: str) -> Any:
    """Run the PgQueuer side in its own interpreter; return what it printed (JSON)."""
    command = [args.pgqueuer_python, __file__, "--pgqueuer-side", action]
    command += ["--one-by-one", str(args.one_by_one), "--bulk-jobs", str(args.bulk_jobs)]
    command += ["--sizes", ",".join(map(str, args.sizes))]
    out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.splitlines()[-1])  # the last line, whatever else was printed


# The run.

LABELS = {
    "create": "create one by one / enqueue one at a time",
    "create_atomic": "create one by one in transaction.atomic()",
}


def report(
    args: argparse.Namespace, dbq: dict[str, list[float]], pgq: dict[str, list[float]]
) -> dict[str, Any]:
    rows = {}
    print(
        f"\nenqueue: {args.one_by_one} one by one, {args.bulk_jobs} per batch size, "
        f"median of {args.repeats} (min - max), jobs/s"
    )
    print(f"  {'measurement':<44} {'django-dbq':>26} {'PgQueuer':>26} {'ratio':>6}")
    for key, values in dbq.items():
        label = LABELS[key] if key in LABELS else f"bulk, {int(key[5:]):,} per call"
        mine, theirs = summary(values), summary(pgq[key]) if key in pgq else None
        rows[key] = {"django_dbq": mine, "pgqueuer": theirs}
        line = f"  {label:<44} {spread(mine):>26}"
        if theirs:
            rows[key]["ratio"] = mine["median"] / theirs["median"]
            line += f" {spread(theirs):>26} {rows[key]['ratio']:>5.2f}x"
        print(line)
    return rows


def spread(value: dict[str, float]) -> str:
    return f"{value['median']:,.0f} ({value['min']:,.0f} - {value['max']:,.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one-by-one", type=int, default=2000)
    parser.add_argument("--bulk-jobs", type=int, default=20000, help="jobs per batch size")
    parser.add_argument(
        "--sizes", type=lambda s: [int(n) for n in s.split(",")], default=[100, 1000, 10000]
    )
    parser.add_argument("--pgqueuer-python", default=str(Path(ROOT, ".venv-pgq", "bin", "python")))
    parser.add_argument("--keep", action="store_true", help="keep both databases")
    parser.add_argument("--pgqueuer-side", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pgqueuer_side:
        result = asyncio.run(
            pgq_side(args.pgqueuer_side, args.one_by_one, args.bulk_jobs, args.sizes)
        )
        print(json.dumps(result))
        return

    connected = dbq_setup()
    run_pgq(args, "setup")
    dbq, pgq, version = measure(args, connected)
    result = {
        "benchmark": "enqueue",
        "repeats": args.repeats,
        "one_by_one": args.one_by_one,
        "bulk_jobs": args.bulk_jobs,
        "jobs_per_s": report(args, dbq, pgq),
        "connection": connected,
        "pgqueuer": version,
        "machine": machine(),
    }
    print(f"  connection: {json.dumps(connected)}; PgQueuer {version}")
    print(f"  machine: {json.dumps(result['machine'])}")
    print(json.dumps(result))
    if not args.keep:
        dbq_drop()
        run_pgq(args, "drop")


def measure(
    args: argparse.Namespace, connected: dict[str, Any]
) -> tuple[dict[str, list[float]], dict[str, list[float]], str]:
    """All repetitions of both sides; the rates by measurement, and PgQueuer's version."""
    found: dict[str, dict[str, list[float]]] = {"dbq": {}, "pgq": {}}
    version = ""
    for repeat in range(args.repeats):
        # Alternate which side goes first, so drift on a shared machine hits both.
        for side in ("pgq", "dbq") if repeat % 2 == 0 else ("dbq", "pgq"):
            if side == "dbq":
                rates = dbq_measure(args.one_by_one, args.bulk_jobs, args.sizes)
            else:
                theirs = run_pgq(args, "measure")
                if [theirs["server_addr"], theirs["ssl"]] != [
                    connected["server_addr"],
                    connected["ssl"],
                ]:
                    raise SystemExit(
                        f"not connected alike: django-dbq {connected}, PgQueuer {theirs}"
                    )
                rates, version = theirs["rates"], theirs["pgqueuer"]
            for key, rate in rates.items():
                found[side].setdefault(key, []).append(rate)
    return found["dbq"], found["pgq"], version


if __name__ == "__main__":
    main()
