"""What the commands share: the store or a Chatwoot client for one command, and one line per failure."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from ..chatwoot import Chatwoot, ChatwootError, client_session
from ..config import Settings, mask
from ..store import Store, open_or_refuse, store_for


class Failed(Exception):
    """One line for the operator; the command exits with status 1."""


def explain_error(exc: ChatwootError, settings: Settings) -> str:
    detail = exc.detail
    if exc.status is None:
        return f"cannot reach CHATWOOT_URL={mask(settings.chatwoot_url or '')} ({detail})"
    if exc.status == 401 and "Invalid Access Token" in detail:
        return (
            "Chatwoot refused CHATWOOT_API_TOKEN (Invalid Access Token): use an administrator's access token "
            "(Profile settings → Access token)"
        )
    if exc.status == 401 and "not authorized to do this action" in detail:
        return "CHATWOOT_API_TOKEN belongs to a user without administrator rights; use an administrator's token"
    if exc.status == 401 and "sign in" in detail:
        return (
            "Chatwoot did not receive the api_access_token header (a proxy dropping underscore headers? "
            "nginx: underscores_in_headers on)"
        )
    if exc.status == 404 and exc.endpoint in ("set_agent_bot", "inbox_agent_bot"):
        return f"Chatwoot does not know that inbox in account {settings.chatwoot_account_id}"
    if exc.status == 404:
        return (
            f"Chatwoot does not know account CHATWOOT_ACCOUNT_ID={settings.chatwoot_account_id} "
            "(or CHATWOOT_URL is not Chatwoot)"
        )
    return f"Chatwoot answered {exc.status} to {exc.endpoint}: {detail[:160]}"


async def with_chatwoot(settings: Settings, work: Callable[[Chatwoot], Awaitable[int]]) -> int:
    """Run `work` with a Chatwoot client (the bot token, when set); Chatwoot's refusal or a `Failed` is one line
    on stderr and exit status 1."""
    assert settings.chatwoot_url is not None  # every command that talks to Chatwoot requires it first
    async with client_session() as session:
        token = settings.chatwoot_bot_token.get_secret_value() if settings.chatwoot_bot_token else None
        chatwoot = Chatwoot(session, settings.chatwoot_url, token, settings.chatwoot_timeout)
        try:
            return await work(chatwoot)
        except ChatwootError as exc:
            print(f"agentbot: {explain_error(exc, settings)}", file=sys.stderr)
        except Failed as exc:
            print(f"agentbot: {exc}", file=sys.stderr)
        return 1


def admin_account(settings: Settings) -> tuple[int, str]:
    """The account and the administrator's token the set-up commands use (a ConfigError naming what is missing)."""
    settings.require("chatwoot_url", "chatwoot_account_id", "chatwoot_api_token")
    assert settings.chatwoot_account_id is not None and settings.chatwoot_api_token is not None
    return settings.chatwoot_account_id, settings.chatwoot_api_token.get_secret_value()


@asynccontextmanager
async def opened_store(settings: Settings) -> AsyncIterator[Store]:
    """The configured store, open for one command and closed after it."""
    store = store_for(settings)
    await open_or_refuse(store, settings)
    try:
        yield store
    finally:
        await store.close()
