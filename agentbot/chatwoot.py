"""The Chatwoot API client: one method per endpoint the bot calls, errors mapped to ChatwootError."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable
from contextvars import ContextVar
from types import SimpleNamespace
from typing import ClassVar, TypeVar, overload

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
from .ratelimit import Outcome, Priority, RateLimit

FINAL_STATUSES = {400, 401, 403, 404, 422}
T = TypeVar("T")
# When (time.monotonic()) the current task's changing calls (not GETs) went out, past the rate limit and the wait for a
# connection: a Chatwoot step the outbox cuts off at shutdown may have landed only if one did, and may still be under
# way from then on (Outbox._send sets a fresh list).
sent: ContextVar[list[float] | None] = ContextVar("sent", default=None)


async def _headers_sent(session: object, ctx: SimpleNamespace, params: object) -> None:
    """A request's headers are about to be written: from now on Chatwoot may carry the call out."""
    if isinstance(ctx.trace_request_ctx, list):
        ctx.trace_request_ctx.append(time.monotonic())


TRACE = aiohttp.TraceConfig()
TRACE.on_request_headers_sent.append(_headers_sent)


def client_session(connections: int = 100) -> aiohttp.ClientSession:
    """A client session Chatwoot's client can tell from which calls went out (TRACE): one that timed out or was cut
    off before it had a connection never reached Chatwoot. `connections`: at most this many at once."""
    connector = aiohttp.TCPConnector(limit=connections, keepalive_timeout=30)
    return aiohttp.ClientSession(connector=connector, trace_configs=[TRACE])


class ChatwootError(Exception):
    """A call to Chatwoot failed. Every failure of a call is one of the subclasses below (httpx's way: the
    type says what happened); `final` says whether trying again can help, `maybe_applied` whether Chatwoot may
    have carried the call out all the same."""

    final: ClassVar[bool] = False
    maybe_applied: ClassVar[bool] = False
    still_running: ClassVar[bool] = False  # no answer in time: Chatwoot may still be carrying the call out
    retry_within: float | None = None  # seconds after which trying again is too late: looked at then at latest

    def __init__(self, endpoint: str, status: int | None, detail: str, retry_after: float | None = None):
        self.endpoint, self.status, self.detail, self.retry_after = endpoint, status, detail, retry_after
        super().__init__(f"{endpoint}: {status or 'no answer'} {detail}".strip())

    @property
    def refused_to_bots(self) -> bool:
        """This Chatwoot keeps the endpoint from agent bot tokens (older versions allow fewer)."""
        return self.status == 401 and "not authorized for bots" in self.detail


class Unreachable(ChatwootError):
    """Nothing reached Chatwoot (no connection): the call was not carried out."""


class NoAnswer(ChatwootError):
    """The request went out and the connection broke before an answer: it may have been carried out."""

    maybe_applied = True


class TimedOut(NoAnswer):
    """No answer within CHATWOOT_TIMEOUT: the call may have been carried out, or still be under way."""

    still_running = True


class ServerError(ChatwootError):
    """A 5xx: Chatwoot may have carried the call out before it failed."""

    maybe_applied = True


class RateLimited(ChatwootError):
    """429: Chatwoot's request limit (Rack::Attack); nothing was carried out."""


class Refused(ChatwootError):
    """A final answer (400, 401, 403, 404, 422): trying again cannot help."""

    final = True


class Unexpected(ChatwootError):
    """Another status (a redirect, a 405, a 409): not carried out; tried again."""


class Unreadable(ChatwootError):
    """Chatwoot answered 2xx with a body that is not the shape the bot reads: a write was carried out, a
    read failed."""

    maybe_applied = True


def http_error(endpoint: str, status: int, text: str, retry_after: float | None) -> ChatwootError:
    """The error type for a non-2xx answer."""
    kind: type[ChatwootError] = (
        Refused
        if status in FINAL_STATUSES
        else RateLimited
        if status == 429
        else ServerError
        if status >= 500
        else Unexpected
    )
    return kind(endpoint, status, one_line(text), retry_after)


_MARKUP = re.compile(r"<(script|style)\b.*?</\1\s*>|<!--.*?-->|<[^>]*>", re.S | re.I)


def one_line(text: str, limit: int = 200) -> str:
    """An answer's body as one line of an error message: an HTML page (a proxy's 502, a URL that is not Chatwoot or
    Evolution) without its tags, scripts and styles, and any body without its line breaks and runs of spaces."""
    text = text[:65536]  # enough for any page's words; bounds the pattern's work on a huge body
    if text.lstrip().startswith("<"):
        text = html.unescape(_MARKUP.sub(" ", text))
    return " ".join(text.split())[:limit]


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


class Named(msgspec.Struct, frozen=True):
    """A team or an agent of an account, as their index lists them (only what the operator page shows)."""

    id: int
    name: str | None = None


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
_decode_named = msgspec.json.Decoder(list[Named] | None).decode
_decode_labels = msgspec.json.Decoder(_Labels).decode


