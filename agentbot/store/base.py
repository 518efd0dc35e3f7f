"""The store interface: facts, deduplication, the outbox, timers, dead letters and locks."""

from __future__ import annotations

import time
import weakref
from abc import ABC, abstractmethod
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

import msgspec

from ..actions import Job, SetStatus
from ..facts import ConversationState, Resolved

DEDUP_TTL = 24 * 3600
STATE_TTL = 90 * 24 * 3600  # what the bot remembers of a conversation or contact
LEASE = 60.0  # seconds a claimed job belongs to one worker unless renewed (Redis; survives a crashed instance)
# A queue time further ahead than this was written before the wall clock stepped back (no retry, settle or lease
# waits this long): the job is due. Within a process the steady clock (clock.py) never goes back at all.
HORIZON = 900.0
LOG_TTL = 7 * 24 * 3600  # how long the decision log keeps an entry
ECHOES_KEPT = 8  # the bot's own latest messages remembered per conversation (as long as the conversation)
# The kinds of lane a job may have (Job.lane): each calls a service of its own besides Chatwoot. relay.LANE's lanes
# ("forward", and "forward-contact-<id>" for deliveries without a conversation) and evolution_jobs.LANE's.
LANES = frozenset({"forward", "evolution"})


def lane_kind(lane: str) -> str:
    """The kind of a job's lane ("forward" for "forward-contact-7"; "" for Chatwoot's queue)."""
    return lane.partition("-")[0]


class Lapsed(Exception):
    """A decision was not written: the conversation's lock lapsed before its commit (the store stalled past the
    lock's time). Whoever took the lock since decides; a delivery is answered 500 and Chatwoot retries it."""


def store_failure(exc: BaseException) -> bool:
    """Whether `exc` is the store failing (unreachable, stalled, locked) rather than a defect of the bot."""
    import sqlite3

    if isinstance(exc, (Lapsed, sqlite3.OperationalError)):  # locked, busy, I/O; not a bad statement (a bug)
        return True
    try:
        from redis.exceptions import ConnectionError, TimeoutError
    except ImportError:
        return False
    return isinstance(exc, (ConnectionError, TimeoutError))  # not an error reply such as WRONGTYPE (a bug)


class DecisionEntry(msgspec.Struct, frozen=True, omit_defaults=True):
    """One line of the decision log (what the operator page lists and charts)."""

    at: float
    account_id: int
    inbox_id: int | None
    display_id: int
    contact: str
    outcome: str  # handoff, defer, keep, pending, expire; or OPENED (not a decision: when a handoff's open landed)
    rule: str
    reason: str
    event: str
    key: str  # the delivery's dedup key: tells two entries of one second apart
    # The conversation's pending period after the decision (ConversationState.period), or the open's (its job's):
    # the page pairs an open with its own period's first decision. None: logged before periods were.
    period: int | None = None
    began: float | None = None  # when the customer began waiting, where the decision knew (the sweep's waiting_since)

    def dumps(self) -> str:
        return msgspec.json.encode(self).decode()

    @classmethod
    def loads(cls, text: str | bytes) -> DecisionEntry:
        return msgspec.json.decode(text, type=cls)


OPENED = "opened"


def opened_entry(job: Job, now: float, finishing: bool = False) -> DecisionEntry | None:
    """The decision log's OPENED entry when the step the outbox has just carried out set the conversation open (sent,
    or found landed by its check): when the bot's open landed, which the operator page pairs with the pending period's
    first message. Written by `progress`/`finish` in their own transaction, so it costs no write of its own."""
    if finishing and job.step < len(job.steps):  # dropped at this step: the steps before were saved (logged) already
        return None
    if job.step == 0 or job.steps[job.step - 1] != SetStatus("open"):
        return None
    return DecisionEntry(
        now,
        job.account_id,
        None,
        job.display_id,
        "",
        OPENED,
        job.rule,
        job.reason,
        "outbox",
        f"opened:{job.id}",
        period=job.period,
    )


@dataclass
class Commit:
    """Everything one decision writes, applied atomically and only if the delivery is new."""

    dedup_key: str
    conversation_key: str
    state: ConversationState | None = None
    jobs: list[Job] = field(default_factory=list)
    timer: tuple[float, Job] | None = None
    cancel_timer: bool = False
    contact_key: str | None = None
    resolved: Resolved | None = None
    log: DecisionEntry | None = None  # the decision log's entry, kept with the decision
    log_size: int = 0  # at most this many entries per account


