"""The capture sidecar, as the replica starts and watches it: a process of its own that ships
the replica's captured calls (``serving.capture_sidecar``), so that capture costs the replica
one appended line per call and nothing more.

Its configuration, the endpoint's token included, goes over stdin (never argv or the
environment). It runs niced below the replica, ships what the replica appended every few
seconds (``SidecarConfig.interval_s``), ships everything once more and exits when told to stop
or when the replica is gone, and the replica starts it again if it dies.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger("ray.serve.gureum")
STOP_TIMEOUT_S = 15.0
# A sidecar that keeps dying is started again at most this often.
RESTART_EVERY_S = 10.0


@dataclass(frozen=True)
class SidecarConfig:
    """Where the endpoint's internal routes are and the token that opens them."""

    control_url: str
    token: str
    interval_s: float = 3.0


@dataclass(frozen=True)
class SidecarArgs:
    folder: str
    endpoint: str
    workspace_id: int
    artifacts: str
    owner_pid: int
    control_url: str
    token: str
    interval_s: float


class Sidecar:
    def __init__(
        self, folder: Path, endpoint: str, workspace_id: int, artifacts: str, config: SidecarConfig
    ) -> None:
        self._args = SidecarArgs(
            folder=str(folder),
            endpoint=endpoint,
            workspace_id=workspace_id,
            artifacts=artifacts,
            owner_pid=0,
            control_url=config.control_url,
            token=config.token,
            interval_s=config.interval_s,
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self.restarts = 0

    def start(self) -> None:
        args = SidecarArgs(**{**asdict(self._args), "owner_pid": os.getpid()})
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "gureum.serving.capture_sidecar"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            close_fds=True,
        )
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(asdict(args)).encode())
        self._proc.stdin.close()
        self._started_at = time.monotonic()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def check(self) -> None:
        if self._proc is None or self.running:
            return
        if time.monotonic() - self._started_at < RESTART_EVERY_S:
            return
        log.warning(
            "the capture sidecar exited (code %s); starting it again", self._proc.returncode
        )
        self.restarts += 1
        self.start()

    def stop(self) -> None:
        """Ship what is left and stop (it ships once more on SIGTERM)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("the capture sidecar did not stop in %.0f s; killed", STOP_TIMEOUT_S)
            proc.kill()
            proc.wait()
