"""A time limit that starts only once a coroutine has to wait, in the caller's own task (what Python 3.12's eager
tasks do): most of the bot's work on a delivery, and an in-process lock's release, never waits, and a timeout costs
a tenth of the ignore path. (Never run a coroutine's first step here and the rest in another task: a timeout or
lock it enters belongs to the task it was entered in.)"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Coroutine, Generator
from functools import partial
from typing import Any, TypeVar, cast

T = TypeVar("T")


async def within(coro: Coroutine[Any, Any, T], seconds: float) -> T:
    """`coro`'s result, cut short by TimeoutError `seconds` after it first has to wait."""
    try:
        waiting_on = coro.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    async with asyncio.timeout(seconds):
        return cast(T, await _go_on(coro, waiting_on))


@types.coroutine
def _go_on(coro: Coroutine[Any, Any, Any], waiting_on: Any) -> Generator[Any, Any, Any]:
    """Go on with a started coroutine in the current task, as `await` would have: the task waits for what it
    waits on, and a cancellation (the timeout) is thrown into it."""
    while True:
        try:
            sent = yield waiting_on
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            step = partial(coro.throw, exc)
        else:
            step = partial(coro.send, sent)
        try:
            waiting_on = step()
        except StopIteration as done:
            return done.value
