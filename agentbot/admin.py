"""Set-up commands against Chatwoot's account API: `register`, `inboxes` and `check`."""
from __future__ import annotations

import secrets
import sys

import aiohttp

from .chatwoot import AgentBot, Chatwoot, ChatwootError, Inbox
from .config import MIN_SECRET, ConfigError, Settings, mask, scrub
from .events import PayloadError
from .store import open_store


class Failed(Exception):
    """One line for the operator; the command exits with status 1."""


def explain_error(exc: ChatwootError, settings: Settings) -> str:
    detail = exc.detail
    if exc.status is None:
        return f"cannot reach CHATWOOT_URL={mask(settings.chatwoot_url)} ({detail})"
    if exc.status == 401 and "Invalid Access Token" in detail:
        return "Chatwoot refused CHATWOOT_API_TOKEN (Invalid Access Token): use an administrator's access token (Profile settings → Access token)"
    if exc.status == 401 and "not authorized to do this action" in detail:
        return "CHATWOOT_API_TOKEN belongs to a user without administrator rights; use an administrator's token"
    if exc.status == 401 and "sign in" in detail:
        return "Chatwoot did not receive the api_access_token header (a proxy dropping underscore headers? nginx: underscores_in_headers on)"
    if exc.status == 404 and exc.endpoint in ("set_agent_bot", "inbox_agent_bot"):
        return f"Chatwoot does not know that inbox in account {settings.chatwoot_account_id}"
    if exc.status == 404:
        return f"Chatwoot does not know account CHATWOOT_ACCOUNT_ID={settings.chatwoot_account_id} (or CHATWOOT_URL is not Chatwoot)"
    return f"Chatwoot answered {exc.status} to {exc.endpoint}: {detail[:160]}"


async def _run(settings: Settings, work) -> int:
    async with aiohttp.ClientSession() as session:
        token = settings.chatwoot_bot_token.get_secret_value() if settings.chatwoot_bot_token else None
        chatwoot = Chatwoot(session, settings.chatwoot_url, token, settings.chatwoot_timeout)
        try:
            return await work(chatwoot)
        except ChatwootError as exc:
            print(f"agentbot: {explain_error(exc, settings)}", file=sys.stderr)
        except Failed as exc:
            print(f"agentbot: {exc}", file=sys.stderr)
        return 1


def _admin(settings: Settings) -> tuple[int, str]:
    settings.require("chatwoot_url", "chatwoot_account_id", "chatwoot_api_token")
    return settings.chatwoot_account_id, settings.chatwoot_api_token.get_secret_value()


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


async def register(settings: Settings, args) -> int:
    account, token = _admin(settings)
    if not args.detach and not args.url:
        raise ConfigError("--url: missing (example: --url https://bot.example.com/webhook)")
    base = (args.url or "").rstrip("/")

    async def work(cw: Chatwoot) -> int:
        inboxes = await _known_inboxes(cw, account, token, args.inbox)
        if args.detach:
            for inbox in args.inbox:
                await cw.set_agent_bot(account, inbox, None, token)
                print(f"Disconnected the bot from inbox {inbox} ({inboxes[inbox].name})")
            return 0
        bots = await cw.list_agent_bots(account, token)
        mine = next((b for b in bots if b.name == args.name and b.account_id == account), None)
        webhook_token = _webhook_token(settings, base, mine)
        url = f"{base}/{webhook_token}"
        bot = await cw.save_agent_bot(account, token, mine.id if mine else None, name=args.name, outgoing_url=url,
                                      description="Hands conversations to humans (agentbot)")
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

    return await _run(settings, work)


async def inboxes(settings: Settings, args) -> int:
    account, token = _admin(settings)

    async def work(cw: Chatwoot) -> int:
        rows = []
        for inbox in await cw.list_inboxes(account, token):
            bot = await cw.inbox_agent_bot(account, inbox.id, token)
            label = f"{bot.name} (bot {bot.id})" if bot.id else "no bot"
            rows.append(f"{inbox.id:>5}  {inbox.channel_type or '?':<22}  {inbox.name or '':<24}  {label}")
        print(f"{'id':>5}  {'channel':<22}  {'name':<24}  agent bot")
        print("\n".join(rows))
        return 0

    return await _run(settings, work)