def _agent(raw: bytes) -> Agent | None:
    """None when the user does not exist (Chatwoot answers `null`, or nothing)."""
    return msgspec.json.decode(raw, type=Agent | None) if raw.strip() else None


def _version(raw: bytes) -> str | None:
    try:
        return msgspec.json.decode(raw, type=_Api).version
    except msgspec.DecodeError:  # not Chatwoot's API, or an older one without `version`
        return None


def _unanswered(endpoint: str, exc: Exception, went_out: bool) -> ChatwootError:
    """A call without an answer: nothing reached Chatwoot unless its headers went out (TRACE); else it may have been
    carried out, and after a timeout may still be under way."""
    timeout, why = isinstance(exc, TimeoutError), f"{type(exc).__name__}: {exc}"
    if not went_out:  # no connection: refused, all of them taken, or a slow connect
        busy = "no connection to Chatwoot within CHATWOOT_TIMEOUT (all of the app's in use, or a slow connect)"
        return Unreachable(endpoint, None, busy if timeout else why)
    return TimedOut(endpoint, None, "timed out") if timeout else NoAnswer(endpoint, None, why)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


class Throttle:
    """At most `rate` calls a second (0: no limit) from one client: the sweep's own pace (SWEEP_RATE). Chatwoot's
    limit, shared by every client of the app, is ratelimit.RateLimit's."""

    def __init__(self, rate: float):
        self.limiter = AsyncLimiter(1, 1.0 / rate) if rate > 0 else None  # one call every 1/rate s, no bursts

    async def wait(self) -> None:
        if self.limiter:
            await self.limiter.acquire()


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
        limit: RateLimit | None = None,
        priority: Priority = Priority.LIVE,
    ):
        """`limit` is Chatwoot's budget, shared by every client of the app (default: this client's own);
        `priority` is this client's place in its queue. `session`: made by client_session()."""
        if TRACE not in session.trace_configs:
            raise ValueError("Chatwoot's client needs a session made by chatwoot.client_session()")
        self.session, self.base_url, self.token = session, base_url, token
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.metrics, self.throttle = metrics, throttle
        self.limit, self.priority = limit or RateLimit(), priority
        self.reads = True  # this Chatwoot lets the bot token read a conversation (4.16+), until it refuses

    def sibling(self, priority: Priority, throttle: Throttle | None = None) -> Chatwoot:
        """A client of the same Chatwoot, session and budget, whose calls queue at `priority`."""
        return Chatwoot(
            self.session,
            self.base_url,
            self.token,
            self.timeout.total or 10.0,
            self.metrics,
            throttle,
            self.limit,
            priority,
        )

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
        ticket = await self.limit.acquire(self.priority)
        started, status, outcome, retry_after = time.perf_counter(), "error", Outcome.UNKNOWN, None
        out: list[float] = []  # when its headers went out (TRACE); empty: it never reached Chatwoot
        try:
            async with self.session.request(
                method,
                self.base_url + path,
                json=body,
                headers=headers,
                params=params,
                timeout=self.timeout,
                allow_redirects=False,
                trace_request_ctx=out,
            ) as resp:
                status = str(resp.status)
                retry_after = _retry_after(resp.headers.get("Retry-After"))
                outcome = Outcome.REFUSED if resp.status == 429 else Outcome.ANSWERED
                raw = await resp.read()
                if resp.status >= 300:
                    raise http_error(endpoint, resp.status, raw.decode(errors="replace"), retry_after)
                return decoder(raw) if decoder is not None else None
        except (TimeoutError, aiohttp.ClientError) as exc:
            status = "timeout" if isinstance(exc, TimeoutError) else status
            raise _unanswered(endpoint, exc, went_out=bool(out)) from None
        except (msgspec.DecodeError, PayloadError) as exc:  # a 2xx whose body is not what the bot reads
            raise Unreadable(endpoint, int(status) if status.isdigit() else None, f"unreadable answer: {exc}") from None
        finally:
            if out and method != "GET" and (went := sent.get()) is not None:
                went.append(out[-1])
            self.limit.release(ticket, outcome, retry_after)
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
        return await self._call("GET", "show", self._conv(account, display_id), decoder=parse_conversation)

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
            decoder=parse_contact_conversations,
        )

    async def list_conversations(
        self, account: int, token: str, status: str, page: int, inbox_id: int | None = None
    ) -> tuple[int, list[Listed], int]:
        """One page (25) of the account's conversations, newest activity first: (all_count, the conversations,
        how many could not be read); Unreadable when the page is not Chatwoot's shape."""
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

    # The operator page's names for ids (an administrator's token).
    async def list_teams(self, account: int, token: str) -> list[Named]:
        path = f"/api/v1/accounts/{int(account)}/teams"
        return await self._call("GET", "teams", path, token=token, decoder=_decode_named) or []

    async def list_agents(self, account: int, token: str) -> list[Named]:
        path = f"/api/v1/accounts/{int(account)}/agents"
        return await self._call("GET", "agents", path, token=token, decoder=_decode_named) or []
