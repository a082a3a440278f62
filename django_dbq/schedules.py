"""Periodic jobs: the schedules of settings.JOBS and their ticks.

A job of settings.JOBS with a "schedule" is enqueued at each tick of it: a cron
expression (5 fields, or 6 with the seconds first) read in settings.TIME_ZONE,
or a number of seconds (the ticks are then the multiples of it since the Unix
epoch). This module only computes; the workers enqueue the due ticks
(worker/schedules.py), each exactly once among them (events/ticks.py).
"""

from __future__ import annotations

import copy
import datetime
import math
import zoneinfo
from dataclasses import dataclass
from typing import Any

from croniter import CroniterError, croniter
from django.conf import settings

from django_dbq import tasks
from django_dbq.projections.models import QUEUE_NAME_LENGTH

__all__ = [
    "MAX_CATCH_UP",
    "PeriodicJob",
    "ScheduleError",
    "option_problems",
    "parse_periodic_job",
    "parse_schedule",
    "periodic_jobs",
]

SCHEDULE_KEY = "schedule"
# The most missed ticks a catch_up schedule enqueues at once (the latest ones);
# the database refuses more in one call.
MAX_CATCH_UP = 100
DEFAULT_QUEUE = "default"
SMALLINT_RANGE = (-32768, 32767)
_UTC = datetime.UTC
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=_UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)


class ScheduleError(ValueError):
    """A schedule in settings.JOBS that cannot be used; the message says why."""


def time_zone() -> zoneinfo.ZoneInfo:
    """The zone cron expressions are read in: settings.TIME_ZONE (UTC when unset)."""
    return zoneinfo.ZoneInfo(getattr(settings, "TIME_ZONE", None) or "UTC")


@dataclass(frozen=True)
class PeriodicJob:
    """A job of settings.JOBS enqueued at each tick of its schedule."""

    name: str
    schedule: str | float
    queue_name: str = DEFAULT_QUEUE
    priority: int = 0
    workspace: Any = None
    catch_up: bool = False

    @property
    def expression(self) -> str:
        """The schedule as written: the cron expression, or `every N s`."""
        if isinstance(self.schedule, str):
            return self.schedule
        return f"every {self.schedule:g} s"

    def next_tick(self, after: datetime.datetime) -> datetime.datetime:
        """The first tick strictly after `after` (aware), in UTC."""
        if isinstance(self.schedule, str):
            return self._cron(after).get_next(datetime.datetime).astimezone(_UTC)
        return _from_seconds((math.floor(_seconds(after) / self.schedule) + 1) * self.schedule)

    def latest_tick(self, now: datetime.datetime) -> datetime.datetime:
        """The last tick at or before `now`, in UTC."""
        if isinstance(self.schedule, str):
            return self._cron(now + _MICROSECOND).get_prev(datetime.datetime).astimezone(_UTC)
        return _from_seconds(math.floor(_seconds(now) / self.schedule) * self.schedule)

    def due_ticks(
        self, after: datetime.datetime, now: datetime.datetime
    ) -> list[datetime.datetime]:
        """The ticks to enqueue now, ascending: of those after `after` up to `now`, the
        latest one, or with catch_up each one (the latest MAX_CATCH_UP)."""
        latest = self.latest_tick(now)
        if latest <= after:
            return []
        ticks = [latest]
        while self.catch_up and len(ticks) < MAX_CATCH_UP:
            earlier = self._previous(ticks[-1])
            if earlier <= after:
                break
            ticks.append(earlier)
        return ticks[::-1]

    def new_job(self) -> Any:
        """An unsaved Job of this schedule (its own copy of the workspace)."""
        from django_dbq.projections.models import Job

        return Job(
            name=self.name,
            queue_name=self.queue_name,
            priority=self.priority,
            workspace=copy.deepcopy(self.workspace) if self.workspace is not None else {},
        )

    def _previous(self, tick: datetime.datetime) -> datetime.datetime:
        if isinstance(self.schedule, str):
            return self._cron(tick).get_prev(datetime.datetime).astimezone(_UTC)
        return _from_seconds(_seconds(tick) - self.schedule)

    def _cron(self, start: datetime.datetime) -> croniter:
        # Six fields are seconds first (Quartz, robfig/cron); croniter's own
        # six-field form puts them last.
        six = len(self.schedule.split()) == 6
        return croniter(self.schedule, start.astimezone(time_zone()), second_at_beginning=six)


def _seconds(moment: datetime.datetime) -> float:
    return (moment - _EPOCH).total_seconds()


def _from_seconds(seconds: float) -> datetime.datetime:
    return _EPOCH + datetime.timedelta(seconds=seconds)


