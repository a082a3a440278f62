"""Time-ordered job ids: UUID version 7 (RFC 9562)."""

from __future__ import annotations

import os
import time
import uuid

_RAND_B_MASK = (1 << 62) - 1
_last = 0


def uuid7() -> uuid.UUID:
    """A UUID of version 7: Unix time in milliseconds (48 bits) and in 4096ths of a
    millisecond (the 12 bits of rand_a, RFC 9562's method 3), then 62 random bits.

    The ids a thread makes only grow, one after another (two in the same 4096th
    of a millisecond take the next one), and across threads and processes they
    grow with the clock: a new job's entries go to the right-hand end of the primary
    key and of the ledger's (job_id, version) index instead of a random page of
    each, a bulk_create's in the order of its jobs, so the pages that enqueues and
    claims write stay few and in memory however long the history behind them,
    and a range of ids is a range of creation times. The id also tells when the
    job was created, as `created` does.
    """
    global _last
    # Milliseconds << 12 | the 4096ths of the millisecond, in one step.
    stamp = time.time_ns() * 4096 // 1_000_000
    # No lock: two threads that meet here may take one stamp, and their ids then
    # differ in the random bits alone (unique, in no order between them).
    if stamp <= _last:
        stamp = _last + 1
    _last = stamp
    return uuid.UUID(
        int=(stamp >> 12 & (1 << 48) - 1) << 80
        | 0x7 << 76
        | (stamp & 0xFFF) << 64
        | 0b10 << 62  # the RFC's variant
        | int.from_bytes(os.urandom(8), "big") & _RAND_B_MASK
    )