async def check(settings: Settings, args) -> int:
    settings.require("chatwoot_url", "chatwoot_bot_token")
    account = settings.chatwoot_account_id or (settings.chatwoot_account_ids or [None])[0]
    results: list[tuple[bool | None, str]] = []  # None: information, not a failure

    async def work(cw: Chatwoot) -> int:
        if account is None:
            results.append((False, "CHATWOOT_ACCOUNT_ID is not set: set it to check the token and inboxes"))
        else:
            try:
                await cw.probe_bot_token(account)
                results.append((True, f"Chatwoot at {mask(settings.chatwoot_url)} accepts CHATWOOT_BOT_TOKEN for account {account}"))
            except ChatwootError as exc:
                hint = "the token is wrong or revoked: copy it from Settings → Bots" if exc.status == 401 else explain_error(exc, settings)
                results.append((False, f"CHATWOOT_BOT_TOKEN: {hint}"))
            await _check_inboxes(cw, account)
            await _check_sweep(cw, account)
        _check_protection()
        await _check_store()
        for ok, line in results:
            print(f"{'INFO' if ok is None else 'OK  ' if ok else 'FAIL'} {line}")
        return 0 if all(ok is not False for ok, _ in results) else 1

    async def _check_sweep(cw: Chatwoot, account: int) -> None:
        if settings.chatwoot_api_token is None:
            results.append((None, "sweep off: set CHATWOOT_API_TOKEN (an administrator's token) so the bot also hands off "
                                  "pending conversations whose delivery was lost (bot down or asleep, connected later)"))
            return
        every = f"every {settings.sweep_every} s" if settings.sweep_every else "off in the server (SWEEP_INTERVAL=0)"
        rate = f"{settings.sweep_rate:g} calls/s" if settings.sweep_rate else "no rate limit"
        try:
            total = (await cw.list_conversations(account, settings.chatwoot_api_token.get_secret_value(), "pending", 1))[0]
        except ChatwootError as exc:
            results.append((False, f"sweep: {explain_error(exc, settings)}"))
            return
        except PayloadError as exc:
            results.append((False, f"sweep: {exc}"))
            return
        plural = "" if total == 1 else "s"
        results.append((True, f"sweep {every} at up to {rate}: {total} pending conversation{plural} in account {account}"))

    async def _check_inboxes(cw: Chatwoot, account: int) -> None:
        if not settings.inbox_ids:
            results.append((True, "INBOX_IDS is empty: the bot acts in every inbox it is connected to"))
            return
        if settings.chatwoot_api_token is None:
            results.append((False, "set CHATWOOT_API_TOKEN (an administrator's token) to check the inboxes in INBOX_IDS"))
            return
        token = settings.chatwoot_api_token.get_secret_value()
        mine = settings.chatwoot_bot_token.get_secret_value()
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
            results.append((False, "neither CHATWOOT_BOT_SECRET nor WEBHOOK_TOKEN is set: anyone who learns the webhook "
                                   "URL can open, set pending and message conversations; run `python -m agentbot register` "
                                   "for a WEBHOOK_TOKEN"))
        else:
            which = " and ".join(n for n, v in (("WEBHOOK_TOKEN", settings.webhook_token),
                                               ("CHATWOOT_BOT_SECRET", settings.chatwoot_bot_secret)) if v)
            results.append((True, f"deliveries are accepted only with {which}"))

    async def _check_store() -> None:
        store = open_store(settings.store_url, settings.redis_tls_verify)
        try:
            await store.open()
            results.append((True, f"store {settings.store_url.split('://')[0]} is usable ({await store.depth()} jobs waiting)"))
            await store.close()
        except Exception as exc:
            problem = scrub(f"{type(exc).__name__}: {exc}", settings.store_url)
            results.append((False, f"STORE_URL: cannot open the store at {mask(settings.store_url)} ({problem})"))

    return await _run(settings, work)
