"""Redis backend for several instances: the same data as SQLite, made atomic with Lua scripts."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.lock import Lock
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError, LockError, LockNotOwnedError, TimeoutError

from ..actions import Attempt, Job
from ..facts import ConversationState, Resolved, fingerprint
from .base import (
    DEDUP_TTL,
    ECHOES_KEPT,
    HORIZON,
    LANES,
    LEASE,
    LOG_TTL,
    STATE_TTL,
    Commit,
    DecisionEntry,
    Lapsed,
    Lease,
    Store,
    opened_entry,
)

P = "agentbot:"
LOCK_TTL = 6  # seconds a conversation's lock outlives a holder that died
RECONNECTS = 6  # a dropped connection is tried again this often, 0.05 s apart doubling up to 0.5 s (about 2 s)
CONNECTION_WAIT = 10  # seconds a command waits for a free connection when all REDIS_MAX_CONNECTIONS are busy
# Keys: seen:<dedup>, conv:<key>, contact:<key>, lookup:<key> (strings with TTLs);
# q:<queue> (list of job JSON, head first; a queue is a conversation, or one of its lanes: "<conv>/<lane>");
# ready (zset queue → when its head may run or the lease of the worker running it ends: Chatwoot's queues, and the
# leases of the lane queues being run, see HOLD); ready:<kind> the same for the lane queues of a kind (store.base.
# lane_kind: ready:forward, ready:evolution), so a claim never looks through the queues of a kind it may not take);
# owner:<conv> (the claim on its head job); unsure (hash, written before the period model: read and removed by CLAIM);
# timers (zset conv → due) + timer:<conv>; dead (list); depth (counter of queued jobs);
# lock:<conv> (redis-py Lock); log:<account> (zset entry JSON → time, the decision log), opens:<account> (the same
# for its opens that landed, bounded apart: they take no decision's place) and
# log-accounts (set of accounts with a log); echo:<conv> (zset "message id:fingerprint" → message id).

# A job with an `order` (Job.order: a forward's message id) goes before the first queued job of a higher order,
# never before the head job while a worker runs it (RELEASE and PROGRESS write the head). A new queue is ready
# when its job may run (`not_before`).
PUSH = """
local function order_of(job)
  local o = cjson.decode(job).order
  return type(o) == 'number' and o or 0
end
local function place(conv, job, order)
  local q = P..'q:'..conv
  local before = nil
  local last = redis.call('LINDEX', q, -1)
  if type(order) == 'number' and last and order_of(last) > order then  -- else it goes last (the usual case)
    local queued = redis.call('LRANGE', q, 0, -1)
    local first = redis.call('EXISTS', P..'owner:'..conv) == 1 and 2 or 1
    for i = first, #queued do
      if order_of(queued[i]) > order then before = queued[i]; break end
    end
  end
  if before then redis.call('LINSERT', q, 'BEFORE', before, job) else redis.call('RPUSH', q, job) end
end
local function push(conv, job, now, order, not_before)
  place(conv, job, order)
  local ready = now
  if type(not_before) == 'number' and not_before > now then ready = not_before end
  redis.call('ZADD', ready_of(conv), 'NX', ready, conv)
  redis.call('INCR', P..'depth')
end
"""

COMMIT = (
    PUSH
    + """
local a = cjson.decode(ARGV[1])
-- made under the conversation's lock: only while that lock is still this holder's (it lapses after LOCK_TTL)
if a.lock and redis.call('GET', P..'lock:'..a.conv) ~= a.lock then return -1 end
if redis.call('SET', P..'seen:'..a.dedup, '1', 'NX', 'EX', a.dedup_ttl) == false then return 0 end
if a.state then redis.call('SET', P..'conv:'..a.conv, a.state, 'EX', a.state_ttl) end
for _, job in ipairs(a.jobs) do push(job[1], job[2], a.now, job[3], job[4]) end  -- {queue, job, order, not_before}
if a.cancel_timer then redis.call('ZREM', P..'timers', a.conv); redis.call('DEL', P..'timer:'..a.conv) end
if a.timer_job then
  redis.call('ZADD', P..'timers', a.timer_due, a.conv)
  redis.call('SET', P..'timer:'..a.conv, a.timer_job)
