"""Fixtures: the fake Chatwoot, the real app on loopback, and waiting on conditions with a bound."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sys
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone

import aiohttp
import pytest
from aiohttp import web
from loguru import logger

from agentbot.__main__ import main
from agentbot.app import BOT, build_app
from agentbot.config import NAMES, load
from tests.fakechatwoot import FakeChatwoot
from tests.spawner import Spawner


def log_to_stderr() -> None:
    """Where in-process bots log: standard error, shown for a failing test, in the server's text format. Not with
    loguru's default tracebacks, which dump every variable of every frame at a cost in CPU."""
    logger.remove()
    text = "{time:HH:mm:ss.SSS} {level: <7} {message}"
    logger.add(sys.stderr, level="DEBUG", backtrace=False, diagnose=False, format=text)


log_to_stderr()


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


def counted(metrics: str, name: str) -> dict[tuple[str, ...], float]:
    """The non-zero samples of counter `name` in a /metrics text, by their label values in order."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        tuple(sample.labels.values()): sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == name and sample.value
    }


def returning(fake, name="Maria Lopez", inbox=3):
    """A contact whose conversation was handled by an agent and resolved (before the bot ran)."""
    contact = fake.contact(name)
    conv = fake.customer_writes(contact, "Hi", inbox=inbox).conversation
    conv.bot_owner = None  # an agent took it over (that ends the bot's ownership, Chatwoot 4.16+)
    fake.agent_writes(conv.display_id, "Hello")
    fake.resolve(conv.display_id)
    return contact, conv


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
        self.fake.connect_bot(self.url + self.webhook_path)
        return self

    @property
    def webhook_path(self) -> str:
        """Where Chatwoot delivers: `/webhook`, or `/webhook/<WEBHOOK_TOKEN>` when a token is set."""
        token = self.settings.webhook_token
        return "/webhook" + (f"/{token.get_secret_value()}" if token else "")

    async def stop(self) -> None:
        await self.runner.cleanup()

    @property
    def bot(self):
        return self.app[BOT]

    async def post(
        self, body: bytes | str | dict, headers: dict | None = None, path: str | None = None
    ) -> tuple[int, dict]:
        import json as _json

        data = _json.dumps(body).encode() if isinstance(body, dict) else body
        async with aiohttp.ClientSession() as s:
            async with s.post(self.url + (path or self.webhook_path), data=data, headers=headers or {}) as r:
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


@pytest.fixture(autouse=True)
def quick_outbox(request, monkeypatch):
    """Bots started with `start_bot` retry a failed Chatwoot call after 0.05-0.1 s instead of 0.25-0.5 s, look
    for due retries every 0.1 s instead of 0.25 s and run their timer loop every 0.1 s instead of 0.5 s, so
    tests wait for what happens rather than for the clock. The retry schedule itself (0.5 s doubling up to
    60 s) is checked on `outbox.backoff` in test_rules_pure; `processes` run the real timings."""
    if "start_bot" in request.fixturenames:
        monkeypatch.setattr("agentbot.outbox.BACKOFF_BASE", 0.1)
        monkeypatch.setattr("agentbot.outbox.POLL", 0.1)
        monkeypatch.setattr("agentbot.outbox.TICK", 0.1)


@pytest.fixture(autouse=True)
def quick_reconnects(monkeypatch):
    """Redis stores in this process try a dropped connection again twice (about 0.15 s) instead of six times
    (about 2 s): enough for a restarted Redis, and an outage shows sooner. `processes` run the real count."""
    monkeypatch.setattr("agentbot.store.redis.RECONNECTS", 2)


@pytest.fixture
async def fake(request):
    """The fake Chatwoot; a test module runs against several versions with
    `pytestmark = pytest.mark.parametrize("fake", VERSIONS, indirect=True)`."""
    f = FakeChatwoot(version=getattr(request, "param", "4.16"))
    await f.start()
    yield f
    await f.close()


@pytest.fixture
async def start_bot(fake):
    running: list[RunningBot] = []

    async def start(clock: Clock | None = None, **env: str) -> RunningBot:
        clock = clock or Clock()
        fake.now = lambda: clock().timestamp()
        b = await RunningBot(fake, env, clock).start()
        running.append(b)
        return b

    yield start
    for b in running:
        await b.stop()


@pytest.fixture
def log_lines():
    """Every loguru line the app writes during the test (level, message and context)."""
    lines: list[str] = []
    handler = logger.add(lambda m: lines.append(str(m)), level="DEBUG", format="{level} {message} {extra}")
    yield lines
    with contextlib.suppress(ValueError):  # gone if the test ran `sweep` in-process (run_main)
        logger.remove(handler)


def without_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` less every variable the bot reads (a developer's shell or CI may export some)."""
    return {
        k: v
        for k, v in environ.items()
        if k.upper() not in NAMES | {"REDIS_URL", "GROUPS"} and not k.upper().startswith("INBOX_")
    }


