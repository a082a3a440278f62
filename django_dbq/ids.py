"""Time-ordered job ids: UUID version 7 (RFC 9562)."""

from __future__ import annotations

import os
import time
import uuid

_MS_MASK = (1 << 48) - 1
_RAND_B_MASK = (1 << 62) - 1


def uuid7() -> uuid.UUID:
    """A UUID of version 7: 48 bits of Unix time in milliseconds, then 74 random bits.

    Jobs created later get greater ids (to the millisecond; within one, in no
    order), so a new job's entries go to the right-hand end of the primary key
    and of the ledger's (job_id, version) index instead of a random page of
    each: the pages that enqueues and claims write stay few and in memory,
    however long the history behind them. The id also tells when the job was
    created, as `created` does.
    """
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    return uuid.UUID(
        int=(ms & _MS_MASK) << 80
        | 0x7 << 76
        | (rand >> 68) << 64  # rand_a: 12 bits
        | 0b10 << 62  # the RFC's variant
        | (rand & _RAND_B_MASK)
    )
