"""Contact look-ups: whether a customer has another resolved conversation in Chatwoot (user token), within a budget.

Live deliveries and the sweep each spend their own share of the look-up budget: a flood of deliveries cannot
stop the sweep, and a backlog swept at `SWEEP_RATE=0` cannot starve live deliveries. A live delivery has
Chatwoot's 5 s to answer and never waits for its share (`wait=False`); the sweep has no such deadline and
waits. Either way the answer says whether Chatwoot was asked: only `found` and `none` are knowledge, a
`failed` or `skipped` look-up is not a new customer and must not be remembered as seen.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from loguru import logger

from .chatwoot import Chatwoot, ChatwootError
from .config import Settings
from .events import Conversation, Listed
from .facts import Resolved
from .store import Store

LOOKUP_TTL = 3600.0  # one Chatwoot look-up per contact per hour
FAILED_LOOKUP_TTL = 60.0  # a failed look-up is not repeated for the same contact for a minute
LOOKUP_TIMEOUT = 2.0  # a live delivery's look-up happens before the webhook answers; Chatwoot waits 5 s
# Chatwoot allows 3000 requests a minute per client. Live deliveries may spend a fifth of that on look-ups, a
# few at a time, so that forged deliveries from new contacts cannot spend the rest; the sweep has a share of
# the same size of its own (one look-up at a time), so neither can empty the other's.
LOOKUPS_PER_MINUTE = 600
LOOKUP_BURST = 20
LOOKUP_CONCURRENCY = 4
FAILED_SUFFIX = ":failed"  # the store key of a recent failure: kept apart from the answer, which it is not


class Answer(enum.Enum):
    FOUND = "found"  # another resolved conversation: a returning customer
    NONE = "none"  # none: a new customer
    FAILED = "failed"  # Chatwoot did not answer in time or failed (now or less than a minute ago): unknown
    SKIPPED = "skipped"  # not asked: the share's budget or the delivery's time ran out: unknown


@dataclass(frozen=True)
class Lookup:
    answer: Answer
    previous: Resolved | None = None  # with FOUND: the contact's latest other resolved conversation
    why: str = ""  # with FAILED and SKIPPED: what happened, for logs and the sweep's report

    @property
    def known(self) -> bool:
        """Whether Chatwoot's answer is known; only then may the bot decide on it and remember the message seen."""
        return self.answer in (Answer.FOUND, Answer.NONE)


