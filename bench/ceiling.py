"""The ceiling: a bare aiohttp handler doing the least each workload needs.

Ignore path: read the body, answer 200. Handoff path: also parse it and make the same Chatwoot call
(toggle_status) through one pooled client session, after answering, as the bot does. It runs on the
bot's event loop (uvloop where installed), so the ratio measures the bot's own work.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os

import aiohttp
from aiohttp import web

from agentbot.loop import event_loop  # the bot's event loop, without importing the bot

CHATWOOT = os.environ["CHATWOOT_URL"]
TOKEN = os.environ["CHATWOOT_BOT_TOKEN"]


async def lifecycle(app: web.Application):
    app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
    app["tasks"] = set()
    yield
    await app["session"].close()


async def toggle(session: aiohttp.ClientSession, account: int, conversation: int) -> None:
    url = f"{CHATWOOT}/api/v1/accounts/{account}/conversations/{conversation}/toggle_status"
    async with session.post(url, json={"status": "open"}, headers={"api_access_token": TOKEN}) as resp:
        await resp.read()


async def webhook(request: web.Request) -> web.Response:
    body = await request.read()
    if os.environ.get("WORKLOAD") != "ignore":
        data = json.loads(body)
        conv = data.get("conversation") or {}
        if data.get("message_type") == "incoming" and conv.get("status") == "pending":
            task = asyncio.create_task(toggle(request.app["session"], data["account"]["id"], conv["id"]))
            request.app["tasks"].add(task)
            task.add_done_callback(request.app["tasks"].discard)
    return web.Response(text="ok")


def build() -> web.Application:
    app = web.Application()
    app.router.add_post("/webhook", webhook)
    app.router.add_get("/healthz", lambda r: web.json_response({"status": "ok"}))
    app.cleanup_ctx.append(lifecycle)
    return app


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    web.run_app(build(), host="127.0.0.1", port=p.parse_args().port, access_log=None, print=None, loop=event_loop())
