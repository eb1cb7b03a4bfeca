"""The capture sidecar process (``python -m gureum.serving.capture_sidecar``, started by
``serving.sidecar.Sidecar``): ships one replica's captured calls, and those of replicas of the
endpoint that died on this node, to the artifact store and the control plane's index."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import httpx

from gureum.serving.capture import CaptureShipper
from gureum.serving.sidecar import SidecarArgs
from gureum.serving.spool import Shipper, alive

log = logging.getLogger("gureum.capture_sidecar")
# Below the replica: requests first, shipping with what is left.
NICE = 10


def run(args: SidecarArgs, stop: threading.Event) -> None:
    http = httpx.Client(
        base_url=args.control_url, headers={"authorization": f"Bearer {args.token}"}, timeout=30
    )

    def ship_index(rows: list[dict[str, Any]]) -> None:
        body = json.dumps({"records": rows}, separators=(",", ":"))
        r = http.post("/captured", content=body, headers={"content-type": "application/json"})
        r.raise_for_status()

    shipper = CaptureShipper(args.endpoint, args.workspace_id, args.artifacts, ship_index)
    files = Shipper(Path(args.folder), args.endpoint, shipper.ship, args.owner_pid)
    try:
        while True:
            last = stop.is_set() or not alive(args.owner_pid)
            try:
                files.ship_all()
            except Exception:
                log.warning("shipping captured calls failed; they stay spooled", exc_info=True)
            if last:
                return
            stop.wait(args.interval_s)
    finally:
        http.close()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="capture-sidecar %(levelname)s %(message)s")
    args = SidecarArgs(**json.loads(sys.stdin.read()))
    os.nice(NICE)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run(args, stop)


if __name__ == "__main__":
    main()
