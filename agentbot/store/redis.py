"""Redis backend for several instances: the same data as SQLite, made atomic with Lua scripts."""
from __future__ import annotations

import json

from redis.asyncio import Redis
from redis.exceptions import LockError

from ..actions import Job
from ..facts import ConversationState, Resolved
from .base import DEDUP_TTL, LEASE, STATE_TTL, Commit, Lease, Store

P = "agentbot:"
# Keys: seen:<dedup>, conv:<key>, contact:<key>, lookup:<key> (strings with TTLs);
# q:<conv> (list of job JSON, head first); ready (zset conv → when its head may run or the
# lease of the worker running it ends); timers (zset conv → due) + timer:<conv>; dead (list);
# depth (counter of queued jobs); lock:<conv> (redis-py Lock).

PUSH = """
local function push(conv, job, now)
  redis.call('RPUSH', P..'q:'..conv, job)
  redis.call('ZADD', P..'ready', 'NX', now, conv)
  redis.call('INCR', P..'depth')
end
"""

COMMIT = PUSH + """
local a = cjson.decode(ARGV[1])
if redis.call('SET', P..'seen:'..a.dedup, '1', 'NX', 'EX', a.dedup_ttl) == false then return 0 end
if a.state then redis.call('SET', P..'conv:'..a.conv, a.state, 'EX', a.state_ttl) end
for _, job in ipairs(a.jobs) do push(a.conv, job, a.now) end
if a.cancel_timer then redis.call('ZREM', P..'timers', a.conv); redis.call('DEL', P..'timer:'..a.conv) end
if a.timer_job then
  redis.call('ZADD', P..'timers', a.timer_due, a.conv)
  redis.call('SET', P..'timer:'..a.conv, a.timer_job)
end
if a.resolved then redis.call('SET', P..'contact:'..a.contact, a.resolved, 'EX', a.state_ttl) end
return 1
"""

CLAIM = """
local now, lease = tonumber(ARGV[1]), tonumber(ARGV[2])
for _ = 1, 20 do
  local c = redis.call('ZRANGEBYSCORE', P..'ready', '-inf', now, 'LIMIT', 0, 1)
  if #c == 0 then return false end
  local job = redis.call('LINDEX', P..'q:'..c[1], 0)
  if job then
    redis.call('ZADD', P..'ready', now + lease, c[1])
    return job
  end
  redis.call('ZREM', P..'ready', c[1])
end
return false
"""

# KEYS: none. ARGV: conv, how ('done'|'retry'|'dead'), job json, ready_at
RELEASE = """
local conv, how, job, at = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local q = P..'q:'..conv
if how == 'retry' then
  redis.call('LSET', q, 0, job)
else
  redis.call('LPOP', q)
  redis.call('DECR', P..'depth')
  if how == 'dead' then redis.call('RPUSH', P..'dead', job) end
end
if redis.call('LLEN', q) > 0 then redis.call('ZADD', P..'ready', at, conv) else redis.call('ZREM', P..'ready', conv) end
return 1
"""

FIRE = PUSH + """
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

REQUEUE = PUSH + """
local n = 0
local now = tonumber(ARGV[1])
while true do
  local job = redis.call('LPOP', P..'dead')
  if not job then return n end
  local j = cjson.decode(job)
  j.attempts, j.created_at, j.next_at, j.error = 0, now, now, cjson.null
  push(j.account_id..':'..j.display_id, cjson.encode(j), now)
  n = n + 1
end
"""


def _script(redis: Redis, body: str):
    return redis.register_script(f"local P = {json.dumps(P)}\n{body}")


class RedisStore(Store):
    def __init__(self, url: str) -> None:
        self.redis = Redis.from_url(url)
        self._commit = _script(self.redis, COMMIT)
        self._claim = _script(self.redis, CLAIM)
        self._release = _script(self.redis, RELEASE)
        self._fire = _script(self.redis, FIRE)
        self._requeue = _script(self.redis, REQUEUE)

    async def open(self) -> None:
        await self.redis.ping()

    async def close(self) -> None:
        await self.redis.aclose()

    async def load(self, conversation_key, contact_key):
        keys = [P + "conv:" + conversation_key] + ([P + "contact:" + contact_key] if contact_key else [])
        values = await self.redis.mget(keys)
        prev = Resolved.loads(values[1]) if contact_key else None
        return ConversationState.loads(values[0]), prev

    async def commit(self, c: Commit, now: float) -> bool:
        for job in c.jobs:
            job.created_at = job.created_at or now
        args = {
            "dedup": c.dedup_key, "dedup_ttl": DEDUP_TTL, "state_ttl": STATE_TTL, "conv": c.conversation_key,
            "now": now, "state": c.state.dumps() if c.state else None, "jobs": [j.dumps() for j in c.jobs] or {},
            "cancel_timer": c.cancel_timer, "contact": c.contact_key,
            "resolved": c.resolved.dumps() if c.resolved and c.contact_key else None,
            "timer_due": c.timer[0] if c.timer else None, "timer_job": c.timer[1].dumps() if c.timer else None,
        }
        return bool(await self._commit(args=[json.dumps({k: v for k, v in args.items() if v is not None})]))

    async def remember(self, contact_key, resolved, ttl, now):
        await self.redis.set(P + "lookup:" + contact_key, resolved.dumps() if resolved else "", ex=int(ttl))

    async def recall(self, contact_key, now):
        value = await self.redis.get(P + "lookup:" + contact_key)
        return (value is not None, Resolved.loads(value) if value else None)

    def lock(self, conversation_key):
        # Held for milliseconds (at most the 2 s look-up); bounded so Chatwoot's 5 s deadline holds.
        return self.redis.lock(P + "lock:" + conversation_key, timeout=10, blocking_timeout=3, sleep=0.005)

    async def lease(self, name, ttl):
        lock = self.redis.lock(P + "lease:" + name, timeout=ttl)
        return _RedisLease(lock) if await lock.acquire(blocking=False) else None

    async def claim(self, now):
        raw = await self._claim(args=[now, LEASE])
        if not raw:
            return None
        job = Job.loads(raw)
        job.id = job.id or f"{job.conversation_key}@{job.created_at}"
        return job

    async def progress(self, job, now):
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lset(P + "q:" + job.conversation_key, 0, job.dumps())
            pipe.zadd(P + "ready", {job.conversation_key: now + LEASE}, xx=True)  # renew the lease
            await pipe.execute()

    async def finish(self, job, now):
        await self._release(args=[job.conversation_key, "done", "", now])

    async def retry(self, job):
        await self._release(args=[job.conversation_key, "retry", job.dumps(), job.next_at])

    async def bury(self, job, now):
        await self._release(args=[job.conversation_key, "dead", job.dumps(), now])

    async def dead_letters(self):
        return [Job.loads(raw) for raw in await self.redis.lrange(P + "dead", 0, -1)]

    async def requeue_dead(self, now):
        return int(await self._requeue(args=[now]))

    async def depth(self):
        return int(await self.redis.get(P + "depth") or 0)

    async def fire_timers(self, now):
        return int(await self._fire(args=[now]))


class _RedisLease(Lease):
    """One holder across all instances; the key expires if the holder dies without releasing it."""

    def __init__(self, lock):
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
