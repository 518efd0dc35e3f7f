"""The sweep: list the pending conversations with the user token and decide each like a live delivery."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial
from typing import TypeVar

from loguru import logger
from msgspec.structs import replace

from .actions import Job
from .chatwoot import Chatwoot, ChatwootError
from .config import ConfigError, Settings
from .decide import LOOKUP_UNKNOWN
from .events import Conversation, Delivery, Listed, Message, PayloadError, Person
from .expiry import RULE, Expiry, Known, Verdict, dedup_key, expiry, label_job, resolve_job
from .handoffs import Handoffs
from .lookups import FAILED_LOOKUP_TTL, sweep_share
from .metrics import Metrics
from .outbox import backoff
from .store import Commit, DecisionEntry, Lapsed, Store
from .store.base import Lease
from .swept import Progress, SweepResult, Swept, swept_from

T = TypeVar("T")
PAGE_SIZE = 25  # Chatwoot's page of conversations
RECENT = 30.0  # seconds: a conversation active this recently is left to its delivery (and Chatwoot's retries)
LEASE_TTL = 60.0  # the sweep lease expires this long after its holder stopped renewing it
ATTEMPTS = 5  # tries of one Chatwoot read before the sweep gives up on it
YIELD = 0.05  # at most this long a conversation waits for live deliveries to finish first
# The sweep's share of the process's time while live deliveries arrive. Unpaced (SWEEP_RATE=0 with no look-ups
# to wait for: a repeat sweep, returning customers off) it would take all of it (the event loop, the store's one
# writer, a core of two) and deliveries would queue behind it (the webhook's p99 rose 4 to 10 times in the
# benchmark). So it rests three times as long as each step took while deliveries were decided in the last second.
LOOP_SHARE = 0.25
QUIET = 1.0  # seconds without a delivery being decided after which the sweep stops resting


class Sweeper:
    """One sweep over the pending conversations; `chatwoot` should be throttled (SWEEP_RATE)."""

    def __init__(
        self,
        settings: Settings,
        handoffs: Handoffs,
        chatwoot: Chatwoot,
        metrics: Metrics,
        clock: Callable[[], datetime],
        busy: Callable[[], int] = lambda: 0,
    ):
        if settings.chatwoot_api_token is None:
            raise ConfigError(
                "CHATWOOT_API_TOKEN: missing; the sweep lists conversations with an administrator's "
                "access token (Profile settings → Access token)"
            )
        self.settings, self.handoffs, self.chatwoot, self.metrics, self.clock = (
            settings,
            handoffs,
            chatwoot,
            metrics,
            clock,
        )
        self.token = settings.chatwoot_api_token.get_secret_value()
        self.busy = busy
        self.store: Store = handoffs.store
        self.share = handoffs.lookups.share if handoffs.lookups else sweep_share()  # its look-ups' (waited for)
        self._live_at = -QUIET  # time.monotonic() when a delivery was last seen being decided

    def accounts(self, wanted: list[int] | None = None) -> list[int]:
        s = self.settings
        accounts = wanted or s.chatwoot_account_ids or ([s.chatwoot_account_id] if s.chatwoot_account_id else [])
        if not accounts:
            raise ConfigError(
                "CHATWOOT_ACCOUNT_ID: missing (example: 1); the sweep needs to know which account to list"
            )
        return accounts

    async def run(
        self,
        accounts: list[int],
        inboxes: list[int] | None = None,
        dry_run: bool = False,
        progress: Progress | None = None,
        lease: Lease | None = None,
        only: set[str] | None = None,
    ) -> SweepResult:
        """Sweep the pending conversations of `accounts` (and `inboxes`); with `only`, decide just those of these
        conversation keys (a dry run's "run these now")."""
        progress = progress or Progress()
        result, started = SweepResult(dry_run=dry_run), time.monotonic()
        self._lease, self._renewed = lease, time.monotonic()
        logger.debug("sweep started{}", " (dry run)" if dry_run else "")
        try:
            if not (inboxes or self.settings.inbox_ids or self.chatwoot.token):
                raise ConfigError(
                    "CHATWOOT_BOT_TOKEN: missing; the sweep needs it to find the inboxes connected to the "
                    "bot (or name them with INBOX_IDS or --inbox)"
                )
            found = await self._list_all(accounts, inboxes or self.settings.inbox_ids, result, progress)
            if only is not None:
                found = [item for item in found if item.conversation.key in only]
            progress.deciding(len(found))
            worked = 0.0
            for item in found:
                if not await self._keep_lease():
                    result.failures.append("another instance took over the sweep lease; stopped")
                    break
                await self._give_way(worked)
                began, waited = time.monotonic(), self.share.waited
                swept = await self._one_safely(item, dry_run)
                worked = time.monotonic() - began - (self.share.waited - waited)
                result.conversations.append(swept)
                self.metrics.swept.labels(swept.outcome).inc()
                progress.decided(swept)
        finally:
            result.seconds = time.monotonic() - started
        outcome = "failed" if result.failures else "done"
        self.metrics.sweeps.labels(outcome).inc()
        self.metrics.sweep_seconds.observe(result.seconds)
        logger.info(
            "sweep {}{}: {}{}",
            outcome,
            " (dry run)" if dry_run else "",
            result.summary(),
            "; " + "; ".join(result.failures) if result.failures else "",
        )
        return result

    # ---- listing ----------------------------------------------------------------------------
    async def _list_all(
        self, accounts: list[int], inboxes: list[int], result: SweepResult, progress: Progress
    ) -> list[Listed]:
        """Every pending conversation first, then the decisions: opening conversations while paging through
        the pending list would shift its pages and skip some."""
        found: dict[str, Listed] = {}
        for account in accounts:
            try:
                chosen = (
                    [i for i in inboxes if self.settings.acts_on(account, i)] if inboxes else await self._mine(account)
                )
            except ChatwootError as exc:
                result.failures.append(f"listing the inboxes of account {account}: {exc}")
                logger.error("sweep: cannot list the inboxes of account {}: {}", account, exc)
                continue
            for inbox in chosen:
                try:
                    await self._list(account, inbox, found, progress)
                except (ChatwootError, PayloadError) as exc:
                    result.failures.append(f"listing account {account} inbox {inbox}: {exc}")
                    logger.error(
                        "sweep: cannot list the pending conversations of account {} inbox {}: {}", account, inbox, exc
                    )
        result.listed = len(found)
        return sorted(found.values(), key=lambda x: x.last_activity_at)  # longest waiting first

    async def _mine(self, account: int) -> list[int]:
        """The account's inboxes connected to this bot: other inboxes' pending conversations belong to another
        bot (Dialogflow, Captain, another agent bot), whose deliveries never reach this one."""
        inboxes = await self._read(lambda: self.chatwoot.list_inboxes(account, self.token))
        mine = []
        for inbox in inboxes:
            if not self.settings.acts_on(account, inbox.id):
                continue
            bot = await self._read(lambda: self.chatwoot.inbox_agent_bot(account, inbox.id, self.token))  # noqa: B023
            if bot.token == self.chatwoot.token:
                mine.append(inbox.id)
        return mine

    async def _list(self, account: int, inbox: int, found: dict[str, Listed], progress: Progress) -> None:
        page, worked = 1, 0.0
        while True:
            await self._give_way(worked)
            began = time.monotonic()
            total, items, unreadable = await self._read(
                partial(self.chatwoot.list_conversations, account, self.token, "pending", page, inbox)
            )
            if unreadable:
                logger.warning(
                    "sweep: {} conversations of page {} could not be read (no id or status)", unreadable, page
                )
            if page == 1:
                progress.listing(total)
            for item in items:  # new activity moves a conversation up: a page may repeat one already seen
                if item.conversation.status == "pending":
                    found[item.conversation.key] = item
            if len(items) + unreadable < PAGE_SIZE or page * PAGE_SIZE >= total:
                return
            page += 1
            await self._keep_lease()
            worked = time.monotonic() - began

    async def _read(self, call: Callable[[], Awaitable[T]]) -> T:
        """A read, retried on 429 (after Retry-After: the throttle pauses every sweep call), 5xx and timeouts."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return await call()
            except ChatwootError as exc:
                if exc.final or attempt == ATTEMPTS:
                    raise
                delay = backoff(attempt, exc.retry_after)
                logger.warning("sweep: {}; trying again in {:.1f} s", exc, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    # ---- one conversation --------------------------------------------------------------------
    async def _one_safely(self, item: Listed, dry_run: bool) -> Swept:
        """`_one`, whose failure is the conversation's, not the sweep's."""
        try:
            return await self._one(item, dry_run)
        except Lapsed as exc:  # the store stalled past the conversation's lock: looked at again next time
            logger.warning("sweep: {}; looked at again next sweep", exc)
            return Swept(item.conversation.key, "error", type(exc).__name__, str(exc))
        except Exception as exc:
            logger.exception("sweep: conversation {} failed", item.conversation.key)
            return Swept(item.conversation.key, "error", type(exc).__name__, str(exc))

    async def _one(self, item: Listed, dry_run: bool) -> Swept:
        c = item.conversation
        if self.clock().timestamp() - item.last_activity_at < RECENT:
            why = f"active in the last {RECENT:.0f} s: left to its delivery"
            return Swept(c.key, "skipped", "recent activity", why, item.last_activity_at + RECENT)
        state, _ = await self.store.load(c.key, None)
        if state.handed_off and await self.store.opening(c.key):
            return Swept(
                c.key, "skipped", "handoff already decided", "the bot handed it off before (the outbox has it)"
            )
        try:
            trigger, incoming, first_at = await self._trigger(item)
        except (ChatwootError, PayloadError) as exc:
            logger.warning("sweep: conversation {}: cannot read its messages: {}", c.key, exc)
            return Swept(c.key, "error", "messages unreadable", str(exc))
        if trigger is None:
            return Swept(c.key, "kept", "no customer message", "no incoming message to decide on")
        waiting = c.waiting_since or first_at or trigger.created_at or None
        # The list doesn't show whether the inbox's bot owns the conversation (Chatwoot 4.16+), where assigning an
        # agent before the handoff would open it without the bot: decide as if it did (open first, then assign).
        owner = c.assignee or Person(None, "agent_bot", "the inbox's bot")
        d = Delivery("message_created", None, replace(c, waiting_since=waiting, assignee=owner), trigger)
        return await self._decide(item, d, incoming, dry_run)

    async def _decide(self, item: Listed, d: Delivery, incoming: int | None, dry_run: bool) -> Swept:
        """The conversation's decision, as a delivery of the customer's last message (`d`), then its expiry."""
        c = item.conversation
        # The decision asks for the contact's look-up when it needs one, waited for in the sweep's share.
        decision = await self.handoffs.reconcile(d, incoming, dry_run)
        if decision.rule == LOOKUP_UNKNOWN:
            again = self.clock().timestamp() + FAILED_LOOKUP_TTL
            return Swept(c.key, "skipped", "look-up failed", decision.reason, again)
        swept = swept_from(c.key, decision)
        if swept.label == "no rule fired" and self._stale(item):
            swept = await self._expire(item, dry_run) or swept
        level = "INFO" if swept.outcome in ("opened", "deferred") and not dry_run else "DEBUG"
        logger.log(level, "conversation {}: sweep: {}", c.key, decision.describe().splitlines()[0])
        return swept

    # ---- stale pending conversations (PENDING_EXPIRE_*) ---------------------------------------
    def _stale(self, item: Listed) -> bool:
        """Whether nothing happened in the conversation for PENDING_EXPIRE_AFTER: only then are its messages read."""
        after = self.settings.rules_for(item.conversation.inbox_id).pending_expire_after
        return bool(after) and self.clock().timestamp() - item.last_activity_at >= (after or 0)

    async def _expire(self, item: Listed, dry_run: bool) -> Swept | None:
        """Queue the expiry of a conversation no rule opens, when `expiry` says it expires; None when it does not."""
        c, rules = item.conversation, self.settings.rules_for(item.conversation.inbox_id)
        messages = await self._read(lambda: self.chatwoot.conversation_messages(c.account_id, c.display_id, self.token))
        async with self.store.lock(c.key):
            state, _ = await self.store.load(c.key, None)
            now = self.clock().timestamp()
            found = expiry(c, messages, Known(state, await self.store.jobs(c.key)), now, rules)
            if found.verdict is Verdict.QUEUED:
                return Swept(c.key, "skipped", "expiry queued", found.reason)
            if not found.expires:
                logger.debug("conversation {}: sweep: does not expire: {}", c.key, found.reason)
                return None
            action = rules.pending_expire_action
            if dry_run:
                return Swept(c.key, "expired", action, found.reason)
            job = (label_job if action == "label" else resolve_job)(c, found, now, rules, state.period)
            job.context["incoming"] = state.incoming  # the guard drops it once the bot heard the customer again
            if not await self.store.commit(self._expiry_commit(c, found, job, now), now):
                return Swept(c.key, "skipped", "expired before", f"its expiry for message {job.trigger} was queued")
        self.handoffs.on_commit(1)
        logger.info("conversation {}: sweep: expiry queued ({}): {}", c.key, action, found.reason)
        return Swept(c.key, "expired", action, found.reason)

    def _expiry_commit(self, c: Conversation, found: Expiry, job: Job, now: float) -> Commit:
        size = self.settings.decision_log_size
        log = DecisionEntry(
            now,
            c.account_id,
            c.inbox_id,
            c.display_id,
            c.contact.name,
            RULE,
            job.steps[-1].words(),
            found.reason,
            "sweep",
            dedup_key(c, found),
        )
        return Commit(dedup_key(c, found), c.key, jobs=[job], log=log if size else None, log_size=size)

    async def _trigger(self, item: Listed) -> tuple[Message | None, int | None, float | None]:
        """The customer's last message; with HANDOFF_AFTER_MESSAGES also how many they sent in this pending
        period; and when the first of those was written. The messages index is read only when needed."""
        c = item.conversation
        counting = self.settings.rules_for(c.inbox_id).handoff_after_messages is not None
        shown = [m for m in item.messages if m.kind != "activity"]
        if shown and _from_customer(shown[-1]) and not counting:
            return shown[-1], None, None
        messages = await self._read(lambda: self.chatwoot.conversation_messages(c.account_id, c.display_id, self.token))
        customer = [m for m in messages if _from_customer(m)]
        if not customer:
            return None, None, None
        since = c.waiting_since
        if since:
            period = [m for m in customer if m.created_at >= since - 1]
        else:  # no waiting_since: the messages after a person last answered
            answered = max((m.id for m in messages if m.kind == "outgoing" and m.sender.kind == "user"), default=0)
            period = [m for m in customer if m.id > answered]
        return customer[-1], (len(period) if counting else None), (period[0].created_at if period else None)

    # ---- sharing the process ------------------------------------------------------------------
    async def _give_way(self, worked: float) -> None:
        """Let live deliveries go first: while they arrive, rest in proportion to the time the last step took
        (waiting for look-ups aside: LOOP_SHARE), then wait while deliveries are being decided (briefly: the
        sweep must still progress)."""
        if self.busy():
            self._live_at = time.monotonic()
        await asyncio.sleep(worked * (1 / LOOP_SHARE - 1) if time.monotonic() - self._live_at < QUIET else 0)
        deadline = time.monotonic() + YIELD
        while self.busy() and time.monotonic() < deadline:  # noqa: ASYNC110 (busy() is a count, not an event)
            await asyncio.sleep(0.005)

    async def _keep_lease(self) -> bool:
        if self._lease is None or time.monotonic() - self._renewed < LEASE_TTL / 3:
            return True
        self._renewed = time.monotonic()
        return await self._lease.renew()


def _from_customer(m: Message) -> bool:
    return m.kind == "incoming" and not m.private
