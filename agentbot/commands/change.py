"""Commands that write: `register` (the agent bot and its inboxes in Chatwoot) and `outbox --retry`."""

from __future__ import annotations

import argparse
import secrets
import sys
from datetime import datetime, timezone

from ..chatwoot import AgentBot, Chatwoot, Inbox
from ..config import MIN_SECRET, ConfigError, Settings
from .common import Failed, admin_account, opened_store, with_chatwoot


async def _known_inboxes(cw: Chatwoot, account: int, token: str, wanted: list[int]) -> dict[int, Inbox]:
    inboxes = {i.id: i for i in await cw.list_inboxes(account, token)}
    unknown = [i for i in wanted if i not in inboxes]
    if unknown:
        raise Failed(f"unknown inbox id {unknown[0]} in account {account}; `python -m agentbot inboxes` lists them")
    return inboxes


def _webhook_token(settings: Settings, base: str, bot: AgentBot | None) -> str:
    """WEBHOOK_TOKEN, else the one already in the bot's URL (running `register` again changes nothing),
    else a new one. It goes into the URL Chatwoot delivers to, so it works on every Chatwoot version."""
    if settings.webhook_token:
        return settings.webhook_token.get_secret_value()
    current = (bot.outgoing_url if bot else None) or ""
    tail = current.removeprefix(base + "/") if current.startswith(base + "/") else ""
    if len(tail) >= MIN_SECRET and "/" not in tail:
        return tail
    return secrets.token_urlsafe(24)


async def _other_bot(
    cw: Chatwoot, account: int, token: str, inboxes: dict[int, Inbox], args: argparse.Namespace, mine: AgentBot | None
) -> str | None:
    """The first inbox of `--inbox` that has another agent bot, as one line for the operator, else None. Chatwoot
    allows one bot per inbox: connecting ours would silently cut off the team's own (an n8n flow, a Dify workflow)."""
    for inbox in args.inbox:
        current = await cw.inbox_agent_bot(account, inbox, token)
        if current.id is not None and (mine is None or current.id != mine.id):
            return (
                f"inbox {inbox} ({inboxes[inbox].name}) already has the agent bot {current.name!r} (id {current.id}), "
                f"which connecting {args.name!r} would replace: to stand in front of it, run register with "
                f"--name {current.name!r} (README: In front of your own bot); to replace it, add --replace"
            )
    return None


async def register(settings: Settings, args: argparse.Namespace) -> int:
    account, token = admin_account(settings)
    if not args.detach and not args.url:
        raise ConfigError("--url: missing (example: --url https://bot.example.com/webhook)")
    base = (args.url or "").rstrip("/")
    if not args.detach and not (base.startswith(("http://", "https://")) and base.endswith("/webhook")):
        raise ConfigError(
            f"--url: {base!r} is not the bot's webhook URL, which ends in /webhook "
            "(example: --url https://bot.example.com/webhook)"
        )

    async def work(cw: Chatwoot) -> int:
        inboxes = await _known_inboxes(cw, account, token, args.inbox)
        if args.detach:
            for inbox in args.inbox:
                await cw.set_agent_bot(account, inbox, None, token)
                print(f"Disconnected the bot from inbox {inbox} ({inboxes[inbox].name})")
            return 0
        bots = await cw.list_agent_bots(account, token)
        mine = next((b for b in bots if b.name == args.name and b.account_id == account), None)
        taken = None if args.replace else await _other_bot(cw, account, token, inboxes, args, mine)
        if taken:
            print(f"agentbot: {taken}", file=sys.stderr)
            return 2
        webhook_token = _webhook_token(settings, base, mine)
        url = f"{base}/{webhook_token}"
        # An existing bot keeps its description: it may be the team's own bot, which agentbot now stands in front of.
        described = {} if mine else {"description": "Hands conversations to humans (agentbot)"}
        bot = await cw.save_agent_bot(
            account, token, mine.id if mine else None, name=args.name, outgoing_url=url, **described
        )
        print(f"{'Updated' if mine else 'Created'} agent bot {bot.name!r} (id {bot.id}) → {url}")
        for inbox in args.inbox:
            await cw.set_agent_bot(account, inbox, bot.id, token)
            print(f"Connected it to inbox {inbox} ({inboxes[inbox].name})")
        print("\nSet these in the bot's environment:")
        print(f"CHATWOOT_BOT_TOKEN={bot.token or ''}")
        print(f"WEBHOOK_TOKEN={webhook_token}")
        if bot.secret:  # Chatwoot 4.13+ signs deliveries
            print(f"CHATWOOT_BOT_SECRET={bot.secret}")
        return 0

    return await with_chatwoot(settings, work)


async def retry(settings: Settings, args: argparse.Namespace) -> int:
    """`outbox --retry`: every dead letter back in the queue, with fresh attempts."""
    async with opened_store(settings) as store:
        print(f"re-queued {await store.requeue_dead(datetime.now(timezone.utc).timestamp())} dead letters")
    return 0
