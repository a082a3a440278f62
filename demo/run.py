"""The demo: enqueue a few multi-task jobs, run them with a worker, print their history.

Run it with `make demo`. It uses the server DATABASE_URL names (or an embedded
PostgreSQL when it is unset) and a database of its own, dbq_demo, made anew.
"""

import os
import sys
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")


def fresh_database() -> None:
    from django.conf import settings

    with psycopg.connect(settings.SERVER_URL, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS dbq_demo WITH (FORCE)")
        conn.execute("CREATE DATABASE dbq_demo")


def main() -> None:
    import django

    django.setup()
    from django.core.management import call_command

    from django_dbq.models import Job

    fresh_database()
    call_command("migrate", verbosity=0)

    print("== enqueue")
    jobs = [
        Job.objects.create(name="import_cats", workspace={"shelter": "shelter-a"}),
        Job.objects.create(name="import_cats", workspace={"shelter": "shelter-c"}),
        Job.objects.create(name="send_newsletter", priority=5),
    ]
    jobs += Job.objects.bulk_create(
        [Job(name="import_cats", workspace={"shelter": "shelter-b"}) for _ in range(2)]
    )
    call_command("queue_depth")

    print("\n== run: manage.py worker --burst")
    call_command("worker", "--burst")
    call_command("queue_depth")

    for job in jobs:
        job.refresh_from_db()
        print(f"\n== job {job.id} {job.name} -> {job.state}, workspace {job.workspace}")
        call_command("job_history", str(job.id))

    print("\n== manage.py replay_events --verify")
    call_command("replay_events", "--verify")


if __name__ == "__main__":
    main()
