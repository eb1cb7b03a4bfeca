"""The ``RunContext`` of a job running on the cluster.

Logs, metrics and progress are buffered and shipped to the attempt's supervisor by a background
thread (never one call per line), so a recipe that logs a lot or a script that prints megabytes
does not slow down on reporting. Checkpoints go to the artifact store under the job (not the
attempt), so a retry on another node resumes from the last one. The supervisor's answer to each
shipment says whether a stop was asked for, which is how cancel and timeout reach the recipe.
"""

from __future__ import annotations

import io
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gureum.compute.spec import Item, checkpoint_prefix
from gureum.storage.store import ArtifactStore

FLUSH_S = 0.25
MAX_BATCH = 2000
KEEP_CHECKPOINTS = 2
_CKPT = re.compile(r"ckpt-(\d+)\.pt$")

Send = Callable[[list[Item]], bool]


class Reporter:
    """Buffers items and sends them in batches; ``stop_requested`` mirrors the supervisor."""

    def __init__(self, send: Send, flush_s: float = FLUSH_S) -> None:
        self._send = send
        self._flush_s = flush_s
        self._items: list[Item] = []
        self._progress: Item | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self.stop_requested = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="gureum-reporter", daemon=True)
        self._thread.start()

    def add(self, item: Item) -> None:
        with self._lock:
            if item["type"] == "progress":
                self._progress = item  # only the newest matters
            else:
                self._items.append(item)
            full = len(self._items) >= MAX_BATCH
        if full:
            self._wake.set()

    def flush(self) -> None:
        while True:
            with self._lock:
                batch, self._items = self._items[:MAX_BATCH], self._items[MAX_BATCH:]
                if self._progress is not None and not self._items:
                    batch.append(self._progress)
                    self._progress = None
            if not batch:
                return
            if self._send(batch):
                self.stop_requested.set()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=30)
        self.flush()

    def _loop(self) -> None:
        while not self._closed:
            self._wake.wait(self._flush_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception:
                time.sleep(self._flush_s)


class CheckpointStore:
    """Numbered ``torch.save`` files of one job in the artifact store; the newest wins."""

    def __init__(self, store: ArtifactStore, workspace_id: int, job_id: str) -> None:
        self.store = store
        self.prefix = store.key(checkpoint_prefix(workspace_id, job_id))

    def numbers(self) -> list[int]:
        if not self.store.fs.exists(self.prefix):
            return []
        found = (_CKPT.search(str(p)) for p in self.store.fs.ls(self.prefix, detail=False))
        return sorted(int(m.group(1)) for m in found if m)

    def save(self, state: dict[str, Any]) -> int:
        numbers = self.numbers()
        n = (numbers[-1] + 1) if numbers else 1
        buf = io.BytesIO()
        torch.save(state, buf)
        self.store.write_atomic(f"{self.prefix}/ckpt-{n:06d}.pt", buf.getvalue())
        for old in numbers[: max(0, len(numbers) + 1 - KEEP_CHECKPOINTS)]:
            self.store.discard(f"{self.prefix}/ckpt-{old:06d}.pt")
        return n

    def load(self) -> tuple[int, dict[str, Any]] | None:
        numbers = self.numbers()
        if not numbers:
            return None
        with self.store.fs.open(f"{self.prefix}/ckpt-{numbers[-1]:06d}.pt", "rb") as fh:
            state: dict[str, Any] = torch.load(
                io.BytesIO(fh.read()), map_location="cpu", weights_only=True
            )
        return numbers[-1], state


class ClusterRunContext:
    """A recipe's view of the platform while it runs as (one rank of) a job."""

    def __init__(
        self,
        reporter: Reporter,
        checkpoints: CheckpointStore,
        workdir: Path,
        *,
        device: str = "cpu",
        rank: int = 0,
    ) -> None:
        self._reporter = reporter
        self._checkpoints = checkpoints
        self._device = device
        self._rank = rank
        self._artifacts = workdir / "artifacts"
        self._artifacts.mkdir(parents=True, exist_ok=True)
        self.resumed: dict[str, Any] | None = None
        # Registry models fetched for this run (``JobSpec.models``), by reference.
        self.models: dict[str, Path] = {}

    @property
    def device(self) -> str:
        return self._device

    @property
    def artifacts_dir(self) -> Path:
        return self._artifacts

    def log(self, msg: str) -> None:
        prefix = f"[rank {self._rank}] " if self._rank else ""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        self._reporter.add({"type": "log", "text": f"{stamp} {prefix}{msg}\n"})

    def log_metrics(self, step: int, metrics: dict[str, float], epoch: int | None = None) -> None:
        values = {k: float(v) for k, v in metrics.items()}
        self._reporter.add(
            {"type": "metrics", "step": step, "epoch": epoch, "values": values, "time": time.time()}
        )

    def progress(self, epoch: int, step: int, total_steps: int) -> None:
        self._reporter.add(
            {"type": "progress", "epoch": epoch, "step": step, "total_steps": total_steps}
        )

    def event(self, kind: str, message: str, **data: Any) -> None:
        self._reporter.add({"type": "event", "kind": kind, "message": message, "data": data})

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        n = self._checkpoints.save(state)
        epoch = state.get("epoch")
        where = f" (epoch {epoch}, step {state.get('step')})" if epoch is not None else ""
        self.event("checkpoint", f"checkpoint {n} saved{where}", number=n, epoch=epoch)

    def load_checkpoint(self) -> dict[str, Any] | None:
        found = self._checkpoints.load()
        if found is None:
            return None
        n, state = found
        if self._rank == 0:
            epoch, step = state.get("epoch"), state.get("step")
            where = f" at epoch {epoch}, step {step}" if epoch is not None else ""
            self.event("resume", f"resuming from checkpoint {n}{where}", epoch=epoch, step=step)
        self.resumed = state
        return state

    def should_stop(self) -> bool:
        return self._reporter.stop_requested.is_set()
