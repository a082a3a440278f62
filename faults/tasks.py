"""The fault suite's tasks. Each run appends one line to the runs log
(FAULTS_RUNS): job, task, pid, start and end times. A log file, not a table, so
that the scenarios that cut the database cannot make the counting itself fail."""

import os
import signal
import sys
import time


def _record(job, started):
    line = f"{job.id} {job.next_task} {os.getpid()} {started:.6f} {time.time():.6f}\n".encode()
    fd = os.open(os.environ["FAULTS_RUNS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _mark_start(started):
    line = f"{os.getpid()} {started:.6f}\n".encode()
    fd = os.open(os.environ["FAULTS_RUNS"] + ".started", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _step(job):
    started = time.time()
    time.sleep(job.workspace.get("sleep", 0))
    job.workspace.setdefault("done", []).append(job.next_task.rsplit(".", 1)[1])
    _record(job, started)


step_one = step_two = step_three = _step


def nasty(job):
    """What the workspace asks for: raise, hang past the lease, exit, or grow huge."""
    started = time.time()
    kind = job.workspace["kind"]
    if kind == "raise":
        _record(job, started)
        raise ValueError("a task that raises")
    if kind == "hang":
        if job.workspace.get("mark_start"):
            # Scenario 9 kills a worker only once its slow job has begun.
            _mark_start(started)
        time.sleep(job.workspace["seconds"])
    elif kind == "exit":
        _record(job, started)
        sys.exit(7)
    elif kind == "kill":
        # As a segfault or the OOM killer: the process is gone, nothing is recorded.
        _record(job, started)
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "huge":
        job.workspace["blob"] = "x" * (5 * 1024 * 1024)
    _record(job, started)


def saver(job):
    """Saves its progress as it goes (job.save()), as django-db-queue users' tasks do."""
    started = time.time()
    for step in range(5):
        job.workspace["progress"] = step
        job.save()
        time.sleep(0.1)
    _record(job, started)


def probe(job):
    """A no-op whose enqueue-to-start time the audit-read scenario measures."""
    _record(job, time.time())
