"""`python -m bench`: the bot, the ceiling and the usual way, measured in one run on loopback.

For each target and workload a fresh server process is started next to a fast Chatwoot stand-in.
Throughput (ignore and handoff paths) is driven by wrk (closed loop, C, one thread); latency under
a fixed offered rate (mixed, and handoff latency) by an open-loop asyncio generator in this process.
"""
from __future__ import annotations

import argparse
import asyncio
import compileall
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from . import burst, payloads, relay, sweep

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("bot", "ceiling", "usual")
WORKLOADS = ("ignore", "handoff", "mixed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compiled() -> None:
    """The bot's bytecode written before its cold starts are timed, as every deployment has it (`pip install` writes
    it); with PYTHONDONTWRITEBYTECODE set, each start would otherwise compile every agentbot module again."""
    compileall.compile_dir(ROOT / "agentbot", quiet=1)
    compileall.compile_dir(ROOT / "bench", quiet=1)  # the ceiling's and usual's modules, alike


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100 * len(values)))]


class Server:
    """One target process; CPU time and peak RSS are read from /proc (gunicorn: master + workers)."""

    def __init__(self, target: str, workload: str, standin: str, store: str, workdir: Path, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "CHATWOOT_URL": standin, "CHATWOOT_BOT_TOKEN": "bench-token", "PORT": str(self.port),
               "WORKLOAD": workload, "PYTHONPATH": str(ROOT), "SWEEP_INTERVAL": "0", **(env or {})}
        if target == "bot":
            env["STORE_URL"] = store if store.startswith("redis") else f"sqlite:///{workdir}/bot-{self.port}.sqlite3"
            if workload == "handoff":
                env["HANDOFF_NOTE"] = "false"  # the references make the same one call
            cmd = [sys.executable, "-m", "agentbot"]
        elif target == "ceiling":
            cmd = [sys.executable, "-m", "bench.ceiling", "--port", str(self.port)]
        else:
            cmd = [str(Path(sys.executable).with_name("gunicorn")), "-w", "2", "-b", f"127.0.0.1:{self.port}", "--log-level",
                   "warning", "bench.usual:app"]
        self.log = open(workdir / f"{target}-{workload}.log", "ab")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=self.log, stderr=self.log)

    async def ready(self) -> float:
        """Seconds from spawn to the first 200 on /healthz."""
        async with aiohttp.ClientSession() as s:
            while True:
                try:
                    async with s.get(self.url + "/healthz") as r:
                        if r.status == 200:
                            return time.perf_counter() - self.started
                except aiohttp.ClientError:
                    pass
                if self.proc.poll() is not None or time.perf_counter() - self.started > 30:
                    raise RuntimeError(f"{self.proc.args} did not start; see {self.log.name}")
                await asyncio.sleep(0.005)

    def pids(self) -> list[int]:
        pids = [self.proc.pid]
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            pids += [int(c) for c in children]
        except OSError:
            pass
        return pids

    def cpu_seconds(self) -> float:
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except OSError:
                pass
        return total / os.sysconf("SC_CLK_TCK")

    def waited_seconds(self) -> float | None:
        """Seconds the process's threads were ready to run but waited for a core (the kernel's schedstat); None
        where the kernel does not say."""
        total = 0
        for pid in self.pids():
            try:
                for task in Path(f"/proc/{pid}/task").iterdir():
                    total += int((task / "schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                return None
        return total / 1e9

    def peak_rss_mb(self) -> float:
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total / 1024

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def run_wrk(url: str, workload: str, bodies_file: Path, seconds: int, connections: int) -> dict:
    env = {**os.environ, "WORKLOAD": workload, "BODIES": str(bodies_file)}
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(ROOT / "bench" / "load.lua"),
                          url + "/webhook"], env=env, capture_output=True, text=True, check=True).stdout
    data = json.loads(next(line for line in reversed(out.splitlines()) if line.startswith("{")))
    data["per_second"] = data["requests"] / data["seconds"]
    return data


async def records(standin: str) -> dict[int, float]:
    async with aiohttp.ClientSession() as s, s.get(standin + "/_records") as r:
        return {int(k): v for k, v in (await r.json()).items()}


async def wait_arrivals(standin: str, wanted: set[int], timeout: float = 30) -> dict[int, float]:
    got: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while not wanted <= set(got) and time.monotonic() < deadline:
        got.update(await records(standin))
        await asyncio.sleep(0.05)
    return got


async def offer(url: str, plan: list[tuple[int | None, bytes]], rate: int) -> tuple[list[float], dict[int, float], int]:
    """POST the plan's bodies at `rate` per second whatever the answers: (webhook latencies, when each
    conversation's delivery went, errors)."""
    latencies: list[float] = []
    sent: dict[int, float] = {}
    errors = 0
    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def send(conv: int | None, body: bytes) -> None:
            nonlocal errors
            start = time.monotonic()
            if conv is not None:
                sent[conv] = start
            try:
                async with session.post(url + "/webhook", data=body, headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    errors += r.status != 200
            except aiohttp.ClientError:
                errors += 1
            latencies.append(time.monotonic() - start)

        tasks = []
        t0 = time.monotonic()
        for i, (conv, body) in enumerate(plan):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(conv, body)))
        await asyncio.gather(*tasks)
    return latencies, sent, errors


