"""One delivery, end to end: facts from the store (and Chatwoot look-ups), decision, durable commit."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timezone

from loguru import logger
from msgspec.structs import replace

from .chatwoot import Chatwoot, ChatwootError
from .config import Settings
from .decide import HEARD, Decision, decide, given_back, operator_handoff, returning_reason, triage
from .events import Conversation, Delivery, event_label
from .facts import ConversationState, Facts, Resolved
from .metrics import Metrics
from .store import Commit, DecisionEntry, Store

LOOKUP_TTL = 3600.0  # one Chatwoot look-up per contact per hour
FAILED_LOOKUP_TTL = 60.0  # a failed look-up is not repeated for the same contact for a minute
LOOKUP_TIMEOUT = 2.0  # the look-up happens before the webhook answers; Chatwoot waits 5 s
LOGGED = {"handoff", "defer", "keep", "pending"}  # decisions the operator page lists ("record" is bookkeeping)
RELEASE_WITHIN = 0.3  # seconds a conversation lock's release may take before it is left to lapse
DELIVERY_BUDGET = 4.0  # seconds for the conversation lock plus the look-up, so the answer beats those 5 s
# Look-ups spend the API token's share of Chatwoot's limit (3000 requests/minute per client): a few at
# a time, and at most a fifth of that limit per minute, so a flood of (forged) deliveries from new
# contacts cannot starve the bot's own handoffs. Beyond either, the customer counts as new.
LOOKUP_CONCURRENCY = 4
LOOKUPS_PER_MINUTE = 600
LOOKUP_BURST = 20


class Busy(Exception):
    """The conversation's lock could not be had within the delivery's budget: answered 500, Chatwoot retries."""


class LookupBudget:
    """A token bucket: LOOKUP_BURST look-ups at once, refilled at LOOKUPS_PER_MINUTE."""

    def __init__(self, per_minute: float = LOOKUPS_PER_MINUTE, burst: float = LOOKUP_BURST):
        self.rate, self.burst = per_minute / 60.0, burst
        self.tokens, self.at = burst, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


SWEEP_LOGGED = {"handoff", "defer"}  # the sweep's keeps (thousands at its first run) would crowd the log


def contact_key(c: Conversation) -> str | None:
    return f"{c.account_id}:{c.contact.id}" if c.contact.id is not None else None


async def load_facts(store: Store, d: Delivery) -> Facts:
    """What the store remembers for the delivery's conversation (and, for a message, the contact's past);
    a delivery without a conversation has no facts."""
    c = d.conversation
    if c is None:
        return Facts()
    # A conversation event's decision reads only the conversation; a message's also the contact's past.
    state, previous = await store.load(c.key, contact_key(c) if d.message else None)
    return Facts(state, previous)


class Handoffs:
    """Decides what to do with deliveries and writes it to the outbox; never calls Chatwoot's write API."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        chatwoot: Chatwoot | None,
        metrics: Metrics,
        clock: Callable[[], datetime],
        on_commit: Callable[[int], None] = lambda jobs: None,
    ):
        self.settings, self.store, self.chatwoot, self.metrics = settings, store, chatwoot, metrics
        self.clock, self.on_commit = clock, on_commit
        self._lookups = asyncio.Semaphore(LOOKUP_CONCURRENCY)
        self._budget = LookupBudget()
        self.live = 0  # deliveries being decided right now (the sweep gives way to them)

    async def facts(self, d: Delivery, look_up: bool = True, deadline: float | None = None) -> Facts:
        """What the bot knows; with `look_up`, also Chatwoot's answer about the contact, given by `deadline`
        (the event loop's clock)."""
        c = d.conversation
        assert c is not None
        facts = await load_facts(self.store, d)
        if look_up and await self._pending_again(d, facts.state, deadline):
            facts = Facts(facts.state.handoff_undone(facts.state.latest_message), facts.previous)
        if look_up and self._worth_looking_up(d, facts):
            facts = Facts(facts.state, await self._look_up(c, deadline))
        return facts

    async def _pending_again(self, d: Delivery, state: ConversationState, deadline: float | None) -> bool:
        """A customer's message in a period the bot handed off, from a later save of a still pending
        conversation: the handoff's open may have been undone since (an agent resolved it, the customer wrote
        again) with the events that say so still on their way (Chatwoot delivers in no set order). Once the
        handoff's open is done, Chatwoot tells where it may (4.16+). Not for a conversation the bot owns again
        (the open ended its ownership, so an agent gave it back; those events say so) unless the open never
        landed (a dead letter)."""
        c, m = d.conversation, d.message
        if c is None or not (
            m
            and m.kind == "incoming"
            and state.handed_off
            and c.status == "pending"
            and c.updated > state.updated
            and self.chatwoot
            and not await self.store.opening(c.key)
        ):
            return False
        if c.bot_owned and not await self._dead_letter(c.key):
            return False  # the handoff's open ended the bot's ownership: an agent gave it back (those events say so)
        loop = asyncio.get_running_loop()
        try:  # bounded like a look-up: the conversation's lock is held meanwhile
            async with asyncio.timeout_at(min(deadline or math.inf, loop.time() + LOOKUP_TIMEOUT)):
                view = await self.chatwoot.conversation_if_readable(c.account_id, c.display_id)
        except (ChatwootError, TimeoutError) as exc:
            logger.warning(
                "conversation {}: could not ask Chatwoot whether the handoff was undone ({}); the sweep looks again",
                c.key,
                exc,
            )
            return False
        if view is not None and view.conversation.status == "pending":
            logger.info("conversation {}: pending again after the bot handed it off: a new pending period", c.key)
            return True
        return False

    async def _dead_letter(self, conversation_key: str) -> bool:
        """Whether the conversation has a dead letter: its handoff's open never landed (read only on a rare path)."""
        return any(job.conversation_key == conversation_key for job in await self.store.dead_letters())

    def _worth_looking_up(self, d: Delivery, facts: Facts) -> bool:
        c, m = d.conversation, d.message
        assert c is not None
        rules = self.settings.rules_for(c.inbox_id)
        return bool(
            self.settings.chatwoot_api_token
            and self.chatwoot
            and m
            and m.kind == "incoming"
            and rules.handoff_returning
            and not facts.state.handed_off
            and c.contact.id is not None
            and not given_back(c, facts.state)
            and returning_reason(c, facts) is None
        )

    async def _look_up(self, c: Conversation, deadline: float | None = None, cache: bool = True) -> Resolved | None:
        """The contact's latest other resolved conversation in Chatwoot (user token), cached for an hour;
        a failure is cached for a minute. None (a new customer) when it cannot be asked in time. A dry run
        of the sweep (`cache=False`) writes nothing."""
        key, now = contact_key(c), self.clock().timestamp()
        # _worth_looking_up made sure of these
        assert key is not None and c.contact.id is not None and self.chatwoot is not None
        assert self.settings.chatwoot_api_token is not None
        cached, value = await self.store.recall(key, now)
        if cached:
            return value
        left = LOOKUP_TIMEOUT if deadline is None else min(LOOKUP_TIMEOUT, deadline - asyncio.get_running_loop().time())
        why = (
            "no time left"
            if left <= 0.05
            else f"{LOOKUP_CONCURRENCY} look-ups at once"
            if self._lookups.locked()
            else f"{LOOKUPS_PER_MINUTE} look-ups a minute"
            if not self._budget.take()
            else None
        )
        if why:
            logger.debug("conversation {}: contact look-up skipped ({}); treating the customer as new", c.key, why)
            return None
        token = self.settings.chatwoot_api_token.get_secret_value()
        try:
            async with self._lookups:
                found = await asyncio.wait_for(
                    self.chatwoot.contact_conversations(c.account_id, c.contact.id, token), left
                )
        except (TimeoutError, ChatwootError) as exc:
            logger.warning(
                "conversation {}: contact look-up failed ({}); treating the customer as new for {:.0f} s",
                c.key,
                exc or "timed out",
                FAILED_LOOKUP_TTL,
            )
            if cache:
                await self.store.remember(key, None, FAILED_LOOKUP_TTL, now)
            return None
        resolved = [
            x for x in found if x.conversation.status == "resolved" and x.conversation.display_id != c.display_id
        ]
        best = max(resolved, key=lambda x: x.last_activity_at, default=None)
        value = None
        if best:
            b = best.conversation
            on = datetime.fromtimestamp(best.last_activity_at or now, timezone.utc).date().isoformat()
            agent = b.assignee.id if b.assignee and b.assignee.kind == "user" else None  # 4.16+: may be the bot
            value = Resolved(b.display_id, on, agent, "chatwoot")
        if cache:
            await self.store.remember(key, value, LOOKUP_TTL, now)
        return value

    async def handle(self, d: Delivery) -> Decision:
        self.live += 1
        try:
            return await self._handle(d)
        finally:
            self.live -= 1

    async def _handle(self, d: Delivery) -> Decision:
        why_not = triage(d, self.settings)
        m = d.message
        if d.event == "message_created" and m is not None and m.sender.kind == "agent_bot" and d.conversation:
            await self._remember_echo(d.conversation.key, m.id, m.content)
        if why_not:  # the bulk of deliveries: nothing to look up
            return self._report(d, Decision("ignore", why_not))
        c = d.conversation
        assert c is not None  # triage ignores deliveries without a conversation
        decision = None
        if d.message is None:
            # Conversation events on open conversations usually change nothing: decide those with one
            # consistent read first, and take the lock only to write (it costs round trips on Redis).
            decision = decide(d, await self.facts(d, look_up=False), self.clock(), self.settings)
            if not decision.writes:
                return self._report(d, decision)
        deadline = asyncio.get_running_loop().time() + DELIVERY_BUDGET
        with logger.contextualize(
            account=c.account_id, inbox=c.inbox_id, conversation=c.display_id, delivery=d.delivery_id
        ):
            async with self._locked(c.key, deadline):
                decision = decide(d, await self.facts(d, deadline=deadline), self.clock(), self.settings)
                if decision.reason == HEARD and not await self.store.opening(c.key):
                    decision.state = None  # nothing queued waits for the message (decide.HEARD)
                # The commit is refused for a delivery seen before; one that writes nothing is harmless
                # (unless it belongs in the decision log).
                if (decision.writes or decision.outcome in LOGGED) and not await self._commit(d, decision):
                    decision = Decision("duplicate", f"delivery {d.dedup_key} was handled before")
            return self._report(d, decision)

    @asynccontextmanager
    async def _locked(self, key: str, deadline: float) -> AsyncIterator[None]:
        """The conversation's lock, waited for until `deadline` at most. The webhook bounds the whole delivery
        (a commit it cuts short is found by the dedup key when Chatwoot retries); releasing the lock is bounded
        too: a lock that cannot be released (a stalled store) lapses by itself."""
        lock = self.store.lock(key)
        try:
            async with asyncio.timeout_at(deadline):
                await lock.__aenter__()
        except TimeoutError:
            raise Busy(f"conversation {key} is busy: its lock was not free within {DELIVERY_BUDGET:.0f} s") from None
        try:
            yield
        finally:
            try:
                async with asyncio.timeout(RELEASE_WITHIN):
                    await lock.__aexit__(None, None, None)
            except Exception as exc:
                logger.warning("conversation {}: its lock was not released ({!r}); it lapses by itself", key, exc)

    async def hand_off_now(self, c: Conversation, who: str) -> Decision:
        """The operator page's button: queue the inbox's handoff for a conversation Chatwoot says is pending."""
        d = Delivery("operator_handoff", f"operator:{uuid.uuid4()}", c)
        with logger.contextualize(account=c.account_id, inbox=c.inbox_id, conversation=c.display_id):
            async with self.store.lock(c.key):
                facts = await self.facts(d, look_up=False)
                if facts.state.handed_off and await self.store.opening(c.key):  # a second click, or on its way
                    return Decision("ignore", "a handoff is already queued for this conversation")
                decision = operator_handoff(c, facts, self.clock(), self.settings, who)
                if decision.state is not None:  # its trigger (the last message, often the bot's own) is seen now
                    decision.state = decision.state.saw(c.status, c.updated, c.last_message_id, c.bot_owned)
                await self._commit(d, decision)
            self.metrics.decisions.labels(decision.outcome, decision.rule).inc()
            logger.info("conversation {}: handoff queued from the operator page: {}", c.key, decision.reason)
            return decision

    async def reconcile(self, d: Delivery, incoming: int | None, dry_run: bool = False) -> Decision:
        """The sweep's way in: decide a listed conversation like a delivery of its last customer message, seen
        before (no greeting, no away message), under the same lock and into the same store and outbox.
        `incoming` is the customer's messages in this pending period, when the sweep counted them."""
        why_not = triage(d, self.settings)
        if why_not:
            return Decision("ignore", why_not)
        c, m = d.conversation, d.message
        assert c is not None and m is not None  # the sweep's deliveries are messages
        with logger.contextualize(account=c.account_id, inbox=c.inbox_id, conversation=c.display_id):
            async with self.store.lock(c.key):
                facts = await self.facts(d, look_up=False)
                renewed = facts.state.handed_off and not await self.store.opening(c.key)
                if renewed:
                    # Chatwoot lists it pending and nothing queued will open it: the handoff became a dead letter,
                    # or its open was undone by a resolve and a reopen whose events never reached the bot. That
                    # period's jobs still queued (a failing note or message) are moot, as in `_pending_again`; the
                    # sweep's own trigger is not.
                    latest = min(facts.state.latest_message or 0, m.id - 1)
                    facts = replace(facts, state=facts.state.handoff_undone(latest))
                stored = facts.state
                # Once the bot has seen the customer's message (live, or an earlier sweep: it records at least
                # one), the contact was looked up then: later sweeps rely on what the bot has seen since.
                if not stored.incoming and self._worth_looking_up(d, facts):
                    facts = Facts(stored, await self._look_up(c, cache=not dry_run))  # a dry run writes nothing
                seen = max(stored.incoming, incoming or 1)
                if seen != stored.incoming:
                    facts = replace(facts, state=replace(stored, incoming=seen))
                decision = decide(d, facts, self.clock(), self.settings, live=False)
                timer = [decision.timer[1]] if decision.timer else []
                for job in decision.jobs + timer:  # the listing may be minutes old by now
                    job.verify = True
                if decision.state == stored:
                    decision.state = None  # nothing new to remember: most kept conversations write nothing
                if dry_run or not decision.writes:
                    return decision
                # Its own dedup key: one sweep decision per outcome for the customer's last message, so two
                # sweeps deciding alike (the command beside the server) commit once; a period started again (its
                # handoff, perhaps the sweep's own, became a dead letter) is decided anew.
                key = f"s:{c.key}:{m.id}:{decision.outcome}:{decision.rule}"
                if renewed:
                    key += f":renewed at {self.clock().timestamp():.0f}"
                if not await self._commit(d, decision, key, "sweep"):
                    decision = Decision("duplicate", f"the sweep decided conversation {c.key} this way before")
            return decision

    async def _commit(
        self, d: Delivery, decision: Decision, dedup_key: str | None = None, event: str | None = None
    ) -> bool:
        """`dedup_key` and `event` name the sweep's decisions, whose keeps stay out of the decision log."""
        c, now = d.conversation, self.clock().timestamp()
        assert c is not None
        log = None
        if decision.outcome in (LOGGED if event is None else SWEEP_LOGGED) and self.settings.decision_log_size:
            log = DecisionEntry(
                now,
                c.account_id,
                c.inbox_id,
                c.display_id,
                c.contact.name,
                decision.outcome,
                decision.rule,
                decision.reason,
                event or d.event,
                dedup_key or d.dedup_key,
            )
        commit = Commit(
            dedup_key=dedup_key or d.dedup_key,
            conversation_key=c.key,
            state=decision.state,
            jobs=decision.jobs,
            timer=decision.timer,
            cancel_timer=decision.cancel_timer,
            contact_key=contact_key(c),
            resolved=decision.resolved,
            log=log,
            log_size=self.settings.decision_log_size,
        )
        done = await self.store.commit(commit, now)
        if done and decision.jobs:
            self.on_commit(len(decision.jobs))
        return done

    async def _remember_echo(self, conversation_key: str, message_id: int, content: str | None) -> None:
        """The bot's own message, delivered back: the outbox looks for it before posting a note or message again."""
        try:
            await self.store.echo(conversation_key, message_id, content, self.clock().timestamp())
        except Exception as exc:  # a hint: the delivery is still answered
            logger.warning(
                "conversation {}: could not remember the bot's own message {} ({})", conversation_key, message_id, exc
            )

    def _report(self, d: Delivery, decision: Decision) -> Decision:
        self.metrics.delivered(event_label(d.event), decision.outcome)
        where = f"conversation {d.conversation.key}" if d.conversation else d.event
        if decision.outcome in ("ignore", "duplicate"):
            logger.debug("{}: {} {}: {}", where, d.event, decision.outcome, decision.reason)
            return decision
        self.metrics.decisions.labels(decision.outcome, decision.rule or "-").inc()
        # A handoff is logged at INFO when Chatwoot has it (outbox); what only updates memory is DEBUG.
        quiet = decision.outcome in ("handoff", "record")
        logger.log("DEBUG" if quiet else "INFO", "{}: {}: {}", where, decision.outcome, decision.reason)
        return decision
