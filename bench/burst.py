"""The burst workload: returning customers arrive at once while the stand-in enforces Chatwoot's request limit.

The stand-in refuses calls beyond a fixed-window limit as Rack::Attack does (plain-text 429, no Retry-After),
scaled down from Chatwoot's 3000 a minute to keep the run short. N returning customers write within two
seconds (each handoff: a private note and the open, plus a read of the conversation for a job that starts
late). Reported: the time from the first delivery until every conversation is open, against the ideal (the
calls Chatwoot carried out ÷ its limit), and the 429s against those calls.
"""
from __future__ import annotations

import asyncio
import time

import aiohttp

from . import payloads

FIRST_ID = 70_000_000  # conversation ids of this workload (the others use other ranges)
ARRIVAL_SECONDS = 2.0


async def _post(url: str) -> None:
    async with aiohttp.ClientSession() as s, s.post(url) as r:
        r.raise_for_status()


async def _json(url: str) -> dict:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return await r.json()


async def _arrive(url: str, n: int) -> tuple[float, int]:
    """N deliveries spread evenly over ARRIVAL_SECONDS; (when the first went, how many were not answered 200)."""
    template = payloads.handoff_template()
    bad = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:

        async def send(i: int) -> None:
            nonlocal bad
            body = payloads.handoff_body(FIRST_ID + i, template)
            async with session.post(url + "/webhook", data=body, headers={"Content-Type": "application/json"}) as r:
                await r.read()
                bad += r.status != 200

        t0 = time.monotonic()
        tasks = []
        for i in range(n):
            delay = t0 + i * ARRIVAL_SECONDS / n - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(i)))
        await asyncio.gather(*tasks)
    return t0, bad


async def run(args, standin: str, workdir, server_cls) -> dict:
    n, per, window = args.burst, args.burst_limit, args.burst_window
    await _post(f"{standin}/_limit?per={per}&window={window}")
    server = server_cls("bot", "burst", standin, args.store, workdir)
    try:
        await server.ready()
        await _post(f"{standin}/_limit?per={per}&window={window}")  # count from here: the start-up's calls aside
        t0, bad = await _arrive(server.url, n)
        arrived: dict[str, float] = {}
        deadline = time.monotonic() + max(120.0, 10 * n / (per / window))
        while len(arrived) < n and time.monotonic() < deadline:
            async with aiohttp.ClientSession() as s, s.get(standin + "/_records") as r:
                arrived.update(await r.json())
            await asyncio.sleep(0.1)
        calls = await _json(standin + "/_calls")
    finally:
        server.stop()
        await _post(f"{standin}/_limit?per=0")
    refused = calls.pop("refused", 0)
    done = sum(v for k, v in calls.items() if k != "pending")
    drain = max(arrived.values()) - t0 if arrived else float("nan")
    ideal = done / (per / window)
    return {
        "customers": n, "limit_per_window": per, "window_seconds": window, "opened": len(arrived),
        "deliveries_not_200": bad, "calls_done": done, "calls_by_endpoint": calls, "refused_429": refused,
        "drain_seconds": drain, "ideal_seconds": ideal, "drain_over_ideal": drain / ideal if ideal else None,
        "refused_share": refused / done if done else None,
    }


def table(out: dict) -> str:
    rate = out["limit_per_window"] / out["window_seconds"]
    rows = [
        ("returning customers arriving within 2 s", f"{out['customers']:,}"),
        ("Chatwoot's limit (stand-in)", f"{out['limit_per_window']} calls per {out['window_seconds']:g} s window ({rate:g}/s)"),
        ("conversations opened", f"{out['opened']:,}"),
        ("calls Chatwoot carried out (needed)", f"{out['calls_done']:,}"),
        ("time to drain, s", f"{out['drain_seconds']:.1f}"),
        ("ideal (needed ÷ limit), s", f"{out['ideal_seconds']:.1f}"),
        ("drain / ideal (goal ≤ 1.3)", f"{out['drain_over_ideal']:.2f}"),
        ("429s", f"{out['refused_429']:,}"),
        ("429s / calls needed (goal < 10 %)", f"{100 * out['refused_share']:.1f} %"),
    ]
    return "\n".join(["| burst figure | bot |", "|---|---:|"] + [f"| {a} | {b} |" for a, b in rows])
