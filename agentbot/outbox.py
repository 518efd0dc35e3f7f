"""The outbox worker: carries out stored jobs in order per conversation, retrying with backoff.

Promises kept here: a job is carried out or becomes a dead letter, whatever fails meanwhile (Chatwoot,
the store, a worker); a call Chatwoot may already have applied is checked before it is sent again; a
job that runs late acts only if the conversation is still where its decision left it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime

from loguru import logger

from .actions import AssignAgent, AssignTeam, Job, PrivateNote, PublicMessage, SetPriority, SetStatus, Step
from .chatwoot import Agent, Chatwoot, ChatwootError, NoAnswer
from .constants import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    CATCH_UP,
    CATCH_UP_EVERY,
    LATE,
    POLL,
    PRUNE_EVERY,
    STORE_BACKOFF_BASE,
    STORE_BACKOFF_CAP,
    STORE_DOWN_AFTER,
    TICK,
    WORKERS,
)
from .events import Listed
from .facts import ConversationState
from .metrics import Metrics
from .store import Store
from .store.base import LEASE


def backoff(attempts: int, retry_after: float | None) -> float:
    """Exponential with jitter, never sooner than Chatwoot's Retry-After."""
    delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempts - 1))
    return max(random.uniform(delay / 2, delay), retry_after or 0.0)


def _optional_refused(step: Step, exc: ChatwootError) -> bool:
    """Team, agent and priority are extras: an older Chatwoot refusing them to bots must not stop the handoff."""
    return step.optional and exc.refused_to_bots


def guarded(step: Step) -> bool:
    """Steps that act on where the conversation is: its status, and messages the customer sees."""
    return step.guarded


def status_done(job: Job) -> bool:
    """Whether the job has set the conversation's status already (its steps before the current one)."""
    return any(isinstance(s, SetStatus) for s in job.steps[: job.step])


def still_wanted(job: Job, status: str, unsure: bool, current: bool = False) -> str | None:
    """Whether the job's current (guarded) step still fits a conversation that is `status` now: None to make
    the call, "done" when an earlier run's call took effect, "drop" when the conversation moved on. `current`:
    Chatwoot said so just now; the bot's memory may not have heard of the job's own status change yet."""
    step, expected, target = job.steps[job.step], job.expected_status, job.status_target
    if isinstance(step, SetStatus):
        if status == expected:
            return None
        return "done" if status == step.status and unsure else "drop"
    if status_done(job):  # back to `expected` then is a new period
        return None if status == target or (status == expected and not current) else "drop"
    return None if status == expected else "drop"


def closed_since(state: ConversationState, job: Job) -> bool:
    """The bot saw the conversation resolved or snoozed after the message that led to the job."""
    return job.trigger is not None and state.closed_after is not None and state.closed_after >= job.trigger


def left_since(state: ConversationState, job: Job) -> bool:
    """The bot saw the conversation leave pending after the message that led to the job (its own open, maybe)."""
    return job.trigger is not None and state.left_pending_after is not None and state.left_pending_after >= job.trigger


def unheard(job: Job, step: Step, view: Listed, state: ConversationState) -> bool:
    """Chatwoot shows a customer message the bot has not had delivered yet in the pending conversation this step
    would open. It may begin a new pending period (the handoff's open landed unanswered, an agent resolved, the
    customer wrote again, with those events still on their way); then that message is the one to decide on."""
    last = view.last_message
    return (
        step == SetStatus("open")
        and view.conversation.status == "pending"
        and last is not None
        and last.kind == "incoming"
        and last.id > max(state.latest_message or 0, job.trigger or 0)
    )


def moved_on(
    job: Job, step: Step, state: ConversationState, status: str | None, unsure: bool, current: bool = False
) -> tuple[str | None, str]:
    """What the bot's view of the conversation (`status`, from Chatwoot when `current`, else its memory) says of
    the job's current step: ("drop", why) when the conversation moved on since the decision, else
    `still_wanted`'s verdict."""
    verdict = still_wanted(job, status, unsure, current) if guarded(step) and status else None
    if verdict == "drop":
        return verdict, f"is {status} now"
    # A later pending period is not this job's:
    if job.expected_status == "pending" and closed_since(state, job):
        return "drop", "was resolved or snoozed since"
    if job.expected_status == "pending" and status == "pending" and left_since(state, job):
        return "drop", "is pending again since it was opened"
    return verdict, ""


