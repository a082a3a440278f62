"""The admin, through Django's test client as a superuser."""

from datetime import timedelta

import orjson
import pytest
from django.urls import reverse
from django.utils import timezone

from django_dbq.events.append import append_events
from django_dbq.models import Job, JobEvent
from django_dbq.projections.replay import verify_projection

pytestmark = pytest.mark.django_db


def changelist(admin_client, **params):
    return admin_client.get(reverse("admin:django_dbq_job_changelist"), params)


def test_job_list__filters_by_state_and_searches_id_and_workspace(admin_client):
    job = Job.objects.create(name="testjob", workspace={"customer": "ACME-42"})
    Job.objects.create(name="twotasks", state="FAILED", queue_name="other")

    assert changelist(admin_client).status_code == 200
    by_state = changelist(admin_client, state__exact="FAILED").context["cl"].result_list
    by_id = changelist(admin_client, q=str(job.id)).context["cl"].result_list
    by_text = changelist(admin_client, q="acme-42").context["cl"].result_list

    assert [j.name for j in by_state] == ["twotasks"]
    assert list(by_id) == [job] and list(by_text) == [job]


def test_job_page__shows_the_timeline_with_durations_and_errors(admin_client):
    job = Job.objects.create(name="twotasks")
    for kind, payload in [
        ("claimed", {"worker": "host:1:w"}),
        (
            "task_done",
            {"task": "tests.jobs.task_one", "next_task": "tests.jobs.task_two", "duration": 0.25},
        ),
        ("claimed", {"worker": "host:1:w"}),
        (
            "failed",
            {
                "task": "tests.jobs.task_two",
                "duration": 1.5,
                "error": {"type": "ValueError", "message": "bad cat"},
            },
        ),
    ]:
        append_events([(job.id, kind, orjson.dumps(payload).decode())])

    page = admin_client.get(reverse("admin:django_dbq_job_change", args=[job.id]))

    html = page.content.decode()
    assert page.status_code == 200
    for text in ["created", "task_done", "0.250 s", "1.500 s", "ValueError: bad cat", "host:1:w"]:
        assert text in html


def test_job_form__a_change_is_saved_as_an_updated_event(admin_client):
    job = Job.objects.create(name="testjob", workspace={"a": 1})
    url = reverse("admin:django_dbq_job_change", args=[job.id])
    form = {
        "name": "testjob",
        "queue_name": "default",
        "priority": "5",
        "run_after_0": "",
        "run_after_1": "",
        "workspace": '{"a": 1}',
        "events-TOTAL_FORMS": "1",
        "events-INITIAL_FORMS": "1",
        "events-MIN_NUM_FORMS": "0",
        "events-MAX_NUM_FORMS": "0",
    }

    response = admin_client.post(url, form)

    assert response.status_code == 302, response.content.decode()[:2000]
    assert job.events.last().payload == {"priority": 5}


def test_actions__requeue_cancel_and_run_now_append_events(admin_client):
    failed = Job.objects.create(name="testjob", state="FAILED")
    waiting = Job.objects.create(name="testjob")
    later = Job.objects.create(name="testjob", run_after=timezone.now() + timedelta(days=1))
    url = reverse("admin:django_dbq_job_changelist")

    admin_client.post(url, {"action": "requeue", "_selected_action": [failed.id]})
    admin_client.post(url, {"action": "cancel", "_selected_action": [waiting.id]})
    admin_client.post(url, {"action": "run_now", "_selected_action": [later.id]})

    assert Job.objects.get(pk=failed.pk).state == "READY"
    assert Job.objects.get(pk=waiting.pk).state == "CANCELLED"
    assert Job.objects.get(pk=later.pk).run_after is None
    assert [e.kind for e in JobEvent.objects.order_by("id")][-3:] == [
        "requeued",
        "cancelled",
        "updated",
    ]
    assert verify_projection().ok


def test_jobs_cannot_be_deleted_in_the_admin(admin_client):
    job = Job.objects.create(name="testjob")

    response = admin_client.get(reverse("admin:django_dbq_job_delete", args=[job.id]))

    assert response.status_code == 403
    assert Job.objects.count() == 1


def test_ledger_admin__is_read_only_for_every_user(admin_client):
    job = Job.objects.create(name="testjob")
    event = job.events.get()

    listing = admin_client.get(reverse("admin:django_dbq_jobevent_changelist"))
    add = admin_client.get(reverse("admin:django_dbq_jobevent_add"))
    change = admin_client.post(
        reverse("admin:django_dbq_jobevent_change", args=[event.id]), {"kind": "failed"}
    )
    delete = admin_client.post(
        reverse("admin:django_dbq_jobevent_delete", args=[event.id]), {"post": "yes"}
    )

    assert listing.status_code == 200
    assert (add.status_code, change.status_code, delete.status_code) == (403, 403, 403)
    assert JobEvent.objects.get().kind == "created"


def test_changelists__count_a_long_history_without_reading_it(admin_client):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    Job.objects.bulk_create(
        [Job(name="testjob", state="COMPLETE", queue_name="old") for _ in range(10_500)]
    )
    Job.objects.create(name="testjob", queue_name="live")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE django_dbq_job")
        cursor.execute("ANALYZE django_dbq_jobevent")

    with CaptureQueriesContext(connection) as queries:
        jobs = changelist(admin_client)
        finished = changelist(admin_client, state__exact="COMPLETE")
        events = admin_client.get(reverse("admin:django_dbq_jobevent_changelist"))
        old = changelist(admin_client, queue_name="old")

    for page in (jobs, finished, events, old):
        assert page.status_code == 200
    assert str(jobs.context["cl"].result_count).startswith("about 10,")
    assert str(events.context["cl"].result_count).startswith("about 10,")
    assert str(finished.context["cl"].result_count) == "10,000+"
    assert len(old.context["cl"].result_list) == 100
    # Every count stops at 10,001 rows or reads the estimate; no filter's choices
    # come from a scan of all jobs.
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counts and all("LIMIT 10001" in sql for sql in counts), counts
    assert not [
        q["sql"]
        for q in queries.captured_queries
        if "DISTINCT" in q["sql"].upper() and '"state" IN' not in q["sql"]
    ]
    # The queue filter offers the queues with live jobs (and the one chosen).
    choices = [c["display"] for c in jobs.context["cl"].filter_specs[1].choices(jobs.context["cl"])]
    assert "live" in choices and "old" not in choices
    names = [c["display"] for c in jobs.context["cl"].filter_specs[2].choices(jobs.context["cl"])]
    assert "testjob" in names
    chosen = old.context["cl"].filter_specs[1].choices(old.context["cl"])
    assert [c["display"] for c in chosen if c["selected"]] == ["old"]
