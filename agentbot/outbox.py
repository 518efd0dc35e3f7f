"""The outbox worker: carries out stored jobs in order per conversation, retrying with backoff."""
from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable
from datetime import datetime

from loguru import logger

from .actions import Job, Step
from .chatwoot import Chatwoot, ChatwootError
from .metrics import Metrics
from .store import Store

WORKERS = 16
POLL = 0.25  # seconds between looks at the store when nothing woke us (other instances, retries)
BACKOFF_BASE, BACKOFF_CAP = 0.5, 60.0


def backoff(attempts: int, retry_after: float | None) -> float:
    """Exponential with jitter, never sooner than Chatwoot's Retry-After."""
    delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempts - 1))
    return max(random.uniform(delay / 2, delay), retry_after or 0.0)


def _optional_refused(step: Step, exc: ChatwootError) -> bool:
    """Team, agent and priority are extras: an older Chatwoot refusing them to bots must not stop the handoff."""
    return step["op"] in ("team", "assign", "priority") and exc.status == 401 and "not authorized for bots" in exc.detail


class Outbox:
    def __init__(self, store: Store, chatwoot: Chatwoot, metrics: Metrics, clock: Callable[[], datetime], max_age: float):
        self.store, self.chatwoot, self.metrics, self.clock, self.max_age = store, chatwoot, metrics, clock, max_age
        self._sleepers: deque[asyncio.Future] = deque()  # idle workers, woken one per new job
        self._stopping = False
        self._tasks: list[asyncio.Task] = []

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
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(WORKERS)]
        self._tasks.append(asyncio.create_task(self._timers()))

    async def stop(self, grace: float) -> None:
        """Let running jobs finish within `grace` seconds; whatever is left stays in the store."""
        self._stopping = True
        self.wake()
        done, pending = await asyncio.wait(self._tasks, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _idle(self, seconds: float) -> None:
        sleeper = asyncio.get_running_loop().create_future()
        self._sleepers.append(sleeper)
        try:
            await asyncio.wait_for(sleeper, seconds)
        except asyncio.TimeoutError:
            pass
        finally:  # wake() may have dropped it already while wait_for was cancelling it
            if sleeper in self._sleepers:
                self._sleepers.remove(sleeper)

    async def _worker(self) -> None:
        while not self._stopping:
            try:
                job = await self.store.claim(self.now())
            except Exception:
                logger.exception("outbox: cannot read the store")
                job = None
            if job is None:
                await self._idle(POLL)
                continue
            try:
                with logger.contextualize(account=job.account_id, conversation=job.display_id):
                    await self.run(job)
            except asyncio.CancelledError:  # shutdown: give the job back (its progress is saved) at once
                job.next_at = self.now()
                await asyncio.shield(self.store.retry(job))
                raise
            except Exception as exc:  # a bug or a store hiccup: retried like a failed call, within ACTION_MAX_AGE
                logger.exception("outbox: job for conversation {} failed unexpectedly", job.conversation_key)
                await self._failed(job, ChatwootError("outbox", None, f"{type(exc).__name__}: {exc}"))

    async def _timers(self) -> None:
        ticks = 0
        while not self._stopping:
            try:
                now = self.now()
                fired = await self.store.fire_timers(now)
                if fired:
                    self.wake(fired)
                self.metrics.outbox_depth.set(await self.store.depth())
                ticks += 1
                if ticks % 1200 == 0:
                    await self.store.prune(now)
            except Exception:
                logger.exception("outbox: timer check failed")
            await asyncio.sleep(0.5)

    async def run(self, job: Job) -> None:
        """Carry out the job's remaining steps; on failure reschedule it or make it a dead letter."""
        while job.step < len(job.steps):
            if await self._overtaken(job):
                await self.store.finish(job, self.now())
                return
            step = job.steps[job.step]
            try:
                await self._do(job, step)
            except ChatwootError as exc:
                if not _optional_refused(step, exc):
                    await self._failed(job, exc)
                    return
                logger.error("conversation {}: this Chatwoot does not let agent bots call {}; skipped the {} step "
                             "(unset its HANDOFF_ setting or upgrade Chatwoot)", job.conversation_key, exc.endpoint, step["op"])
            job.step += 1
            if job.step < len(job.steps):
                await self.store.progress(job, self.now())
        await self.store.finish(job, self.now())
        logger.debug("conversation {}: done: {} ({})", job.conversation_key, job.describe().split(": ", 1)[1], job.reason)

    async def _overtaken(self, job: Job) -> bool:
        """Don't open a conversation that left pending (opened or resolved by someone) after the decision."""
        step = job.steps[job.step]
        if step["op"] != "status" or step["status"] != "open" or job.trigger is None:
            return False
        state, _ = await self.store.load(job.conversation_key, None)
        if state.left_pending_after is None or state.left_pending_after < job.trigger:
            return False
        logger.info("conversation {}: left pending before the handoff ran; dropped: {}", job.conversation_key, job.reason)
        return True

    async def _failed(self, job: Job, exc: ChatwootError) -> None:
        job.attempts += 1
        job.error = str(exc)
        too_old = self.now() - job.created_at > self.max_age
        if exc.status == 401:
            logger.error("conversation {}: Chatwoot refused CHATWOOT_BOT_TOKEN ({}); check the token. Kept as dead letter.",
                         job.conversation_key, exc.detail[:120])
        elif exc.final or too_old:
            why = "gave up after ACTION_MAX_AGE" if too_old and not exc.final else "final answer"
            logger.error("conversation {}: {} ({}); kept as dead letter: {}", job.conversation_key, exc, why, job.describe())
        else:
            job.next_at = self.now() + backoff(job.attempts, exc.retry_after)
            logger.warning("conversation {}: {}; retry {} in {:.1f} s", job.conversation_key, exc, job.attempts,
                           job.next_at - self.now())
            await self.store.retry(job)
            self.wake(1)
            return
        self.metrics.dead_letters.inc()
        await self.store.bury(job, self.now())

    async def _do(self, job: Job, step: Step) -> None:
        a, d, cw = job.account_id, job.display_id, self.chatwoot
        op = step["op"]
        if op == "status":
            await cw.toggle_status(a, d, step["status"])
            if step["status"] == "open":
                self.metrics.handoffs.labels(job.rule or "other").inc()
                logger.info("conversation {}: opened for humans: {}", job.conversation_key, job.reason)
        elif op == "note":
            await cw.create_message(a, d, step["content"] + job.context.get("remark", ""), private=True)
        elif op == "message":
            await cw.create_message(a, d, step["content"], private=False)
        elif op == "priority":
            await cw.toggle_priority(a, d, step["priority"])
        elif op == "team":
            await cw.assign(a, d, team_id=step["team_id"])
        elif op == "assign":
            agent = await cw.assign(a, d, assignee_id=step["assignee_id"])
            await self._check_agent(job, step, agent)

    async def _check_agent(self, job: Job, step: Step, agent: dict | None) -> None:
        """A returning customer's previous agent who is offline gives way to the fallback."""
        if "fallback" not in step:
            return
        if agent is None:
            job.context["remark"] = f". The previous agent (id {step['assignee_id']}) no longer exists; handed to {step['fallback']}."
        elif agent.get("availability_status", "online") != "online":
            await self.chatwoot.assign(job.account_id, job.display_id, assignee_id=None)
            name = agent.get("available_name") or agent.get("name") or "The previous agent"
            job.context["remark"] = f". {name} is {agent.get('availability_status')}; handed to {step['fallback']} instead."
        else:
            return
        logger.info("conversation {}: previous agent unavailable, falling back to {}", job.conversation_key, step["fallback"])
