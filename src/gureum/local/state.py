"""What `gureum up` started, written to GUREUM_HOME/run/state.json so `down` and `status`
can find exactly those processes again, and a lock so two `up`s never race.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from gureum.compute.local_ray import RayHead
from gureum.local.procs import ProcessRef

STATE_FILE = "state.json"
LOCK_FILE = "up.lock"


class RayState(BaseModel):
    address: str
    # Set only when `up` started the head itself; `down` stops nothing else.
    head: RayHead | None = None


class RunState(BaseModel):
    home: str
    url: str
    host: str
    port: int
    mode: Literal["detached", "foreground"] = "detached"
    server: ProcessRef | None = None
    ray: RayState | None = None
    database: str = ""
    artifacts: str = ""
    started_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


def state_path(run_dir: Path) -> Path:
    return run_dir / STATE_FILE


def load_state(run_dir: Path) -> RunState | None:
    """The recorded state, or None when there is none or it is unreadable (never fatal)."""
    try:
        return RunState.model_validate_json(state_path(run_dir).read_bytes())
    except (OSError, ValueError, ValidationError):
        return None


def save_state(run_dir: Path, state: RunState) -> None:
    """Write atomically: a crash mid-write leaves the old state, never half a file."""
    write_private(state_path(run_dir), state.model_dump_json(indent=2).encode())


def clear_state(run_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        state_path(run_dir).unlink()


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with a file only its owner can read (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # also when a stale tmp file existed with other bits
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    os.replace(tmp, path)


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Serialise `up` and `down` on one home; the kernel drops the lock if we crash."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
