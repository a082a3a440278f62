"""tests.settings with a short lease, so that the heartbeat-stall test runs in seconds."""

from tests.settings import *  # noqa: F403

DBQ_LEASE_SECONDS = 3
