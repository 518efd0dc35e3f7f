"""Run the web server on 0.0.0.0:$PORT until SIGTERM/SIGINT."""

from __future__ import annotations

from aiohttp import web
from loguru import logger

from .app import build_app
from .config import Settings
from .logs import setup
from .loop import event_loop


def serve(settings: Settings) -> None:
    setup(settings.log_level, settings.log_format)
    for line in settings.unknown:
        logger.warning(line)
    web.run_app(
        build_app(settings),
        host="0.0.0.0",
        port=settings.port,
        access_log=None,
        shutdown_timeout=1.5,
        print=None,
        handle_signals=True,
        loop=event_loop(),
    )
    logger.info("agentbot stopped")
