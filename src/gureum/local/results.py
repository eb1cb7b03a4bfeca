"""What `up` and `down` report back to the CLI (and, as JSON, to programs)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from gureum.config import Settings


class UpError(Exception):
    """`up` cannot go on; the message says why and what to do."""


class UpResult(BaseModel):
    status: Literal["started", "already_running"]
    url: str
    home: str
    credentials: str
    # The bootstrap admin key: only on the very first start, and shown only then.
    api_key: str | None = None
    has_credentials: bool = True
    mode: Literal["detached", "foreground"] = "detached"
    pid: int | None = None
    ray_address: str = ""
    ray_managed: bool = False
    database: str = ""
    artifacts: str = ""
    log: str = ""


class DownResult(BaseModel):
    status: Literal["stopped", "not_running"]
    stopped: list[str]


def server_log(settings: Settings) -> Path:
    return settings.log_dir / "server.log"
