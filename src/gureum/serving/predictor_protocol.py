"""What a sandboxed predictor worker and the process that started it say to each other.

Frames on a pair of pipes: a 4-byte big-endian length, then that many bytes of UTF-8 JSON. The
sender writes header and payload with one ``writev`` and the receiver reads the payload into one
buffer it then parses, so a payload is never copied to join it with its header or its parts.
The worker is untrusted: everything read from it is bounded (``max_bytes``) and checked.

``PredictorManifest`` is what registration exports from the user's class (inside the sandbox)
and stores with the version as ``predictor.json``: the replica serves from it without ever
importing user code. Standard library and pydantic only: this module runs in the sandbox too.
"""

from __future__ import annotations

import json
import os
import select
import struct
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

HEADER = struct.Struct("!I")
MAX_FRAME_BYTES = 64 * 1024 * 1024  # a worker's answer, read into the replica's memory
MANIFEST_FILE = "predictor.json"  # in the version's files, written by the platform
CODE_DIR = "code"  # the version's copy of the job's code folder
MAX_TIMEOUT_S = 600.0
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


class ChannelClosed(Exception):
    """The other end closed its pipe (the worker exited or was killed)."""


class ChannelTimeout(Exception):
    """Nothing (or not all of a frame) arrived before the deadline."""


class ProtocolError(Exception):
    """The other end sent something that is not a frame of ours."""


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def _wait(fd: int, write: bool, deadline: float | None) -> None:
    if deadline is None:
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise ChannelTimeout
    ready = select.select([], [fd], [], left) if write else select.select([fd], [], [], left)
    if not (ready[1] if write else ready[0]):
        raise ChannelTimeout


def send(fd: int, payload: bytes, deadline: float | None = None) -> None:
    """One frame; ``deadline`` (monotonic): ``fd`` is non-blocking and each write waits for it."""
    parts = [memoryview(HEADER.pack(len(payload))), memoryview(payload)]
    while parts:
        _wait(fd, True, deadline)
        try:
            n = os.writev(fd, parts)
        except BlockingIOError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            raise ChannelClosed from None
        while n and parts:
            if n >= len(parts[0]):
                n -= len(parts[0])
                parts.pop(0)
            else:
                parts[0] = parts[0][n:]
                n = 0


def _read_into(fd: int, buf: memoryview, deadline: float | None) -> None:
    pos = 0
    while pos < len(buf):
        _wait(fd, False, deadline)
        try:
            n = os.readv(fd, [buf[pos:]])
        except BlockingIOError:
            continue
        if n == 0:
            raise ChannelClosed
        pos += n


def recv(fd: int, deadline: float | None = None, max_bytes: int = MAX_FRAME_BYTES) -> Any:
    """The next frame's JSON value; ``ChannelClosed`` at end of file."""
    head = bytearray(HEADER.size)
    _read_into(fd, memoryview(head), deadline)
    (size,) = HEADER.unpack(head)
    if size > max_bytes:
        raise ProtocolError(f"a frame of {size} bytes, over the limit of {max_bytes}")
    body = bytearray(size)
    _read_into(fd, memoryview(body), deadline)
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"a frame that is not JSON: {exc}") from None


Unit = str


class PredictorManifest(BaseModel):
    """A registered predictor, as exported from its class in the sandbox (``predictor.json``)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = 1
    class_name: str = Field(min_length=1, max_length=200)
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    unit: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z][A-Za-z0-9_.-]*$")
    timeout_s: float = Field(gt=0, le=MAX_TIMEOUT_S)
    memory_mb: int | None = Field(default=None, ge=64, le=1024 * 1024)
    batched: bool = False  # the class overrides predict_batch
    counts_units: bool = False  # the class overrides units
    code_hash: str | None = Field(default=None, max_length=128)
    requirements_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