class LostClaim(Exception):
    """Another worker owns the job now (this one's lease ran out): leave it alone."""


class Outbox:
    def __init__(
        self,
        store: Store,
        chatwoot: Chatwoot,
        metrics: Metrics,
        clock: Callable[[], datetime],
        max_age: float,
        reader_token: str | None = None,
    ):
        self.store, self.chatwoot, self.metrics, self.clock, self.max_age = store, chatwoot, metrics, clock, max_age
        self.reader_token = reader_token  # a user token (CHATWOOT_API_TOKEN): may read a conversation's messages
        self._sleepers: deque[asyncio.Future[None]] = deque()  # idle workers, woken one per new job
        self._stopping = asyncio.Event()
        self.workers: list[asyncio.Task[None]] = []
        self._ticker: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._running: dict[str, tuple[Job, float]] = {}  # claimed jobs by id, with when their lease was last renewed
        self._store_failing_since: float | None = None
        self._store_error = ""
        self.settle = 2 * (chatwoot.timeout.total or 0)  # how long a call Chatwoot got may still be under way

    def now(self) -> float:
        return self.clock().timestamp()

    def wake(self, jobs: int = WORKERS) -> None:
        """New work in the store: wake as many idle workers as there are jobs."""
        while jobs > 0 and self._sleepers:
            sleeper = self._sleepers.popleft()
            if not sleeper.done():
                sleeper.set_result(None)
                jobs -= 1

    def start(self) -> None:
        self.workers = [asyncio.create_task(self._worker()) for _ in range(WORKERS)]
        self._ticker = asyncio.create_task(self._tick())
        self._poller = asyncio.create_task(self._poll())

    async def stop(self, grace: float) -> None:
        """Let running jobs finish within `grace` seconds; whatever is left stays in the store."""
        self._stopping.set()
        self.wake()
        tasks = [*self.workers, *(t for t in (self._ticker, self._poller) if t)]
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def problem(self) -> str | None:
        """Why the outbox cannot make progress now (for /healthz), or None."""
        if self._stopping.is_set():
            return None
        if self._store_failing_since is not None and time.monotonic() - self._store_failing_since > STORE_DOWN_AFTER:
            return f"store failing for {time.monotonic() - self._store_failing_since:.0f} s: {self._store_error}"
        if any(task is None or task.done() for task in (self._ticker, self._poller)):
            return "the outbox's timer loop has stopped"
        return None

    # ---- workers -------------------------------------------------------------------------------
    async def _idle(self) -> None:
        """Sleep until woken: by a commit, by another worker that found a job, by the poll, or to stop."""
        if self._stopping.is_set():  # stop() has woken the sleepers already
            return
        sleeper = asyncio.get_running_loop().create_future()
        self._sleepers.append(sleeper)
        try:
            await sleeper
        finally:  # cancelled: wake() has not dropped it
            if sleeper in self._sleepers:
                self._sleepers.remove(sleeper)

    async def _poll(self) -> None:
        """Work nobody commits here (retries coming due, another instance's jobs): one idle worker looks every
        POLL seconds, rather than every idle worker."""
        while not self._stopping.is_set():
            self.wake(1)
            try:
                await asyncio.wait_for(self._stopping.wait(), POLL)
            except TimeoutError:
                pass

    def _store_ok(self) -> None:
        self._store_failing_since = None

    def _store_failed(self, exc: BaseException) -> None:
        if self._store_failing_since is None:
            self._store_failing_since = time.monotonic()
            logger.warning("outbox: the store failed ({}: {}); trying again", type(exc).__name__, exc)
        self._store_error = f"{type(exc).__name__}: {exc}"

    async def _worker(self) -> None:
        """Claim and run jobs until stopped; no exception ends a worker."""
        while not self._stopping.is_set():
            try:
                job = await self.store.claim(self.now())
            except Exception as exc:
                self._store_failed(exc)
                await self._idle()
                continue
            self._store_ok()
            if job is None:
                await self._idle()
                continue
            self.wake(1)  # more may be due: another idle worker looks too
            self._running[job.id] = (job, time.monotonic())
            try:
                with logger.contextualize(account=job.account_id, conversation=job.display_id):
                    await self.run(job)
            except LostClaim:
                logger.warning(
                    "conversation {}: another worker took over the job after its lease ran out: {}",
                    job.conversation_key,
                    job.reason,
                )
            except asyncio.CancelledError:  # shutdown: give the job back (its progress is saved) at once
                job.next_at, job.unsure = self.now(), True
                with contextlib.suppress(LostClaim):
                    await asyncio.shield(self._save(lambda: self.store.retry(job), give_up_on_stop=True))  # noqa: B023 (awaited here)
                raise
            except Exception as exc:  # a bug: retried like a failed call, within ACTION_MAX_AGE
                logger.exception("conversation {}: job failed unexpectedly", job.conversation_key)
                try:
                    await self._failed(job, NoAnswer("outbox", None, f"{type(exc).__name__}: {exc}"))
                except LostClaim:
                    pass
            finally:
                self._running.pop(job.id, None)

    async def _save(self, write: Callable[[], Awaitable[bool]], give_up_on_stop: bool = False) -> None:
        """A store write the job cannot go on without: tried until it succeeds (the store may be
        restarting); LostClaim when the store says another worker owns the job now."""
        pause = STORE_BACKOFF_BASE
        while True:
            try:
                owned = await write()
            except Exception as exc:
                self._store_failed(exc)
                if give_up_on_stop and self._stopping.is_set():
                    return  # the job stays claimed in the store; its lease (Redis) or a restart frees it
                await asyncio.sleep(pause)
                pause = min(pause * 2, STORE_BACKOFF_CAP)
                continue
            self._store_ok()
            if not owned:
                raise LostClaim
            return

    # ---- the timer loop ------------------------------------------------------------------------
    async def _tick(self) -> None:
        last_prune = time.monotonic()
        while not self._stopping.is_set():
            try:
                now = self.now()
                self._replace_dead_workers()
                await self._renew_leases(now)
                fired = await self.store.fire_timers(now)
                if fired:
                    self.wake(fired)
                self.metrics.outbox_depth.set(await self.store.depth())
                if time.monotonic() - last_prune > PRUNE_EVERY:
                    await self.store.prune(now)
                    last_prune = time.monotonic()
                self._store_ok()
            except Exception as exc:
                self._store_failed(exc)
            try:
                await asyncio.wait_for(self._stopping.wait(), TICK)
            except TimeoutError:
                pass

    async def _renew_leases(self, now: float) -> None:
        """Keep the claims of long-running jobs (slow Chatwoot calls) from running out."""
        for job_id, (job, renewed) in list(self._running.items()):
            if time.monotonic() - renewed > LEASE / 3 and job_id in self._running:
                if await self.store.renew(job, now):
                    self._running[job_id] = (job, time.monotonic())
                else:
                    logger.warning("conversation {}: lost the claim on a running job", job.conversation_key)

    def _replace_dead_workers(self) -> None:
        for n, task in enumerate(self.workers):
            if task.done():
                reason = "was cancelled" if task.cancelled() else f"failed: {task.exception()!r}"
                logger.error("outbox: a worker {}; starting a new one", reason)
                self.workers[n] = asyncio.create_task(self._worker())

    # ---- running one job -----------------------------------------------------------------------
    async def run(self, job: Job) -> None:
        """Carry out the job's remaining steps; on failure reschedule it or make it a dead letter."""
        unsure, sent_at = job.unsure, job.sent_at  # an earlier run may have sent the current step's call
        if unsure and self.now() < sent_at + self.settle:
            # That call may still be under way in Chatwoot (it timed out, or the worker died while waiting):
            # look for its effect only once it can no longer be.
            job.next_at = sent_at + self.settle
            await self._save(lambda: self.store.retry(job))
            return
        late = unsure or job.verify or job.attempts > 0 or self.now() - job.decided_at > LATE
        while job.step < len(job.steps):
            step = job.steps[job.step]
            try:
                skip = await self._check(job, step, unsure, late)
                if skip == "wait":
                    job.next_at = self.now() + CATCH_UP_EVERY
                    await self._save(lambda: self.store.retry(job))
                    return
                if skip == "drop":
                    await self._save(lambda: self.store.finish(job, self.now()))
                    return
                if skip != "done":
                    job.unsure, job.sent_at = True, self.now()
                    await self._do(job, step)
                elif step == SetStatus("open"):
                    self._opened(job)
            except ChatwootError as exc:
                if not _optional_refused(step, exc):
                    job.unsure = exc.maybe_applied or unsure
                    # only a call without an answer may still be under way; an answered or dropped one is over
                    job.sent_at = (
                        job.sent_at if exc.still_running else (sent_at if unsure and not exc.maybe_applied else 0.0)
                    )
                    await self._failed(job, exc)
                    return
                logger.error(
                    "conversation {}: this Chatwoot does not let agent bots call {}; skipped the {} step "
                    "(unset its HANDOFF_ setting or upgrade Chatwoot)",
                    job.conversation_key,
                    exc.endpoint,
                    step.op,
                )
            job.step += 1
            unsure = job.unsure = False
            if job.step < len(job.steps):
                await self._save(lambda: self.store.progress(job, self.now()))
        await self._save(lambda: self.store.finish(job, self.now()))
        logger.debug(
            "conversation {}: done: {} ({})", job.conversation_key, job.describe().split(": ", 1)[1], job.reason
        )

    async def _check(self, job: Job, step: Step, unsure: bool, late: bool) -> str | None:
        """Before a step: "drop" the rest of the job when the conversation moved on since the decision,
        "done" when an earlier run's call already took effect, "wait" to look again shortly, None to make
        the call."""
        op = step.op
        if not (guarded(step) or (op == "note" and (late or unsure))):
            return None
        # A handoff's message looks even on its first run (4.16+): the period may have ended since its open landed.
        read = unsure or (late and guarded(step)) or (op == "message" and status_done(job))
        view = await self.chatwoot.conversation_if_readable(job.account_id, job.display_id) if read else None
        state, _ = await self.store.load(job.conversation_key, None)
        status = view.conversation.status if view else state.status
        verdict, why = moved_on(job, step, state, status, unsure, current=view is not None)
        if verdict != "drop" and job.status_target == "open" and (late or unsure) and await self._superseded(job):
            verdict, why = "drop", "was handed off again since"
        if verdict == "drop":
            logger.info(
                "conversation {}: {}, not where the decision left it; dropped: {}",
                job.conversation_key,
                why,
                job.reason,
            )
        elif view is not None and unheard(job, step, view, state) and self._catching_up(job):
            return "wait"
        if verdict or op not in ("note", "message") or not (unsure or late):
            return verdict
        content = self._content(job, step)
        # A late one (a retry, `outbox --retry`) is not repeated when the same text went out after its trigger,
        # e.g. from the handoff that replaced a dead letter; an unsure one is looked for everywhere it may be.
        posted = (
            await self._posted(job, content, view)
            if unsure
            else await self.store.echoed(job.conversation_key, content, job.trigger)
        )
        if posted:
            logger.info("conversation {}: the {} was posted already; not posting it again", job.conversation_key, op)
            return "done"
        if posted is None:  # better lost than sent twice
            logger.warning(
                "conversation {}: the {} may have been posted already and cannot be checked; not posting it again",
                job.conversation_key,
                op,
            )
            return "done"
        return None

    def _catching_up(self, job: Job) -> bool:
        """Whether the job still waits for the deliveries Chatwoot owes the bot, for CATCH_UP seconds at most
        (a delivery can be lost: the instance it went to was killed)."""
        now, first = self.now(), "catch_up_until" not in job.context
        if first:
            job.context["catch_up_until"] = now + CATCH_UP
        if now < job.context["catch_up_until"]:
            if first:
                logger.info(
                    "conversation {}: Chatwoot shows a customer message the bot has not received yet; waiting for "
                    "it before opening the conversation",
                    job.conversation_key,
                )
            return True
        logger.warning(
            "conversation {}: a customer message Chatwoot showed never reached the bot; opening the conversation",
            job.conversation_key,
        )
        return False

    async def _superseded(self, job: Job) -> bool:
        """A handoff of a later pending period is queued behind this one (the bot missed the resolve between)."""
        return any(
            other.opens_later and (other.trigger or 0) > (job.trigger or 0)
            for other in await self.store.jobs(job.conversation_key)
        )

    async def _posted(self, job: Job, content: str, view: Listed | None) -> bool | None:
        """Whether an earlier run's note or message is in the conversation (None: it cannot be told). Its echo,
        else the conversation's last message (bot token, 4.16+), else its latest messages (a user token)."""
        if await self.store.echoed(job.conversation_key, content, job.trigger):
            return True
        last = view.last_message if view else None
        if last and last.sender.kind == "agent_bot" and last.content == content:
            return True
        if self.reader_token:
            try:
                latest = await self.chatwoot.conversation_messages(job.account_id, job.display_id, self.reader_token)
            except ChatwootError as exc:
                if not exc.final:
                    raise  # tried again later
                # the user may not see this inbox: what the bot token showed must do
                logger.warning(
                    "conversation {}: could not read its messages with CHATWOOT_API_TOKEN ({})",
                    job.conversation_key,
                    exc,
                )
                return False if view is not None else None
            return any(
                m.sender.kind == "agent_bot" and m.content == content and m.id > (job.trigger or 0) for m in latest
            )
        return False if view is not None else None

    async def _failed(self, job: Job, exc: ChatwootError) -> None:
        job.attempts += 1
        job.error = str(exc)
        too_old = self.now() - job.created_at > self.max_age
        if exc.status == 401 and not exc.refused_to_bots:
            logger.error(
                "conversation {}: Chatwoot refused CHATWOOT_BOT_TOKEN ({}); check the token. Kept as dead letter.",
                job.conversation_key,
                exc.detail[:120],
            )
        elif exc.final or too_old:
            why = "gave up after ACTION_MAX_AGE" if too_old and not exc.final else "final answer"
            logger.error(
                "conversation {}: {} ({}); kept as dead letter: {}", job.conversation_key, exc, why, job.describe()
            )
        else:
            job.next_at = self.now() + backoff(job.attempts, exc.retry_after)
            if job.unsure and job.sent_at:  # not before the call can have landed
                job.next_at = max(job.next_at, job.sent_at + self.settle)
            logger.warning(
                "conversation {}: {}; retry {} in {:.1f} s",
                job.conversation_key,
                exc,
                job.attempts,
                job.next_at - self.now(),
            )
            await self._save(lambda: self.store.retry(job))
            self.wake(1)
            return
        self.metrics.dead_letters.inc()
        await self._save(lambda: self.store.bury(job, self.now()))

    def _content(self, job: Job, step: Step) -> str:
        """What a note or message step posts (a note with the agent fallback's remark)."""
        match step:
            case PrivateNote(content):
                return content + str(job.context.get("remark", ""))
            case PublicMessage(content):
                return content
        raise TypeError(f"{step.op} posts no message")

    def _opened(self, job: Job) -> None:
        self.metrics.handoffs.labels(job.rule or "other").inc()
        logger.info("conversation {}: opened for humans: {}", job.conversation_key, job.reason)

    async def _do(self, job: Job, step: Step) -> None:
        a, d, cw = job.account_id, job.display_id, self.chatwoot
        match step:
            case SetStatus(status):
                await cw.toggle_status(a, d, status)
                if status == "open":
                    self._opened(job)
            case PrivateNote() | PublicMessage():
                await cw.create_message(a, d, self._content(job, step), private=isinstance(step, PrivateNote))
            case SetPriority(priority):
                await cw.toggle_priority(a, d, priority)
            case AssignTeam(team_id):
                await cw.assign_team(a, d, team_id)
            case AssignAgent(assignee_id, fallback):
                agent = await cw.assign_agent(a, d, assignee_id)
                if fallback is not None:
                    await self._check_agent(job, step, fallback, agent)

    async def _check_agent(self, job: Job, step: AssignAgent, fallback: str, agent: Agent | None) -> None:
        """A returning customer's previous agent who is offline or gone gives way to the fallback."""
        if agent is None:
            gone = f"The previous agent (id {step.assignee_id}) no longer exists"
            job.context["remark"] = f". {gone}; handed to {fallback}."
        elif (agent.availability_status or "online") != "online":
            await self.chatwoot.assign_agent(job.account_id, job.display_id, None)
            name = agent.available_name or agent.name or "The previous agent"
            job.context["remark"] = f". {name} is {agent.availability_status}; handed to {fallback} instead."
        else:
            return
        logger.info("conversation {}: previous agent unavailable, falling back to {}", job.conversation_key, fallback)
