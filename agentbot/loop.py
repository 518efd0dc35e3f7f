"""The event loop: uvloop where it installs (Linux, macOS), the standard one elsewhere."""

from __future__ import annotations

import asyncio


def event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
