"""Load generators of ``bench_serving``: sequential requests on one connection, closed-loop
concurrent clients, and an open-loop bursty trace (httpx, asyncio)."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import httpx


def sequential(http: httpx.Client, url: str, body: bytes, n: int) -> list[float]:
    """Milliseconds of ``n`` requests one after another on one kept-alive connection."""
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = http.post(url, content=body)
        elapsed = (time.perf_counter() - t) * 1000
        if r.status_code != 200:
            raise RuntimeError(f"POST {url} answered {r.status_code}: {r.text[:500]}")
        out.append(elapsed)
    return out


@dataclass
class LoadResult:
    seconds: float
    ok: int
    errors: int
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


def closed_loop(
    url: str, headers: dict[str, str], body: bytes, concurrency: int, seconds: float
) -> LoadResult:
    """``concurrency`` clients, each sending its next request when the last one is answered."""
    return asyncio.run(_closed_loop(url, headers, body, concurrency, seconds))


def closed_loop_apart(
    url: str, headers: dict[str, str], body: bytes, concurrency: int, seconds: float
) -> LoadResult:
    """``closed_loop`` in a process of its own. The benchmark's process also runs the gureum
    control plane, whose usage ingest would otherwise take the GIL from the clients of our
    endpoint only (a deployment keeps its control plane on other cores or machines)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(closed_loop, url, headers, body, concurrency, seconds).result()


async def _closed_loop(
    url: str, headers: dict[str, str], body: bytes, concurrency: int, seconds: float
) -> LoadResult:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    result = LoadResult(0.0, 0, 0)
    async with httpx.AsyncClient(headers=headers, timeout=60, limits=limits) as client:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                try:
                    r = await client.post(url, content=body)
                    status = r.status_code
                except httpx.HTTPError:
                    status = 0
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if status == 200:
                    result.ok += 1
                    result.latencies_ms.append((time.perf_counter() - t) * 1000)
                else:
                    result.errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.seconds = time.perf_counter() - start
    return result


@dataclass(frozen=True)
class Trace:
    """Open-loop arrivals (a Poisson process) at ``base_rps``, with ``bursts`` bursts of
    ``burst_s`` seconds at ``peak_rps`` spread over ``seconds``."""

    seconds: float
    peak_rps: float
    base_rps: float
    bursts: int
    burst_s: float

    def burst_starts(self) -> list[float]:
        gap = self.seconds / self.bursts
        return [gap * i + gap * 0.15 for i in range(self.bursts)]

    def rate(self, t: float) -> float:
        inside = any(s <= t < s + self.burst_s for s in self.burst_starts())
        return self.peak_rps if inside else self.base_rps

    def arrivals(self, seed: int = 0) -> list[float]:
        rng = random.Random(seed)
        out: list[float] = []
        t = 0.0
        while True:
            # Thinning: candidates at the peak rate, kept with probability rate(t) / peak.
            t += rng.expovariate(self.peak_rps)
            if t >= self.seconds:
                return out
            if rng.random() * self.peak_rps < self.rate(t):
                out.append(t)


@dataclass(frozen=True)
class Sent:
    at: float  # seconds into the trace it was sent
    latency_ms: float
    status: int


def open_loop(
    url: str, headers: dict[str, str], body: bytes, arrivals: Sequence[float], timeout: float
) -> list[Sent]:
    """Send one request at each arrival time whatever the earlier ones are doing."""
    return asyncio.run(_open_loop(url, headers, body, arrivals, timeout))


def open_loop_apart(
    url: str, headers: dict[str, str], body: bytes, arrivals: Sequence[float], timeout: float
) -> list[Sent]:
    """``open_loop`` in a process of its own (see ``closed_loop_apart``)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(open_loop, url, headers, body, list(arrivals), timeout).result()


def steady(rps: float, seconds: float, seed: int = 0) -> list[float]:
    """Poisson arrivals at a fixed ``rps``: the same offered load whatever the server does."""
    return Trace(seconds, rps, rps, 1, seconds).arrivals(seed)


async def _open_loop(
    url: str, headers: dict[str, str], body: bytes, arrivals: Sequence[float], timeout: float
) -> list[Sent]:
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
    out: list[Sent] = []
    timeouts = httpx.Timeout(timeout, pool=None)
    async with httpx.AsyncClient(headers=headers, timeout=timeouts, limits=limits) as client:
        start = time.perf_counter()

        async def one(at: float) -> None:
            sent = time.perf_counter()
            try:
                status = (await client.post(url, content=body)).status_code
            except httpx.HTTPError:
                status = 0
            out.append(Sent(sent - start, (time.perf_counter() - sent) * 1000, status))

        tasks = []
        for at in arrivals:
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(at)))
        await asyncio.gather(*tasks)
    return out
