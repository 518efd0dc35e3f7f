"""The relay workload (issue 23): agentbot in front of the team's own bot (FORWARD_URL), a fast stand-in for it.

Every delivery is a new customer's first message on a pending conversation: no rule fires, so the bot keeps
it and forwards it. Reported: (a) deliveries/s forwarded end to end, wrk offering as fast as the webhook
takes them and the stand-in counting what arrives (over the time from its first to its last arrival); (b) the
webhook's p99 at --rate deliveries/s with relay on against relay off (fresh bots, the same bodies), and
their ratio (goal: within 1.5×), in PAIRS pairs run one after the other, the median pair reported.
"""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from . import payloads

FIRST_ID = 60_000_000  # conversation ids of the latency runs (wrk's start at 1,000,001)
ROOT = Path(__file__).resolve().parents[1]
SECRET = "bench-relay-secret-0123"  # forwards are signed, as a real set-up's are
PAIRS = 3  # relay off, then on: this machine's speed swings from one minute to the next, so one pair is a draw


async def _received(teambot: str, clear: bool = False) -> dict:
    async with aiohttp.ClientSession() as s, s.request("DELETE" if clear else "GET", teambot + "/_received") as r:
        return await r.json()


async def _drained(teambot: str, expected: int, timeout: float = 60) -> dict:
    """The stand-in's count once `expected` forwards arrived and no more come (bounded by `timeout`)."""
    got, deadline = await _received(teambot), time.monotonic() + timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = await _received(teambot)
        if now["count"] >= expected and now["count"] == got["count"]:
            return now
        got = now
    return got


async def _throughput(args, bot: dict, bodies, run_wrk) -> dict:
    await _received(bot["teambot"], clear=True)
    out = run_wrk(bot["url"], "relay", bodies, args.relay, args.connections)
    got = await _drained(bot["teambot"], out["requests"])
    span = got["last"] - got["first"] if got["count"] > 1 else float("nan")
    return {"accepted_per_second": out["per_second"], "accepted": out["requests"], "forwarded": got["count"],
            "forwarded_per_second": got["count"] / span, "busiest_second": got["busiest_second"]}


async def _latency(args, bot: dict, offer) -> dict:
    template = payloads.relay_template()
    ids = range(FIRST_ID, FIRST_ID + args.rate * args.relay)
    plan = [(None, payloads.handoff_body(i, template)) for i in ids]
    if bot["teambot"]:
        await _received(bot["teambot"], clear=True)
    server = bot["server"]
    before, started = server.waited_seconds(), time.perf_counter()
    latencies, _, errors = await offer(bot["url"], plan, args.rate)
    span, after = time.perf_counter() - started, server.waited_seconds()
    # ms per second the bot's threads waited for a core: the machine's share
    waited = None if before is None or after is None else 1000 * (after - before) / span
    forwarded = (await _drained(bot["teambot"], len(plan)))["count"] if bot["teambot"] else None
    latencies.sort()
    return {"deliveries": len(plan), "errors": errors, "forwarded": forwarded,
            "p50_ms": 1000 * latencies[len(latencies) // 2], "p99_ms": 1000 * latencies[int(0.99 * len(latencies))],
            "waited_ms_per_s": waited}


async def _with_bot(args, standin, workdir, server_cls, teambot: str | None, work):
    """A fresh bot, forwarding to `teambot` (None: relay off), doing `work(bot)`."""
    env = {"FORWARD_URL": teambot + "/hook", "FORWARD_SECRET": SECRET} if teambot else {}
    server = server_cls("bot", "relay" if teambot else "relay-off", standin, args.store, workdir, env=env)
    try:
        await server.ready()
        return await work({"url": server.url, "teambot": teambot, "server": server})
    finally:
        server.stop()


async def run(args, standin: str, workdir, server_cls, free_port, run_wrk, offer) -> dict:
    port = free_port()
    teambot = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "bench.teambot", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bodies = workdir / "relay.jsonl"
    bodies.write_text(payloads.relay_template() + "\n")
    try:
        for _ in range(600):
            try:
                await _received(teambot)
                break
            except aiohttp.ClientError:
                await asyncio.sleep(0.01)
        throughput = await _with_bot(args, standin, workdir, server_cls, teambot,
                                     lambda bot: _throughput(args, bot, bodies, run_wrk))
        pairs = []
        for _ in range(PAIRS):
            off = await _with_bot(args, standin, workdir, server_cls, None, lambda bot: _latency(args, bot, offer))
            on = await _with_bot(args, standin, workdir, server_cls, teambot, lambda bot: _latency(args, bot, offer))
            pairs.append({"relay_off": off, "relay_on": on, "p99_on_over_off": on["p99_ms"] / off["p99_ms"]})
    finally:
        proc.terminate()
        proc.wait(10)
    median = sorted(pairs, key=lambda pair: pair["p99_on_over_off"])[len(pairs) // 2]
    return {"seconds": args.relay, "rate": args.rate, "throughput": throughput, **median, "pairs": pairs}


def table(out: dict) -> str:
    t, off, on = out["throughput"], out["relay_off"], out["relay_on"]
    rows = [
        ("deliveries/s the webhook accepted (wrk, new customers)", f"{t['accepted_per_second']:,.1f}"),
        ("deliveries/s forwarded end to end (at the team's bot)", f"{t['forwarded_per_second']:,.1f}"),
        ("forwarded / accepted (wrk leaves out the requests still open when it stops)",
         f"{t['forwarded']:,} / {t['accepted']:,}"),
        (f"webhook p99 ms at {out['rate']}/s, relay off (the median pair)", f"{off['p99_ms']:,.1f}"),
        (f"webhook p99 ms at {out['rate']}/s, relay on (the median pair)", f"{on['p99_ms']:,.1f}"),
        ("relay on / off (goal ≤ 1.5), the median pair", f"{out['p99_on_over_off']:.2f}"),
        ("relay on / off, each pair in the order run", ", ".join(f"{p['p99_on_over_off']:.2f}" for p in out["pairs"])),
        ("forwarded at that rate / offered", f"{on['forwarded']:,} / {on['deliveries']:,}"),
        ("the bot's threads waiting for a core, ms per s, off / on, each pair (the machine's share of the spread)",
         ", ".join(f"{_ms(p['relay_off'])} / {_ms(p['relay_on'])}" for p in out["pairs"])),
    ]
    return "\n".join(["| relay figure | bot |", "|---|---:|"] + [f"| {a} | {b} |" for a, b in rows])


def _ms(run: dict) -> str:
    waited = run.get("waited_ms_per_s")
    return "?" if waited is None else f"{waited:.0f}"
