"""A stand-in for the team's own bot (n8n, Dify, Botpress, their service) on loopback, as harsh as the fake Chatwoot.

It checks what such a bot may rely on: `Content-Type: application/json`, a JSON body, an `X-Chatwoot-Delivery`
and, when it has a secret, Chatwoot's signature (HMAC-SHA256 of "<timestamp>.<body>", a timestamp within
5 minutes; else 401). It records every request whose body arrived, with its arrival time and headers, and
injects the faults real bots have: slow answers, 5xx, connections reset before the body is read, answers lost
after it was, and `{"handoff": true, "reason": …}` answers. It drops repeats of an `X-Chatwoot-Delivery` only
when told to (`dedup=True`), as a bot that de-duplicates would.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

MAX_SKEW = 300  # seconds, as Chatwoot's verifiers (and agentbot's own webhook) allow


@dataclass
class Received:
    """One request whose body the team's bot read."""

    body: bytes
    headers: dict[str, str]
    at: float  # time.monotonic() when the body had arrived
    answer: int | str = 0  # the status it answered, "lost" (connection closed unanswered), "duplicate"

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def delivery(self) -> str:
        return self.headers.get("X-Chatwoot-Delivery", "")


@dataclass
class Fault:
    kind: str  # "slow", "status", "reset", "lost", "answer"
    times: int
    seconds: float = 0.0
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class TeamBot:
    def __init__(self, secret: str | None = None, dedup: bool = False, now=time.time):
        self.secret, self.dedup, self.now = secret, dedup, now  # `now`: its clock, for the timestamp window
        self.received: list[Received] = []
        self.refused: list[tuple[int, str]] = []  # (status, why) of requests it rejected before acting
        self.resets = 0  # connections it closed before reading the body
        self.in_flight = self.most_at_once = 0  # requests being answered now, and at most at once
        self.faults: list[Fault] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ---- faults: each applies to the next `times` requests that reach it, in the order added ----
    def slow(self, seconds: float, times: int = 1) -> None:
        """Answer 200, but only `seconds` after the body arrived (an LLM at work)."""
        self.faults.append(Fault("slow", times, seconds=seconds))

    def fail(self, status: int = 503, times: int = 1, retry_after: str | None = None) -> None:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        self.faults.append(Fault("status", times, status=status, headers=headers, body=b'{"error":"unavailable"}'))

    def reset(self, times: int = 1) -> None:
        """Close the connection before reading the body (the bot's process restarting)."""
        self.faults.append(Fault("reset", times))

    def lose_answer(self, times: int = 1) -> None:
        """Read the body, act on it, and close the connection without an answer (a proxy timing out)."""
        self.faults.append(Fault("lost", times))

    def ask_handoff(self, reason: str | None = None, times: int = 1) -> None:
        body: dict[str, Any] = {"handoff": True} | ({"reason": reason} if reason is not None else {})
        self.answer(json.dumps(body).encode(), times=times)

    def answer(self, body: bytes, status: int = 200, times: int = 1, **headers: str) -> None:
        headers = {"Content-Type": "application/json", **{k.replace("_", "-"): v for k, v in headers.items()}}
        self.faults.append(Fault("answer", times, status=status, body=body, headers=headers))

    # ---- what it saw ----
    @property
    def delivered(self) -> list[Received]:
        """The deliveries it accepted (2xx), repeats included unless it de-duplicates."""
        return [r for r in self.received if isinstance(r.answer, int) and 200 <= r.answer < 300]

    def repeats(self) -> dict[str, int]:
        """X-Chatwoot-Delivery ids whose body arrived more than once, with how often."""
        counts = Counter(r.delivery for r in self.received)
        return {d: n for d, n in counts.items() if n > 1}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/chatwoot-7f3a"

    # ---- the server ----
    async def start(self, port: int = 0) -> TeamBot:
        app = web.Application()
        app.router.add_post("/hooks/chatwoot-7f3a", self._receive)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.2)  # hanging answers end with it
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def close(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    def _next_fault(self) -> Fault | None:
        if not self.faults:
            return None
        fault = self.faults[0]
        fault.times -= 1
        if fault.times <= 0:
            self.faults.pop(0)
        return fault

    async def _receive(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.most_at_once = max(self.most_at_once, self.in_flight)
        try:
            return await self._handle(request)
        finally:
            self.in_flight -= 1

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        fault = self._next_fault()
        if fault and fault.kind == "reset":
            self.resets += 1
            request.transport.close()  # type: ignore[union-attr]
            return web.Response(status=200)  # never written: the connection is gone
        body = await request.read()
        problem = self._problem(request, body)
        if problem:
            self.refused.append(problem)
            return web.json_response({"error": problem[1]}, status=problem[0])
        seen = self.dedup and any(r.delivery == request.headers["X-Chatwoot-Delivery"] for r in self.delivered)
        got = Received(body, dict(request.headers), time.monotonic())
        self.received.append(got)
        if seen:
            got.answer = "duplicate"
            return web.json_response({"ok": True, "duplicate": True})
        return await self._answer(request, got, fault)

    async def _answer(self, request: web.Request, got: Received, fault: Fault | None) -> web.StreamResponse:
        if fault is None:
            got.answer = 200
            return web.json_response({"ok": True})
        if fault.kind == "lost":
            got.answer = "lost"
            request.transport.close()  # type: ignore[union-attr]
            return web.Response(status=200)
        if fault.kind == "slow":
            await asyncio.sleep(fault.seconds)  # the fault itself: the bot takes this long
        got.answer = fault.status
        return web.Response(status=fault.status, body=fault.body or b'{"ok":true}', headers=fault.headers or None)

    def _problem(self, request: web.Request, body: bytes) -> tuple[int, str] | None:
        if request.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            return 415, "Content-Type is not application/json"
        if not request.headers.get("X-Chatwoot-Delivery"):
            return 400, "no X-Chatwoot-Delivery"
        try:
            if not isinstance(json.loads(body), dict):
                return 400, "body is not a JSON object"
        except ValueError:
            return 400, "body is not JSON"
        return self._signature_problem(request.headers, body) if self.secret else None

    def _signature_problem(self, headers: Any, body: bytes) -> tuple[int, str] | None:
        assert self.secret is not None
        timestamp, given = headers.get("X-Chatwoot-Timestamp", ""), headers.get("X-Chatwoot-Signature", "")
        if not timestamp.isdigit() or not given:
            return 401, "missing or malformed X-Chatwoot-Timestamp / X-Chatwoot-Signature"
        if abs(self.now() - int(timestamp)) > MAX_SKEW:
            return 401, "X-Chatwoot-Timestamp outside 5 minutes"
        digest = hmac.new(self.secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(f"sha256={digest}", given):
            return 401, "signature does not match"
        return None
