"""`python -m agentbot sweep`: one sweep from the shell, with a progress bar (rich) and a table of outcomes."""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from .chatwoot import Chatwoot, Throttle, client_session
from .commands.common import opened_store
from .config import ConfigError, Settings
from .handoffs import Handoffs
from .logs import setup
from .lookups import sweep_share
from .metrics import Metrics
from .store import Store
from .sweep import LEASE_TTL, Sweeper
from .swept import Progress as SweepProgress
from .swept import SweepResult, Swept


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:.1f}/s")


class _Bar(SweepProgress):
    """Draws the sweep's progress on the terminal (stderr): done/total, rate, time left."""

    def __init__(self, console: Console):
        self.bar = Progress(
            TextColumn("sweep"),
            BarColumn(),
            MofNCompleteColumn(),
            _Rate(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.task = self.bar.add_task("sweep", total=None)

    def listing(self, total: int) -> None:
        self.bar.update(self.task, total=(self.bar.tasks[0].total or 0) + total)

    def deciding(self, total: int) -> None:
        self.bar.update(self.task, total=total)  # a page may repeat a conversation: the count of them all

    def decided(self, swept: Swept) -> None:
        self.bar.advance(self.task)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _check(settings: Settings, args: argparse.Namespace) -> None:
    settings.require("chatwoot_url")
    if settings.chatwoot_api_token is None:
        raise ConfigError(
            "CHATWOOT_API_TOKEN: missing; the sweep lists pending conversations with an administrator's "
            "access token (Profile settings → Access token)"
        )
    if settings.store_url == "memory://" and not args.dry_run:
        raise ConfigError(
            "STORE_URL: memory:// forgets the queued handoffs when the command ends; use the server's "
            "store (sqlite:///… or redis://…), or --dry-run"
        )


async def sweep(settings: Settings, args: argparse.Namespace) -> int:
    _check(settings, args)
    setup("WARNING", settings.log_format)  # the table says what happened; the log only what went wrong
    async with opened_store(settings) as store:
        return await _sweep(settings, args, store)


async def _sweep(settings: Settings, args: argparse.Namespace, store: Store) -> int:
    metrics, token = Metrics(), settings.chatwoot_bot_token.get_secret_value() if settings.chatwoot_bot_token else None
    err = Console(stderr=True)
    async with client_session() as session:
        assert settings.chatwoot_url is not None  # _check required it
        chatwoot = Chatwoot(
            session, settings.chatwoot_url, token, settings.chatwoot_timeout, metrics, Throttle(settings.sweep_rate)
        )
        sweeper = Sweeper(
            settings,
            Handoffs(settings, store, chatwoot, metrics, _utcnow, share=sweep_share()),
            chatwoot,
            metrics,
            _utcnow,
        )
        accounts = sweeper.accounts(args.account or None)
        lease = None if args.dry_run else await store.lease("sweep", LEASE_TTL)
        if lease is None and not args.dry_run:
            err.print("agentbot: another instance is sweeping right now; try again when it has finished")
            return 1
        bar = _Bar(err) if err.is_terminal and not args.json else None
        try:
            if bar:
                with bar.bar:
                    result = await sweeper.run(accounts, args.inbox or None, args.dry_run, bar, lease)
            else:
                result = await sweeper.run(accounts, args.inbox or None, args.dry_run, None, lease)
        finally:
            if lease:
                await lease.release()
        queued = await store.depth()
    if args.json:
        print(json.dumps({**result.as_json(), "outbox": queued}, indent=1))
    else:
        _report(result, queued, Console())
    for failure in result.failures:
        err.print(f"agentbot: {failure}", markup=False, highlight=False, soft_wrap=True)  # one line, however long
    return 1 if result.failures else 0


def _report(result: SweepResult, queued: int, out: Console) -> None:
    for swept in result.conversations:
        if result.dry_run or swept.outcome in ("opened", "deferred", "expired", "error"):
            out.print(swept.line(result.dry_run), markup=False, highlight=False)
    title = f"{'Dry run: ' if result.dry_run else ''}{result.listed} pending conversations"
    if result.failures:
        title += " (incomplete: the listing failed, see below)"
    table = Table(title=title, title_justify="left")
    table.add_column("outcome")
    table.add_column("rule or reason")
    table.add_column("conversations", justify="right")
    names = {
        "opened": "would open" if result.dry_run else "opened",
        "deferred": "deferred to opening time",
        "expired": "would expire" if result.dry_run else "expired (queued)",
        "kept": "kept pending",
        "skipped": "skipped (changed or active)",
        "error": "errors",
    }
    for outcome, labels in result.counts().items():
        if not labels:
            table.add_row(names[outcome], "", "0")
        for label, n in labels.items():
            table.add_row(names[outcome], label, str(n))
    out.print(table)
    if not result.dry_run:
        out.print(
            f"The handoffs are queued in the store; the running bot carries them out ({queued} jobs waiting).",
            markup=False,
            highlight=False,
        )
