"""The forward step (issue 23): which accepted deliveries become a forward job, committed with their decision, and
what the outbox does with one (one attempt through forward.Forwarder, then forward.after's verdict).

`forward_job` is pure (decide.decide calls it); `Relay.run` is the outbox's `case Forward()`. A handoff the team's
bot asks for, or FORWARD_FALLBACK's, is decided like the operator's button: Handoffs.forward_handoff.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime

import msgspec
from loguru import logger

from .actions import Forward, ForwardEvent, Job
from .chatwoot import ChatwootError
from .config import Settings, forward_host
from .constants import STORE_BACKOFF_BASE, STORE_BACKOFF_CAP
from .events import MESSAGE_EVENTS, Delivery
from .facts import ConversationState
from .forward import (
    Delivered,
    Forwarder,
    Next,
    Refused,
    Result,
    Retry,
    Standing,
    after,
    delivery_id,
    fallback_note,
    handoff_note,
    inbox_of,
    verdict,
)
from .metrics import Metrics
from .store import store_failure

LANE = "forward"
HOLD = 0.5  # seconds a forward waits, so an earlier message Chatwoot's Sidekiq delivered later can overtake it
HOUR = 3600.0


# ---- which deliveries are queued, and where (pure) ---------------------------------------------------
def standing(d: Delivery, before: ConversationState, outcome: str, after_: ConversationState | None) -> Standing:
    """What the lifecycle model knows as the decision is taken: a handoff decided in this period (deferred too),
    one decided by this very delivery, and the status the bot knows when it is newer than the delivery's."""
    state = after_ or before
    c = d.conversation
    newer = c is not None and state.updated > c.updated
    return Standing(state.handed_off, outcome in ("handoff", "defer"), state.status if newer else None)


def worth_a_look(d: Delivery, body: bytes | None, settings: Settings) -> bool:
    """Whether a delivery the rules ignore may still go to the team's bot (judged again with the bot's memory)."""
    return body is not None and settings.forwards and verdict(d, Standing(), settings, inbox_of(d, body)).forward


class _Who(msgspec.Struct):
    account: _Id | None = None
    contact: _Id | None = None


class _Id(msgspec.Struct):
    id: int | None = None


_decode_who = msgspec.json.Decoder(_Who).decode


