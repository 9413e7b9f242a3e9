"""Latency the router adds in front of an OpenAI-compatible engine.

What is measured: the fake engine (``create_fake_openai_app``, an instant canned answer)
is served over loopback HTTP, and called two ways with the same chat request:

- direct: client -> fake engine;
- router: client -> router (route ``chat``, champion = ``OpenAISpec`` pointing at the
  fake engine) -> fake engine. Assignment, validation, Prometheus metrics and the
  SQLite inference log (batched background writer) all run, as in production.

How: three processes (client, router, fake engine), so none shares a GIL with another;
uvicorn runs as ``canary serve`` runs it. The client is one pooled keep-alive
``httpx.AsyncClient`` on uvloop. After a warm-up, a sequential phase alternates direct
and router requests one at a time (so drift hits both alike); then a phase at
concurrency C runs C workers sending back to back, in rounds that alternate the targets.
Latency is wall time per request in the client; requests/s is completed requests over
the phase's wall time (sequential: one over the mean latency). The added latency is
router minus direct (p50 and p99) and their ratio; the router's CPU time per request
(its process, all threads, from /proc) is a figure that load on the machine moves less.

With ``--keys`` a second router runs beside the first in ``keys`` mode (every request
carries an API key; the key's requests-per-minute limit is checked on each; with
``--redis URL`` its counters live in Redis), as target ``keys``: the cost of
authentication and rate limiting, measured in the same run.

Finally each router is shut down gracefully (SIGTERM) and the rows in its SQLite
``inference_log`` are counted: every request sent through it must be there.

Run ``.venv/bin/python benchmarks/overhead.py`` (``--quick`` for a short run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sqlite3
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import orjson
from serving import ServerProcess

from router.app import create_app
from router.backends import FakeSpec, OpenAISpec
from router.backends.fake_server import create_fake_openai_app
from router.config import RouteConfig, Settings

ROUTE = "chat"
MESSAGES = [{"role": "user", "content": "Say hello in five words."}]
# Targets from LiteLLM's published proxy overhead (~5.5 ms sequential, ~44 ms loaded).
TARGET_P50_MS = {"sequential": 1.5, "concurrent": 10.0}


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request goes, and the body it sends there."""

    name: str
    url: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Sample:
    """Latencies (ms) of one phase against one target, and the phase's wall time (s)."""

    latencies_ms: list[float]
    wall_s: float

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.wall_s

    @staticmethod
    def merge(samples: list[Sample]) -> Sample:
        return Sample(
            [ms for s in samples for ms in s.latencies_ms], sum(s.wall_s for s in samples)
        )


@dataclass(slots=True)
class Results:
    """Samples by phase (``sequential``, ``concurrent``) and target, and each router's CPU
    seconds by phase and target."""

    phases: dict[str, dict[str, Sample]] = field(default_factory=dict)
    router_cpu_s: dict[str, dict[str, float | None]] = field(default_factory=dict)


# -- servers -----------------------------------------------------------------------------
def build_fake() -> Any:
    return create_fake_openai_app(FakeSpec(name="fake", mode="canned"))


ADMIN_TOKEN = "benchmark-admin-token"


def router_settings(data_dir: Path, upstream_url: str, **auth: Any) -> Settings:
    champion = OpenAISpec(
        name="upstream", version="1", base_url=f"{upstream_url}/v1", remote_model="fake"
    )
    return Settings(
        data_dir=data_dir,
        routes={ROUTE: RouteConfig(champion=champion, challenger=None)},
        log_format="text",
        log_level="WARNING",
        admin_token=ADMIN_TOKEN,
        **auth,
    )


