"""The sweep workload: N pending conversations in the stand-in (a fifth of them returning customers).

Measures the time to sweep them at an unlimited rate, the Chatwoot calls the sweep makes per
conversation, the time at the default SWEEP_RATE (the rate measured over a sample, the total
extrapolated from the calls), and the webhook's p99 at the offered rate with and without a sweep
running in the same process.
"""
from __future__ import annotations

import asyncio
import re
import time

import aiohttp

DEFAULT_RATE = 5  # SWEEP_RATE's default
READS = ("conversations", "contact_conversations", "messages_index")


async def _post(url: str) -> None:
    async with aiohttp.ClientSession() as s, s.post(url) as r:
        r.raise_for_status()


async def _json(url: str) -> dict:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return await r.json()


async def _metric(url: str, name: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        text = await r.text()
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def _env(rate: float | None, lookups: bool = True) -> dict[str, str]:
    env = {"CHATWOOT_API_TOKEN": "bench-user-token", "CHATWOOT_ACCOUNT_ID": "1", "INBOX_IDS": "3"}
    if not lookups:  # nothing to wait for: the sweep decides as fast as the process lets it
        env["HANDOFF_RETURNING"] = "false"
    env["SWEEP_INTERVAL"] = "0" if rate is None else "86400"  # with a rate: the start-up sweep only
    if rate is not None:
        env["SWEEP_RATE"] = str(rate)
    return env


async def _reads(standin: str) -> int:
    calls = await _json(standin + "/_calls")
    return sum(calls.get(k, 0) for k in READS)


async def run(args, standin: str, workdir, server_cls, open_loop) -> dict:
    n = args.sweep
    out: dict = {"conversations": n, "to_open": n // 5}

    # Time to sweep at an unlimited rate, and the calls it makes.
    await _post(f"{standin}/_pending?n={n}&share=0.2")
    server = server_cls("bot", "sweep", standin, args.store, workdir, env=_env(0))
    try:
        await server.ready()
        done, failed = 'agentbot_sweeps_total{outcome="done"}', 'agentbot_sweeps_total{outcome="failed"}'
        deadline = time.monotonic() + 1800
        while await _metric(server.url, done) < 1:
            if await _metric(server.url, failed) or time.monotonic() > deadline:
                raise RuntimeError(f"the sweep failed or did not finish; see {server.log.name}")
            await asyncio.sleep(0.2)
        out["unlimited_seconds"] = await _metric(server.url, "agentbot_sweep_seconds_sum")
        out["opened"] = await _metric(server.url, 'agentbot_sweep_conversations_total{outcome="opened"}')
    finally:
        server.stop()
    reads = await _reads(standin)
    out["reads_per_conversation"] = reads / n if n else 0.0
    out["conversations_per_second_unlimited"] = n / out["unlimited_seconds"] if out["unlimited_seconds"] else 0.0

    # At the default rate: the rate measured over a sample, the whole sweep extrapolated from the calls.
    await _post(f"{standin}/_pending?n={n}&share=0.2")
    server = server_cls("bot", "sweep", standin, args.store, workdir, env=_env(DEFAULT_RATE))
    try:
        await server.ready()
        before, t0 = await _reads(standin), time.monotonic()
        await asyncio.sleep(args.sweep_sample)
        measured = (await _reads(standin) - before) / (time.monotonic() - t0)
    finally:
        server.stop()
    out["default_rate_calls_per_second"] = measured
    out["default_rate_seconds"] = reads / measured if measured else None

    # The webhook's p99 at the offered rate: without a sweep, during an unlimited one (paced by its contact
    # look-ups: the first sweep of new customers), during an unlimited one with nothing to wait for (a repeat
    # sweep, or returning customers off: it decides as fast as the process lets it), during a default one.
    phases = (
        ("without", None, True),
        ("during_unlimited", 0, True),
        ("during_unlimited_no_lookups", 0, False),
        ("during_default", DEFAULT_RATE, True),
    )
    for label, rate, lookups in phases:
        await _post(f"{standin}/_pending?n={n}&share=0.2")
        server = server_cls("bot", "mixed", standin, args.store, workdir, env=_env(rate, lookups))
        try:
            await server.ready()
            result = await open_loop(server.url, standin, args.rate, args.seconds, 0.10, 90_000_000)
            out[f"webhook_p99_ms_{label}"] = result["p99_ms"]
            if rate is not None:  # did the sweep run for the whole measurement?
                out[f"sweep_still_running_{label}"] = await _metric(server.url, 'agentbot_sweeps_total{outcome="done"}') == 0
        finally:
            server.stop()
    base = out["webhook_p99_ms_without"]
    out["p99_ratio_unlimited"] = out["webhook_p99_ms_during_unlimited"] / base if base else None
    out["p99_ratio_default"] = out["webhook_p99_ms_during_default"] / base if base else None
    out["p99_ratio_unlimited_no_lookups"] = out["webhook_p99_ms_during_unlimited_no_lookups"] / base if base else None
    return out


def table(out: dict, rate: int) -> str:
    minutes = (out["default_rate_seconds"] or 0) / 60
    rows = [
        ("pending conversations (a fifth to open)", f"{out['conversations']:,}"),
        ("opened by the sweep", f"{out['opened']:,.0f}"),
        ("time to sweep, unlimited rate, s", f"{out['unlimited_seconds']:,.1f}"),
        ("time to sweep at SWEEP_RATE=5, min (extrapolated)", f"{minutes:,.1f}"),
        ("Chatwoot reads per conversation (list, contact look-up)", f"{out['reads_per_conversation']:.2f}"),
        (f"webhook p99 ms at {rate}/s, no sweep", f"{out['webhook_p99_ms_without']:.1f}"),
        (f"webhook p99 ms at {rate}/s, during an unlimited sweep", f"{out['webhook_p99_ms_during_unlimited']:.1f}"),
        (
            f"webhook p99 ms at {rate}/s, during an unlimited sweep with no look-ups to wait for",
            f"{out['webhook_p99_ms_during_unlimited_no_lookups']:.1f}",
        ),
        (f"webhook p99 ms at {rate}/s, during a SWEEP_RATE=5 sweep", f"{out['webhook_p99_ms_during_default']:.1f}"),
    ]
    return "\n".join(["| sweep figure | bot |", "|---|---:|"] + [f"| {a} | {b} |" for a, b in rows])
