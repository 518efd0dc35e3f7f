"""The Chatwoot API client: one method per endpoint the bot calls, errors mapped to ChatwootError."""
from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import msgspec
from aiolimiter import AsyncLimiter
from loguru import logger

from .events import Listed, Message, parse_messages, parse_page
from .metrics import Metrics

FINAL_STATUSES = {400, 401, 403, 404, 422}


class ChatwootError(Exception):
    """A call failed; `final` says whether trying again can help, `maybe_applied` whether Chatwoot may
    have carried it out all the same (no answer after the request went out, or a server error)."""

    def __init__(self, endpoint: str, status: int | None, detail: str, retry_after: float | None = None,
                 sent: bool = True):
        self.endpoint, self.status, self.detail, self.retry_after = endpoint, status, detail, retry_after
        self.sent = sent
        super().__init__(f"{endpoint}: {status or 'no answer'} {detail}".strip())

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def maybe_applied(self) -> bool:
        return self.sent and (self.status is None or self.status >= 500)

    @property
    def timed_out(self) -> bool:
        """No answer in time: Chatwoot may still be carrying the call out."""
        return self.status is None and self.detail == "timed out"

    @property
    def refused_to_bots(self) -> bool:
        """This Chatwoot keeps the endpoint from agent bot tokens (older versions allow fewer)."""
        return self.status == 401 and "not authorized for bots" in self.detail


class MessageView(msgspec.Struct):
    id: int = 0
    content: str | None = None
    private: bool = False
    sender_type: str | None = None


class ConversationView(msgspec.Struct):
    """What GET /conversations/{id} says of a conversation (the API partial), as far as the outbox reads it."""

    status: str = ""
    last_non_activity_message: MessageView | None = None


_conversation_view = msgspec.json.Decoder(ConversationView)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


class Throttle:
    """At most `rate` calls a second (0: no limit), and none while Chatwoot asked to wait (429 Retry-After)."""

    def __init__(self, rate: float):
        self.limiter = AsyncLimiter(1, 1.0 / rate) if rate > 0 else None  # one call every 1/rate s, no bursts
        self.resume_at = 0.0  # time.monotonic()

    async def wait(self) -> None:
        while (delay := self.resume_at - time.monotonic()) > 0:  # noqa: ASYNC110 (a pause may grow while we sleep)
            await asyncio.sleep(delay)
        if self.limiter:
            await self.limiter.acquire()

    def pause(self, seconds: float) -> None:
        self.resume_at = max(self.resume_at, time.monotonic() + seconds)


