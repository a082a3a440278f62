"""The worker: claims ready jobs by appending events, runs their tasks, records outcomes.

One loop iteration records the outcomes of the last batch and claims the next batch
(one round trip), then runs each job's next task with its hooks. The batch starts at
one job and doubles while batches finish quickly, so fast jobs are claimed many at a
time; a slow job does not hold the rest of its batch back: once the batch's time is
up, the jobs it has not started are released, by the heartbeat thread if the loop
is inside a long task. The heartbeat also renews the leases of held jobs, returns
jobs whose lease ran out to their queue, and records `stopping` when a signal arrives.

`Worker` is one object made of mixins, one file each, over the state they share:

- state.py: identity, settings, the shared state and the locks that guard it
- loop.py: `Worker`: `run`, `process_batch`, running one job, finishing
- batch.py: claiming, handing out unstarted jobs, releasing them, the batch size
- outcomes.py: pending outcomes, recorded in one statement and settled
- heartbeat.py: the heartbeat thread
- signals.py: the signal handlers and the `stopping` event
- compat.py: django-db-queue 3.3's `process_job` and `_process_job` (one job per call)
- wait.py: LISTEN/NOTIFY while idle
- supervisor.py: `--concurrency`: child processes, restarted when they die

All log under the `django_dbq.worker` logger (the supervisor under `django_dbq.supervisor`).
"""

from __future__ import annotations

from django_dbq.worker.loop import Worker
from django_dbq.worker.outcomes import RECORD_WITHIN_SECONDS
from django_dbq.worker.supervisor import run_processes
from django_dbq.worker.wait import NOTIFY_CHANNEL

__all__ = ["NOTIFY_CHANNEL", "RECORD_WITHIN_SECONDS", "Worker", "run_processes"]
