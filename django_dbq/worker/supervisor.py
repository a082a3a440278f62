"""Running several worker processes from one command (`worker --concurrency N`), restarting those that die."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from django.db import connections

# The name it had as django_dbq/supervisor.py, so that logging configurations still match.
logger = logging.getLogger("django_dbq.supervisor")


# A child that dies (killed, or exits non-zero) is started again after this
# delay, doubled for each quick death in a row up to RESTART_MAX_DELAY; a child
# that ran for RESTART_RESET seconds counts as healthy again.
RESTART_DELAY = 1.0
RESTART_MAX_DELAY = 30.0
RESTART_RESET = 60.0


def run_processes(count: int, target: Callable[[], None]) -> int:
    """Fork `count` processes running target, restart those that die, forward signals.

    Returns the worst exit status of the processes' final exits (0 when each
    finished its work or stopped on a signal).
    """
    # A connection must not be shared across fork, nor a pool's (Django's
    # OPTIONS={"pool": True}), whose connections close_all() only gives back.
    connections.close_all()
    for connection in connections.all(initialized_only=True):
        # Only a pool that is open: the wrapper's `pool` property would open one.
        if connection.alias in getattr(type(connection), "_connection_pools", {}):
            connection.close_pool()
    children = {_spawn(target): time.monotonic() for _ in range(count)}
    stopping = False

    def forward(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for name in ("SIGINT", "SIGTERM", "SIGQUIT"):
        signal.signal(getattr(signal, name), forward)
    worst, delay = 0, RESTART_DELAY
    while children:
        pid, status = os.wait()
        started = children.pop(pid, None)
        if started is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        if code == 0 or stopping:
            worst = max(worst, code & 0xFF)
            continue
        delay = RESTART_DELAY if time.monotonic() - started > RESTART_RESET else delay
        logger.warning("event=worker_died pid=%s status=%s restart_in=%.1fs", pid, code, delay)
        _sleep_unless(lambda: stopping, delay)
        if stopping:
            worst = max(worst, code & 0xFF)
            continue
        children[_spawn(target)] = time.monotonic()
        delay = min(delay * 2, RESTART_MAX_DELAY)
    return worst


def _sleep_unless(stopped: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not stopped() and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.1))


def _spawn(target: Callable[[], None]) -> int:
    pid = os.fork()
    if pid:
        return pid
    # Its own process group: a terminal's Ctrl-C reaches the parent, which forwards
    # it once, so the children see one signal per keypress, as a single worker does.
    os.setpgid(0, 0)
    code = 0
    try:
        target()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        logger.exception("Worker process %s failed", os.getpid())
        code = 1
    finally:
        os._exit(code)
