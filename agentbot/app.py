"""Build the aiohttp application: routes, the shared client session, store and outbox lifecycle."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from aiohttp import web
from loguru import logger

from . import page
from .chatwoot import Chatwoot, Throttle, client_session
from .clock import SteadyClock
from .config import ConfigError, Settings, mask
from .evolution import Evolution
from .evolution_switch import Switcher
from .forward import Forwarder
from .handoffs import Handoffs
from .metrics import Metrics
from .outbox import Outbox
from .ratelimit import Priority, RateLimit
from .relay import Relay
from .store import Store, open_or_refuse, store_for
from .turns import Turns
from .webhook import MAX_BODY, receive

if TYPE_CHECKING:
    from .page.panels import Sweeper as PageSweeper
    from .sweep_loop import SweepLoop

UNPROTECTED = (
    "neither CHATWOOT_BOT_SECRET nor WEBHOOK_TOKEN is set: anyone who learns the webhook URL can make the bot "
    "open any pending conversation its token reaches, set open conversations back to pending with a forged "
    "#bot note, and post the handoff message or greeting to customers; set WEBHOOK_TOKEN (any Chatwoot: "
    "`python -m agentbot register` makes one) or CHATWOOT_BOT_SECRET (Chatwoot 4.13+)"
)
CONNECTIONS = 64  # the app's one client session: Chatwoot's calls, forwards and Evolution's share them
SHUTDOWN_GRACE = 7.0  # outbox grace on SIGTERM; with aiohttp's 1.5 s and the lock releases' 1 s this stays under 10 s


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Bot:
    """Everything one running app holds; created on start-up, closed on clean-up."""

    def __init__(self, settings: Settings, clock: Callable[[], datetime] = utcnow, store: Store | None = None):
        self.settings, self.clock = settings, clock
        # the outbox's and the store queue's clock (read for every claim: time.time, not a datetime, when it can)
        self.steady = SteadyClock(time.time if clock is utcnow else lambda: clock().timestamp())
        self.store = store or store_for(settings, runs_jobs=True)
        self.metrics = Metrics()
        self.turns = Turns()  # the webhook's answers before the lanes' jobs (forwards, Evolution switches)
        self.evolution: Switcher | None = None  # Evolution API's switches (EVOLUTION_URL), made at start-up
        self.sweeper: PageSweeper | None = (
            None  # the sweep, when the app has one (page.panels.Sweeper); the operator page offers it
        )

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        s = self.settings
        assert s.chatwoot_url is not None  # serve requires it (config.REQUIRED)
        await open_or_refuse(self.store, s)
        self.session = client_session(CONNECTIONS)
        token = s.chatwoot_bot_token.get_secret_value() if s.chatwoot_bot_token else None
        # One budget for every call to Chatwoot (its 429s pause them all); handoffs' calls first, then look-ups.
        self.ratelimit = RateLimit(s.chatwoot_rate)
        self.metrics.watch_rate(lambda: self.ratelimit.rate, lambda: self.ratelimit.paused)
        self.chatwoot = Chatwoot(
            self.session, s.chatwoot_url, token, s.chatwoot_timeout, self.metrics, limit=self.ratelimit
        )
        reader = s.chatwoot_api_token.get_secret_value() if s.chatwoot_api_token else None
        self.evolution = self._evolution()
        self.outbox = Outbox(
            self.store, self.chatwoot, self.metrics, self.steady, s.action_max_age, reader, self.evolution, self.turns
        )
        lookups = self.chatwoot.sibling(Priority.LOOKUP)  # Handoffs only reads (look-ups) while a delivery waits
        self.handoffs = Handoffs(s, self.store, lookups, self.metrics, self.clock, self.outbox.wake, self.steady)
        self.outbox.decide_again = self.handoffs.decide_again
        # Forwarding to the team's own bot (relay.py): on the app's one session, off the webhook's path.
        forwarder = Forwarder(self.session, s.forward_secret, s.forward_timeout, self.metrics)
        self.relay = Relay(s, forwarder, self.metrics, self.steady, self.handoffs.forward_handoff)
        self.outbox.relay = self.relay
        self.outbox.start()
        self.sweeps = self.sweeper = self._sweeps()
        logger.info(
            "agentbot ready on port {} (store: {}, Chatwoot: {})", s.port, mask(s.store_url), mask(s.chatwoot_url)
        )
        if s.chatwoot_bot_secret is None and s.webhook_token is None:
            logger.warning(UNPROTECTED)
        if self.sweeps:
            self.sweeps.start()
        yield
        if self.sweeps:
            await self.sweeps.stop()
        await self.outbox.stop(SHUTDOWN_GRACE)
        await self.handoffs.stop()
        await self.session.close()
        await self.store.close()

    def _evolution(self) -> Switcher | None:
        """Evolution API's switches, on the app's one session (EVOLUTION_URL unset: none)."""
        s = self.settings
        if s.evolution_url is None or s.evolution_api_key is None:
            return None
        client = Evolution(self.session, s.evolution_url, s.evolution_api_key.get_secret_value(), metrics=self.metrics)
        return Switcher(s, client, self.chatwoot, self.metrics)

    def _sweeps(self) -> SweepLoop | None:
        """The sweep (periodic with SWEEP_INTERVAL, and on demand from the operator page), with its own throttled
        client (SWEEP_RATE) but the same store, locks and outbox as live deliveries."""
        s = self.settings
        if s.chatwoot_api_token is None:
            logger.info(
                "sweep off: without CHATWOOT_API_TOKEN the bot cannot list pending conversations, so one whose "
                "delivery was lost (bot down or asleep, connected later, history imported) stays pending until "
                "the customer writes again; set it to catch those"
            )
            return None
        from .lookups import sweep_share
        from .sweep import Sweeper  # only with a user token: serving starts without it
        from .sweep_loop import SweepLoop

        throttled = self.chatwoot.sibling(Priority.SWEEP, Throttle(s.sweep_rate))
        handoffs = Handoffs(
            s, self.store, throttled, self.metrics, self.clock, self.outbox.wake, self.steady, sweep_share()
        )
        sweeper = Sweeper(s, handoffs, throttled, self.metrics, self.clock, busy=lambda: self.handoffs.live)
        try:
            sweeper.accounts()
        except ConfigError as exc:
            logger.info("sweep off: {}", exc)
            return None
        if s.sweep_every:
            logger.info("sweep every {} s at up to {} Chatwoot calls/s", s.sweep_every, s.sweep_rate or "unlimited")
        else:
            logger.info("sweep off (SWEEP_INTERVAL=0); the operator page and `python -m agentbot sweep` still run it")
        return SweepLoop(sweeper, s.sweep_every)


BOT = web.AppKey("bot", Bot)


async def healthz(request: web.Request) -> web.Response:
    """200 while deliveries can be decided and the outbox makes progress; 503 with the reason otherwise."""
    bot = request.app[BOT]
    try:
        depth = await bot.store.depth()
    except Exception as exc:
        return web.json_response({"status": "error", "reason": f"store: {type(exc).__name__}: {exc}"}, status=503)
    problem = bot.outbox.problem()
    if problem:
        return web.json_response({"status": "error", "reason": problem, "outbox": depth}, status=503)
    return web.json_response({"status": "ok", "outbox": depth})


async def metrics(request: web.Request) -> web.Response:
    bot = request.app[BOT]
    bot.metrics.outbox_depth.set(await bot.store.depth())
    return web.Response(body=bot.metrics.render(), content_type="text/plain", charset="utf-8")


def build_app(
    settings: Settings, clock: Callable[[], datetime] = utcnow, store: Store | None = None
) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[BOT] = Bot(settings, clock, store)
    # With a token, Chatwoot delivers to /webhook/<token> and /webhook does not exist (404). Every method
    # reaches the handler there, so a wrong token is a 404 whatever the method (a 405 would tell the route).
    bot = app[BOT]

    async def handler(request: web.Request) -> web.Response:
        with bot.turns.webhook():  # the lanes' jobs are paced meanwhile (turns.py)
            return await receive(bot.handoffs, request)  # the Handoffs made at start-up

    if settings.webhook_token:
        app.router.add_route("*", "/webhook/{token}", handler)
    else:
        app.router.add_post("/webhook", handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    page.setup(app, app[BOT])
    app.cleanup_ctx.append(app[BOT].lifecycle)
    return app
