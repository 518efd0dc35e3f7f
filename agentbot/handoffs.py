"""One delivery, end to end: facts from the store (and Chatwoot look-ups), decision, durable commit."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from typing import Any, cast

from loguru import logger
from msgspec.structs import replace

from .actions import DecideAgain, Forward, Job, echo_text
from .chatwoot import Chatwoot, ChatwootError
from .clock import SteadyClock
from .config import Settings
from .decide import Decision, Need, decide, forward_handoff, operator_handoff, triage
from .eager import within
from .events import BadBody, Conversation, Delivery, Listed, PayloadError, event_label, parse
from .facts import Facts
from .lookups import Lookups, Share, contact_key, live_share
from .metrics import Metrics
from .relay import dedup_key, worth_a_look
from .store import Commit, DecisionEntry, Store

LOOKUP_TIMEOUT = 2.0  # a read before the webhook answers; Chatwoot waits 5 s
READ_AGAIN_AFTER = 0.1  # seconds before a refused read is tried again (doubling, within LOOKUP_TIMEOUT)
LOGGED = {"handoff", "defer", "keep", "pending"}  # decisions the operator page lists ("record" is bookkeeping)
RELEASE_WITHIN = 0.3  # seconds a delivery waits for its conversation lock's release (which then goes on alone)
RELEASE_GIVES_UP = 10.0  # seconds a release is tried before the lock is left to lapse by itself (a stalled store)
RELEASE_WITHIN_STOP = 1.0  # seconds a stopping bot waits for the releases still on their way
DELIVERY_BUDGET = 4.0  # seconds for the conversation lock plus the look-up, so the answer beats those 5 s


class Busy(Exception):
    """The conversation's lock could not be had within the delivery's budget: answered 500, Chatwoot retries."""


SWEEP_LOGGED = {"handoff", "defer"}  # the sweep's keeps (thousands at its first run) would crowd the log


def _echo(d: Delivery) -> bool:
    """Whether `d` is the bot's own message delivered back (remembered: the outbox looks for it)."""
    m = d.message
    return (
        d.event == "message_created" and m is not None and m.sender.kind == "agent_bot" and d.conversation is not None
    )


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
        steady: Callable[[], float] | None = None,
        share: Share | None = None,
    ):
        """`clock` is what the rules read (business hours); `steady` what the store's queue times are written
        with (the outbox's clock: clock.SteadyClock); `share`: the look-up budget's share it waits for (the
        sweep's), where live deliveries take the live share's without waiting."""
        can_look_up = settings.chatwoot_api_token is not None
        self.settings, self.store, self.chatwoot, self.metrics = settings, store, chatwoot, metrics
        self.clock, self.on_commit = clock, on_commit
        self.steady = steady or SteadyClock(lambda: clock().timestamp())
        self._committing: dict[str, asyncio.Future[bool]] = {}  # a commit per conversation whose lock is held
        self._releasing: set[asyncio.Future[None]] = set()
        # Contact look-ups (a user token): a live delivery cannot wait for its share's budget, the sweep does.
        self.lookups = (
            Lookups(settings, store, chatwoot, clock, share or live_share()) if can_look_up and chatwoot else None
        )
        self.wait_for_lookups = share is not None
        self.live = 0  # deliveries being decided right now (the sweep gives way to them)
        self._forwards = settings.forwards  # read per delivery: a property over every inbox's settings

    async def _decided(
        self,
        choose: Callable[[Facts], Decision | Need],
        d: Delivery,
        facts: Facts,
        deadline: float | None = None,
        cache: bool = True,
    ) -> Decision:
        """Decide on what the bot knows; when the decision needs an observation, gather it and decide again
        (each Need, once gathered, is never asked again, so this ends)."""
        while True:
            result = choose(facts)
            if isinstance(result, Decision):
                return result
            facts = await self._observe(result, d, facts, deadline, cache)

    async def _observe(self, need: Need, d: Delivery, facts: Facts, deadline: float | None, cache: bool) -> Facts:
        c = d.conversation
        assert c is not None  # decisions that need observing are about a conversation
        match need:
            case Need.QUEUE:
                return replace(facts, queued=await self.store.opening(c.key))
            case Need.DEAD_LETTER:
                return replace(facts, dead_letter=await self._dead_letter(c.key))
            case Need.CONVERSATION:
                return facts.read(await self._read_now(c, deadline))
            case Need.CONTACT:
                if self.lookups is None:
                    return replace(facts, looked_up=True)
                looked = await self.lookups.previous(c, wait=self.wait_for_lookups, deadline=deadline, cache=cache)
                return replace(facts, looked_up=True, previous=looked.previous, lookup_failed=not looked.known)

    async def _read_now(self, c: Conversation, deadline: float | None) -> Listed | None:
        """The conversation as Chatwoot shows it now (4.16+; None where it cannot be asked). A read refused for a
        moment (429, 5xx, no answer) is tried again within the delivery's budget: taken for "not pending", the
        message would be one of the handed-off period, and the new period would stay pending (chaos seeds 60, 95)."""
        if self.chatwoot is None:
            return None
        loop = asyncio.get_running_loop()
        pause = READ_AGAIN_AFTER
        try:  # bounded like a look-up: the conversation's lock is held meanwhile
            async with asyncio.timeout_at(min(deadline or math.inf, loop.time() + LOOKUP_TIMEOUT)):
                while True:
                    try:
                        view = await self.chatwoot.conversation_if_readable(c.account_id, c.display_id)
                        break
                    except ChatwootError as exc:
                        if exc.final:
                            raise
                        await asyncio.sleep(pause)
                        pause *= 2
        except (ChatwootError, TimeoutError) as exc:
            logger.warning(
                "conversation {}: could not ask Chatwoot whether the handoff was undone ({}); the sweep looks again",
                c.key,
                exc or "no answer in time",
            )
            return None
        if view is not None and view.conversation.status == "pending":
            logger.info("conversation {}: Chatwoot shows it pending again after the bot handed it off", c.key)
        return view

    async def _dead_letter(self, conversation_key: str) -> bool:
        """Whether the conversation has a dead letter that was to open it: its handoff's open never landed (read only
        on a rare path)."""
        return any(
            job.conversation_key == conversation_key and not job.lane and job.status_target == "open"
            for job in await self.store.dead_letters()
        )

    def ignored(self, d: Delivery, body: bytes | None = None) -> Decision | None:
        """The decision for a delivery that needs nothing whatever the bot remembers, and is neither the bot's own
        message to remember nor one for the team's bot: the bulk of deliveries (receipts, agents' replies, messages
        of open conversations), taken without a coroutine. None: `handle` decides it."""
        why_not = triage(d, self.settings)
        if why_not is None or _echo(d) or (self._forwards and worth_a_look(d, body, self.settings)):
            return None
        return self._report(d, Decision("ignore", why_not))

    async def handle(self, d: Delivery, body: bytes | None = None) -> Decision:
        """`body`: the delivery as Chatwoot sent it (the webhook's), forwarded to the team's bot when it is theirs."""
        self.live += 1
        try:
            return await self._handle(d, body)
        finally:
            self.live -= 1

    async def _handle(self, d: Delivery, body: bytes | None) -> Decision:
        why_not = triage(d, self.settings)
        m = d.message
        if _echo(d) and m is not None and d.conversation:
            await self._remember_echo(d.conversation.key, m.id, echo_text(m.private, m.content or ""))
        if why_not and not (self._forwards and worth_a_look(d, body, self.settings)):  # nothing to look up
            return self._report(d, Decision("ignore", why_not))
        c = d.conversation
        key = dedup_key(d, body) if body is not None else None
        decision = None
        if d.message is None:
            # Conversation events on open conversations usually change nothing: decide those with one
            # consistent read first, and take the lock only to write (it costs round trips on Redis).
            decision = await self._decided(self._rules(d, body=body), d, await load_facts(self.store, d))
            if not decision.writes:
                return self._report(d, decision)
            if c is None:  # forwarded only (webwidget_triggered): no conversation to lock
                return self._report(d, await self._forwarded_alone(d, decision, key))
        assert c is not None  # triage ignores messages without a conversation
        with logger.contextualize(
            account=c.account_id, inbox=c.inbox_id, conversation=c.display_id, delivery=d.delivery_id
        ):
            return self._report(d, await self._locked_decision(d, body, key))

    async def _locked_decision(self, d: Delivery, body: bytes | None, key: str | None, again: bool = False) -> Decision:
        """Under the conversation's lock: what the store remembers, the decision on it, and its commit."""
        assert d.conversation is not None
        deadline = asyncio.get_running_loop().time() + DELIVERY_BUDGET
        async with self._locked(d.conversation.key, deadline):
            facts = await load_facts(self.store, d)
            if again:
                facts = replace(facts, again=True)
            decision = await self._decided(self._rules(d, body=body), d, facts, deadline)
            return await self._committed(d, decision, key)

    async def _committed(self, d: Delivery, decision: Decision, key: str | None) -> Decision:
        """The decision, written unless the delivery was seen before (then "duplicate"). One that writes nothing is
        harmless (unless it belongs in the decision log)."""
        if (decision.writes or decision.outcome in LOGGED) and not await self._commit(d, decision, key):
            return Decision("duplicate", f"delivery {key or d.dedup_key} was handled before")
        return decision

    async def _forwarded_alone(self, d: Delivery, decision: Decision, key: str | None) -> Decision:
        """A delivery without a conversation that goes to the team's bot: its forward job is all it writes."""
        job = decision.jobs[0]
        commit = Commit(dedup_key=key or d.dedup_key, conversation_key=job.conversation_key, jobs=decision.jobs)
        if not await self.store.commit(commit, self.steady()):
            return Decision("duplicate", f"delivery {commit.dedup_key} was handled before")
        self.on_commit(1)
        return decision

    async def decided(self, d: Delivery) -> Decision:
        """What the bot would decide for `d` now, writing nothing (`explain`)."""
        return await self._decided(self._rules(d), d, await load_facts(self.store, d), cache=False)

    def _rules(
        self, d: Delivery, live: bool = True, counted: int | None = None, body: bytes | None = None
    ) -> Callable[[Facts], Decision | Need]:
        return lambda facts: decide(d, facts, self.clock(), self.settings, live=live, counted=counted, body=body)

    @asynccontextmanager
    async def _locked(self, key: str, deadline: float) -> AsyncIterator[None]:
        """The conversation's lock, waited for until `deadline` at most. The webhook bounds the whole delivery
        (a commit it cuts short is found by the dedup key when Chatwoot retries); releasing the lock is bounded
        too: a lock that cannot be released (a stalled store) lapses by itself. A commit cut short but still on
        its way to the store keeps the lock until the store has it: the next delivery decides on what it wrote
        (seed 75: three handoffs while SQLite was locked by another connection)."""
        lock = self.store.lock(key)
        try:
            async with asyncio.timeout_at(deadline):
                await lock.__aenter__()
        except TimeoutError:
            raise Busy(f"conversation {key} is busy: its lock was not free within {DELIVERY_BUDGET:.0f} s") from None
        try:
            yield
        finally:
            writing = self._committing.pop(key, None)
            if writing is not None and not writing.done():
                writing.add_done_callback(lambda w: self._spawn(self._released(lock, key), w))
            elif self.store.local_locks:  # an in-process release never waits: no task, no bound
                await lock.__aexit__(None, None, None)
            else:
                await self._release(lock, key)

    async def _release(self, lock: AbstractAsyncContextManager[None], key: str) -> None:
        """The release, waited for RELEASE_WITHIN at most. A slower one (every pooled connection busy, a stalled
        store) goes on in the background: cancelled, it would leave the lock to lapse (LOCK_TTL, 6 s on Redis), and
        the conversation's next deliveries would wait their 4 s for it and be answered 500 (CI, 2026-12-07)."""
        # A task of its own from its first step: a timeout entered there belongs to the release, not to the delivery
        release = asyncio.ensure_future(self._released(lock, key))
        self._keep(release)
        if not (await asyncio.wait({release}, timeout=RELEASE_WITHIN))[0]:
            logger.debug("conversation {}: its lock's release is slow; it goes on in the background", key)

    async def _released(self, lock: AbstractAsyncContextManager[None], key: str) -> None:
        try:  # bounded only once it has to wait: SQLite's never does
            await within(cast(Coroutine[Any, Any, None], lock.__aexit__(None, None, None)), RELEASE_GIVES_UP)
        except Exception as exc:
            logger.warning("conversation {}: its lock was not released ({!r}); it lapses by itself", key, exc)

    def _spawn(self, release: Coroutine[Any, Any, None], written: asyncio.Future[bool]) -> None:
        if not written.cancelled() and written.exception() is not None:  # its delivery, answered 500, is retried
            logger.warning("a commit cut short failed too ({!r})", written.exception())
        self._keep(asyncio.ensure_future(release))

    def _keep(self, release: asyncio.Future[None]) -> None:
        self._releasing.add(release)  # a reference until it ran, and for stop()
        release.add_done_callback(self._releasing.discard)

    async def stop(self) -> None:
        """Before the store closes: the lock releases still on their way (at most RELEASE_WITHIN_STOP)."""
        if self._releasing:
            await asyncio.wait(set(self._releasing), timeout=RELEASE_WITHIN_STOP)

    async def hand_off_now(self, c: Conversation, who: str) -> Decision:
        """The operator page's button, for a conversation Chatwoot says is pending: decided like a delivery
        (decide.operator_handoff says when it is refused, and why), into the same store and outbox."""
        d = Delivery("operator_handoff", f"operator:{uuid.uuid4()}", c)
        with logger.contextualize(account=c.account_id, inbox=c.inbox_id, conversation=c.display_id):
            async with self.store.lock(c.key):

                def choose(facts: Facts) -> Decision | Need:
                    return operator_handoff(c, facts, self.clock(), self.settings, who)

                decision = await self._decided(choose, d, await load_facts(self.store, d))
                if decision.state is not None:  # its trigger (the last message, often the bot's own) is seen now
                    decision.state = decision.state.saw(c.status, c.updated, c.last_message_id, c.bot_owned)
                if decision.writes:
                    await self._commit(d, decision)
            self.metrics.decisions.labels(decision.outcome, decision.rule or "-").inc()
            logger.info(
                "conversation {}: the operator page's handoff: {}: {}", c.key, decision.outcome, decision.reason
            )
            return decision

    # ---- forwarding to the team's own bot (relay.py) ----
    async def forward_handoff(self, job: Job, step: Forward, reason: str) -> None:
        """The team's bot asked for a person in its answer to `step` (or did not take it for FORWARD_MAX_AGE, with
        FORWARD_FALLBACK=open): decided like the operator's button (decide.forward_handoff), under the
        conversation's lock, once per forwarded delivery."""
        try:
            d = parse(step.body.encode(), step.delivery)
        except (BadBody, PayloadError):
            d = Delivery(step.event)
        c = d.conversation
        if c is None:
            logger.warning("{}: {} has no conversation to hand off ({})", job.conversation_key, step.event, reason)
            return
        d = Delivery("forward_handoff", step.delivery, c)
        async with self.store.lock(c.key):

            def choose(facts: Facts) -> Decision:
                return forward_handoff(c, facts, self.clock(), self.settings, job.period, reason)

            decision = await self._decided(choose, d, await load_facts(self.store, d))
            if decision.writes and not await self._commit(d, decision, f"forward-handoff:{step.delivery}"):
                decision = Decision("duplicate", "this forward's handoff was decided before")
        self.metrics.decisions.labels(decision.outcome, decision.rule or "-").inc()
        logger.info("conversation {}: {}: {}: {}", c.key, reason, decision.outcome, decision.reason)

    # ---- end of forwarding ----

    async def decide_again(self, job: Job, step: DecideAgain) -> None:
        """A customer's message that came while a handoff was queued to open the conversation, decided again now that
        the handoff has ended (decide._again): if Chatwoot shows the conversation pending (4.16+), the message began a
        new period, which the rules decide. Under the conversation's lock, once (its own dedup key)."""
        body = step.body.encode()
        d = parse(body, step.delivery)  # it was parsed when it came
        c = d.conversation
        assert c is not None  # a customer's message
        decision = await self._locked_decision(d, body, f"again:{d.dedup_key}", again=True)
        self.metrics.decisions.labels(decision.outcome, decision.rule or "-").inc()
        level = "DEBUG" if decision.outcome in ("ignore", "duplicate", "record") else "INFO"
        logger.log(level, "conversation {}: decided again: {}: {}", c.key, decision.outcome, decision.reason)

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
                stored = await load_facts(self.store, d)
                facts = replace(stored, pending_now=True)  # Chatwoot lists it pending
                decision = await self._decided(self._rules(d, False, incoming), d, facts, cache=not dry_run)
                for job in decision.jobs + ([decision.timer[1]] if decision.timer else []):
                    job.verify = True  # the listing may be minutes old by now
                if decision.state == stored.state:
                    decision.state = None  # nothing new to remember: most kept conversations write nothing
                if dry_run or not decision.writes:
                    return decision
                # Its own dedup key: one sweep decision per outcome for the customer's last message, so two
                # sweeps deciding alike (the command beside the server) commit once; a period started again (its
                # handoff, perhaps the sweep's own, became a dead letter) is decided anew.
                key = f"s:{c.key}:{m.id}:{decision.outcome}:{decision.rule}"
                if decision.state is not None and decision.state.period > stored.state.period:
                    key += f":renewed at {self.clock().timestamp():.0f}"
                if not await self._commit(d, decision, key, "sweep"):
                    decision = Decision("duplicate", f"the sweep decided conversation {c.key} this way before")
            return decision

    async def _commit(
        self, d: Delivery, decision: Decision, dedup_key: str | None = None, event: str | None = None
    ) -> bool:
        """`dedup_key` and `event` name the sweep's decisions, whose keeps stay out of the decision log."""
        c, now = d.conversation, self.steady()
        for job in decision.jobs:  # the outbox's times (age, lateness) run on its clock, which never goes back
            job.created_at = job.decided_at = now
        assert c is not None
        log = None
        if decision.outcome in (LOGGED if event is None else SWEEP_LOGGED) and self.settings.decision_log_size:
            log = DecisionEntry(
                self.clock().timestamp(),
                c.account_id,
                c.inbox_id,
                c.display_id,
                c.contact.name,
                decision.outcome,
                decision.rule,
                decision.reason,
                event or d.event,
                dedup_key or d.dedup_key,
                period=decision.state.period if decision.state else None,  # None: unchanged (the sweep's keeps)
                began=c.waiting_since,  # the sweep's: a customer who waited while the bot was away
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
        # Shielded: cut short, it still reaches the store, and the conversation's lock waits for it (_locked).
        writing = asyncio.ensure_future(self.store.commit(commit, now))
        writing.add_done_callback(_seen)  # its caller may be gone (cut short, stopped): no "never retrieved" noise
        self._committing[c.key] = writing
        done = await asyncio.shield(writing)
        self._committing.pop(c.key, None)
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


def _seen(done: asyncio.Future[bool]) -> None:
    """Mark a shielded commit's failure as retrieved: whoever still waits for it gets it; nobody else must."""
    if not done.cancelled():
        done.exception()
