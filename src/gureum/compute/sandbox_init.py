"""The first program of a script job's sandbox: rlimits, then the user's entry point.

Run as ``python -I -S sandbox_init.py --nproc N --nofile N --fsize N --ranks K --run-dir D --
CMD...`` (stdlib only, so it starts in milliseconds). Limits are set here, inside the sandbox,
rather than in a ``preexec_fn`` of the supervisor (unsafe in a threaded Ray worker); the user's
code cannot raise them again (no capabilities). One rank: ``exec`` the command. K ranks: start
K copies with ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` set, meeting on the
sandbox's own loopback; rank k > 0 reports into ``RUN_DIR/ranks/k`` and its output lines are
prefixed ``[rank k]``; the first rank to fail ends the others and gives the exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO

RANKS_DIR = "ranks"
STOP_GRACE_S = 5.0


def _limit(which: int, value: int) -> None:
    if value <= 0:
        return
    _, hard = resource.getrlimit(which)
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(which, (value, value))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _pump(stream: IO[bytes], prefix: bytes) -> None:
    out = sys.stdout.buffer
    for line in iter(stream.readline, b""):
        out.write(prefix + line if line.endswith(b"\n") else prefix + line + b"\n")
        out.flush()


def _status(rc: int) -> int:
    return 128 - rc if rc < 0 else rc


def _ranks(cmd: list[str], ranks: int, run_dir: str) -> int:
    port = _free_port()
    procs: list[subprocess.Popen[bytes]] = []
    pumps: list[threading.Thread] = []
    for rank in range(ranks):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(ranks),
            LOCAL_WORLD_SIZE=str(ranks),
            NODE_RANK="0",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        if rank:
            own = os.path.join(run_dir, RANKS_DIR, str(rank))
            os.makedirs(own, exist_ok=True)
            env["GUREUM_RUN_DIR"] = own
        pipe = subprocess.PIPE if rank else None
        proc = subprocess.Popen(
            cmd, env=env, stdout=pipe, stderr=subprocess.STDOUT if rank else None
        )
        procs.append(proc)
        if proc.stdout is not None:
            t = threading.Thread(target=_pump, args=(proc.stdout, f"[rank {rank}] ".encode()))
            t.start()
            pumps.append(t)

    def _forward(signum: int, _frame: object) -> None:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, _forward)
    failed: int | None = None
    ending_at: float | None = None
    while [p.poll() for p in procs].count(None):  # poll every rank, each time
        if failed is None:
            bad = [p.returncode for p in procs if p.returncode not in (None, 0)]
            if bad:
                failed = bad[0]
                ending_at = time.monotonic()
                _forward(signal.SIGTERM, None)
        elif ending_at is not None and time.monotonic() - ending_at > STOP_GRACE_S:
            _forward(signal.SIGKILL, None)
        time.sleep(0.05)
    for t in pumps:
        t.join(timeout=2)
    if failed is None:
        failed = next((p.returncode for p in procs if p.returncode), 0)
    return _status(failed)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sandbox_init")
    parser.add_argument("--nproc", type=int, default=0)
    parser.add_argument("--nofile", type=int, default=0)
    parser.add_argument("--fsize", type=int, default=0)
    parser.add_argument("--ranks", type=int, default=1)
    parser.add_argument("--run-dir", default="")
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    opts = parser.parse_args(argv)
    cmd = opts.cmd[1:] if opts.cmd[:1] == ["--"] else opts.cmd
    if not cmd:
        parser.error("no command")
    _limit(resource.RLIMIT_NPROC, opts.nproc)
    _limit(resource.RLIMIT_NOFILE, opts.nofile)
    _limit(resource.RLIMIT_FSIZE, opts.fsize)
    if opts.ranks <= 1:
        os.execv(cmd[0], cmd)  # noqa: S606 (our own argv, no shell)
    return _ranks(cmd, opts.ranks, opts.run_dir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
