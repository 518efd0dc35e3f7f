"""Commands that only show: `rules`, `explain`, `outbox` (dead letters), `inboxes` and `check`. None writes."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone

import aiohttp

from .. import guard, relay
from ..actions import Job
from ..chatwoot import Chatwoot, ChatwootError
from ..config import ConfigError, Settings, mask, scrub
from ..events import BadBody, PayloadError, parse
from ..forward import inbox_of, probe, verdict
from ..handoffs import Handoffs, load_facts
from ..metrics import Metrics
from ..period import period_of
from ..store import Store
from .common import admin_account, explain_error, opened_store, with_chatwoot
from .evolution_check import evolution_lines


async def rules(settings: Settings, args: argparse.Namespace) -> int:
    scope = "all accounts" if not settings.chatwoot_account_ids else f"accounts {settings.chatwoot_account_ids}"
    inboxes = f"inboxes {settings.inbox_ids}" if settings.inbox_ids else "all inboxes"
    if settings.ignore_inbox_ids:
        inboxes += f" except {settings.ignore_inbox_ids}"
    print(f"Acts on {scope}, {inboxes}.")
    print("\nEvery inbox:" if not settings.overrides else "\nEvery other inbox:")
    print("\n".join(settings.describe()))
    for inbox, r in sorted(settings.overrides.items()):
        print(f"\nInbox {inbox}:")
        print("\n".join(r.describe()))
    return 0


async def explain(settings: Settings, args: argparse.Namespace) -> int:
    body = _read(args.payload)
    if body is None:
        return 2
    try:
        now = datetime.fromisoformat(args.at) if args.at else datetime.now(timezone.utc)
    except ValueError:
        raise ConfigError(f"--at: {args.at!r} is not an ISO time (example: --at 2026-11-28T20:00:00Z)") from None
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    try:
        delivery = parse(body)
    except (BadBody, PayloadError) as exc:
        print(f"ignore: {exc}")
        return 0
    async with opened_store(settings) as store:
        # Without Chatwoot: what only a read or a look-up could tell counts as not shown (a new customer).
        decision = await Handoffs(settings, store, None, Metrics(), lambda: now).decided(delivery)
        facts = await load_facts(store, delivery)
    print(decision.describe())
    if settings.forwards:
        # What the lifecycle model knows, as the server's forward step reads it (forward.Standing).
        standing = relay.standing(delivery, facts.state, decision.outcome, decision.state)
        said = verdict(delivery, standing, settings, inbox_of(delivery, body))
        print(f"forward: {'yes' if said.forward else 'no'}: {said.reason}")
    return 0


def _read(path: str) -> bytes | None:
    """The payload file's bytes, else None after one line saying why (a missing file is not a configuration error)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        print(f"agentbot: {path}: no such file", file=sys.stderr)
    except OSError as exc:
        print(f"agentbot: {path}: cannot read it ({exc.strerror})", file=sys.stderr)
    return None


async def outbox(settings: Settings, args: argparse.Namespace) -> int:
    async with opened_store(settings) as store:
        dead = await store.dead_letters()
        for job in dead:
            print(
                f"{job.describe()} | attempts {job.attempts} | {job.error} | reason: {job.reason}"
                f"{await _skip(store, job)}"
            )
        print(f"{len(dead)} dead letters, {await store.depth()} jobs waiting")
    return 0


async def _skip(store: Store, job: Job) -> str:
    """What a re-queued dead letter would skip, by the bot's memory (the worker checks Chatwoot itself)."""
    state, _ = await store.load(job.conversation_key, None)
    seen = guard.Seen(state.period, state.phase, state.status)
    period = period_of(job.period, job.trigger, state)
    verdict = guard.verdict(job, period, job.steps[job.step], seen, time.time(), settle=0.0)
    return f" | --retry would skip it: the conversation {verdict.why}" if isinstance(verdict, guard.Drop) else ""


async def inboxes(settings: Settings, args: argparse.Namespace) -> int:
    account, token = admin_account(settings)

    async def work(cw: Chatwoot) -> int:
        rows = []
        for inbox in await cw.list_inboxes(account, token):
            bot = await cw.inbox_agent_bot(account, inbox.id, token)
            label = f"{bot.name} (bot {bot.id})" if bot.id else "no bot"
            rows.append(f"{inbox.id:>5}  {inbox.channel_type or '?':<22}  {inbox.name or '':<24}  {label}")
        print(f"{'id':>5}  {'channel':<22}  {'name':<24}  agent bot")
        print("\n".join(rows))
        return 0

    return await with_chatwoot(settings, work)