async def run_main(cwd, *argv: str, **env: str | None) -> tuple[int, str, str]:
    """`python -m agentbot ARGV` from `cwd` with only the settings in `env` (None: unset), in a worker thread so
    the fake Chatwoot and the bots keep running on this loop; returns (exit status, stdout, stderr). A test of
    its own (test_cli) shows the process exits with what `main` returns."""
    import logging

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    root = logging.getLogger()
    saved_logging = root.handlers[:], root.level
    root.handlers = []  # `sweep`'s logs.setup replaces them (basicConfig(force=True) would close pytest's)
    out, err = io.StringIO(), io.StringIO()
    os.environ.clear()
    os.environ.update(without_settings(saved_env))
    os.environ.update({k: v for k, v in env.items() if v is not None})
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = await asyncio.to_thread(main, list(argv))
            except SystemExit as exc:  # argparse's usage errors
                status = exc.code if isinstance(exc.code, int) else 2
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        log_to_stderr()  # `sweep` sets up its own logging, as a process does
        root.handlers, root.level = saved_logging
    return status, out.getvalue(), err.getvalue()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server of the test's own, with an append-only file so data survives `restart()`."""

    def __init__(self, workdir) -> None:
        import shutil

        self.binary = shutil.which("redis-server")
        if self.binary is None:
            pytest.fail("redis-server is not installed (.ci/run installs it: apt-get install redis-server)")
        self.port, self.workdir, self.proc = free_port(), workdir, None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        import subprocess

        import redis as sync_redis

        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
        )
        client = sync_redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return self
            except (sync_redis.ConnectionError, sync_redis.BusyLoadingError):
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail("redis-server did not start")
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def redis_server(tmp_path):
    """A Redis the test may stop and start again (the session's one is shared)."""
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server on a free port, for the whole session; flushed by `redis` per test."""
    import shutil
    import subprocess

    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed (.ci/run installs it: apt-get install redis-server)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )
    import redis as sync_redis

    client = sync_redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except sync_redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.02)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request, tmp_path):
    """Each store backend, open (Redis: the session's server, flushed)."""
    from agentbot.store import open_store

    if request.param == "redis":
        url = request.getfixturevalue("redis")
    else:
        url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/s.sqlite3"
    s = open_store(url)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def redis(redis_url):
    import redis as sync_redis

    sync_redis.Redis.from_url(redis_url).flushdb()
    return redis_url


class BotProcess:
    """`python -m agentbot` as a separate process (for SIGKILL, SIGTERM and several instances), forked by
    tests/spawner.py."""

    def __init__(self, spawner: Spawner, fake: FakeChatwoot, env: dict[str, str], cwd):
        import os

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        keep = without_settings(os.environ)
        self.env = {
            **keep,
            "CHATWOOT_URL": fake.url,
            "CHATWOOT_BOT_TOKEN": "bot-token-7",
            "PORT": str(self.port),
            "LOG_LEVEL": "DEBUG",
            "CHATWOOT_TIMEOUT": "2",
            **env,
        }
        if fake.bots[7].secret:
            self.env["CHATWOOT_BOT_SECRET"] = fake.bots[7].secret
        self.spawner, self.cwd = spawner, cwd
        self.log = cwd / f"bot-{self.port}.log"

    async def start(self) -> BotProcess:
        self.proc = self.spawner.fork([], self.env, self.cwd, self.log)

        async def healthy():
            return (await self.health()) is not None

        await wait_for(healthy, 15, f"bot on port {self.port}")
        return self

    async def health(self) -> dict | None:
        try:
            async with aiohttp.ClientSession() as s, s.get(self.url + "/healthz") as r:
                return await r.json()
        except aiohttp.ClientError:
            return None

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as s, s.get(self.url + "/metrics") as r:
            return await r.text()

    async def stop(self, sig: int = 15, timeout: float = 15) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), timeout)


@pytest.fixture(scope="session")
def spawner():
    s = Spawner()
    yield s
    s.close()


@pytest.fixture
async def processes(spawner, fake, tmp_path):
    started: list[BotProcess] = []

    async def start(connect: bool = True, **env: str) -> BotProcess:
        p = BotProcess(spawner, fake, env, tmp_path)
        if connect:  # before it starts: a restarted bot may act at once
            fake.connect_bot(p.url + "/webhook" + (f"/{env['WEBHOOK_TOKEN']}" if env.get("WEBHOOK_TOKEN") else ""))
        await p.start()
        started.append(p)
        return p

    yield start
    for p in started:
        if p.proc.returncode is None:
            p.proc.kill()
            await p.proc.wait()


@pytest.fixture
async def evo():
    """The fake Evolution API (tests/fakeevolution) on a loopback port."""
    from tests.fakeevolution import FakeEvolution

    fake = FakeEvolution()
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
async def team():
    """The team's own bot behind agentbot (tests/teambot), unsigned; test_relay and test_review2 use a signed one."""
    from tests.teambot import TeamBot

    bot = await TeamBot().start()
    yield bot
    await bot.close()
