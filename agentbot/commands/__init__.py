"""The command line's commands (dispatched by `__main__`): `show` only reads, `change` writes.

show.py    rules, explain, outbox (dead letters), inboxes, check: print, change nothing
change.py  register (Chatwoot's agent bot and inboxes), outbox --retry (re-queue dead letters)
common.py  what both share: the store and a Chatwoot client for one command, one line per failure
The `sweep` command, which writes unless `--dry-run`, is sweep_cli.py.
"""
