"""The Chatwoot API client: one method per endpoint the bot calls, errors mapped to ChatwootError."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar, overload

import aiohttp
import msgspec
from aiolimiter import AsyncLimiter
from loguru import logger

from .events import (
    Listed,
    Message,
    PayloadError,
    parse_contact_conversations,
    parse_conversation,
    parse_messages,
    parse_page,
)
from .metrics import Metrics

FINAL_STATUSES = {400, 401, 403, 404, 422}
T = TypeVar("T")


class ChatwootError(Exception):
    """A call failed; `final` says whether trying again can help, `maybe_applied` whether Chatwoot may
    have carried it out all the same (no answer after the request went out, or a server error)."""

    def __init__(
        self, endpoint: str, status: int | None, detail: str, retry_after: float | None = None, sent: bool = True
    ):
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


# Chatwoot's answers, as far as the bot reads them (conversations and messages: events.py's partial).
class Agent(msgspec.Struct, frozen=True):
    """A user as POST assignments answers it (api/v1/models/_agent.json.jbuilder)."""

    id: int | None = None
    name: str | None = None
    available_name: str | None = None
    availability_status: str | None = None


class AccessToken(msgspec.Struct, frozen=True):
    token: str | None = None


class AgentBot(msgspec.Struct, frozen=True):
    """An agent bot (api/v1/models/_agent_bot.json.jbuilder); `id` None: no bot (an inbox without one)."""

    id: int | None = None
    name: str | None = None
    account_id: int | None = None
    outgoing_url: str | None = None
    access_token: AccessToken | None = None
    secret: str | None = None  # Chatwoot 4.13+: signs the bot's deliveries

    @property
    def token(self) -> str | None:
        return self.access_token.token if self.access_token else None


class Inbox(msgspec.Struct, frozen=True):
    id: int
    name: str | None = None
    channel_type: str | None = None


class ProfileAccount(msgspec.Struct, frozen=True):
    id: int | None = None
    role: str | None = None


class Profile(msgspec.Struct, frozen=True):
    """The user behind a token (GET /api/v1/profile); its access token is not decoded."""

    id: int
    name: str | None = None
    accounts: list[ProfileAccount] = []


class _Inboxes(msgspec.Struct):
    payload: list[Inbox] = []


class _InboxBot(msgspec.Struct):
    agent_bot: AgentBot | None = None


class _Labels(msgspec.Struct):
    payload: list[str] = []


class _Api(msgspec.Struct):
    version: str | None = None


_decode_profile = msgspec.json.Decoder(Profile).decode
_decode_inboxes = msgspec.json.Decoder(_Inboxes | None).decode
_decode_inbox_bot = msgspec.json.Decoder(_InboxBot | None).decode
_decode_bots = msgspec.json.Decoder(list[AgentBot] | None).decode
_decode_bot = msgspec.json.Decoder(AgentBot).decode
_decode_labels = msgspec.json.Decoder(_Labels).decode


def _agent(raw: bytes) -> Agent | None:
    """None when the user does not exist (Chatwoot answers `null`, or nothing)."""
    return msgspec.json.decode(raw, type=Agent | None) if raw.strip() else None


def _version(raw: bytes) -> str | None:
    try:
        return msgspec.json.decode(raw, type=_Api).version
    except msgspec.DecodeError:  # not Chatwoot's API, or an older one without `version`
        return None


def _contact_conversations(raw: bytes) -> list[Listed]:
    try:
        return parse_contact_conversations(raw)
    except PayloadError as exc:
        raise msgspec.DecodeError(str(exc)) from None


def _partial(raw: bytes) -> Listed:
    try:
        return parse_conversation(raw)
    except PayloadError as exc:
        raise msgspec.DecodeError(str(exc)) from None


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

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        token: str | None,
        timeout: float = 10.0,
        metrics: Metrics | None = None,
        throttle: Throttle | None = None,
    ):
        self.session, self.base_url, self.token = session, base_url, token
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.metrics, self.throttle = metrics, throttle
        self.reads = True  # this Chatwoot lets the bot token read a conversation (4.16+), until it refuses

    @overload
    async def _call(
        self,
        method: str,
        endpoint: str,
        path: str,
        body: object = None,
        token: str | None = None,
        params: dict[str, str] | None = None,
        decoder: None = None,
    ) -> None: ...

    @overload
    async def _call(
        self,
        method: str,
        endpoint: str,
        path: str,
        body: object = None,
        token: str | None = None,
        params: dict[str, str] | None = None,
        *,
        decoder: Callable[[bytes], T],
    ) -> T: ...

    async def _call(
        self,
        method: str,
        endpoint: str,
        path: str,
        body: object = None,
        token: str | None = None,
        params: dict[str, str] | None = None,
        decoder: Callable[[bytes], T] | None = None,
    ) -> T | None:
        """The answer decoded by `decoder` (None without one); ChatwootError for every failure, an answer
        that is not the shape `decoder` expects included."""
        headers = {"api_access_token": token or self.token or "", "Accept": "application/json"}
        if self.throttle:
            await self.throttle.wait()
        started, status = time.perf_counter(), "error"
        try:
            async with self.session.request(
                method,
                self.base_url + path,
                json=body,
                headers=headers,
                params=params,
                timeout=self.timeout,
                allow_redirects=False,
            ) as resp:
                status = str(resp.status)
                raw = await resp.read()
                if resp.status >= 300:
                    text = raw.decode(errors="replace")
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
                    if resp.status == 429 and self.throttle:
                        self.throttle.pause(retry_after or 1.0)
                    raise ChatwootError(endpoint, resp.status, text[:200], retry_after)
                return decoder(raw) if decoder is not None else None
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

    async def toggle_status(self, account: int, display_id: int, status: str) -> None:
        await self._call(
            "POST", "toggle_status", self._conv(account, display_id) + "/toggle_status", {"status": status}
        )

    async def toggle_priority(self, account: int, display_id: int, priority: str) -> None:
        await self._call(
            "POST", "toggle_priority", self._conv(account, display_id) + "/toggle_priority", {"priority": priority}
        )

    async def create_message(self, account: int, display_id: int, content: str, private: bool) -> None:
        body = {"content": content, "message_type": "outgoing", "private": private}
        await self._call("POST", "messages", self._conv(account, display_id) + "/messages", body)

    async def assign_agent(self, account: int, display_id: int, assignee_id: int | None) -> Agent | None:
        """Assign a user (None: unassign); the user as Chatwoot has them, None when there is no such user."""
        return await self._call(
            "POST",
            "assignments",
            self._conv(account, display_id) + "/assignments",
            {"assignee_id": assignee_id},
            decoder=_agent,
        )

    async def assign_team(self, account: int, display_id: int, team_id: int) -> None:
        await self._call("POST", "assignments", self._conv(account, display_id) + "/assignments", {"team_id": team_id})

    async def conversation(self, account: int, display_id: int) -> Listed:
        """GET the conversation (bot tokens since Chatwoot 4.16, #14655; older ones are refused "for bots")."""
        return await self._call("GET", "show", self._conv(account, display_id), decoder=_partial)

    async def conversation_if_readable(self, account: int, display_id: int) -> Listed | None:
        """`conversation`, or None where this Chatwoot does not let agent bots read (before 4.16; asked once)."""
        if not self.reads:
            return None
        try:
            return await self.conversation(account, display_id)
        except ChatwootError as exc:
            if not exc.refused_to_bots:
                raise
            self.reads = False
            logger.info(
                "this Chatwoot does not let agent bots read a conversation (before 4.16): the bot relies "
                "on its memory of the events instead"
            )
            return None

    # Labels (issue 21: expiring stale pending conversations). Bot tokens since Chatwoot 4.16 (#14655); before,
    # only a user token (CHATWOOT_API_TOKEN) may: pass it as `token`.
    async def labels(self, account: int, display_id: int, token: str | None = None) -> list[str]:
        """GET the conversation's labels."""
        path = self._conv(account, display_id) + "/labels"
        return (await self._call("GET", "labels", path, token=token, decoder=_decode_labels)).payload

    async def set_labels(self, account: int, display_id: int, labels: list[str], token: str | None = None) -> list[str]:
        """POST the conversation's labels: Chatwoot replaces the whole list with `labels` (send the ones to keep
        too); its answer is the list as saved."""
        path = self._conv(account, display_id) + "/labels"
        saved = await self._call("POST", "set_labels", path, {"labels": labels}, token=token, decoder=_decode_labels)
        return saved.payload

    async def version(self) -> str | None:
        """Chatwoot's version from its public `GET /api` (None when it doesn't say)."""
        return await self._call("GET", "api", "/api", decoder=_version)

    async def profile(self, token: str) -> Profile:
        """The user behind `token` and their accounts (the answer also holds the token: never log it)."""
        return await self._call("GET", "profile", "/api/v1/profile", token=token, decoder=_decode_profile)

    async def probe_bot_token(self, account: int) -> None:
        """A harmless bot-token call. The token was accepted when Chatwoot answers 404 for conversation 0,
        or (before 4.13, where bots may not toggle typing) refuses the endpoint "for bots"."""
        try:
            await self._call(
                "POST",
                "toggle_typing_status",
                self._conv(account, 0) + "/toggle_typing_status",
                {"typing_status": "off"},
            )
        except ChatwootError as exc:
            if not (exc.status == 404 or exc.refused_to_bots):
                raise

    # A user (administrator) token's endpoints: look-ups and set-up.
    async def contact_conversations(self, account: int, contact_id: int, token: str) -> list[Listed]:
        """The contact's conversations (the latest 20 on Chatwoot); ChatwootError when the answer is not their shape."""
        return await self._call(
            "GET",
            "contact_conversations",
            f"/api/v1/accounts/{int(account)}/contacts/{int(contact_id)}/conversations",
            token=token,
            decoder=_contact_conversations,
        )

    async def list_conversations(
        self, account: int, token: str, status: str, page: int, inbox_id: int | None = None
    ) -> tuple[int, list[Listed], int]:
        """One page (25) of the account's conversations, newest activity first: (all_count, the conversations,
        how many could not be read); PayloadError when the page is not Chatwoot's shape."""
        params = {"status": status, "assignee_type": "all", "page": str(int(page))}
        if inbox_id is not None:
            params["inbox_id"] = str(int(inbox_id))
        return await self._call(
            "GET",
            "conversations",
            f"/api/v1/accounts/{int(account)}/conversations",
            token=token,
            params=params,
            decoder=parse_page,
        )

    async def conversation_messages(self, account: int, display_id: int, token: str) -> list[Message]:
        """The conversation's latest messages (20 on Chatwoot), oldest first."""
        return await self._call(
            "GET", "messages_index", self._conv(account, display_id) + "/messages", token=token, decoder=parse_messages
        )

    async def list_inboxes(self, account: int, token: str) -> list[Inbox]:
        data = await self._call(
            "GET", "inboxes", f"/api/v1/accounts/{int(account)}/inboxes", token=token, decoder=_decode_inboxes
        )
        return data.payload if data else []

    async def inbox_agent_bot(self, account: int, inbox_id: int, token: str) -> AgentBot:
        """The inbox's agent bot; one with `id` None when the inbox has none."""
        path = f"/api/v1/accounts/{int(account)}/inboxes/{int(inbox_id)}/agent_bot"
        data = await self._call("GET", "inbox_agent_bot", path, token=token, decoder=_decode_inbox_bot)
        return (data.agent_bot if data else None) or AgentBot()

    async def set_agent_bot(self, account: int, inbox_id: int, bot_id: int | None, token: str) -> None:
        await self._call(
            "POST",
            "set_agent_bot",
            f"/api/v1/accounts/{int(account)}/inboxes/{int(inbox_id)}/set_agent_bot",
            {"agent_bot": bot_id},
            token=token,
        )

    async def list_agent_bots(self, account: int, token: str) -> list[AgentBot]:
        return (
            await self._call(
                "GET", "agent_bots", f"/api/v1/accounts/{int(account)}/agent_bots", token=token, decoder=_decode_bots
            )
            or []
        )

    async def save_agent_bot(self, account: int, token: str, bot_id: int | None, **fields: str) -> AgentBot:
        path = f"/api/v1/accounts/{int(account)}/agent_bots"
        if bot_id is None:
            return await self._call("POST", "agent_bots", path, fields, token=token, decoder=_decode_bot)
        return await self._call(
            "PATCH", "agent_bots", f"{path}/{int(bot_id)}", fields, token=token, decoder=_decode_bot
        )
