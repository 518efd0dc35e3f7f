"""`python -m tests.quick_agentbot ARGS` is `python -m agentbot ARGS` with conftest's `quick_outbox` retry delays
(0.05-0.1 s instead of 0.25-0.5 s, doubling), for commands whose test waits out Chatwoot failing several times.
The retry schedule itself is checked on `outbox.backoff` in test_rules_pure."""

import sys

from agentbot import outbox
from agentbot.__main__ import main

outbox.BACKOFF_BASE = 0.1

if __name__ == "__main__":
    sys.exit(main())
