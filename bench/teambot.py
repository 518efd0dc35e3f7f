"""A fast stand-in for the team's own bot behind agentbot (FORWARD_URL): answers every POST 200 at once and
counts what arrived, per second (`GET /_received`: the count, first and last arrival, busiest second;
`DELETE /_received` starts the count afresh)."""
from __future__ import annotations

import argparse
import time
from collections import Counter

from aiohttp import web


def build() -> web.Application:
    seconds: Counter = Counter()  # int(time.monotonic()) → forwards that arrived in that second
    span: list[float] = []  # first and last arrival

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        now = time.monotonic()
        seconds[int(now)] += 1
        span[:] = [span[0] if span else now, now]
        return web.Response()

    async def received(request: web.Request) -> web.Response:
        out = {"count": sum(seconds.values()), "first": span[0] if span else None, "last": span[-1] if span else None,
               "busiest_second": max(seconds.values(), default=0)}
        return web.json_response(out)

    async def clear(request: web.Request) -> web.Response:
        seconds.clear()
        span.clear()
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/_received", received)
    app.router.add_delete("/_received", clear)
    app.router.add_get("/healthz", lambda r: web.json_response({"status": "ok"}))
    return app


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    web.run_app(build(), host="127.0.0.1", port=p.parse_args().port, access_log=None, print=None)