class Chatwoot:
    """Talks only to `base_url`; paths are built here and nowhere else."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, token: str | None,
                 timeout: float = 10.0, metrics: Metrics | None = None, throttle: Throttle | None = None):
        self.session, self.base_url, self.token = session, base_url, token
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.metrics, self.throttle = metrics, throttle
        self.reads = True  # this Chatwoot lets the bot token read a conversation (4.16+), until it refuses

    async def _call(self, method: str, endpoint: str, path: str, body: Any = None, token: str | None = None,
                    params: dict | None = None, decoder: Any = None) -> Any:
        headers = {"api_access_token": token or self.token or "", "Accept": "application/json"}
        if self.throttle:
            await self.throttle.wait()
        started, status = time.perf_counter(), "error"
        try:
            async with self.session.request(method, self.base_url + path, json=body, headers=headers, params=params,
                                            timeout=self.timeout, allow_redirects=False) as resp:
                status = str(resp.status)
                raw = await resp.read()
                if resp.status >= 300:
                    text = raw.decode(errors="replace")
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
                    if resp.status == 429 and self.throttle:
                        self.throttle.pause(retry_after or 1.0)
                    raise ChatwootError(endpoint, resp.status, text[:200], retry_after)
                if decoder is not None:
                    return decoder(raw)
                if not raw.strip():
                    return None
                try:
                    return await resp.json(content_type=None)
                except ValueError:
                    return None
        except TimeoutError:
            status = "timeout"
            raise ChatwootError(endpoint, None, "timed out") from None
        except aiohttp.ClientConnectorError as exc:  # nothing reached Chatwoot
            raise ChatwootError(endpoint, None, f"{type(exc).__name__}: {exc}", sent=False) from None
        except aiohttp.ClientError as exc:
            raise ChatwootError(endpoint, None, f"{type(exc).__name__}: {exc}") from None
        except msgspec.DecodeError as exc:
            raise ChatwootError(endpoint, None, f"unexpected answer: {exc}") from None
        finally:
            if self.metrics:
                self.metrics.observe_call(endpoint, status, time.perf_counter() - started)

    # The agent bot token's endpoints (docs/chatwoot.md, Endpoints).
    def _conv(self, account: int, display_id: int) -> str:
        return f"/api/v1/accounts/{int(account)}/conversations/{int(display_id)}"

    async def toggle_status(self, account: int, display_id: int, status: str) -> Any:
        return await self._call("POST", "toggle_status", self._conv(account, display_id) + "/toggle_status", {"status": status})

    async def toggle_priority(self, account: int, display_id: int, priority: str) -> Any:
        return await self._call("POST", "toggle_priority", self._conv(account, display_id) + "/toggle_priority", {"priority": priority})

    async def create_message(self, account: int, display_id: int, content: str, private: bool) -> Any:
        body = {"content": content, "message_type": "outgoing", "private": private}
        return await self._call("POST", "messages", self._conv(account, display_id) + "/messages", body)

    async def assign(self, account: int, display_id: int, **body: int | None) -> Any:
        return await self._call("POST", "assignments", self._conv(account, display_id) + "/assignments", body)

    async def conversation(self, account: int, display_id: int) -> ConversationView:
        """GET the conversation (bot tokens since Chatwoot 4.16, #14655; older ones are refused "for bots")."""
        return await self._call("GET", "show", self._conv(account, display_id), decoder=_conversation_view.decode)

    async def conversation_if_readable(self, account: int, display_id: int) -> ConversationView | None:
        """`conversation`, or None where this Chatwoot does not let agent bots read (before 4.16; asked once)."""
        if not self.reads:
            return None
        try:
            return await self.conversation(account, display_id)
        except ChatwootError as exc:
            if not exc.refused_to_bots:
                raise
            self.reads = False
            logger.info("this Chatwoot does not let agent bots read a conversation (before 4.16): the bot relies "
                        "on its memory of the events instead")
            return None

    async def conversation_json(self, account: int, display_id: int) -> dict:
        """The same read as `conversation`, whole, for the operator page's decision of today."""
        return await self._call("GET", "show", self._conv(account, display_id)) or {}

    async def version(self) -> str | None:
        """Chatwoot's version from its public `GET /api` (None when it doesn't say)."""
        data = await self._call("GET", "api", "/api")
        return data.get("version") if isinstance(data, dict) else None

    async def profile(self, token: str) -> dict:
        """The user behind `token`, with `accounts: [{id, name, role, …}]` (it also holds the token: never log it)."""
        return await self._call("GET", "profile", "/api/v1/profile", token=token) or {}

    async def probe_bot_token(self, account: int) -> None:
        """A harmless bot-token call. The token was accepted when Chatwoot answers 404 for conversation 0,
        or (before 4.13, where bots may not toggle typing) refuses the endpoint "for bots"."""
        try:
            await self._call("POST", "toggle_typing_status", self._conv(account, 0) + "/toggle_typing_status",
                             {"typing_status": "off"})
        except ChatwootError as exc:
            if not (exc.status == 404 or exc.refused_to_bots):
                raise

    # A user (administrator) token's endpoints: look-ups and set-up.
    async def contact_conversations(self, account: int, contact_id: int, token: str) -> list[dict]:
        data = await self._call("GET", "contact_conversations", f"/api/v1/accounts/{int(account)}/contacts/{int(contact_id)}/conversations", token=token)
        return (data or {}).get("payload") or []

    async def list_conversations(self, account: int, token: str, status: str, page: int,
                                 inbox_id: int | None = None) -> tuple[int, list[Listed], int]:
        """One page (25) of the account's conversations, newest activity first: (all_count, the conversations,
        how many could not be read); PayloadError when the page is not Chatwoot's shape."""
        params = {"status": status, "assignee_type": "all", "page": str(int(page))}
        if inbox_id is not None:
            params["inbox_id"] = str(int(inbox_id))
        return await self._call("GET", "conversations", f"/api/v1/accounts/{int(account)}/conversations", token=token,
                                params=params, decoder=parse_page)

    async def conversation_messages(self, account: int, display_id: int, token: str) -> list[Message]:
        """The conversation's latest messages (20 on Chatwoot), oldest first."""
        return await self._call("GET", "messages_index", self._conv(account, display_id) + "/messages", token=token,
                                decoder=parse_messages)

    async def list_inboxes(self, account: int, token: str) -> list[dict]:
        data = await self._call("GET", "inboxes", f"/api/v1/accounts/{int(account)}/inboxes", token=token)
        return (data or {}).get("payload") or []

    async def inbox_agent_bot(self, account: int, inbox_id: int, token: str) -> dict:
        data = await self._call("GET", "inbox_agent_bot", f"/api/v1/accounts/{int(account)}/inboxes/{int(inbox_id)}/agent_bot", token=token)
        return (data or {}).get("agent_bot") or {}

    async def set_agent_bot(self, account: int, inbox_id: int, bot_id: int | None, token: str) -> None:
        await self._call("POST", "set_agent_bot", f"/api/v1/accounts/{int(account)}/inboxes/{int(inbox_id)}/set_agent_bot",
                         {"agent_bot": bot_id}, token=token)

    async def list_agent_bots(self, account: int, token: str) -> list[dict]:
        return await self._call("GET", "agent_bots", f"/api/v1/accounts/{int(account)}/agent_bots", token=token) or []

    async def save_agent_bot(self, account: int, token: str, bot_id: int | None, **fields: Any) -> dict:
        path = f"/api/v1/accounts/{int(account)}/agent_bots"
        if bot_id is None:
            return await self._call("POST", "agent_bots", path, fields, token=token)
        return await self._call("PATCH", "agent_bots", f"{path}/{int(bot_id)}", fields, token=token)
