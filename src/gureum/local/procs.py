"""Processes that `gureum up` starts: finding them again safely, and stopping them.

A pid alone proves nothing: after a crash or a reboot the number may belong to an unrelated
process, and signalling it would hurt someone else. A process counts as ours only while its
start time and command line still match what we recorded when we started it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil
from pydantic import BaseModel

START_TIME_TOLERANCE = 0.05
POLL = 0.05


class ProcessRef(BaseModel):
    """A process as recorded at start: pid, start time, and a string its command line holds."""

    pid: int
    create_time: float
    marker: str


def describe(pid: int, marker: str) -> ProcessRef:
    return ProcessRef(pid=pid, create_time=psutil.Process(pid).create_time(), marker=marker)


def is_alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (an unreaped zombie has exited; it only keeps its pid)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def find(ref: ProcessRef) -> psutil.Process | None:
    """The live process ``ref`` describes, or None if it exited or its pid was reused."""
    try:
        proc = psutil.Process(ref.pid)
        same_start = abs(proc.create_time() - ref.create_time) < START_TIME_TOLERANCE
    except psutil.Error:
        return None
    if not same_start or not is_alive(proc) or ref.marker not in cmdline(proc):
        return None
    return proc


def session_members(sid: int) -> list[psutil.Process]:
    """Every live process in session ``sid`` (what a detached start put there)."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) != sid:
                continue
        except OSError:
            continue
        if is_alive(proc):
            members.append(proc)
    return members


def wait_gone(procs: Sequence[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has exited; return those still alive at the timeout."""
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if is_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(POLL)
        alive = [p for p in alive if is_alive(p)]
    return alive


def _signal(procs: Sequence[psutil.Process], sig: int) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


def terminate(procs: Sequence[psutil.Process], timeout: float) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after ``timeout`` seconds."""
    _signal(procs, signal.SIGTERM)
    alive = wait_gone(procs, timeout)
    if alive:
        _signal(alive, signal.SIGKILL)
        wait_gone(alive, 5.0)


def with_children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return [proc]


def process_tree(pid: int) -> list[psutil.Process]:
    """Process ``pid`` and its children; empty if it has exited."""
    try:
        return with_children(psutil.Process(pid))
    except psutil.Error:
        return []


def spawn_detached(
    cmd: Sequence[str], *, env: Mapping[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in a session of its own, output appended to ``log_path``.

    Its own session means a Ctrl-C in the terminal that ran `gureum up` does not reach it,
    and it holds none of the caller's pipes open.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(cmd),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def tail(path: Path, offset: int = 0, lines: int = 30) -> str:
    """The last ``lines`` lines written to ``path`` after byte ``offset``."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])
