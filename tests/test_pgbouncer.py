"""Through PgBouncer in transaction pooling mode: what works, and LISTEN, which needs a session.

A PgBouncer (Debian's package; `make test` installs it) listens on a free loopback
port in front of the test server, with two server connections for all its clients,
so that consecutive transactions of one client really run on different sessions.
"""

import os
import shutil
import socket
import subprocess
import time

import psycopg
import pytest
from django.db import connection

from django_dbq.models import Job
from django_dbq.projections.replay import verify_projection
from django_dbq.testing import with_database
from tests.test_pool import run_scenario
from tests.test_worker_processes import (  # noqa: F401 (the fixture stops leftover workers)
    finish,
    start_worker,
    stop_leftover_workers,
    wait_for,
)

pytestmark = pytest.mark.django_db(transaction=True)

CONFIG = """\
[databases]
* = {server}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {users}
pool_mode = transaction
default_pool_size = 2
ignore_startup_parameters = extra_float_digits,options
"""


def pgbouncer_binary():
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/bin")
    assert found, "pgbouncer is not installed: `make test` installs it (apt-get install pgbouncer)"
    return found


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_of_this_test():
    """PgBouncer's connect string for the test server (a host, or the embedded server's socket)."""
    params = connection.get_connection_params()
    parts = [f"host={params.get('host') or '127.0.0.1'}", f"port={params.get('port') or 5432}"]
    return " ".join(parts)


@pytest.fixture
def pgbouncer(tmp_path, transactional_db):
    """The URL of this test's database through a PgBouncer in transaction mode."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        (user,) = cursor.fetchone()
    port = free_port()
    users, config = tmp_path / "users.txt", tmp_path / "pgbouncer.ini"
    users.write_text(f'"{user}" ""\n')
    config.write_text(CONFIG.format(server=server_of_this_test(), port=port, users=users))
    # PgBouncer refuses to run as root; as root (CI), it switches to the server's user.
    as_user = ["-u", "postgres"] if os.geteuid() == 0 else []
    if as_user:
        tmp_path.chmod(0o755)
    process = subprocess.Popen(
        [pgbouncer_binary(), *as_user, str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"postgres://{user}@127.0.0.1:{port}/{connection.settings_dict['NAME']}"
    try:
        wait_for(lambda: accepts(url) or process.poll() is not None, timeout=10)
        assert process.poll() is None, process.communicate()[0][-2000:]
        yield url
    finally:
        process.terminate()
        process.communicate(timeout=10)


def accepts(url):
    try:
        psycopg.connect(url, connect_timeout=1).close()
        return True
    except psycopg.OperationalError:
        return False


def test_pgbouncer__a_worker_claims_records_and_saves_through_transaction_pooling(
    pgbouncer, runs_file
):
    jobs = Job.objects.bulk_create([Job(name="counted") for _ in range(30)])
    saving = Job.objects.create(name="saves")

    code, _, err = finish(start_worker("--burst", DATABASE_URL=pgbouncer))

    assert code == 0 and "database_error" not in err, err[-2000:]
    assert Job.objects.filter(state=Job.STATES.COMPLETE).count() == len(jobs) + 1
    assert Job.objects.get(pk=saving.pk).workspace["progress"] == 50
    assert verify_projection().ok


def test_pgbouncer__enqueue_save_operations_time_travel_and_maintenance_work(pgbouncer):
    run_scenario("application", url=pgbouncer)

    assert verify_projection().ok


def test_pgbouncer__listen_gets_no_notification_in_transaction_mode(pgbouncer):
    listener = psycopg.connect(pgbouncer, autocommit=True)
    try:
        listener.execute("LISTEN django_dbq")
        Job.objects.create(name="testjob")  # the trigger's NOTIFY, straight to the server
        assert list(listener.notifies(timeout=1)) == []
    finally:
        listener.close()
    direct = with_database(os.environ["DATABASE_URL"], connection.settings_dict["NAME"])
    with psycopg.connect(direct, autocommit=True) as session:  # a session does get it
        session.execute("LISTEN django_dbq")
        Job.objects.create(name="testjob")
        assert [n.payload for n in session.notifies(timeout=5, stop_after=1)] == ['["default"]']


def test_pgbouncer__an_idle_worker_still_starts_new_jobs_by_polling(pgbouncer, runs_file):
    worker = start_worker("--max-jobs", "1", DATABASE_URL=pgbouncer, DBQ_POLL_SECONDS="0.5")
    time.sleep(1.5)  # idle, waiting on a LISTEN that will never hear anything
    job = Job.objects.create(name="counted_once")

    code, _, err = finish(worker, timeout=15)

    assert code == 0, err[-2000:]
    assert Job.objects.get(pk=job.pk).state == Job.STATES.COMPLETE
