"""Fixtures: the fake Chatwoot, the real app on loopback, and waiting on conditions with a bound."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timezone

import aiohttp
import pytest
from aiohttp import web

from agentbot.app import BOT, build_app
from agentbot.config import load
from tests.fakechatwoot import FakeChatwoot


async def wait_for(condition: Callable[[], object], timeout: float = 5.0, what: str = "condition"):
    """Poll `condition` until it is truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


class Clock:
    """An injectable clock; real time unless set."""

    def __init__(self, at: datetime | None = None):
        self.at = at

    def __call__(self) -> datetime:
        return self.at or datetime.now(timezone.utc)


class RunningBot:
    """The real app served on a loopback port, wired to the fake Chatwoot."""

    def __init__(self, fake: FakeChatwoot, env: dict[str, str], clock: Clock):
        base = {"CHATWOOT_URL": fake.url, "CHATWOOT_BOT_TOKEN": "bot-token-7", "STORE_URL": "memory://"}
        secret = fake.bots[7].secret
        if secret:
            base["CHATWOOT_BOT_SECRET"] = secret
        self.fake, self.settings, self.clock = fake, load({**base, **env}), clock

    async def start(self) -> RunningBot:
        self.app = build_app(self.settings, self.clock)
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        self.fake.connect_bot(self.url + "/webhook")
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()

    @property
    def bot(self):
        return self.app[BOT]

    async def post(self, body: bytes | str | dict, headers: dict | None = None) -> tuple[int, dict]:
        import json as _json

        data = _json.dumps(body).encode() if isinstance(body, dict) else body
        async with aiohttp.ClientSession() as s:
            async with s.post(self.url + "/webhook", data=data, headers=headers or {}) as r:
                return r.status, await r.json(content_type=None)

    async def get(self, path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as s:
            async with s.get(self.url + path) as r:
                return r.status, await r.text()

    async def idle(self, timeout: float = 10.0) -> None:
        """Wait until Chatwoot has no delivery in flight and the outbox is empty, twice in a row."""
        async def quiet() -> bool:
            return self.fake.in_flight == 0 and await self.bot.store.depth() == 0

        async def stable() -> bool:
            if not await quiet():
                return False
            await asyncio.sleep(0.02)
            return await quiet()

        await wait_for(stable, timeout, "the bot and Chatwoot to go quiet")


@pytest.fixture
async def fake():
    f = FakeChatwoot()
    await f.start()
    yield f
    await f.close()


@pytest.fixture
async def start_bot(fake):
    running: list[RunningBot] = []

    async def start(clock: Clock | None = None, **env: str) -> RunningBot:
        b = await RunningBot(fake, env, clock or Clock()).start()
        running.append(b)
        return b

    yield start
    for b in running:
        await b.stop()
