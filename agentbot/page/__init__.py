"""The operator page: sign in with Chatwoot, see and steer the bot (server-rendered HTML, no JavaScript).

Its modules (the views, Jinja2, the session cipher) are imported on the page's first request, not at start-up:
serving deliveries needs none of them, and they were a fifth of the time to the first /healthz (cold start)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from ..app import Bot
    from .views import Page

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Later:
    """The page's state (views.Page: sessions, the sign-in limiter, names), made on the page's first request."""

    def __init__(self, bot: Bot) -> None:
        self.bot = bot
        self.page: Page | None = None


LATER = web.AppKey("page", Later)


def later(name: str) -> Handler:
    """The views' handler `name`, imported on its first call."""

    async def handle(request: web.Request) -> web.StreamResponse:
        from . import views

        handler: Handler = getattr(views, name)
        return await handler(request)

    return handle


def setup(app: web.Application, bot: Bot) -> None:
    app[LATER] = Later(bot)
    app.router.add_get("/", later("index"))
    app.router.add_get("/favicon.svg", later("favicon"))
    app.router.add_get("/favicon.ico", later("favicon"))
    app.router.add_post("/signin", later("sign_in"))
    app.router.add_post("/signout", later("sign_out"))
    app.router.add_post("/actions/handoff", later("hand_off"))
    app.router.add_post("/actions/retry", later("retry"))
    app.router.add_post("/actions/sweep", later("sweep"))
    app.router.add_get("/sweep", later("sweep_progress"))


__all__ = ["LATER", "Later", "setup"]
