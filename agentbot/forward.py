"""Forwarding to the team's own bot behind this one: which deliveries go, how they are signed and sent.

`verdict` is pure: (delivery, what the bot knows of the conversation, settings) → whether the delivery is
the team's bot's, and why. `Forwarder.send` makes one attempt and says what it came to (`Delivered`,
`Retry`, `Refused`); retrying, ordering and the fallback belong to the outbox step that calls it.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone

import aiohttp
import msgspec
from loguru import logger
from msgspec import Struct
from pydantic import SecretStr

from .config import Settings, forward_host
from .events import MESSAGE_EVENTS, Delivery
from .metrics import Metrics

WITH_HUMANS = ("open", "snoozed", "resolved")  # statuses in which the conversation is not the bot's
MAX_ANSWER = 64 * 1024  # bytes of the team's bot's answer read for a handoff request; the rest is ignored
MAX_REASON = 500  # characters of its handoff reason kept for the private note
IN_FLIGHT = 16  # forwards at once: slow bots must not take every connection of the app's one session
ID_SPACE = uuid.UUID("6f1f3c2e-5b7a-4d0e-9c51-2a8f0d4b7e13")  # names the ids made for unsigned deliveries


# ---- which deliveries are the team's bot's (pure) -------------------------------------------------------
class Standing(Struct, frozen=True):
    """What the bot knows of the conversation as it accepts a delivery (the lifecycle model fills it in)."""

    handed_off: bool = False  # agentbot decided a handoff in the current pending period (queued, done or deferred)
    handoff_now: bool = False  # this very delivery makes the bot hand the conversation off
    status: str | None = None  # the newest status the bot knows, when newer than the delivery's; None: the delivery's


class Verdict(Struct, frozen=True):
    forward: bool
    reason: str
    url: str | None = None  # where to, when forwarded


def verdict(d: Delivery, standing: Standing, settings: Settings, inbox_id: int | None = None) -> Verdict:
    """Whether `d` goes to the team's bot. `inbox_id`: the delivery's inbox when it has no conversation
    (webwidget_triggered: `inbox_of`), so a per-inbox FORWARD_URL applies to it too."""
    inbox = d.conversation.inbox_id if d.conversation else inbox_id
    url = settings.rules_for(inbox).forward_url
    if url is None:
        off = settings.forward_url is not None and inbox in settings.overrides
        return Verdict(False, f"forwarding is off in inbox {inbox}" if off else "no FORWARD_URL for this inbox")
    held = _held_back(d, standing)
    if held:
        return Verdict(False, held)
    if d.event not in MESSAGE_EVENTS:
        return Verdict(True, f"{d.event}: conversation events always go to your bot, so it can reset its state", url)
    return Verdict(True, "the conversation is the bot's (pending, not handed off)", url)


def _held_back(d: Delivery, standing: Standing) -> str | None:
    """Why a message is kept from the team's bot: the conversation is with humans, or this message puts it there."""
    if d.event not in MESSAGE_EVENTS:
        return None
    if standing.handoff_now:
        return "this message hands the conversation to humans"
    if standing.handed_off:
        return "the bot handed the conversation to humans"
    status = standing.status or (d.conversation.status if d.conversation else None)
    if status in WITH_HUMANS:
        return f"the conversation is {status}: with humans"
    return None


class _Id(Struct):
    id: int | None = None


class _Where(Struct):
    inbox: _Id | None = None  # webwidget_triggered: ContactInbox#webhook_data
    inbox_id: int | None = None


_decode_where = msgspec.json.Decoder(_Where).decode


