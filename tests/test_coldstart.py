"""Cold start: `python -m agentbot` imports only what serving needs before it is ready; the operator page's
modules (Jinja2, the views, the session cipher), the CLI's and the sweep's come when first used."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import aiohttp

from tests.conftest import free_port, wait_for, without_settings

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "user-token-5"  # the fake Chatwoot's administrator
NOT_AT_START = ("jinja2", "agentbot.page.views", "cryptography", "rich", "redis", "agentbot.commands", "agentbot.sweep")


def imported(stderr: str) -> list[str]:
    """The modules `python -X importtime` reported, in the order they were imported."""
    return re.findall(r"^import time:\s+\d+ \|\s+\d+ \| *(\S+)$", stderr, re.M)


async def test_start_up_imports_no_page_cli_or_sweep_module_and_the_page_works_after(fake, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **without_settings(os.environ),
        "PYTHONUNBUFFERED": "1",  # the log lines and the import lines reach stderr in the order they happen
        "CHATWOOT_URL": fake.url,
        "CHATWOOT_BOT_TOKEN": "bot-token-7",  # the fake's agent bot 7
        **({"CHATWOOT_BOT_SECRET": fake.bots[7].secret} if fake.bots[7].secret else {}),
        "PORT": str(port),
        "STORE_URL": f"sqlite:///{tmp_path}/bot.sqlite3",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-X", "importtime", "-m", "agentbot", env=env, cwd=ROOT, stderr=asyncio.subprocess.PIPE
    )
    try:

        async def healthy() -> bool:
            try:
                async with aiohttp.ClientSession() as s, s.get(url + "/healthz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(healthy, 20, "/healthz")
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            async with s.get(url + "/") as r:
                assert r.status == 200 and 'action="/signin"' in await r.text()
            async with s.post(url + "/signin", data={"token": ADMIN}) as r:  # follows the redirect to the page
                assert r.status == 200 and 'id="health"' in await r.text()
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    stderr = err.decode()
    ready = stderr.index("agentbot ready on port")  # logged once the store is open and the outbox runs
    at_start, later = imported(stderr[:ready]), imported(stderr[ready:])
    assert "agentbot.app" in at_start
    assert [m for m in at_start if m.startswith(NOT_AT_START)] == []
    assert {"jinja2", "agentbot.page.views", "cryptography"} <= set(later)  # imported by the page's first request


async def test_a_served_bot_sets_its_start_up_heap_aside_from_garbage_collection(processes):
    """Full collections under load walked every module and class, 20 to 34 ms with the event loop stopped."""
    bot = await processes()
    settled = re.search(r"(\d+) start-up objects set aside from garbage collection", bot.log.read_text())
    assert settled, "serve() did not set the start-up heap aside"
    assert int(settled[1]) > 10_000