end
if a.resolved then redis.call('SET', P..'contact:'..a.contact, a.resolved, 'EX', a.state_ttl) end
if a.log then
  local k = P..'log:'..a.log_account
  redis.call('ZADD', k, a.log_at, a.log)
  redis.call('ZREMRANGEBYSCORE', k, '-inf', a.now - a.log_ttl)
  redis.call('ZREMRANGEBYRANK', k, 0, -(a.log_size + 1))
  redis.call('SADD', P..'log-accounts', a.log_account)
end
return 1
"""
)

# A claim: `owner:<conv>` holds "<job id>|<token>" of the worker running the conversation's head job;
# the ready score of the conversation is when that worker's lease ends. An owner still there at the next
# claim never released the job (its instance died, or its lease ran out): that run may have sent its current
# step's call, so the job comes back with an attempt that may have landed. A ready time beyond the horizon was
# written before the wall clock stepped back: it is due. Chatwoot's queues, and the lanes of the kinds in ARGV[5].
# A lane's queue found due in `ready` (an older version's push or release, or a lease that ran out) moves to its own
# set; one that waits in `ready` (an older version's instance runs its head job, or readied it later) is left there
# until it is due.
CLAIM = """
local now, lease, token, horizon = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local sets = {P..'ready'}
for _, kind in ipairs(cjson.decode(ARGV[5])) do sets[#sets + 1] = P..'ready:'..kind end
local function due(at) return at <= now or at > now + horizon end
local function first_due()  -- the queue due first of `sets`, and its set
  local conv, set, at = nil, nil, nil
  for _, s in ipairs(sets) do
    local c = redis.call('ZRANGEBYSCORE', s, '-inf', now, 'WITHSCORES', 'LIMIT', 0, 1)
    if #c > 0 and (at == nil or tonumber(c[2]) < at) then conv, set, at = c[1], s, tonumber(c[2]) end
  end
  if conv then return conv, set end
  for _, s in ipairs(sets) do
    local c = redis.call('ZRANGEBYSCORE', s, '('..(now + horizon), '+inf', 'LIMIT', 0, 1)
    if #c > 0 then return c[1], s end
  end
end
for _ = 1, 20 do
  local conv, set = first_due()
  if not conv then return false end
  local job, home = redis.call('LINDEX', P..'q:'..conv, 0), ready_of(conv)
  local older = home ~= P..'ready' and tonumber(redis.call('ZSCORE', P..'ready', conv))
  if set ~= home then
    redis.call('ZADD', home, 'NX', redis.call('ZSCORE', set, conv), conv)
    redis.call('ZREM', set, conv)
  elseif older and not due(older) then
    redis.call('ZREM', home, conv)
  elseif job then
    local id = cjson.decode(job).id
    if type(id) ~= 'string' or id == '' then id = conv..'@'..token end  -- written by an older version
    hold(conv, now + lease)
    local cut_short = redis.call('GET', P..'owner:'..conv) or redis.call('HGET', P..'unsure', id)
    redis.call('HDEL', P..'unsure', id)
    redis.call('SET', P..'owner:'..conv, id..'|'..token)
    return {job, id, cut_short and 1 or 0}
  else
    redis.call('ZREM', set, conv)
  end
end
return false
"""

OWNED = """
local function owned(conv, id, token)
  return redis.call('GET', P..'owner:'..conv) == id..'|'..token
end
"""

# ARGV: conv, id, token, now, lease
RENEW = (
    OWNED
    + """
if not owned(ARGV[1], ARGV[2], ARGV[3]) then return 0 end
hold(ARGV[1], tonumber(ARGV[4]) + tonumber(ARGV[5]))
return 1
"""
)

# ARGV (the last three): the decision log's entry of an open that landed (store.base.opened_entry), or "", with
# its account and time; logged where the account keeps a log, apart from its decisions: at most as many opens as
# the account's log holds decisions (DECISION_LOG_SIZE), so opens take no decision's place.
OPENED = f"""
local function log_opened(entry, account, at)
  local k = P..'opens:'..account
  local kept = entry ~= '' and redis.call('ZCARD', P..'log:'..account) or 0
  if kept > 0 then
    redis.call('ZADD', k, at, entry)
    redis.call('ZREMRANGEBYSCORE', k, '-inf', tonumber(at) - {LOG_TTL})
    redis.call('ZREMRANGEBYRANK', k, 0, -(kept + 1))
  end
end
"""

# ARGV: conv, id, token, job json, now, lease, (OPENED)
PROGRESS = (
    OWNED
    + OPENED
    + """
local conv, id = ARGV[1], ARGV[2]
if not owned(conv, id, ARGV[3]) then return 0 end
redis.call('LSET', P..'q:'..conv, 0, ARGV[4])
log_opened(ARGV[7], ARGV[8], ARGV[9])
hold(conv, tonumber(ARGV[5]) + tonumber(ARGV[6]))
return 1
"""
)

# ARGV: conv, id, token, how ('done'|'retry'|'dead'), job json, ready_at, (OPENED). A job put back takes its place by
# order again: one of a lower order queued meanwhile goes first (as SQLite's claim picks it).
RELEASE = (
    OWNED
    + PUSH
    + OPENED
    + """
local conv, id, how, job, at = ARGV[1], ARGV[2], ARGV[4], ARGV[5], tonumber(ARGV[6])
if not owned(conv, id, ARGV[3]) then return 0 end
local q = P..'q:'..conv
redis.call('DEL', P..'owner:'..conv)
if ready_of(conv) ~= P..'ready' then redis.call('ZREM', P..'ready', conv) end  -- the lease HOLD kept there
log_opened(ARGV[7], ARGV[8], ARGV[9])
if how == 'retry' then
  local order = cjson.decode(job).order
  if type(order) == 'number' then
    redis.call('LPOP', q)
    place(conv, job, order)
  else
    redis.call('LSET', q, 0, job)
  end
else
  redis.call('LPOP', q)
  redis.call('DECR', P..'depth')
  if how == 'dead' then redis.call('RPUSH', P..'dead', job) end
end
local head = redis.call('LINDEX', q, 0)
if head then
  local not_before = cjson.decode(head).not_before  -- the queue is ready when its next job may run
  if type(not_before) == 'number' and not_before > at then at = not_before end
  redis.call('ZADD', ready_of(conv), at, conv)
else
  redis.call('ZREM', ready_of(conv), conv)
end
return 1
"""
)

FIRE = (
    PUSH
    + """
local now = tonumber(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', P..'timers', '-inf', now, 'LIMIT', 0, 100)
for _, conv in ipairs(due) do
  redis.call('ZREM', P..'timers', conv)
  local job = redis.call('GET', P..'timer:'..conv)
  redis.call('DEL', P..'timer:'..conv)
  if job then
    local j = cjson.decode(job)
    j.created_at = now
    push(conv, cjson.encode(j), now)
  end
end
return #due
"""
)

# A dead letter back into its conversation's queue, with a fresh ACTION_MAX_AGE.
REVIVE = (
    PUSH
    + """
local function revive(j, now)
  j.attempts, j.created_at, j.next_at, j.error = 0, now, now, cjson.null
  local queue = j.account_id..':'..j.display_id
  if type(j.lane) == 'string' and j.lane ~= '' then queue = queue..'/'..j.lane end
  push(queue, cjson.encode(j), now, j.order)
end
"""
)

REQUEUE = (
    REVIVE
    + """
local n = 0
local now = tonumber(ARGV[1])
while true do
  local job = redis.call('LPOP', P..'dead')
  if not job then return n end
  revive(cjson.decode(job), now)
  n = n + 1
end
"""
)

REQUEUE_ONE = (
    REVIVE
    + """
local id, now = ARGV[1], tonumber(ARGV[2])
for _, job in ipairs(redis.call('LRANGE', P..'dead', 0, -1)) do
  local j = cjson.decode(job)
  if j.id == id then
    redis.call('LREM', P..'dead', 1, job)
    revive(j, now)
    return 1
  end
end
return 0
"""
)


# The conversation locks this task holds (lock key → token): a commit is made only while its lock is still held.
_HELD: ContextVar[Mapping[str, bytes]] = ContextVar("agentbot_redis_locks", default=MappingProxyType({}))


class _ConversationLock(Lock):
    """redis-py's Lock, telling the commits made under it (in the same task) which token it holds."""

    async def do_acquire(self, token: str | bytes) -> bool:
        if not await super().do_acquire(token):
            return False
        _HELD.set({**_HELD.get(), str(self.name): token.encode() if isinstance(token, str) else token})
        return True

    async def release(self) -> None:
        _HELD.set({k: v for k, v in _HELD.get().items() if k != str(self.name)})
        try:
            await super().release()
        except LockNotOwnedError:  # it lapsed (Redis stalled past LOCK_TTL): nothing of ours to release
            pass


# Every script knows where a queue's ready time is kept ("<conversation>/<lane>": its kind's set, as lane_kind).
# HOLD: a lease is kept in the queue's set; a lane queue's also in `ready`, where an instance of an older version
# (one `ready` set for every queue, during a rolling deploy) looks: it neither readies the queue (its push adds to
# `ready` only a queue not there) nor claims the head job a worker of this version runs. RELEASE takes it out.
READY_OF = """
local function ready_of(queue)
  local kind = string.match(queue, '/([^-]+)')
  if kind then return P..'ready:'..kind end
  return P..'ready'
end
local function hold(conv, until_)
  redis.call('ZADD', ready_of(conv), until_, conv)
  if ready_of(conv) ~= P..'ready' then redis.call('ZADD', P..'ready', until_, conv) end
end
"""


def _opened(entry: DecisionEntry | None) -> tuple[str, int, float]:
    """The OPENED script arguments for `entry` (store.base.opened_entry)."""
    return (entry.dumps(), entry.account_id, entry.at) if entry else ("", 0, 0)


def _script(redis: Redis, body: str) -> AsyncScript:
    return redis.register_script(f"local P = {json.dumps(P)}\n{READY_OF}{body}")


class RedisStore(Store):
    def __init__(self, url: str, tls_verify: bool = True, max_connections: int = 50) -> None:
        # A restarted Redis drops every pooled connection: reconnect and send again (for about 2 s)
        # rather than fail the delivery or the outbox step that finds the dead connection first.
        retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=RECONNECTS)
        # Managed Redis (Heroku) serves TLS with a self-signed certificate and rotates the URL: the
        # choice is a setting, not part of the URL. (Hostname checks need a verified certificate.)
        unverified: dict[str, Any] = {"ssl_cert_reqs": "none", "ssl_check_hostname": False}
        # When every connection is busy (a burst while Redis stalls), a command waits for one rather than
        # fail at once as redis-py's default pool does ("Too many connections", a 500 for the delivery).
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=CONNECTION_WAIT,
            retry=retry,
            retry_on_error=[ConnectionError, TimeoutError],
            **(unverified if url.startswith("rediss://") and not tls_verify else {}),
        )
        self.redis = Redis.from_pool(pool)
        self.max_connections = max_connections
        self._commit = _script(self.redis, COMMIT)
        self._claim = _script(self.redis, CLAIM)
        self._renew = _script(self.redis, RENEW)
        self._progress = _script(self.redis, PROGRESS)
        self._release = _script(self.redis, RELEASE)
        self._fire = _script(self.redis, FIRE)
        self._requeue = _script(self.redis, REQUEUE)
        self._requeue_one = _script(self.redis, REQUEUE_ONE)

    async def open(self) -> None:
        await self.redis.ping()

    def outbox_workers(self, wanted: int) -> int:
        return max(1, min(wanted, self.max_connections // 2))

    async def close(self) -> None:
        await self.redis.aclose()

    async def load(self, conversation_key: str, contact_key: str | None) -> tuple[ConversationState, Resolved | None]:
        keys = [P + "conv:" + conversation_key] + ([P + "contact:" + contact_key] if contact_key else [])
        values = await self.redis.mget(keys)
        prev = Resolved.loads(values[1]) if contact_key else None
        return ConversationState.loads(values[0]), prev

    async def commit(self, c: Commit, now: float) -> bool:
        for job in c.jobs + ([c.timer[1]] if c.timer else []):
            job.created_at = job.created_at or now
            job.id = job.id or uuid.uuid4().hex
        args = {
            "dedup": c.dedup_key,
            "dedup_ttl": DEDUP_TTL,
            "state_ttl": STATE_TTL,
            "conv": c.conversation_key,
            "now": now,
            "state": c.state.dumps() if c.state else None,
            "jobs": [[j.queue_key, j.dumps(), j.order, j.not_before] for j in c.jobs] or {},
            "cancel_timer": c.cancel_timer,
            "contact": c.contact_key,
            "resolved": c.resolved.dumps() if c.resolved and c.contact_key else None,
            "timer_due": c.timer[0] if c.timer else None,
            "timer_job": c.timer[1].dumps() if c.timer else None,
            "lock": token.decode() if (token := _HELD.get().get(P + "lock:" + c.conversation_key)) else None,
        }
        if c.log is not None and c.log_size > 0:
            args.update(
                log=c.log.dumps(), log_at=c.log.at, log_account=c.log.account_id, log_size=c.log_size, log_ttl=LOG_TTL
            )
        done = await self._commit(args=[json.dumps({k: v for k, v in args.items() if v is not None})])
        if done == -1:  # the holder stalled past LOCK_TTL (Redis did): another may be deciding the conversation now
            raise Lapsed(f"conversation {c.conversation_key}: its lock lapsed before the commit; not written")
        return bool(done)

    async def remember(self, contact_key: str, resolved: Resolved | None, ttl: float, now: float) -> None:
        await self.redis.set(P + "lookup:" + contact_key, resolved.dumps() if resolved else "", ex=int(ttl))

    async def recall(self, contact_key: str, now: float) -> tuple[bool, Resolved | None]:
        value = await self.redis.get(P + "lookup:" + contact_key)
        return (value is not None, Resolved.loads(value) if value else None)

    async def echo(self, conversation_key: str, message_id: int, content: str | None, now: float) -> None:
        key = P + "echo:" + conversation_key
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {f"{message_id}:{fingerprint(content)}": message_id})  # once per message, however often
            pipe.zremrangebyrank(key, 0, -ECHOES_KEPT - 1)
            pipe.expire(key, STATE_TTL)
            await pipe.execute()

    async def echoed(self, conversation_key: str, content: str, after: int | None) -> bool:
        newer = await self.redis.zrangebyscore(P + "echo:" + conversation_key, f"({after or 0}", "+inf")
        return any(cast(bytes, entry).endswith(b":%d" % fingerprint(content)) for entry in newer)

    def lock(self, conversation_key: str) -> Lock:
        # Held for milliseconds; at most a delivery's 4 s budget (look-ups, the pending-again read) and its commit.
        # The webhook bounds its wait itself (Busy, 500). A killed instance's lock lapses after LOCK_TTL, before
        # Chatwoot's second attempt (3 s after the first's 5 s) would also find the conversation busy.
        # A commit made under it checks that it still holds it (COMMIT): a holder that stalled past LOCK_TTL (a stalled
        # Redis, a paused process) writes nothing, as another delivery may have taken the lock and decided since.
        return self.redis.lock(
            P + "lock:" + conversation_key,
            timeout=LOCK_TTL,
            blocking_timeout=None,
            sleep=0.005,
            lock_class=_ConversationLock,
        )

    async def lease(self, name: str, ttl: float) -> Lease | None:
        lock = self.redis.lock(P + "lease:" + name, timeout=ttl)
        return _RedisLease(lock) if await lock.acquire(blocking=False) else None

    async def claim(self, now: float, lanes: frozenset[str] = LANES) -> Job | None:
        token = uuid.uuid4().hex
        found = await self._claim(args=[now, LEASE, token, HORIZON, json.dumps(sorted(lanes))])
        if not found:
            return None
        raw, job_id, cut_short = found
        job = Job.loads(raw)
        job.id, job.claim = job_id.decode(), token
        if cut_short:  # its call may have landed (long since: its lease of 60 s ran out); checked
            job.attempt = Attempt(job.step, maybe=True)
        return job

    async def renew(self, job: Job, now: float) -> bool:
        return bool(await self._renew(args=[job.queue_key, job.id, job.claim, now, LEASE]))

    async def progress(self, job: Job, now: float) -> bool:
        opened = _opened(opened_entry(job, now))
        return bool(await self._progress(args=[job.queue_key, job.id, job.claim, job.dumps(), now, LEASE, *opened]))

    async def finish(self, job: Job, now: float) -> bool:
        return await self._release_as("done", job, now, _opened(opened_entry(job, now, finishing=True)))

    async def retry(self, job: Job) -> bool:
        return await self._release_as("retry", job, job.next_at)

    async def bury(self, job: Job, now: float) -> bool:
        return await self._release_as("dead", job, now)

    async def _release_as(
        self, how: str, job: Job, ready_at: float, opened: tuple[str, int, float] = ("", 0, 0)
    ) -> bool:
        args: list[str | int | float | bytes] = [
            job.queue_key,
            job.id,
            job.claim,
            how,
            job.dumps(),
            ready_at,
            *opened,
        ]
        return bool(await self._release(args=args))

    async def dead_letters(self) -> list[Job]:
        return [Job.loads(raw) for raw in await self.redis.lrange(P + "dead", 0, -1)]

    async def requeue_dead(self, now: float) -> int:
        return int(await self._requeue(args=[now]))

    async def jobs(self, conversation_key: str) -> list[Job]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lrange(P + "q:" + conversation_key, 0, -1)
            pipe.get(P + "timer:" + conversation_key)
            queued, timer = await pipe.execute()
        return [Job.loads(body) for body in queued + ([timer] if timer else [])]

    async def depth(self) -> int:
        return int(await self.redis.get(P + "depth") or 0)

    async def decisions(self, now: float) -> list[DecisionEntry]:
        accounts = await self.redis.smembers(P + "log-accounts")
        async with self.redis.pipeline(transaction=False) as pipe:
            for account in sorted(accounts):
                for kind in ("opens:", "log:"):  # on the same second an open comes after (before, newest first)
                    pipe.zrevrangebyscore(P + kind + account.decode(), "+inf", f"({now - LOG_TTL}")  # type: ignore[union-attr]
            found = [DecisionEntry.loads(raw) for raws in await pipe.execute() for raw in raws]
        return sorted(found, key=lambda e: e.at, reverse=True)

    async def requeue_one(self, job_id: str, now: float) -> bool:
        return bool(await self._requeue_one(args=[job_id, now]))

    async def fire_timers(self, now: float) -> int:
        return int(await self._fire(args=[now]))


class _RedisLease(Lease):
    """One holder across all instances; the key expires if the holder dies without releasing it."""

    def __init__(self, lock: Lock) -> None:
        self.lock = lock

    async def renew(self) -> bool:
        try:
            await self.lock.reacquire()
            return True
        except LockError:  # it expired, and someone else may hold it now
            return False

    async def release(self) -> None:
        try:
            await self.lock.release()
        except LockError:  # expired already
            pass
