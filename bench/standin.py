"""A fast stand-in for Chatwoot's API: answers every call and records when toggle_status arrived.

For the sweep workload it also holds pending conversations (`POST /_pending?n=…&share=…`): the
conversation list (Chatwoot's partial, 25 a page), a contact's conversations and the messages index,
and counts the calls per endpoint (`GET /_calls`).

For the burst workload it enforces Rack::Attack's limit (`POST /_limit?per=…&window=…`, `per=0` lifts
it): every API call counts, fixed windows aligned to the epoch, a plain-text 429 without Retry-After
once a window's calls are spent (counted as `refused` in `/_calls`).
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter

from aiohttp import web

TOGGLED = json.dumps({"meta": {}, "payload": {"success": None, "current_status": "open"}}).encode()
MESSAGE = json.dumps({"id": 1, "content": "", "message_type": 1, "private": True}).encode()
PAGE = 25
NO_CONVERSATIONS = json.dumps({"payload": []}).encode()


def partial(display_id: int, returning: bool, now: int, status: str = "pending", message_id: int | None = None) -> bytes:
    """Chatwoot's conversation partial for a pending conversation whose customer wrote an hour ago;
    a returning customer's shows an agent's first reply. `message_id`: the customer's message (default 10 × id)."""
    contact = {"id": 100_000 + display_id, "name": f"Customer {display_id}", "email": None, "phone_number": None,
               "identifier": None, "thumbnail": "", "blocked": False, "additional_attributes": {}, "custom_attributes": {}}
    message = {"id": message_id or 10 * display_id, "content": "Hi, where is my order?", "account_id": 1, "inbox_id": 3,
               "conversation_id": display_id, "message_type": 0, "created_at": now - 3600, "private": False,
               "status": "sent", "source_id": None, "content_type": "text", "content_attributes": {},
               "sender_type": "Contact", "sender_id": contact["id"], "sender": {**contact, "type": "contact"}}
    return json.dumps({
        "meta": {"sender": contact, "channel": "Channel::WebWidget", "hmac_verified": False}, "id": display_id,
        "messages": [message], "account_id": 1, "uuid": f"bench-{display_id}", "additional_attributes": {},
        "agent_last_seen_at": 0, "assignee_last_seen_at": 0, "can_reply": True, "contact_last_seen_at": 0,
        "custom_attributes": {}, "inbox_id": 3, "labels": [], "muted": False, "snoozed_until": None, "status": status,
        "created_at": now - 90_000 if returning else now - 3600, "updated_at": now - 3600.0, "timestamp": now - 3600,
        "first_reply_created_at": now - 86_400 if returning else 0, "unread_count": 1, "last_non_activity_message": message,
        "last_activity_at": now - 3600, "priority": None, "waiting_since": now - 3600, "sla_policy_id": None,
    }, separators=(",", ":")).encode()


def build() -> web.Application:
    arrivals: dict[int, float] = {}
    pending: dict[int, bytes] = {}  # display id → partial, newest activity first
    calls: Counter = Counter()
    opened: set[int] = set()  # conversations toggle_status opened
    limit = {"per": 0, "window": 60.0, "at": 0, "used": 0}  # Rack::Attack's req/ip, off until /_limit sets it

    @web.middleware
    async def rack_attack(request: web.Request, handler):
        if limit["per"] and request.path.startswith("/api/"):
            window = int(time.time() // limit["window"])
            if window != limit["at"]:
                limit["at"], limit["used"] = window, 0
            limit["used"] += 1
            if limit["used"] > limit["per"]:
                calls["refused"] += 1
                return web.Response(status=429, text="Retry later")
        return await handler(request)

    async def set_limit(request: web.Request) -> web.Response:
        limit["per"], limit["window"] = int(request.query["per"]), float(request.query.get("window", "60"))
        limit["at"] = limit["used"] = 0
        arrivals.clear()
        opened.clear()
        calls.clear()
        return web.json_response(limit)

    async def show(request: web.Request) -> web.Response:
        """GET a conversation: pending until toggle_status opened it (a late handoff reads it first)."""
        calls["show"] += 1
        conv = int(request.match_info["conv"])
        # The customer's message is the one delivered (the benchmark's bodies give it the conversation's id).
        body = partial(conv, True, int(time.time()), "open" if conv in opened else "pending", conv)
        return web.Response(body=body, content_type="application/json")

    async def toggle(request: web.Request) -> web.Response:
        conv = int(request.match_info["conv"])
        arrivals.setdefault(conv, time.monotonic())
        opened.add(conv)
        pending.pop(conv, None)
        calls["toggle_status"] += 1
        await request.read()
        return web.Response(body=TOGGLED, content_type="application/json")

    async def conversations(request: web.Request) -> web.Response:
        calls["conversations"] += 1
        page = int(request.query.get("page", "1"))
        ids = list(pending)[(page - 1) * PAGE:page * PAGE]
        meta = json.dumps({"mine_count": 0, "assigned_count": 0, "unassigned_count": len(pending), "all_count": len(pending)})
        body = b'{"data":{"meta":' + meta.encode() + b',"payload":[' + b",".join(pending[i] for i in ids) + b"]}}"
        return web.Response(body=body, content_type="application/json")

    async def contact_conversations(request: web.Request) -> web.Response:
        calls["contact_conversations"] += 1
        return web.Response(body=NO_CONVERSATIONS, content_type="application/json")

    async def set_pending(request: web.Request) -> web.Response:
        n, share = int(request.query["n"]), float(request.query.get("share", "0.2"))
        now, step = int(time.time()), round(1 / share) if share else 0
        pending.clear()
        calls.clear()
        for i in range(1, n + 1):
            pending[i] = partial(i, bool(step) and i % step == 0, now)
        return web.json_response({"pending": len(pending)})

    async def count_calls(request: web.Request) -> web.Response:
        return web.json_response({**calls, "pending": len(pending)})

    async def message(request: web.Request) -> web.Response:
        calls["messages"] += 1
        await request.read()
        return web.Response(body=MESSAGE, content_type="application/json")

    async def records(request: web.Request) -> web.Response:
        data = {str(k): v for k, v in arrivals.items()}
        arrivals.clear()
        return web.json_response(data)

    app = web.Application(middlewares=[rack_attack])
    app.router.add_post("/api/v1/accounts/{account}/conversations/{conv}/toggle_status", toggle)
    app.router.add_post("/api/v1/accounts/{account}/conversations/{conv}/messages", message)
    app.router.add_get("/api/v1/accounts/{account}/conversations", conversations)
    app.router.add_get("/api/v1/accounts/{account}/contacts/{contact}/conversations", contact_conversations)
    app.router.add_get("/api/v1/accounts/{account}/conversations/{conv}", show)
    app.router.add_post("/_pending", set_pending)
    app.router.add_post("/_limit", set_limit)
    app.router.add_get("/_calls", count_calls)
    app.router.add_get("/_records", records)
    app.router.add_get("/healthz", lambda r: web.json_response({"status": "ok"}))
    return app


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    web.run_app(build(), host="127.0.0.1", port=p.parse_args().port, access_log=None, print=None)
