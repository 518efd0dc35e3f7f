"""The outbox's numbers in one place: how many jobs run at once, how often it looks, how it backs off.

outbox.py reads them (tests shorten POLL, TICK and BACKOFF_BASE on `agentbot.outbox`)."""

from __future__ import annotations

WORKERS = 64  # jobs in flight at once (they wait on Chatwoot); the lanes hold a share of them (Outbox.start)
POLL = 0.25  # seconds between looks at the store when nothing woke us (other instances, retries)
TICK = 0.5  # seconds between timer checks, lease renewals and worker supervision
PRUNE_EVERY = 600.0  # seconds between removals of expired dedup keys and look-ups
BACKOFF_BASE, BACKOFF_CAP = 0.5, 60.0  # Chatwoot calls
RETRY_AFTER_CAP = 600.0  # a longer Retry-After waits this long (below the store's HORIZON, 900 s)
STORE_BACKOFF_BASE, STORE_BACKOFF_CAP = 0.05, 2.0  # store writes a worker must get through
STORE_DOWN_AFTER = 2.0  # seconds of failing store calls before /healthz reports it
LATE = 5.0  # a job that starts this long after its decision first checks where the conversation is now
CATCH_UP = 30.0  # seconds a handoff waits for a customer message Chatwoot shows but has not delivered yet
CATCH_UP_EVERY = 0.5  # seconds between its looks meanwhile
OPEN_WAIT = 30.0  # seconds a step that follows a handoff's open (Evolution's pause) waits to see it
