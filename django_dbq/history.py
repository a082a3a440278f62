"""A job's timeline, read from the ledger."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django_dbq.events.models import JobEvent

HEADER = ("time", "version", "event", "worker", "task", "duration", "error")


def job_timeline(job_id: uuid.UUID | str, until: datetime | None = None) -> list[tuple[str, ...]]:
    """One row per event of the job (up to `until`): time, version, kind, worker, task, duration, error."""
    events = JobEvent.objects.filter(job_id=job_id).order_by("version")
    if until is not None:
        events = events.filter(at__lte=until)
    return [_row(event) for event in events]


def _row(event: JobEvent) -> tuple[str, ...]:
    payload: dict[str, Any] = event.payload or {}
    worker = payload.get("worker") or ""
    task = payload.get("task") or payload.get("next_task") or ""
    duration = payload.get("duration")
    error = payload.get("error") or {}
    kind = event.kind + (" (imported)" if payload.get("imported") else "")
    if event.kind == "retried":
        kind += f" (attempt {payload.get('attempt')})"
    if event.kind == "created" and payload.get("unique_key") is not None:
        kind += f" (unique key {payload['unique_key']!r})"
    return (
        event.at.isoformat(timespec="milliseconds"),
        str(event.version),
        kind,
        str(worker),
        str(task),
        f"{duration:.3f}s" if isinstance(duration, (int, float)) else "",
        f"{error.get('type', '')}: {error.get('message', '')}" if error else "",
    )


def format_table(rows: list[tuple[str, ...]]) -> str:
    """Align rows under HEADER in columns."""
    table = [HEADER, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]
    return "\n".join(lines)
