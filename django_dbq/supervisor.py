"""Running several worker processes from one command (`worker --concurrency N`)."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from typing import Any

from django.db import connections

logger = logging.getLogger(__name__)


def run_processes(count: int, target: Callable[[], None]) -> int:
    """Fork `count` processes running target; forward signals; return the worst exit status."""
    connections.close_all()  # a connection must not be shared across fork
    children = [_spawn(target) for _ in range(count)]

    def forward(signum: int, frame: Any) -> None:
        for pid in children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for name in ("SIGINT", "SIGTERM", "SIGQUIT"):
        signal.signal(getattr(signal, name), forward)
    worst = 0
    for pid in children:
        _, status = os.waitpid(pid, 0)
        worst = max(worst, os.waitstatus_to_exitcode(status) & 0xFF)
    return worst


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