def periodic_jobs() -> list[PeriodicJob]:
    """The periodic jobs of settings.JOBS; raises ScheduleError for one that cannot be used."""
    found = []
    for name, config in tasks.get_jobs_setting().items():
        if isinstance(config, dict) and SCHEDULE_KEY in config:
            found.append(parse_periodic_job(name, config))
    return found


def parse_periodic_job(name: str, config: dict[str, Any]) -> PeriodicJob:
    """The PeriodicJob of one entry of settings.JOBS, or ScheduleError saying what is wrong."""
    schedule = parse_schedule(name, config[SCHEDULE_KEY])
    for _, problem in option_problems(name, config):
        raise ScheduleError(problem)
    return PeriodicJob(
        name=name,
        schedule=schedule,
        queue_name=config.get("queue_name", DEFAULT_QUEUE),
        priority=config.get("priority", 0),
        workspace=config.get("workspace"),
        catch_up=config.get("catch_up", False),
    )


def parse_schedule(name: str, schedule: Any) -> str | float:
    where = f"settings.JOBS[{name!r}] schedule {schedule!r}"
    if isinstance(schedule, (int, float)) and not isinstance(schedule, bool):
        if not (math.isfinite(schedule) and schedule > 0):
            raise ScheduleError(f"{where} must be a positive number of seconds.")
        return float(schedule)
    if not isinstance(schedule, str):
        raise ScheduleError(f"{where} must be a cron expression (a string) or a number of seconds.")
    if len(schedule.split()) not in (5, 6) and not schedule.startswith("@"):
        raise ScheduleError(
            f"{where} has {len(schedule.split())} fields; a cron expression has 5 (minute "
            "hour day month weekday), or 6 with the seconds first."
        )
    probe = PeriodicJob(name=name, schedule=schedule)
    try:
        probe.next_tick(datetime.datetime.now(_UTC))
    except CroniterError as exc:
        raise ScheduleError(f"{where} is not a cron expression croniter can use: {exc}") from None
    return schedule


def option_problems(name: str, config: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, message) for each option of a periodic job that cannot be used."""
    where = f"settings.JOBS[{name!r}]"
    problems = []
    catch_up = config.get("catch_up", False)
    if not isinstance(catch_up, bool):
        problems.append(("catch_up", f"{where} catch_up must be True or False, not {catch_up!r}."))
    queue_name = config.get("queue_name", DEFAULT_QUEUE)
    if not (isinstance(queue_name, str) and 1 <= len(queue_name) <= QUEUE_NAME_LENGTH):
        problems.append(
            (
                "queue_name",
                f"{where} queue_name must be a string of 1 to {QUEUE_NAME_LENGTH} characters, "
                f"not {queue_name!r}.",
            )
        )
    priority = config.get("priority", 0)
    if not (
        isinstance(priority, int)
        and not isinstance(priority, bool)
        and SMALLINT_RANGE[0] <= priority <= SMALLINT_RANGE[1]
    ):
        problems.append(
            (
                "priority",
                f"{where} priority must be an integer from {SMALLINT_RANGE[0]} to "
                f"{SMALLINT_RANGE[1]}, not {priority!r}.",
            )
        )
    workspace = config.get("workspace")
    if workspace is not None and not isinstance(workspace, dict):
        problems.append(
            ("workspace", f"{where} workspace must be a dict, not {type(workspace).__name__}.")
        )
    return problems


def schedule_overview(now: datetime.datetime | None = None) -> list[dict[str, Any]]:
    """Each periodic job of settings.JOBS, and each schedule the table holds, as workers see it.

    Reads django_dbq_schedule only (SELECT), so any role that may read the job
    table may call it. `next_tick` is the tick a worker enqueues next (one missed
    while no worker ran is due at once, `due` True); None for a schedule that is
    no longer in settings.JOBS.
    """
    from django_dbq.events.models import Schedule

    now = now or datetime.datetime.now(_UTC)
    rows = {row.name: row for row in Schedule.objects.all()}
    overview = []
    for job in periodic_jobs():
        row = rows.pop(job.name, None)
        cursor = max(row.last_tick or row.since, now) if row else now
        missed = job.due_ticks(row.last_tick or row.since, now) if row else []
        overview.append(
            {
                "name": job.name,
                "schedule": job.expression,
                "queue_name": job.queue_name,
                "catch_up": job.catch_up,
                "last_tick": row.last_tick if row else None,
                "next_tick": missed[0] if missed else job.next_tick(cursor),
                "due": bool(missed),
                "seen": row is not None,
            }
        )
    for name, row in rows.items():
        overview.append(
            {
                "name": name,
                "schedule": None,
                "queue_name": None,
                "catch_up": None,
                "last_tick": row.last_tick,
                "next_tick": None,
                "due": False,
                "seen": True,
            }
        )
    return overview
