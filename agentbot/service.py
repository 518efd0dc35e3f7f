"""One delivery, end to end: facts from the store (and Chatwoot look-ups), decision, durable commit."""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import datetime, timezone

from loguru import logger
from msgspec.structs import replace

from .chatwoot import Chatwoot, ChatwootError
from .config import Settings
from .decide import Decision, decide, operator_handoff, returning_reason, triage
from .events import Conversation, Delivery, event_label
from .facts import Facts, Resolved
from .metrics import Metrics
from .store import Commit, DecisionEntry, Store

LOOKUP_TTL = 3600.0  # one Chatwoot look-up per contact per hour
LOOKUP_TIMEOUT = 2.0  # the look-up happens before the webhook answers; Chatwoot waits 5 s
LOGGED = {"handoff", "defer", "keep", "pending"}  # decisions the operator page lists ("record" is bookkeeping)
SWEEP_LOGGED = {"handoff", "defer"}  # the sweep's keeps (thousands at its first run) would crowd the log


def contact_key(c: Conversation) -> str | None:
    return f"{c.account_id}:{c.contact.id}" if c.contact.id is not None else None


class Handoffs:
    """Decides what to do with deliveries and writes it to the outbox; never calls Chatwoot's write API."""

    def __init__(self, settings: Settings, store: Store, chatwoot: Chatwoot | None, metrics: Metrics,
                 clock: Callable[[], datetime], on_commit: Callable[[int], None] = lambda jobs: None):
        self.settings, self.store, self.chatwoot, self.metrics = settings, store, chatwoot, metrics
        self.clock, self.on_commit = clock, on_commit
        self.live = 0  # deliveries being decided right now (the sweep gives way to them)

    async def facts(self, d: Delivery, look_up: bool = True) -> Facts:
        c = d.conversation
        assert c is not None
        # A conversation event's decision reads only the conversation; a message's also the contact's past.
        state, previous = await self.store.load(c.key, contact_key(c) if d.message else None)
        facts = Facts(state, previous)
        if look_up and self._worth_looking_up(d, facts):
            facts = Facts(state, await self._look_up(c))
        return facts

    def _worth_looking_up(self, d: Delivery, facts: Facts) -> bool:
        c, m = d.conversation, d.message
        rules = self.settings.rules_for(c.inbox_id)
        return bool(
            self.settings.chatwoot_api_token and self.chatwoot and m and m.kind == "incoming"
            and rules.handoff_returning and not facts.state.handed_off and c.contact.id is not None
            and returning_reason(c, facts) is None
        )

    async def _look_up(self, c: Conversation, cache: bool = True) -> Resolved | None:
        """The contact's latest other resolved conversation in Chatwoot (user token), cached for an hour."""
        key, now = contact_key(c), self.clock().timestamp()
        cached, value = await self.store.recall(key, now)
        if cached:
            return value
        token = self.settings.chatwoot_api_token.get_secret_value()
        try:
            found = await asyncio.wait_for(self.chatwoot.contact_conversations(c.account_id, c.contact.id, token), LOOKUP_TIMEOUT)
        except (ChatwootError, asyncio.TimeoutError) as exc:
            logger.warning("conversation {}: contact look-up failed ({}); treating the customer as new", c.key, exc or "timed out")
            return None
        resolved = [x for x in found if x.get("status") == "resolved" and x.get("id") != c.display_id]
        best = max(resolved, key=lambda x: x.get("last_activity_at") or x.get("timestamp") or 0, default=None)
        value = None
        if best:
            when = best.get("last_activity_at") or best.get("timestamp") or now
            assignee = ((best.get("meta") or {}).get("assignee") or {}).get("id")
            on = datetime.fromtimestamp(when, timezone.utc).date().isoformat()
            value = Resolved(int(best["id"]), on, assignee, "chatwoot")
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
        if why_not:  # the bulk of deliveries: nothing to look up
            return self._report(d, Decision("ignore", why_not))
        c = d.conversation
        decision = None
        if d.message is None:
            # Conversation events on open conversations usually change nothing: decide those with one
            # consistent read first, and take the lock only to write (it costs round trips on Redis).
            decision = decide(d, await self.facts(d, look_up=False), self.clock(), self.settings)
            if not decision.writes:
                return self._report(d, decision)
        with logger.contextualize(account=c.account_id, inbox=c.inbox_id, conversation=c.display_id,
                                  delivery=d.delivery_id):
            async with self.store.lock(c.key):
                decision = decide(d, await self.facts(d), self.clock(), self.settings)
                # The commit is refused for a delivery seen before; one that writes nothing is harmless
                # (unless it belongs in the decision log).
                if (decision.writes or decision.outcome in LOGGED) and not await self._commit(d, decision):
                    decision = Decision("duplicate", f"delivery {d.dedup_key} was handled before")
            return self._report(d, decision)

    async def hand_off_now(self, c: Conversation, who: str) -> Decision:
        """The operator page's button: queue the inbox's handoff for a conversation Chatwoot says is pending."""
        d = Delivery("operator_handoff", f"operator:{uuid.uuid4()}", c)
        with logger.contextualize(account=c.account_id, inbox=c.inbox_id, conversation=c.display_id):
            async with self.store.lock(c.key):
                decision = operator_handoff(c, await self.facts(d, look_up=False), self.clock(), self.settings, who)
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
        c = d.conversation
        with logger.contextualize(account=c.account_id, inbox=c.inbox_id, conversation=c.display_id):
            async with self.store.lock(c.key):
                facts = await self.facts(d, look_up=False)
                stored = facts.state
                # Once the bot has seen the customer's message (live, or an earlier sweep: it records at least
                # one), the contact was looked up then: later sweeps rely on what the bot has seen since.
                if not stored.incoming and self._worth_looking_up(d, facts):
                    facts = Facts(stored, await self._look_up(c, cache=not dry_run))  # a dry run writes nothing
                seen = max(stored.incoming, incoming or 1)
                if seen != stored.incoming:
                    facts = replace(facts, state=replace(stored, incoming=seen))
                decision = decide(d, facts, self.clock(), self.settings, live=False)
                if decision.state == stored:
                    decision.state = None  # nothing new to remember: most kept conversations write nothing
                if dry_run or not decision.writes:
                    return decision
                # Its own dedup key: one sweep decision per outcome for the customer's last message, so two
                # sweeps deciding alike (the command beside the server) commit once.
                key = f"s:{c.key}:{d.message.id}:{decision.outcome}:{decision.rule}"
                if not await self._commit(d, decision, key, "sweep"):
                    decision = Decision("duplicate", f"the sweep decided conversation {c.key} this way before")
            return decision

    async def _commit(self, d: Delivery, decision: Decision, dedup_key: str | None = None, event: str | None = None) -> bool:
        """`dedup_key` and `event` name the sweep's decisions, whose keeps stay out of the decision log."""
        c, now = d.conversation, self.clock().timestamp()
        log = None
        if decision.outcome in (LOGGED if event is None else SWEEP_LOGGED) and self.settings.decision_log_size:
            log = DecisionEntry(now, c.account_id, c.inbox_id, c.display_id, c.contact.name, decision.outcome,
                                decision.rule, decision.reason, event or d.event, dedup_key or d.dedup_key)
        commit = Commit(
            dedup_key=dedup_key or d.dedup_key,
            conversation_key=c.key,
            state=decision.state,
            jobs=decision.jobs,
            timer=decision.timer if isinstance(decision.timer, tuple) else None,
            cancel_timer=decision.timer is not None,
            contact_key=contact_key(c),
            resolved=decision.resolved,
            log=log,
            log_size=self.settings.decision_log_size,
        )
        done = await self.store.commit(commit, now)
        if done and decision.jobs:
            self.on_commit(len(decision.jobs))
        return done

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