def inbox_of(d: Delivery, body: bytes) -> int | None:
    """The delivery's inbox: its conversation's, else what the body names (a widget event's `inbox.id`)."""
    if d.conversation is not None:
        return d.conversation.inbox_id
    try:
        where = _decode_where(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    return where.inbox.id if where.inbox and where.inbox.id else where.inbox_id


# ---- signing and sending ----------------------------------------------------------------------------------
def sign(secret: str, body: bytes, now: float) -> dict[str, str]:
    """Chatwoot's headers (#13892): HMAC-SHA256(secret, "<unix seconds>.<body>") as `sha256=<hex>`."""
    timestamp = str(int(now))
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-Chatwoot-Timestamp": timestamp, "X-Chatwoot-Signature": f"sha256={digest}"}


def delivery_id(given: str | None, body: bytes) -> str:
    """Chatwoot's `X-Chatwoot-Delivery`, else (before 4.13) one made from the body: the same for every attempt
    and restart, so the team's bot can drop a repeat as it would Chatwoot's."""
    return given or str(uuid.uuid5(ID_SPACE, hashlib.sha256(body).hexdigest()))


class HandoffRequest(Struct, frozen=True):
    reason: str | None = None


class Delivered(Struct, frozen=True):
    status: int
    handoff: HandoffRequest | None = None  # the team's bot asked for a person


class Retry(Struct, frozen=True):
    why: str
    retry_after: float | None = None  # seconds, from a 429's Retry-After


class Refused(Struct, frozen=True):
    """A 3xx or a 4xx other than 429: sending the same body again cannot help."""

    status: int
    why: str


Result = Delivered | Retry | Refused


class _Answer(Struct):
    handoff: object = None
    reason: object = None


_decode_answer = msgspec.json.Decoder(_Answer).decode


def handoff_request(body: bytes) -> HandoffRequest | None:
    """`{"handoff": true, "reason": "…"}` (reason optional); any other answer is no request."""
    try:
        answer = _decode_answer(body)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return None
    if answer.handoff is not True:
        return None
    reason = answer.reason.strip()[:MAX_REASON] if isinstance(answer.reason, str) else ""
    return HandoffRequest(reason or None)


class Forwarder:
    """Sends deliveries to the team's bot over the app's one ClientSession; one attempt per `send`."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        secret: SecretStr | None,
        timeout: float,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self._session, self._secret, self._metrics, self._clock = session, secret, metrics, clock
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._slots = asyncio.Semaphore(IN_FLIGHT)

    async def send(self, url: str, body: bytes, delivery: str, about: str = "a delivery") -> Result:
        """POST `body` unchanged to `url`; `delivery` is its X-Chatwoot-Delivery, `about` names it in logs."""
        headers = {"Content-Type": "application/json", "Accept": "application/json", "X-Chatwoot-Delivery": delivery}
        async with self._slots:  # waiting for a slot is not part of FORWARD_TIMEOUT
            if self._secret is not None:  # signed as the request leaves, as Chatwoot does per attempt
                headers.update(sign(self._secret.get_secret_value(), body, self._clock()))
            result = await self._post(url, body, headers)
        self._log(result, url, about)
        if self._metrics:
            self._metrics.forward_attempt(type(result).__name__.lower())
        return result

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> Result:
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as resp:
                answer = await _read_at_most(resp.content, MAX_ANSWER)
                return _result(resp.status, answer, resp.headers.get("Retry-After"))
        except TimeoutError:
            return Retry(f"no answer within FORWARD_TIMEOUT ({self._timeout.total:g} s)")
        except aiohttp.ClientError as exc:
            return Retry(f"{type(exc).__name__}: {exc}".replace(url, forward_host(url)))

    @staticmethod
    def _log(result: Result, url: str, about: str) -> None:
        host = forward_host(url)  # the path may be the team's bot's own secret
        if isinstance(result, Refused):
            logger.warning("{}: your bot at {} refused the forward ({}); not retried", about, host, result.why)
        elif isinstance(result, Retry):
            logger.info("{}: forward to your bot at {} failed, will retry: {}", about, host, result.why)
        elif result.handoff:
            logger.info("{}: forwarded to your bot at {}, which asks for a handoff", about, host)
        else:
            logger.debug("{}: forwarded to your bot at {} ({})", about, host, result.status)


def _result(status: int, answer: bytes, retry_after: str | None) -> Result:
    if 200 <= status < 300:
        return Delivered(status, handoff_request(answer))
    said = answer[:160].decode(errors="replace").replace("\n", " ").strip()
    if status == 429 or status >= 500:
        return Retry(f"answered {status} {said}".strip(), _seconds(retry_after))
    hint = " (a redirect: set the URL it points to)" if 300 <= status < 400 else ""
    return Refused(status, f"answered {status}{hint} {said}".strip())


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:  # an HTTP date: rare from a bot; the step's own backoff applies
        return None


# ---- what an attempt means for the forward (pure; the outbox step acts on it) ---------------------------
class Next(enum.Enum):
    DONE = "delivered"  # count it, with its age
    HANDOFF = "handoff"  # delivered, and the team's bot asks for a person: hand off if the period is still on
    RETRY = "retry"  # try again (the outbox's backoff, at least `Retry.retry_after`, within FORWARD_MAX_AGE)
    REFUSED = "refused"  # dropped, logged with the status: sending it again cannot help
    EXPIRED = "expired"  # FORWARD_MAX_AGE has passed: FORWARD_FALLBACK applies


def after(result: Result, accepted_at: float, now: float, max_age: float) -> Next:
    """What to do once an attempt came to `result`; `accepted_at`: when the webhook accepted the delivery."""
    if isinstance(result, Delivered):
        return Next.HANDOFF if result.handoff else Next.DONE
    if isinstance(result, Refused):
        return Next.REFUSED
    return Next.RETRY if now - accepted_at < max_age else Next.EXPIRED


def fallback_note(url: str, since: float) -> str:
    """The private note of a FORWARD_FALLBACK=open handoff."""
    when = datetime.fromtimestamp(since, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"Your bot at {forward_host(url)} did not answer since {when}; handed to a person instead"


def handoff_note(request: HandoffRequest) -> str:
    """The private note of a handoff the team's bot asked for."""
    return f"Your bot asked for a person: {request.reason}" if request.reason else "Your bot asked for a person"


async def probe(session: aiohttp.ClientSession, url: str, seconds: float) -> tuple[bool, str]:
    """For `check`: whether the team's bot answers at all. A GET, so no bot acts on it: any answer below 500
    (a 404 or 405 for GET is usual) shows it is there; a 5xx is a proxy whose bot is down."""
    host = forward_host(url)
    started = time.perf_counter()
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=seconds), allow_redirects=False) as resp:
            status = resp.status
    except TimeoutError:
        return False, f"{host} gave no answer within {seconds:g} s"
    except aiohttp.ClientError as exc:
        return False, f"cannot reach {host} ({type(exc).__name__})"
    took = f"{(time.perf_counter() - started) * 1000:.0f} ms"
    if status >= 500:
        return False, f"{host} answered {status} to a GET in {took}: is your bot running behind it?"
    return True, f"{host} answers (a GET got {status} in {took})"


async def _read_at_most(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The whole answer up to `limit` bytes, however it was chunked (`read(n)` returns only what has come)."""
    try:
        return await content.readexactly(limit)
    except asyncio.IncompleteReadError as short:  # a shorter answer: all of it
        return short.partial