def _queue_of(d: Delivery, body: bytes) -> tuple[int, int, str] | None:
    """(account, display id, lane): the conversation's forward lane; a delivery without a conversation
    (webwidget_triggered) queues in its contact's."""
    c = d.conversation
    if c is not None:
        return c.account_id, c.display_id, LANE
    try:
        who = _decode_who(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    if who.account is None or who.account.id is None or who.contact is None or who.contact.id is None:
        return None
    return who.account.id, 0, f"{LANE}-contact-{who.contact.id}"


def order_of(d: Delivery) -> float:
    """A forward's place in its lane: its message's id; a conversation event's goes right after the message it
    followed (its last_message_id), before the next one."""
    if d.message is not None:
        return float(d.message.id)
    c = d.conversation
    return c.last_message_id + 0.5 if c is not None and c.last_message_id is not None else 0.0


def forward_job(
    d: Delivery,
    body: bytes,
    before: ConversationState,
    outcome: str,
    after_: ConversationState | None,
    now: datetime,
    settings: Settings,
) -> Job | None:
    """The job forwarding `d` to the team's bot, or None when it does not go (forward.verdict says why)."""
    if not settings.forwards:
        return None
    inbox = inbox_of(d, body)
    said = verdict(d, standing(d, before, outcome, after_), settings, inbox)
    where = _queue_of(d, body) if said.forward else None
    if where is None:
        return None
    at = now.timestamp()  # the steady clock's seconds, close enough (the outbox's not_before)
    kind = Forward if d.event in MESSAGE_EVENTS else ForwardEvent
    step = kind(inbox, d.event, body.decode(), delivery_id(d.delivery_id, body), at)
    account, display, lane = where
    return Job(
        account,
        display,
        f"{d.event} for your bot",
        [step],
        created_at=at,
        decided_at=at,
        trigger=d.message.id if d.message else None,
        period=(after_ or before).period,
        lane=lane,
        not_before=at + HOLD,
        order=order_of(d),
    )


def dedup_key(d: Delivery, body: bytes) -> str:
    """The key a forwarded delivery is committed under: a new message's decision key (its id, which the signature
    covers); else its body's: a message's updates (receipts) share an id, and a conversation event's key would
    be X-Chatwoot-Delivery, which the signature does not cover (a signed body posted again under a new id would be
    forwarded again; Chatwoot's own retry sends the same body)."""
    if d.conversation is not None and d.message is not None and d.event == "message_created":
        return d.dedup_key
    return "f:" + hashlib.sha256(body).hexdigest()[:40]


# ---- the step, run by the outbox ---------------------------------------------------------------------
class ForwardFailed(ChatwootError):
    """An attempt to reach the team's bot failed and there is time left: the outbox's backoff applies (never a
    dead letter before FORWARD_MAX_AGE ends it)."""


HandOff = Callable[[Job, Forward, str], Awaitable[None]]


class Relay:
    """Runs forward steps: one attempt each time; what the team's bot's state looks like for the operator page."""

    def __init__(
        self,
        settings: Settings,
        forwarder: Forwarder,
        metrics: Metrics,
        clock: Callable[[], float],
        hand_off: HandOff,
    ):
        """`clock`: the outbox's steady clock; `hand_off(job, step, note)`: Handoffs.forward_handoff."""
        self.settings, self.forwarder, self.metrics, self.clock, self.hand_off = (
            settings,
            forwarder,
            metrics,
            clock,
            hand_off,
        )
        self.last_success: float | None = None  # wall-clock time of the team's bot's last 2xx
        self._failures: deque[float] = deque()  # monotonic times of failed attempts in the last hour
        self._waiting: dict[str, float] = {}  # forwards whose attempt failed and that are not over: accepted_at

    async def run(self, job: Job, step: Forward) -> None:
        about = f"conversation {job.conversation_key}: {step.event}"
        url = self.settings.rules_for(step.inbox_id).forward_url
        if url is None:  # the settings changed since it was queued
            logger.info("{}: forwarding is off in inbox {} now; not forwarded", about, step.inbox_id)
            return self._over(job, "dropped")
        max_age = self.settings.forward_max_age
        if job.attempts and self.clock() - step.accepted_at >= max_age:  # its retry came due after the deadline
            return await self._expired(job, step, url)
        result = await self.forwarder.send(url, step.body.encode(), step.delivery, about)
        await self._came_to(job, step, url, result)

    async def _came_to(self, job: Job, step: Forward, url: str, result: Result) -> None:
        """What the attempt's result leads to (forward.after): done, a handoff asked for, retried, given up."""
        age = self.clock() - step.accepted_at
        match after(result, step.accepted_at, self.clock(), self.settings.forward_max_age):
            case Next.DONE | Next.HANDOFF:
                assert isinstance(result, Delivered)
                self.last_success = time.time()
                self._over(job, "delivered", age)
                if result.handoff is not None:
                    await self._hand_off(job, step, handoff_note(result.handoff))
            case Next.REFUSED:
                assert isinstance(result, Refused)
                self._failed()
                self._over(job, "refused")
            case Next.RETRY:
                assert isinstance(result, Retry)
                self._failed()
                self._waiting[job.id] = step.accepted_at
                why = f"your bot at {forward_host(url)}: {result.why}"
                failed = ForwardFailed("forward", None, why, result.retry_after)
                failed.retry_within = self.settings.forward_max_age - age  # looked at when FORWARD_MAX_AGE ends it
                raise failed
            case Next.EXPIRED:
                self._failed()
                await self._expired(job, step, url)

    async def _expired(self, job: Job, step: Forward, url: str) -> None:
        self._over(job, "expired")
        since = step.accepted_at
        if self.settings.forward_fallback == "open":  # decided only if the conversation is still the bot's
            await self._hand_off(job, step, fallback_note(url, since))
            return
        logger.warning(
            "conversation {}: your bot at {} did not take the {} within FORWARD_MAX_AGE ({} s); given up{}",
            job.conversation_key,
            forward_host(url),
            step.event,
            self.settings.forward_max_age,
            " (FORWARD_FALLBACK=keep)" if self.settings.forward_fallback == "keep" else "",
        )

    async def _hand_off(self, job: Job, step: Forward, note: str) -> None:
        """The handoff, committed whatever the store's state: tried again while the store fails, never by sending
        the forward again (a team bot that de-duplicates answers a repeat without asking again)."""
        pause = STORE_BACKOFF_BASE
        while True:
            try:
                return await self.hand_off(job, step, note)
            except Exception as exc:
                if not store_failure(exc):
                    raise
                logger.warning(
                    "conversation {}: the handoff your bot asked for is not written yet (the store failed: {}); "
                    "trying again",
                    job.conversation_key,
                    exc,
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, STORE_BACKOFF_CAP)

    def _over(self, job: Job, result: str, age: float | None = None) -> None:
        self._waiting.pop(job.id, None)
        self.metrics.forwarded(result, age)

    def _failed(self) -> None:
        now = time.monotonic()
        self._failures.append(now)
        while self._failures and self._failures[0] < now - HOUR:
            self._failures.popleft()

    # ---- what the operator page shows ----
    def failures_last_hour(self) -> int:
        now = time.monotonic()
        return sum(1 for at in self._failures if at >= now - HOUR)

    def oldest_waiting(self) -> float | None:
        """Seconds the oldest forward that failed and is still to be retried has waited."""
        return self.clock() - min(self._waiting.values()) if self._waiting else None
