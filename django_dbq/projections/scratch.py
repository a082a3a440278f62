"""The audit reads' fold and replay: the live functions, aimed at a session's scratch tables.

as_of and verify rebuild the projection under MVCC into pg_temp.dbq_scratch_job
(a TEMP table with django_dbq_job's columns, made by each read and gone with it)
rather than into the live table; verify rebuilds the queue projection likewise,
into pg_temp.dbq_scratch_queue. The functions that do so are not written by
hand: they are the refuse, fold and replay functions of projections/sql/ with
the table they write renamed (and the functions they call renamed alike), so
they fold events exactly as the ledgers' triggers do. A second replay of each
ledger reads the events from a copy (pg_temp.dbq_scratch_jobevent, or
pg_temp.dbq_scratch_queueevent: rows of events as arrays of ledger rows, so that
unnest gives them back as ledger rows) instead of from the ledger, for a read
inside a transaction that sees each statement anew (READ COMMITTED).

A migration installs a frozen copy of `scratch_sql()`; tests/test_security.py
checks that the installed functions are the installed live ones with these
renames and no other difference, and that they are what the sql/ files give now.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from django_dbq.sqlfiles import SCHEMA_MARK, read_sql


class Family(NamedTuple):
    """A projection, its ledger, and the scratch variants of the functions that fold it."""

    sources: tuple[str, ...]
    table: str
    scratch_table: str
    ledger: str
    copy_source: str
    # live function -> generated function
    functions: dict[str, str]
    replay: str
    copy_replay: str


JOBS = Family(
    sources=("sql/apply.sql", "sql/replay.sql"),
    table="django_dbq_job",
    scratch_table="pg_temp.dbq_scratch_job",
    ledger="django_dbq_jobevent",
    copy_source="pg_temp.dbq_scratch_jobevent c, unnest(c.events) e",
    functions={
        "dbq_refuse_events_v2": "dbq_refuse_events_scratch_v2",
        "dbq_fold_events_v2": "dbq_fold_events_scratch_v2",
        "dbq_replay_events_v5": "dbq_replay_events_scratch_v5",
    },
    replay="dbq_replay_events_v5",
    copy_replay="dbq_replay_copy_scratch_v5",
)
QUEUES = Family(
    sources=("sql/queues.sql",),
    table="django_dbq_queue",
    scratch_table="pg_temp.dbq_scratch_queue",
    ledger="django_dbq_queueevent",
    copy_source="pg_temp.dbq_scratch_queueevent c, unnest(c.events) e",
    functions={
        "dbq_refuse_queue_events_v1": "dbq_refuse_queue_events_scratch_v1",
        "dbq_fold_queue_events_v1": "dbq_fold_queue_events_scratch_v1",
        "dbq_replay_queue_events_v1": "dbq_replay_queue_events_scratch_v1",
    },
    replay="dbq_replay_queue_events_v1",
    copy_replay="dbq_replay_queue_copy_scratch_v1",
)
FAMILIES = (JOBS, QUEUES)


class Variant(NamedTuple):
    live: str
    generated: str
    # Whether it reads the copy of the events rather than the ledger.
    copy: bool
    family: Family


def _variants(family: Family) -> tuple[Variant, ...]:
    return (
        *(Variant(live, generated, False, family) for live, generated in family.functions.items()),
        Variant(family.replay, family.copy_replay, True, family),
    )


VARIANTS = tuple(v for family in FAMILIES for v in _variants(family))
_STATEMENT = re.compile(
    rf"CREATE OR REPLACE FUNCTION {re.escape(SCHEMA_MARK)}\.(\w+)\(.*?\$\$;", re.DOTALL
)


def rename(text: str, copy: bool = False, schema: str = SCHEMA_MARK, family: Family = JOBS) -> str:
    """A live function's text as its scratch variant (`copy`: the one that reads the copy).

    `schema` is how the text names the app's schema: @schema@ in the sql/ files,
    the quoted identifier in what is installed.
    """
    names = {**family.functions, family.replay: family.copy_replay} if copy else family.functions
    prefix = re.escape(schema) + r"\."
    text = re.sub(rf"{prefix}({'|'.join(names)})\(", lambda m: f"{schema}.{names[m[1]]}(", text)
    text = _replace(rf"{prefix}{family.table}(?!\w)", family.scratch_table, text)
    if copy:
        text = _replace(rf"FROM {prefix}{family.ledger} e\b", f"FROM {family.copy_source}", text)
    return text


def _replace(pattern: str, replacement: str, text: str) -> str:
    text, count = re.subn(pattern, replacement, text)
    if not count:
        raise ValueError(f"{pattern!r} is no longer in the live function; update {__name__}")
    return text


def scratch_sql(families: tuple[Family, ...] = FAMILIES) -> str:
    """The CREATE statements of the generated functions, from the sql/ files as they are now."""
    parts = [_HEADER]
    for family in families:
        statements = {}
        for path in family.sources:
            for match in _STATEMENT.finditer(read_sql("django_dbq.projections", path)):
                statements[match[1]] = match[0]
        for v in _variants(family):
            reads = " and reading the copy" if v.copy else ""
            parts.append(f"-- {v.generated}: {v.live}, renamed{reads}.\n")
            parts.append(rename(statements[v.live], copy=v.copy, family=family) + "\n\n\n")
    return "".join(parts).rstrip() + "\n"


_HEADER = """\
-- Generated by django_dbq.projections.scratch.scratch_sql() from projections/sql/
-- (apply.sql and replay.sql; queues.sql): the refuse, fold and replay functions
-- with django_dbq_job renamed to pg_temp.dbq_scratch_job (django_dbq_queue to
-- pg_temp.dbq_scratch_queue), the functions they call renamed alike, and for
-- the copy replays (dbq_replay_copy_scratch_v5, dbq_replay_queue_copy_scratch_v1)
-- the events read from pg_temp.dbq_scratch_jobevent (dbq_scratch_queueevent).
-- They run with the caller's rights and write nothing but the caller's own TEMP
-- tables. Do not edit: regenerate.


"""
