"""The capture sidecar as a replica runs it: a process of its own that ships the calls the
replica appended, to the artifact store and to the control plane's index (here a small HTTP
server standing in for the control plane's internal route). No Ray."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gureum.schemas.capture import CaptureBatch, CaptureConfig, CaptureSettings
from gureum.serving import sidecar as sidecar_module
from gureum.serving.access import Caller
from gureum.serving.capture import Capturer
from gureum.serving.sidecar import SidecarConfig
from gureum.storage.store import ArtifactStore

TOKEN = "ep-token-not-for-argv"
ACME = Caller(7, "acme", "k1")
BODY = json.dumps({"inputs": [{"price": 30}]}).encode()
OUTPUT = json.dumps({"outputs": [{"prediction": "no"}]}).encode()


class ControlPlane(ThreadingHTTPServer):
    """Takes index rows as the control plane's internal route does (or refuses them)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.rows: list[Any] = []
        self.auth: set[str] = set()
        self.down = False
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/internal/endpoints/shop"


class _Handler(BaseHTTPRequestHandler):
    server: ControlPlane

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.server.down or self.path != "/v1/internal/endpoints/shop/captured":
            self.send_response(503)
            self.end_headers()
            return
        self.server.auth.add(self.headers.get("authorization", ""))
        self.server.rows += CaptureBatch.model_validate_json(body).records
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def control() -> Iterator[ControlPlane]:
    server = ControlPlane()
    yield server
    server.shutdown()


def capturer(tmp_path: Path, control: ControlPlane) -> Capturer:
    c = Capturer(
        tmp_path / "spool",
        "shop",
        1,
        str(tmp_path / "store"),
        lambda rows: pytest.fail("a replica with a sidecar ships nothing in-process"),
        sidecar=SidecarConfig(control.url, TOKEN, interval_s=0.2),
    )
    c.configure(CaptureSettings(config=CaptureConfig(rate=1.0), request_id_key="ab" * 32))
    c.start()
    return c


def keep(c: Capturer, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        rid = c.request_id(ACME)
        assert c.keep(rid, ACME, "predict", BODY, 200, OUTPUT, 42, "shop:1")
        ids.append(rid)
    return ids


def until(pred: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def sidecar_pid(c: Capturer) -> int:
    proc = c._sidecar._proc if c._sidecar else None
    assert proc is not None
    return proc.pid


def test_the_sidecar_stores_and_indexes_what_the_replica_appended(
    tmp_path: Path, control: ControlPlane
) -> None:
    c = capturer(tmp_path, control)
    try:
        ids = keep(c, 5)
        until(lambda: len(control.rows) == 5, "five index rows")
        assert [r.request_id for r in control.rows] == ids
        assert control.auth == {f"Bearer {TOKEN}"}
        store = ArtifactStore(str(tmp_path / "store"))
        with store.open_blob(1, control.rows[0].object) as fh:
            lines = [json.loads(line) for line in fh.read().splitlines()]
        assert [line["request_id"] for line in lines] == ids
        assert lines[0]["input"] == json.loads(BODY) and lines[0]["output"] == json.loads(OUTPUT)
        until(lambda: c.pending == 0, "nothing pending")
        # The token reached it over stdin: not in its command line nor its environment.
        pid = sidecar_pid(c)
        for name in ("cmdline", "environ"):
            assert TOKEN.encode() not in Path(f"/proc/{pid}/{name}").read_bytes()
        assert os.getpriority(os.PRIO_PROCESS, pid) > os.getpriority(os.PRIO_PROCESS, 0)
    finally:
        c.close()


def test_what_the_control_plane_refuses_waits_and_a_stop_ships_the_rest(
    tmp_path: Path, control: ControlPlane
) -> None:
    control.down = True
    c = capturer(tmp_path, control)
    try:
        keep(c, 3)
        time.sleep(1.0)
        assert control.rows == [] and c.pending == 3  # kept in the spool
        control.down = False
        until(lambda: len(control.rows) == 3, "the waiting rows")
        keep(c, 2)
    finally:
        c.close()  # it ships once more before it exits
    assert len(control.rows) == 5 and len({r.request_id for r in control.rows}) == 5


def test_a_sidecar_that_dies_is_started_again_and_loses_nothing(
    tmp_path: Path, control: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sidecar_module, "RESTART_EVERY_S", 0.0)
    control.down = True
    c = capturer(tmp_path, control)
    try:
        keep(c, 4)
        first = sidecar_pid(c)
        os.kill(first, signal.SIGKILL)
        until(lambda: c._sidecar is not None and not c._sidecar.running, "the sidecar gone")
        c.check()
        assert sidecar_pid(c) != first
        control.down = False
        until(lambda: len(control.rows) == 4, "the four rows, after the restart")
    finally:
        c.close()
