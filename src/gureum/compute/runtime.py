"""The ``RunContext`` of a job running on the cluster.

Logs, metrics and progress are buffered and shipped to the attempt's supervisor by a background
thread (never one call per line), so a recipe that logs a lot or a script that prints megabytes
does not slow down on reporting. Checkpoints go to the artifact store under the job (not the
attempt), so a retry on another node resumes from the last one. The supervisor's answer to each
shipment says whether a stop was asked for, which is how cancel and timeout reach the recipe,
and how many checkpoints were asked for, which is how a preemption asks the recipe to save one
before it is stopped (``should_checkpoint``). With nothing to ship, an empty shipment goes at
least every ``HEARTBEAT_S``, so a quiet job hears the asks too.
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
HEARTBEAT_S = 1.0
MAX_BATCH = 2000
KEEP_CHECKPOINTS = 2
_CKPT = re.compile(r"ckpt-(\d+)\.pt$")

# The supervisor's answer: bit 0 stop, the rest the checkpoint requests made (a bool: stop).
Send = Callable[[list[Item]], int]


class Reporter:
    """Buffers items and sends them in batches; ``stop_requested`` and ``checkpoints_asked``
    mirror the supervisor."""

    def __init__(
        self, send: Send, flush_s: float = FLUSH_S, heartbeat_s: float = HEARTBEAT_S
    ) -> None:
        self._send = send
        self._flush_s = flush_s
        self._heartbeat_s = heartbeat_s
        self._sent_at = time.monotonic()
        self.checkpoints_asked = 0
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

    def flush(self, heartbeat: bool = False) -> None:
        """Send what is buffered; with ``heartbeat``, an empty batch when nothing is."""
        while True:
            with self._lock:
                batch, self._items = self._items[:MAX_BATCH], self._items[MAX_BATCH:]
                if self._progress is not None and not self._items:
                    batch.append(self._progress)
                    self._progress = None
            if not batch and not heartbeat:
                return
            heartbeat = False
            self._answer(int(self._send(batch)))
            self._sent_at = time.monotonic()
            if not batch:
                return

    def _answer(self, signals: int) -> None:
        if signals & 1:
            self.stop_requested.set()
        self.checkpoints_asked = max(self.checkpoints_asked, signals >> 1)

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
                self.flush(heartbeat=time.monotonic() - self._sent_at >= self._heartbeat_s)
            except Exception:
                time.sleep(self._flush_s)


class CheckpointStore:
    """Numbered ``torch.save`` files of one job in the artifact store; the newest wins.

    A checkpoint is written whole or not at all (``write_atomic``: a temporary file renamed,
    or one object put): a worker that dies while writing one leaves the last good checkpoint
    the newest, and the next attempt resumes from it and drops the half-written file.
    """

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

    def drop_partial(self) -> int:
        """Remove what a worker that died while writing left (never read; returns how many)."""
        if not self.store.fs.exists(self.prefix):
            return 0
        partial = [
            p for p in self.store.fs.ls(self.prefix, detail=False) if str(p).endswith(".tmp")
        ]
        for path in partial:
            self.store.discard(str(path))
        return len(partial)

    def load(self) -> tuple[int, dict[str, Any]] | None:
        self.drop_partial()  # at an attempt's start: no writer of this job is left
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
        self._checkpointed = 0  # the checkpoint requests a saved checkpoint answered
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
        self._checkpointed = self._reporter.checkpoints_asked  # this save answers them
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

    def should_checkpoint(self) -> bool:
        """The platform asked for a checkpoint (it is about to preempt the job) that no
        checkpoint saved since has answered: save one at the next step."""
        return self._rank == 0 and self._reporter.checkpoints_asked > self._checkpointed
