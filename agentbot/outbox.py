"""The outbox worker: carries out stored jobs in order per conversation, retrying with backoff.

It holds no conversation semantics: before each step it gathers what guard.needs asks for (observe.py) and
carries out guard.verdict (send, done, drop, wait). Promises kept here: a job is carried out or becomes a dead
letter, whatever fails meanwhile (Chatwoot, the store, a worker); a failed call is recorded as the step's
Attempt, which the next verdict reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable

from loguru import logger

from . import guard
from .actions import (
    AddLabel,
    AssignAgent,
    AssignTeam,
    Attempt,
    DecideAgain,
    EvolutionSwitch,
    Forward,
    Job,
    PrivateNote,
    PublicMessage,
    SetPriority,
    SetStatus,
    Step,
    posted_text,
)
from .chatwoot import Agent, Chatwoot, ChatwootError, NoAnswer, Refused, sent
from .constants import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    POLL,
    PRUNE_EVERY,
    RETRY_AFTER_CAP,
    STORE_BACKOFF_BASE,
    STORE_BACKOFF_CAP,
    STORE_DOWN_AFTER,
    TICK,
    WORKERS,
)
from .evolution_switch import Switcher
from .metrics import Metrics
from .observe import Observer
from .relay import Relay
from .store import Store, store_failure
from .store.base import LANES, LEASE, lane_kind
from .turns import Turns


def backoff(attempts: int, retry_after: float | None) -> float:
    """Exponential with jitter, never sooner than Chatwoot's Retry-After (up to RETRY_AFTER_CAP: the store counts
    a queue time further ahead than its HORIZON as written before a clock step, and due)."""
    delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempts - 1))
    return max(random.uniform(delay / 2, delay), min(retry_after or 0.0, RETRY_AFTER_CAP))


def _optional_refused(step: Step, exc: ChatwootError) -> bool:
    """Team, agent and priority are extras: an older Chatwoot refusing them to bots must not stop the handoff."""
    return step.optional and exc.refused_to_bots


class LostClaim(Exception):
    """Another worker owns the job now (this one's lease ran out): leave it alone."""


class Outbox:
    def __init__(
        self,
        store: Store,
        chatwoot: Chatwoot,
        metrics: Metrics,
        clock: Callable[[], float],
        max_age: float,
        reader_token: str | None = None,
        evolution: Switcher | None = None,
        turns: Turns | None = None,
        relay: Relay | None = None,
    ):
        """`clock`: the steady clock (clock.SteadyClock) the store's queue times are written with; `evolution`:
        Evolution API's switches (None: EVOLUTION_URL is unset); `relay` runs the forwards to the team's bot
        (app.py sets it once Handoffs exists)."""
        self.store, self.chatwoot, self.metrics, self.clock, self.max_age = store, chatwoot, metrics, clock, max_age
        self.evolution, self.relay = evolution, relay
        self.turns = turns or Turns()  # a lane's job waits its turn while a delivery is being answered
        # Handoffs.decide_again, for DecideAgain steps (app.py sets it once Handoffs exists)
        self.decide_again: Callable[[Job, DecideAgain], Awaitable[None]] | None = None
        self.observer = Observer(store, chatwoot, reader_token)
        self._sleepers: deque[asyncio.Future[None]] = deque()  # idle workers, woken one per new job
        self._stopping = asyncio.Event()
        self.workers: list[asyncio.Task[None]] = []
        self._ticker: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._running: dict[str, tuple[Job, float]] = {}  # claimed jobs by id, with when their lease was last renewed
        self.lane_share = 0  # workers that may hold jobs of one lane kind at once (start() sets it)
        self.lanes_share = 0  # workers that may hold jobs of any lane at once (start() sets it)
        self._in_lane: Counter[str] = Counter()  # workers holding, or claiming, a job of each lane kind
        self._in_lanes = 0  # workers holding, or claiming, a job of another lane than Chatwoot's
        self._store_failing_since: float | None = None
        self._store_error = ""
        self.settle = 2 * (chatwoot.timeout.total or 0)  # how long a call Chatwoot got may still be under way

    def now(self) -> float:
        return self.clock()

    def wake(self, jobs: int = WORKERS) -> None:
        """New work in the store: wake as many idle workers as there are jobs."""
        while jobs > 0 and self._sleepers:
            sleeper = self._sleepers.popleft()
            if not sleeper.done():
                sleeper.set_result(None)
                jobs -= 1

    def start(self) -> None:
        # The lanes' calls (a team bot's, Evolution API's) may hang for their timeout. A lane kind holds half the
        # workers at most, the lanes together three quarters: while one kind's service hangs, the other kind and
        # Chatwoot's jobs keep a quarter each, so neither a handoff's open nor its pause of Evolution's bot waits.
        workers = max(1 + len(LANES), self.store.outbox_workers(WORKERS))
        self.lane_share, self.lanes_share = workers // 2, workers - max(1, workers // 4)
        self.workers = [asyncio.create_task(self._worker()) for _ in range(workers)]
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

    def _lanes_with_room(self) -> frozenset[str]:
        if self._in_lanes >= self.lanes_share:
            return frozenset()
        return frozenset(kind for kind in LANES if self._in_lane[kind] < self.lane_share)

    async def _claim(self) -> Job | None:
        """The next due job: of Chatwoot's queues, or of a lane kind whose share has room. A slot of each share the
        claim may fill is taken before it (two workers claiming at once cannot both take the last one); those the
        job claimed does not fill are given back."""
        lanes = self._lanes_with_room()
        self._in_lane.update(lanes)
        self._in_lanes += bool(lanes)
        job = None
        try:
            job = await self.store.claim(self.now(), lanes=lanes)
        finally:
            kind = lane_kind(job.lane) if job is not None else ""
            self._in_lane.subtract(lanes - {kind})
            self._in_lanes -= bool(lanes) and not kind
        return job

    def _left(self, job: Job) -> None:
        """A worker is done with `job`: its lane's slots are free again."""
        if job.lane:
            self._in_lane[lane_kind(job.lane)] -= 1
            self._in_lanes -= 1

    async def _worker(self) -> None:
        """Claim and run jobs until stopped; no exception ends a worker."""
        while not self._stopping.is_set():
            try:
                job = await self._claim()
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
                if job.lane and not await self._lane_turn(job):
                    return  # stop() began while it waited
                await self._carry(job)
            finally:
                self._running.pop(job.id, None)
                self._left(job)
            if job.lane:  # after a lane's job, the next claim waits its turn too (a handoff's does not)
                await self.turns.take()

    async def _lane_turn(self, job: Job) -> bool:
        """A forward's or an Evolution switch's start: a turn of its own while a delivery is answered (a handoff
        starts at once). Cut off by stop(), or its turn come after stop() began: given back as it was, not started
        (no call was made; False)."""
        try:
            await self.turns.take()
            if not self._stopping.is_set():
                return True
            await self._give_back(job)
            return False
        except asyncio.CancelledError:  # also while being given back: then written again, and waited for
            await self._give_back(job)
            raise

    async def _carry(self, job: Job) -> None:
        """Run a claimed job; what stops it (a lost claim, shutdown, a bug) is dealt with here."""
        try:
            with logger.contextualize(account=job.account_id, conversation=job.display_id):
                try:
                    await self.run(job)
                except LostClaim:
                    raise
                except Exception as exc:  # the store failing where a step looks, or a bug: retried like a failed call
                    await self._failed(job, self._unexpected(job, exc))
        except LostClaim:
            logger.warning(
                "conversation {}: another worker took over the job after its lease ran out: {}",
                job.conversation_key,
                job.reason,
            )
        except asyncio.CancelledError:  # shutdown: given back as it stands (_send marks a call cut off in flight)
            await self._give_back(job)
            raise

    def _unexpected(self, job: Job, exc: Exception) -> ChatwootError:
        """What a failure outside a call is retried as; the step's attempt is _send's to mark (a call that went out)."""
        if store_failure(exc):
            self._store_failed(exc)  # /healthz says so too
            logger.warning("conversation {}: the store failed ({}); trying the step again", job.conversation_key, exc)
        else:
            logger.exception("conversation {}: job failed unexpectedly", job.conversation_key)
        return NoAnswer("outbox", None, f"{type(exc).__name__}: {exc}")

    async def _give_back(self, job: Job) -> None:
        """Shutdown: the job back in the store at once, as it stands (its progress is saved)."""
        job.next_at = self.now()
        with contextlib.suppress(LostClaim):
            await asyncio.shield(self._save(lambda: self.store.retry(job), give_up_on_stop=True))

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
        """Carry out the job's remaining steps as the guard says; on failure reschedule it or bury it."""
        while job.step < len(job.steps):
            step = job.steps[job.step]
            try:
                period, seen = await self.observer.observe(job, step, guard.needs(job, step, self.now()))
                verdict = guard.verdict(job, period, step, seen, self.now(), self.settle)
                if not await self._carry_out(job, step, verdict, seen):
                    return
            except ChatwootError as exc:
                if not _optional_refused(step, exc):
                    await self._failed(job, exc)
                    return
                logger.error(
                    "conversation {}: this Chatwoot does not let agent bots call {}; skipped the {} step "
                    "(unset its HANDOFF_ setting or upgrade Chatwoot)",
                    job.conversation_key,
                    exc.endpoint,
                    step.op,
                )
            job.next_step()
            if job.step < len(job.steps):
                await self._save(lambda: self.store.progress(job, self.now()))
        await self._save(lambda: self.store.finish(job, self.now()))
        logger.debug(
            "conversation {}: done: {} ({})", job.conversation_key, job.describe().split(": ", 1)[1], job.reason
        )

    async def _carry_out(self, job: Job, step: Step, verdict: guard.Verdict, seen: guard.Seen) -> bool:
        """Act on the verdict; False when the job is over for now (dropped, or waiting)."""
        match verdict:
            case guard.Wait(until, why, catch_up_until):
                if catch_up_until is not None and "catch_up_until" not in job.context:
                    job.context["catch_up_until"] = catch_up_until
                    logger.info("conversation {}: {}; waiting for it before acting", job.conversation_key, why)
                job.next_at = until
                await self._save(lambda: self.store.retry(job))
                return False
            case guard.Drop(why):
                logger.info(
                    "conversation {}: {}, not where the decision left it; dropped: {}",
                    job.conversation_key,
                    why,
                    job.reason,
                )
                await self._save(lambda: self.store.finish(job, self.now()))
                return False
            case guard.Done(why):
                logger.info("conversation {}: {}; not doing it again", job.conversation_key, why)
                if step == SetStatus("open"):
                    self._opened(job)
            case guard.Send():
                if seen.unheard:
                    logger.warning(
                        "conversation {}: a customer message Chatwoot showed never reached the bot; acting anyway",
                        job.conversation_key,
                    )
                await self._send(job, step)
        return True

    async def _send(self, job: Job, step: Step) -> None:
        """The step's call; a failure, or a cut-off (shutdown) once a request went out, is recorded as the step's
        attempt (the one place that writes it), with when its last request went out (after any wait for its turn)."""
        started, went = self.now(), list[float]()
        token = sent.set(went)
        try:
            await self._do(job, step)
        except ChatwootError as exc:
            if not _optional_refused(step, exc):
                at = self._went_out(started, went)
                job.attempt = Attempt.after(job.attempt, job.step, exc.maybe_applied, exc.still_running, at)
            raise
        except BaseException:  # cut off at shutdown, or a bug: a request that went out may land, may still be under way
            if went:  # (the guard reads no attempt of the other lanes' steps)
                job.attempt = Attempt.after(job.attempt, job.step, True, True, self._went_out(started, went))
            raise
        finally:
            sent.reset(token)

    def _went_out(self, started: float, went: list[float]) -> float:
        """When the step's last changing request went out, on the outbox's clock; when the step began if none did."""
        return self.now() - (time.monotonic() - max(went)) if went else started

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
            delay = backoff(job.attempts, exc.retry_after)
            job.next_at = self.now() + (delay if exc.retry_within is None else min(delay, exc.retry_within))
            if job.attempt is not None and job.attempt.sent_at:  # not before the call can have landed
                job.next_at = max(job.next_at, job.attempt.sent_at + self.settle)
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
        job.dead_at = self.now()
        await self._save(lambda: self.store.bury(job, self.now()))

    def _opened(self, job: Job) -> None:
        self.metrics.handoffs.labels(job.rule or "other").inc()
        logger.info("conversation {}: opened for humans: {}", job.conversation_key, job.reason)

    async def _do(self, job: Job, step: Step) -> None:
        """The step's call: Chatwoot's, or another lane's (Evolution API, the team's own bot)."""
        match step:
            case EvolutionSwitch() if self.evolution is not None:  # and EvolutionPause
                await self.evolution.switch(job, step)
            case EvolutionSwitch():
                logger.info(
                    "conversation {}: EVOLUTION_URL is unset now: {} left undone", job.conversation_key, step.words()
                )
            case Forward():  # to the team's own bot (relay.py)
                if self.relay is None:
                    raise Refused("forward", None, "this process does not forward (no relay)")
                await self.relay.run(job, step)
            case DecideAgain():  # a decision, not a call (Handoffs.decide_again)
                if self.decide_again is None:
                    raise Refused("decide_again", None, "this process does not decide (no Handoffs)")
                await self.decide_again(job, step)
            case _:
                await self._call_chatwoot(job, step)

    async def _call_chatwoot(self, job: Job, step: Step) -> None:
        a, d, cw = job.account_id, job.display_id, self.chatwoot
        match step:
            case SetStatus(status):
                await cw.toggle_status(a, d, status)
                if status == "open":
                    self._opened(job)
            case PrivateNote() | PublicMessage():
                await cw.create_message(a, d, posted_text(job, step), private=isinstance(step, PrivateNote))
            case SetPriority(priority):
                await cw.toggle_priority(a, d, priority)
            case AssignTeam(team_id):
                await cw.assign_team(a, d, team_id)
            case AddLabel(label):
                await self._label(job, label)
            case AssignAgent(assignee_id, fallback):
                agent = await cw.assign_agent(a, d, assignee_id)
                if fallback is not None:
                    await self._check_agent(job, step, fallback, agent)

    async def _label(self, job: Job, label: str) -> None:
        """Add `label`, keeping the others: the bot token where Chatwoot lets bots label (4.16+), else the user's."""
        a, d, cw, token = job.account_id, job.display_id, self.chatwoot, None
        try:
            labels = await cw.labels(a, d)
        except ChatwootError as exc:
            token = self.observer.reader_token
            if not (exc.refused_to_bots and token):
                raise
            labels = await cw.labels(a, d, token)
        if label not in labels:
            await cw.set_labels(a, d, [*labels, label], token)

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
