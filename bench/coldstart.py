"""`python -m bench.coldstart`: the cold start alone, spawn → first /healthz 200, as `python -m bench` measures it.

The bot and the ceiling take turns (bot, ceiling, bot, …) in the same minutes, each a fresh process with the
same environment as the full benchmark's (the same `Server`); prints each sample and the medians.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp

from .__main__ import ROOT, Server, compiled, free_port


async def sample(target: str, standin: str, store: str, workdir: Path) -> float:
    server = Server(target, "ignore", standin, store, workdir)
    try:
        return await server.ready() * 1000
    finally:
        server.stop()


async def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.coldstart")
    p.add_argument("--samples", type=int, default=9, help="fresh starts per target (default: %(default)s)")
    p.add_argument("--targets", default="bot,ceiling")
    p.add_argument("--store", default="sqlite", help="sqlite (default) or a redis://… URL for the bot")
    args = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="agentbot-cold-"))
    compiled()
    port = free_port()
    standin = subprocess.Popen([sys.executable, "-m", "bench.standin", "--port", str(port)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    targets = args.targets.split(",")
    samples: dict[str, list[float]] = {t: [] for t in targets}
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(600):
                try:
                    async with s.get(url + "/healthz"):
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.01)
        for i in range(args.samples):
            for target in targets:
                samples[target].append(await sample(target, url, args.store, workdir))
            print(f"  {i + 1}: " + "  ".join(f"{t} {samples[t][-1]:.0f} ms" for t in targets), flush=True)
    finally:
        standin.terminate()
        standin.wait(10)
    medians = {t: round(statistics.median(v), 1) for t, v in samples.items()}
    print(json.dumps({"cold_start_ms_median": medians, "samples": {t: [round(x) for x in v] for t, v in samples.items()}}))


if __name__ == "__main__":
    asyncio.run(main())