def make_key(router_url: str) -> str:
    """A key with a limit the benchmark never reaches, so every request is checked."""
    response = httpx.post(
        f"{router_url}/v1/keys",
        json={"name": "benchmark", "rpm": 10_000_000},
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    response.raise_for_status()
    return str(response.json()["key"])


def count_logged(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM inference_log").fetchone()[0])


# -- load ----------------------------------------------------------------------------------
def make_target(name: str, base_url: str, model: str, key: str | None = None) -> Target:
    body = orjson.dumps({"model": model, "messages": MESSAGES, "max_tokens": 16})
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return Target(name, f"{base_url}/v1/chat/completions", body, headers)


async def timed_post(client: httpx.AsyncClient, target: Target) -> float:
    """One request; its latency in ms. Anything but 200 aborts the benchmark."""
    start = time.perf_counter()
    response = await client.post(target.url, content=target.body, headers=target.headers)
    elapsed = (time.perf_counter() - start) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{target.name}: HTTP {response.status_code}: {response.text[:200]}")
    return elapsed


async def sequential(client: httpx.AsyncClient, targets: list[Target], n: int) -> dict[str, Sample]:
    """``n`` requests to each target, one at a time, alternating targets."""
    latencies: dict[str, list[float]] = {t.name: [] for t in targets}
    for _ in range(n):
        for target in targets:
            latencies[target.name].append(await timed_post(client, target))
    return {name: Sample(ms, sum(ms) / 1000) for name, ms in latencies.items()}


async def concurrent(client: httpx.AsyncClient, target: Target, n: int, concurrency: int) -> Sample:
    """``n`` requests from ``concurrency`` workers, each sending back to back."""
    latencies: list[float] = []
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            latencies.append(await timed_post(client, target))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Sample(latencies, time.perf_counter() - start)


Cpu = dict[str, Callable[[], float | None]]


def _cpu_now(router_cpu: Cpu) -> dict[str, float | None]:
    return {name: cpu() for name, cpu in router_cpu.items()}


def _cpu_spent(
    before: dict[str, float | None], after: dict[str, float | None]
) -> dict[str, float | None]:
    return {name: _spent(before[name], after[name]) for name in before}


async def measure(targets: list[Target], args: argparse.Namespace, router_cpu: Cpu) -> Results:
    """Warm up, then the sequential and the concurrent phase; results by phase and target."""
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=64)
    results = Results()
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
        await sequential(client, targets, args.warmup)
        cpu_before = _cpu_now(router_cpu)
        results.phases["sequential"] = await sequential(client, targets, args.sequential)
        results.router_cpu_s["sequential"] = _cpu_spent(cpu_before, _cpu_now(router_cpu))
        for target in targets:
            await concurrent(client, target, args.warmup, args.concurrency)
        # Alternating rounds, so drift on a shared machine falls on both targets alike.
        rounds: dict[str, list[Sample]] = {t.name: [] for t in targets}
        cpu_before = _cpu_now(router_cpu)
        for i in range(args.rounds):
            n = args.concurrent // args.rounds + (i < args.concurrent % args.rounds)
            for target in targets:
                rounds[target.name].append(await concurrent(client, target, n, args.concurrency))
        results.router_cpu_s["concurrent"] = _cpu_spent(cpu_before, _cpu_now(router_cpu))
        results.phases["concurrent"] = {name: Sample.merge(s) for name, s in rounds.items()}
    return results


def _spent(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def router_requests(args: argparse.Namespace) -> int:
    """Requests the client sends through the router in one run (warm-ups included)."""
    return 2 * args.warmup + args.sequential + args.concurrent


# -- report --------------------------------------------------------------------------------
def phase_label(phase: str, args: argparse.Namespace) -> str:
    return phase if phase == "sequential" else f"concurrency {args.concurrency}"


def print_latencies(results: Results, args: argparse.Namespace) -> None:
    print(f"{'phase':<16}{'target':<8}{'requests':>9}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}")
    for phase, samples in results.phases.items():
        for name, s in samples.items():
            print(
                f"{phase_label(phase, args):<16}{name:<8}{len(s.latencies_ms):>9}"
                f"{s.percentile(50):>9.2f}{s.percentile(99):>9.2f}{s.rps:>9.0f}"
            )


def print_added(results: Results, args: argparse.Namespace) -> bool:
    """Each router minus direct, per phase; True when every p50 target is met."""
    print(f"{'added by':<26}{'p50 ms':>9}{'p99 ms':>9}{'p50 x':>8}{'CPU ms/req':>12}  target")
    met = True
    for phase, samples in results.phases.items():
        direct = samples["direct"]
        for name, routed in samples.items():
            if name == "direct":
                continue
            added50 = routed.percentile(50) - direct.percentile(50)
            added99 = routed.percentile(99) - direct.percentile(99)
            ratio = routed.percentile(50) / direct.percentile(50)
            cpu_s = results.router_cpu_s.get(phase, {}).get(name)
            cpu = f"{cpu_s * 1000 / len(routed.latencies_ms):.2f}" if cpu_s is not None else "n/a"
            target = TARGET_P50_MS[phase]
            met = met and added50 <= target
            verdict = "PASS" if added50 <= target else "MISS"
            label = f"{name}, {phase_label(phase, args)}"
            print(
                f"{label:<26}{added50:>+9.2f}{added99:>+9.2f}{ratio:>8.2f}"
                f"{cpu:>12}  p50 <= {target:g} ms: {verdict}"
            )
    return met


def print_header(args: argparse.Namespace) -> None:
    print(
        f"router overhead: fake OpenAI engine on loopback, {os.cpu_count()} CPU cores; "
        "client, router and engine in 3 processes"
    )
    print(
        f"warm-up {args.warmup} per target and phase; concurrent phase in {args.rounds} "
        "alternating rounds; CPU ms/req: router process, all threads"
    )
    print()


def run(args: argparse.Namespace) -> bool:
    """Serve, measure, stop the routers, check their logs; True when all is well."""
    with tempfile.TemporaryDirectory(prefix="canary-bench-") as tmp:
        with ServerProcess(build_fake) as fake:
            routers = {"router": router_settings(Path(tmp, "router"), fake.url)}
            if args.keys:
                routers["keys"] = router_settings(
                    Path(tmp, "keys"), fake.url, auth="keys", redis_url=args.redis
                )
            servers = {n: ServerProcess(partial(create_app, s)) for n, s in routers.items()}
            for server in servers.values():
                server.start()
            try:
                targets = [make_target("direct", fake.url, "fake")]
                for name, server in servers.items():
                    key = make_key(server.url) if name == "keys" else None
                    targets.append(make_target(name, server.url, ROUTE, key))
                cpu = {name: server.cpu_s for name, server in servers.items()}
                results = run_async(lambda: measure(targets, args, cpu))
            finally:
                exit_codes = {name: server.stop() for name, server in servers.items()}
        logged = {name: count_logged(s.data_dir / "canary.db") for name, s in routers.items()}
    sent = router_requests(args)
    print_header(args)
    print_latencies(results, args)
    print()
    met = print_added(results, args)
    print()
    ok = met
    for name, exit_code in exit_codes.items():
        # uvicorn re-raises SIGTERM once its graceful shutdown is done: -15 is a clean stop.
        graceful = exit_code in (0, -signal.SIGTERM)
        print(
            f"{name} stopped {'gracefully' if graceful else 'UNCLEANLY'} (exit {exit_code}); "
            f"inference_log: logged {logged[name]} of {sent}"
        )
        ok = ok and graceful and logged[name] == sent
    return ok


def run_async(coro: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run on uvloop when installed (as the servers do), so the client costs less."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro())


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequential", type=int, default=2000, help="requests per target")
    parser.add_argument("--concurrent", type=int, default=3000, help="requests per target")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=200, help="requests per target, per phase")
    parser.add_argument("--rounds", type=int, default=3, help="concurrent phase: rounds per target")
    parser.add_argument("--quick", action="store_true", help="200 / 300 requests, 50 warm-up")
    parser.add_argument(
        "--keys", action="store_true", help="also a router in keys mode (target 'keys')"
    )
    parser.add_argument("--redis", help="the keys router's rate-limit counters in this Redis")
    args = parser.parse_args()
    if args.quick:
        args.sequential, args.concurrent, args.warmup, args.rounds = 200, 300, 50, 1
    return args


def main() -> None:
    if not run(parse_args()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
