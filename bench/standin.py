"""A fast stand-in for Chatwoot's API: answers every call and records when toggle_status arrived."""
from __future__ import annotations

import argparse
import json
import time

from aiohttp import web

TOGGLED = json.dumps({"meta": {}, "payload": {"success": None, "current_status": "open"}}).encode()
MESSAGE = json.dumps({"id": 1, "content": "", "message_type": 1, "private": True}).encode()


def build() -> web.Application:
    arrivals: dict[int, float] = {}

    async def toggle(request: web.Request) -> web.Response:
        arrivals.setdefault(int(request.match_info["conv"]), time.monotonic())
        await request.read()
        return web.Response(body=TOGGLED, content_type="application/json")

    async def message(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=MESSAGE, content_type="application/json")

    async def records(request: web.Request) -> web.Response:
        data = {str(k): v for k, v in arrivals.items()}
        arrivals.clear()
        return web.json_response(data)

    app = web.Application()
    app.router.add_post("/api/v1/accounts/{account}/conversations/{conv}/toggle_status", toggle)
    app.router.add_post("/api/v1/accounts/{account}/conversations/{conv}/messages", message)
    app.router.add_get("/_records", records)
    app.router.add_get("/healthz", lambda r: web.json_response({"status": "ok"}))
    return app


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    web.run_app(build(), host="127.0.0.1", port=p.parse_args().port, access_log=None, print=None)
