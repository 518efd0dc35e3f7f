"""Run the web server on 0.0.0.0:$PORT until SIGTERM/SIGINT."""
from __future__ import annotations

import asyncio

from aiohttp import web
from loguru import logger

from .app import build_app
from .config import Settings
from .logs import setup


def event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it installs (Linux, macOS): the same asyncio code on a faster event loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def serve(settings: Settings) -> None:
    setup(settings.log_level, settings.log_format)
    web.run_app(build_app(settings), host="0.0.0.0", port=settings.port, access_log=None,
                shutdown_timeout=1.5, print=None, handle_signals=True, loop=event_loop())
    logger.info("agentbot stopped")
