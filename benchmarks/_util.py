"""Shared plumbing for the benchmarks: servers on free ports, load generation, medians.

Every benchmark runs the alternative and gureum side by side in one run, alternating rounds so
that machine noise hits both alike, and reports medians and ratios, never one absolute time.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def start_uvicorn(
    factory: str, port: int, env: dict[str, str], nice: int = 0
) -> subprocess.Popen[bytes]:
    """Serve ``module:factory`` with one uvicorn worker, the same settings for every contender
    (at niceness ``nice``, to meet the machine's load as Ray's workers, at 15, do)."""
    cmd = [
        *(["nice", "-n", str(nice)] if nice else []),
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        factory,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        "--http",
        "httptools",
        "--loop",
        "uvloop",
    ]
    full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, env=full_env, cwd=ROOT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def load(url: str, headers: dict[str, str], seconds: float, connections: int) -> float:
    """Requests per second at ``connections`` concurrent keep-alive connections."""
    if shutil.which("wrk"):
        return _wrk(url, headers, seconds, connections)
    return asyncio.run(_py_load(url, headers, seconds, connections))


def _wrk(url: str, headers: dict[str, str], seconds: float, connections: int) -> float:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"non-2xx responses under load:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise RuntimeError(f"cannot read wrk output:\n{out}")
    return float(match.group(1))


async def _py_load(url: str, headers: dict[str, str], seconds: float, connections: int) -> float:
    count = 0
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(headers=headers, timeout=30) as client:

        async def worker() -> None:
            nonlocal count
            while time.monotonic() < deadline:
                r = await client.get(url)
                r.raise_for_status()
                count += 1

        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(connections)))
        return count / (time.monotonic() - start)


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def exit_on_sigterm() -> None:
    """A SIGTERM unwinds like an exception, so that the benchmark's context managers stop the
    Ray head (and whatever else they started) on the way out."""

    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def machine() -> str:
    return f"{platform.node()} ({os.cpu_count()} cores, {platform.python_version()})"


def save(name: str, result: dict[str, Any]) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": name,
        "date": datetime.now(UTC).isoformat(),
        "machine": machine(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        **result,
    }
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    return path