async def open_loop(url: str, standin: str, rate: int, seconds: float, handoff_share: float, first_id: int) -> dict:
    """Offer `rate` deliveries per second whatever the answers; measure webhook and handoff latency."""
    ignore = [b.encode() for b in payloads.ignore_bodies()]
    template = payloads.handoff_template()
    rng = random.Random(7)
    plan: list[tuple[int | None, bytes]] = []
    for i in range(int(rate * seconds)):
        if rng.random() < handoff_share:
            plan.append((first_id + i, payloads.handoff_body(first_id + i, template)))
        else:
            plan.append((None, ignore[i % len(ignore)]))
    await records(standin)  # clear
    latencies, sent, errors = await offer(url, plan, rate)
    arrivals = await wait_arrivals(standin, set(sent))
    handoff = [arrivals[c] - t for c, t in sent.items() if c in arrivals]
    ms = lambda v: v * 1000  # noqa: E731
    return {"offered_per_second": rate, "deliveries": len(plan), "errors": errors,
            "p50_ms": ms(pct(latencies, 50)), "p99_ms": ms(pct(latencies, 99)), "max_ms": ms(max(latencies)),
            "handoffs": len(sent), "handoffs_arrived": len(handoff),
            "handoff_p50_ms": ms(pct(handoff, 50)) if handoff else None,
            "handoff_p99_ms": ms(pct(handoff, 99)) if handoff else None}


async def measure(target: str, workload: str, args, standin: str, workdir: Path, files: dict[str, Path]) -> dict:
    """One fresh server of `target`, one workload; figures plus its cold start and peak RSS."""
    server = Server(target, workload, standin, args.store, workdir)
    try:
        result = {"cold_start_ms": await server.ready() * 1000}
        cpu0, t0 = server.cpu_seconds(), time.monotonic()
        if workload == "mixed":
            result |= await open_loop(server.url, standin, args.rate, args.seconds, 0.10, 50_000_000)
        else:
            await records(standin)
            result |= run_wrk(server.url, workload, files[workload], args.seconds, args.connections)
            if workload == "handoff":
                expected = result["requests"]
                done_at = time.monotonic()
                got = await wait_arrivals(standin, set(), timeout=0)
                while len(got) < expected and time.monotonic() - done_at < 60:
                    await asyncio.sleep(0.1)
                    got.update(await records(standin))
                result["handoffs_done"] = len(got)
                result["handoffs_per_second"] = len(got) / (result["seconds"] + time.monotonic() - done_at)
                latency = await open_loop(server.url, standin, args.rate, min(args.seconds, 5), 1.0, 80_000_000)
                result["handoff_p50_ms"], result["handoff_p99_ms"] = latency["handoff_p50_ms"], latency["handoff_p99_ms"]
        result["server_cpu_percent"] = 100 * (server.cpu_seconds() - cpu0) / (time.monotonic() - t0)
        result["peak_rss_mb"] = server.peak_rss_mb()
    finally:
        server.stop()
    print(f"  {target:8} {workload:8} {json.dumps(result)}", flush=True)
    return result


def median_of(runs: list[dict]) -> dict:
    """Each figure's median over the rounds (peak RSS: the highest)."""
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
    out = {k: statistics.median(r[k] for r in runs if r.get(k) is not None) for k in keys}
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    return out


ROWS = [
    ("ignore", "per_second", "ignore path: deliveries/s"),
    ("ignore", "p50_ms", "ignore path: webhook p50 ms (saturated)"),
    ("ignore", "p99_ms", "ignore path: webhook p99 ms (saturated)"),
    ("handoff", "per_second", "handoff path: deliveries/s"),
    ("handoff", "handoffs_per_second", "handoff path: toggle_status calls done/s"),
    ("handoff", "p99_ms", "handoff path: webhook p99 ms (saturated)"),
    ("handoff", "handoff_p50_ms", "handoff at {rate}/s: delivery → toggle_status p50 ms"),
    ("handoff", "handoff_p99_ms", "handoff at {rate}/s: delivery → toggle_status p99 ms"),
    ("mixed", "p50_ms", "mixed at {rate}/s: webhook p50 ms"),
    ("mixed", "p99_ms", "mixed at {rate}/s: webhook p99 ms"),
    ("mixed", "max_ms", "mixed at {rate}/s: webhook max ms"),
    ("mixed", "handoff_p50_ms", "mixed at {rate}/s: delivery → toggle_status p50 ms"),
    ("mixed", "handoff_p99_ms", "mixed at {rate}/s: delivery → toggle_status p99 ms"),
    (None, "peak_rss_mb", "peak RSS MB (usual: 2 workers + master)"),
    (None, "cold_start_ms", "cold start to first /healthz 200, ms"),
]