class Store(ABC):
    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def load(
        self, conversation_key: str, contact_key: str | None
    ) -> tuple[ConversationState, Resolved | None]: ...

    @abstractmethod
    async def commit(self, commit: Commit, now: float) -> bool:
        """Apply a decision; False (and nothing written) when the delivery was seen before."""

    @abstractmethod
    async def remember(self, contact_key: str, resolved: Resolved | None, ttl: float, now: float) -> None:
        """Cache a Chatwoot look-up (None = the contact has no resolved conversation)."""

    @abstractmethod
    async def recall(self, contact_key: str, now: float) -> tuple[bool, Resolved | None]:
        """(cached?, value) of a look-up."""

    @abstractmethod
    async def echo(self, conversation_key: str, message_id: int, content: str | None, now: float) -> None:
        """Remember one of the bot's own messages, as Chatwoot delivered it back: how the outbox finds a note or
        message whose answer was lost. A hint, so it is written without waiting for a sync to disk."""

    @abstractmethod
    async def echoed(self, conversation_key: str, content: str, after: int | None) -> bool:
        """Whether the echo of `content` arrived, for a message newer than `after` (guard.posts_after)."""

    local_locks = False  # lock() is in-process (one instance): its release never waits

    @abstractmethod
    def lock(self, conversation_key: str) -> AbstractAsyncContextManager[None]:
        """One decision per conversation at a time (across instances where the backend is shared)."""

    # the outbox. A claimed job belongs to the caller until it is finished, retried or buried, or (on a
    # shared store) until its lease runs out; every call below returns False, and changes nothing, when
    # the caller no longer owns the job.
    @abstractmethod
    async def claim(self, now: float, lanes: frozenset[str] = LANES) -> Job | None:
        """The oldest due job of a queue nobody is working on, now owned by the caller: of Chatwoot's queues, or of
        a lane whose kind (lane_kind) is in `lanes` (the outbox leaves out a kind whose share of its workers is
        spent). When a run that claimed it before never released it (a crash, a lapsed lease), it comes with an
        attempt at its current step that may have landed (and `recovered` when a power cut may have lost its
        progress). Claiming writes nothing."""

    @abstractmethod
    async def renew(self, job: Job, now: float) -> bool:
        """Keep the claim alive while a step takes long."""

    @abstractmethod
    async def progress(self, job: Job, now: float) -> bool:
        """Save the job's step and context after a step succeeded. A backend may write it without waiting
        (SQLite): a run cut short before it reaches the disk is recovered, and its steps are checked. With it (and
        with `finish`) goes the decision log's entry of an open that landed (opened_entry)."""

    @abstractmethod
    async def finish(self, job: Job, now: float) -> bool: ...

    @abstractmethod
    async def retry(self, job: Job) -> bool:
        """Put the job back with its new attempts, error, next_at and attempt (waited for: the attempt is what
        the next run's verdict reads)."""

    @abstractmethod
    async def bury(self, job: Job, now: float) -> bool:
        """Move the job to the dead letters; the conversation's next job may run."""

    @abstractmethod
    async def dead_letters(self) -> list[Job]: ...

    @abstractmethod
    async def requeue_dead(self, now: float) -> int: ...

    @abstractmethod
    async def jobs(self, conversation_key: str) -> list[Job]:
        """The conversation's jobs still to run: in its outbox (the running one with its progress) and its timer's."""

    async def opening(self, conversation_key: str) -> bool:
        """Whether one of the conversation's jobs still to run sets it open."""
        return any(job.opens_later for job in await self.jobs(conversation_key))

    @abstractmethod
    async def depth(self) -> int:
        """Jobs waiting in the outbox (not counting timers or dead letters)."""

    @abstractmethod
    async def fire_timers(self, now: float) -> int:
        """Move due timers' jobs into the outbox, each exactly once; returns how many."""

    # the decision log and the operator page
    @abstractmethod
    async def decisions(self, now: float) -> list[DecisionEntry]:
        """The decision log of the last 7 days, newest first (at most log_size per account)."""

    @abstractmethod
    async def requeue_one(self, job_id: str, now: float) -> bool:
        """Put one dead letter back in the outbox as new; False when there is no such dead letter."""

    async def lease(self, name: str, ttl: float) -> Lease | None:
        """Hold `name` (e.g. "sweep") for `ttl` seconds unless renewed; None while another holder has it.
        This default holds within the process; backends shared by several instances override it."""
        held = _LOCAL_LEASES.setdefault(self, {})
        if held.get(name, 0.0) > time.monotonic():
            return None
        return _LocalLease(held, name, ttl)

    def outbox_workers(self, wanted: int) -> int:
        """How many outbox workers this store serves well (a Redis pool keeps half its connections for
        deliveries: their locks and commits must not queue behind the outbox's calls)."""
        return wanted

    async def prune(self, now: float) -> None:  # noqa: B027 (optional: a no-op where keys expire natively)
        """Drop expired dedup keys and look-ups (backends with native TTLs need nothing)."""


class Lease:
    """A held lease; `renew` before the ttl runs out, `release` when done."""

    async def renew(self) -> bool:
        return True

    async def release(self) -> None: ...


_LOCAL_LEASES: weakref.WeakKeyDictionary[Store, dict[str, float]] = weakref.WeakKeyDictionary()  # name → expiry


class _LocalLease(Lease):
    def __init__(self, held: dict[str, float], name: str, ttl: float):
        self.held, self.name, self.ttl = held, name, ttl
        held[name] = time.monotonic() + ttl

    async def renew(self) -> bool:
        self.held[self.name] = time.monotonic() + self.ttl
        return True

    async def release(self) -> None:
        self.held.pop(self.name, None)
