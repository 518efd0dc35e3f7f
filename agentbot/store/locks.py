"""In-process per-key locks: one decision per conversation at a time inside one process."""

from __future__ import annotations

import asyncio


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # key → (lock, holders and waiters)

    def __call__(self, key: str) -> _Held:
        return _Held(self._locks, key)


class _Held:
    """`async with locks(key)`: a plain class, as this runs for every delivery that may write."""

    __slots__ = ("_locks", "_key")

    def __init__(self, locks: dict[str, tuple[asyncio.Lock, int]], key: str) -> None:
        self._locks, self._key = locks, key

    async def __aenter__(self) -> None:
        lock, users = self._locks.get(self._key) or (asyncio.Lock(), 0)
        self._locks[self._key] = (lock, users + 1)
        try:
            await lock.acquire()
        except BaseException:
            self._leave()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._locks[self._key][0].release()
        self._leave()

    def _leave(self) -> None:
        lock, users = self._locks[self._key]
        if users == 1:
            del self._locks[self._key]
        else:
            self._locks[self._key] = (lock, users - 1)