class Share:
    """One share of the look-up budget: a token bucket (`burst` at once, refilled at `per_minute`) and at most
    `at_once` look-ups in flight."""

    def __init__(
        self,
        name: str,
        per_minute: float = LOOKUPS_PER_MINUTE,
        burst: float = LOOKUP_BURST,
        at_once: int = LOOKUP_CONCURRENCY,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.name, self.rate, self.burst, self.at_once, self.clock = name, per_minute / 60.0, burst, at_once, clock
        self.tokens, self.at = burst, clock()
        self.waited = 0.0  # seconds spent waiting for tokens, all told (the sweep does not count them as work)
        self.flying = asyncio.Semaphore(at_once)

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now

    def take(self) -> bool:
        """A token now, or False."""
        self._refill()
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    async def wait(self) -> None:
        """A token, waited for as long as it takes to refill one."""
        while not self.take():  # noqa: ASYNC110 (a token is a point in time, not an event)
            delay = (1 - self.tokens) / self.rate
            self.waited += delay
            await asyncio.sleep(delay)

    @property
    def why_not(self) -> str:
        return f"the {self.name} share of {self.rate * 60:.0f} look-ups a minute is spent"


def live_share() -> Share:
    return Share("live deliveries'")


def sweep_share() -> Share:
    return Share("sweep's", at_once=1)


def contact_key(c: Conversation) -> str | None:
    return f"{c.account_id}:{c.contact.id}" if c.contact.id is not None else None


class Lookups:
    """Asks Chatwoot for a contact's other conversations through one share, remembering answers for an hour
    (failures for a minute, apart from the answers) in the store."""

    def __init__(
        self, settings: Settings, store: Store, chatwoot: Chatwoot, clock: Callable[[], datetime], share: Share
    ):
        if settings.chatwoot_api_token is None:
            raise ValueError("contact look-ups need CHATWOOT_API_TOKEN")
        self.store, self.chatwoot, self.clock, self.share = store, chatwoot, clock, share
        self.token = settings.chatwoot_api_token.get_secret_value()

    async def previous(
        self, c: Conversation, *, wait: bool, deadline: float | None = None, cache: bool = True
    ) -> Lookup:
        """The contact's latest other resolved conversation. `wait`: wait for the share's budget (the sweep);
        else skip when it is spent (a live delivery). `deadline` (the event loop's clock) bounds a live look-up,
        which also never takes more than LOOKUP_TIMEOUT. `cache=False` (a dry run) writes nothing."""
        key, now = contact_key(c), self.clock().timestamp()
        if key is None:
            return Lookup(Answer.SKIPPED, why="the conversation names no contact")
        known, value = await self.store.recall(key, now)
        if known:
            return Lookup(Answer.FOUND if value else Answer.NONE, value)
        failed, _ = await self.store.recall(key + FAILED_SUFFIX, now)
        if failed:
            return Lookup(Answer.FAILED, why=f"it failed less than {FAILED_LOOKUP_TTL:.0f} s ago")
        budget = await self._admit(wait, deadline)
        if isinstance(budget, Lookup):
            logger.debug("conversation {}: contact look-up skipped ({})", c.key, budget.why)
            return budget
        try:  # the wait for a place among the share's look-ups in flight counts against the deadline too
            found = await asyncio.wait_for(self._ask(c), budget)
        except (TimeoutError, ChatwootError) as exc:
            why = str(exc) or "timed out"
            logger.warning(
                "conversation {}: contact look-up failed ({}); not asked again for {:.0f} s",
                c.key,
                why,
                FAILED_LOOKUP_TTL,
            )
            if cache:
                await self.store.remember(key + FAILED_SUFFIX, None, FAILED_LOOKUP_TTL, now)
            return Lookup(Answer.FAILED, why=why)
        value = latest_resolved(found, c.display_id, now)
        if cache:
            await self.store.remember(key, value, LOOKUP_TTL, now)
        return Lookup(Answer.FOUND if value else Answer.NONE, value)

    async def _ask(self, c: Conversation) -> list[Listed]:
        async with self.share.flying:
            return await self.chatwoot.contact_conversations(c.account_id, c.contact.id or 0, self.token)

    async def _admit(self, wait: bool, deadline: float | None) -> float | None | Lookup:
        """Seconds the call may take (None: the client's own timeout), or why it is not made. The sweep waits
        for its share's next token (one look-up at a time, so a tenth of a second at most)."""
        if wait:
            await self.share.wait()
            return None
        left = LOOKUP_TIMEOUT
        if deadline is not None:
            left = min(left, deadline - asyncio.get_running_loop().time())
        if left <= 0.05:
            return Lookup(Answer.SKIPPED, why="no time left before Chatwoot's deadline")
        if self.share.flying.locked():
            return Lookup(Answer.SKIPPED, why=f"{self.share.at_once} look-ups at once")
        if not self.share.take():
            return Lookup(Answer.SKIPPED, why=self.share.why_not)
        return left


def latest_resolved(found: list[Listed], display_id: int, now: float) -> Resolved | None:
    """The latest resolved conversation among a contact's, other than `display_id`."""
    resolved = [x for x in found if x.conversation.status == "resolved" and x.conversation.display_id != display_id]
    best = max(resolved, key=lambda x: x.last_activity_at, default=None)
    if best is None:
        return None
    b = best.conversation
    on = datetime.fromtimestamp(best.last_activity_at or now, timezone.utc).date().isoformat()
    agent = b.assignee.id if b.assignee and b.assignee.kind == "user" else None  # 4.16+: may be the bot
    return Resolved(b.display_id, on, agent, "chatwoot")