def table(results: dict, rate: int) -> str:
    lines = ["| figure | bot | ceiling | usual | bot/ceiling | bot/usual |", "|---|---:|---:|---:|---:|---:|"]
    for workload, key, label in ROWS:
        vals = [(results[t][workload] if workload else results[t]).get(key) for t in TARGETS]
        cells = [f"{v:,.1f}" if isinstance(v, (int, float)) else "–" for v in vals]
        ratios = [f"{vals[0] / v:.2f}" if isinstance(vals[0], (int, float)) and isinstance(v, (int, float)) and v else "–"
                  for v in vals[1:]]
        lines.append(f"| {label.format(rate=rate)} | " + " | ".join(cells + ratios) + " |")
    return "\n".join(lines)


async def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("--store", default="sqlite", help="sqlite (default) or a redis://… URL for the bot")
    p.add_argument("--seconds", type=int, default=6, help="seconds per throughput run and per mixed run")
    p.add_argument("--rounds", type=int, default=3, help="rounds; each figure is the median over them (0: only the sweep, burst and relay workloads)")
    p.add_argument("--rate", type=int, default=500, help="offered deliveries/s for the latency runs")
    p.add_argument("--connections", type=int, default=32, help="wrk connections")
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--sweep", type=int, default=10_000, help="pending conversations for the sweep workload (0: skip it)")
    p.add_argument("--sweep-sample", type=float, default=20, help="seconds the default-rate sweep is sampled")
    p.add_argument("--burst", type=int, default=1000, help="returning customers for the burst workload (0: skip it)")
    p.add_argument("--burst-limit", type=int, default=200, help="the stand-in's calls per window (Chatwoot: 3000)")
    p.add_argument("--burst-window", type=float, default=2.0, help="the stand-in's window, seconds (Chatwoot: 60)")
    p.add_argument("--relay", type=int, default=10, help="seconds per run of the relay workload (0: skip it)")
    args = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="agentbot-bench-"))
    compiled()
    files = {"ignore": workdir / "ignore.jsonl", "handoff": workdir / "handoff.jsonl"}
    files["ignore"].write_text("\n".join(payloads.ignore_bodies()) + "\n")
    files["handoff"].write_text(payloads.handoff_template() + "\n")
    port = free_port()
    standin = subprocess.Popen([sys.executable, "-m", "bench.standin", "--port", str(port)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    standin_url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(600):
                try:
                    async with s.get(standin_url + "/healthz"):
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.01)
        # Targets take turns within each round, so drift on this shared machine hits them alike;
        # each figure is the median over the rounds.
        targets = args.targets.split(",")
        runs: dict[str, dict[str, list[dict]]] = {t: {w: [] for w in WORKLOADS} for t in targets}
        for round_ in range(1, args.rounds + 1):
            print(f"round {round_} of {args.rounds}", flush=True)
            for workload in WORKLOADS:
                for target in targets:
                    runs[target][workload].append(await measure(target, workload, args, standin_url, workdir, files))
        sweep_figures = None
        if args.sweep and "bot" in targets:
            print(f"sweep workload: {args.sweep} pending conversations", flush=True)
            sweep_figures = await sweep.run(args, standin_url, workdir, Server, open_loop)
            print(f"  {json.dumps(sweep_figures)}", flush=True)
        burst_figures = None
        if args.burst and "bot" in targets:
            print(f"burst workload: {args.burst} returning customers, {args.burst_limit} calls per {args.burst_window} s",
                  flush=True)
            burst_figures = await burst.run(args, standin_url, workdir, Server)
            print(f"  {json.dumps(burst_figures)}", flush=True)
        relay_figures = None
        if args.relay and "bot" in targets:
            print(f"relay workload: {args.relay} s per run, forwarding to a fast stand-in team bot", flush=True)
            relay_figures = await relay.run(args, standin_url, workdir, Server, free_port, run_wrk, offer)
            print(f"  {json.dumps(relay_figures)}", flush=True)
        results = {}
        for target in targets if args.rounds else ():
            results[target] = {w: median_of(runs[target][w]) for w in WORKLOADS}
            results[target]["peak_rss_mb"] = max(results[target][w]["peak_rss_mb"] for w in WORKLOADS)
            results[target]["cold_start_ms"] = statistics.median(r["cold_start_ms"] for w in WORKLOADS for r in runs[target][w])
    finally:
        standin.terminate()
        standin.wait(10)
    report = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": f"{os.cpu_count()} cores, {sys.platform}",
              "python": sys.version.split()[0], "store": args.store, "seconds": args.seconds, "rate": args.rate,
              "connections": args.connections, "rounds": args.rounds, "results": results}
    if set(TARGETS) <= set(results):
        report["table"] = table(results, args.rate)
        print("\n" + report["table"])
    if sweep_figures:
        report["sweep"] = sweep_figures
        report["sweep_table"] = sweep.table(sweep_figures, args.rate)
        print("\n" + report["sweep_table"])
    if burst_figures:
        report["burst"] = burst_figures
        report["burst_table"] = burst.table(burst_figures)
        print("\n" + report["burst_table"])
    if relay_figures:
        report["relay"] = relay_figures
        report["relay_table"] = relay.table(relay_figures)
        print("\n" + report["relay_table"])
    (ROOT / "bench" / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to bench/results.json (logs in {workdir})")


if __name__ == "__main__":
    asyncio.run(main())