async def check(settings: Settings, args: argparse.Namespace) -> int:
    settings.require("chatwoot_url", "chatwoot_bot_token")
    url, bot_token = settings.chatwoot_url, settings.chatwoot_bot_token
    assert url is not None and bot_token is not None  # required just above
    account = settings.chatwoot_account_id or next(iter(settings.chatwoot_account_ids), None)
    results: list[tuple[bool | None, str]] = []  # None: information, not a failure

    async def work(cw: Chatwoot) -> int:
        if account is None:
            results.append(
                (
                    False,
                    "CHATWOOT_ACCOUNT_ID is not set: set it (the number after /app/accounts/ in Chatwoot's address) "
                    "to check the token, the inboxes and the sweep",
                )
            )
        else:
            try:
                await cw.probe_bot_token(account)
                results.append((True, f"Chatwoot at {mask(url)} accepts CHATWOOT_BOT_TOKEN for account {account}"))
            except ChatwootError as exc:
                hint = (
                    "the token is wrong or revoked: copy it from Settings → Bots"
                    if exc.status == 401
                    else explain_error(exc, settings)
                )
                results.append((False, f"CHATWOOT_BOT_TOKEN: {hint}"))
            await _check_inboxes(cw, account)
            await _check_sweep(cw, account)
        _check_protection()
        await _check_forwards(cw.session)
        await _check_store()
        results.extend(await evolution_lines(settings, cw, account))
        results.extend((None, line) for line in settings.unknown)
        for ok, line in results:
            print(f"{'INFO' if ok is None else 'OK  ' if ok else 'FAIL'} {line}")
        return 0 if all(ok is not False for ok, _ in results) else 1

    async def _check_sweep(cw: Chatwoot, account: int) -> None:
        if settings.chatwoot_api_token is None:
            results.append(
                (
                    None,
                    "sweep off: set CHATWOOT_API_TOKEN (an administrator's token) so the bot also hands off "
                    "pending conversations whose delivery was lost (bot down or asleep, connected later)",
                )
            )
            return
        every = f"every {settings.sweep_every} s" if settings.sweep_every else "off in the server (SWEEP_INTERVAL=0)"
        rate = f"{settings.sweep_rate:g} calls/s" if settings.sweep_rate else "no rate limit"
        try:
            total = (
                await cw.list_conversations(account, settings.chatwoot_api_token.get_secret_value(), "pending", 1)
            )[0]
        except ChatwootError as exc:
            results.append((False, f"sweep: {explain_error(exc, settings)}"))
            return
        except PayloadError as exc:
            results.append((False, f"sweep: {exc}"))
            return
        plural = "" if total == 1 else "s"
        results.append(
            (True, f"sweep {every} at up to {rate}: {total} pending conversation{plural} in account {account}")
        )

    async def _check_inboxes(cw: Chatwoot, account: int) -> None:
        if not settings.inbox_ids:
            results.append((True, "INBOX_IDS is empty: the bot acts in every inbox it is connected to"))
            return
        if settings.chatwoot_api_token is None:
            results.append(
                (False, "set CHATWOOT_API_TOKEN (an administrator's token) to check the inboxes in INBOX_IDS")
            )
            return
        token = settings.chatwoot_api_token.get_secret_value()
        mine = bot_token.get_secret_value()
        try:
            known = {i.id for i in await cw.list_inboxes(account, token)}
            for inbox in settings.inbox_ids:
                if inbox not in known:
                    results.append((False, f"inbox {inbox} (INBOX_IDS) does not exist in account {account}"))
                    continue
                bot = await cw.inbox_agent_bot(account, inbox, token)
                if bot.token == mine:
                    results.append((True, f"inbox {inbox} has this bot"))
                else:
                    fix = "run `python -m agentbot register --inbox` or pick the bot in the inbox's settings"
                    results.append((False, f"inbox {inbox} is not connected to this bot: {fix}"))
        except ChatwootError as exc:
            results.append((False, explain_error(exc, settings)))

    def _check_protection() -> None:
        if settings.chatwoot_bot_secret is None and settings.webhook_token is None:
            results.append(
                (
                    False,
                    "neither CHATWOOT_BOT_SECRET nor WEBHOOK_TOKEN is set: anyone who learns the webhook "
                    "URL can open, set pending and message conversations; run `python -m agentbot register` "
                    "for a WEBHOOK_TOKEN",
                )
            )
        else:
            which = " and ".join(
                n
                for n, v in (
                    ("WEBHOOK_TOKEN", settings.webhook_token),
                    ("CHATWOOT_BOT_SECRET", settings.chatwoot_bot_secret),
                )
                if v
            )
            results.append((True, f"deliveries are accepted only with {which}"))

    async def _check_forwards(session: aiohttp.ClientSession) -> None:
        """Each team's bot URL answers (a GET: no bot acts on it); forwards are signed or not."""
        urls = {"FORWARD_URL": settings.forward_url} | {
            f"INBOX_{inbox}_FORWARD_URL": r.forward_url for inbox, r in sorted(settings.overrides.items())
        }
        for variable, url in urls.items():
            if url is not None and (variable == "FORWARD_URL" or url != settings.forward_url):
                ok, line = await probe(session, url, min(settings.forward_timeout, 10))
                results.append((ok, f"{variable}: {line}"))
        if settings.forwards and settings.forward_secret is None:
            results.append((None, "forwarded deliveries are not signed: set FORWARD_SECRET if your bot checks them"))

    async def _check_store() -> None:
        scheme = settings.store_url.split("://")[0]
        try:
            async with opened_store(settings) as store:
                results.append((True, f"store {scheme} is usable ({await store.depth()} jobs waiting)"))
        except ConfigError as exc:
            results.append((False, str(exc)))
        except Exception as exc:  # it opened, but refuses the bot's keys (a Redis ACL user, a cluster's MOVED)
            problem = scrub(f"{type(exc).__name__}: {exc}", settings.store_url)
            results.append(
                (
                    False,
                    f"{settings.store_variable}: the {scheme} store at {mask(settings.store_url)} opened but "
                    f"cannot be used ({problem})",
                )
            )

    return await with_chatwoot(settings, work)
