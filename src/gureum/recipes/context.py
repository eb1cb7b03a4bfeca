"""An in-process ``RunContext``: checkpoints, metrics and logs in a folder.

Used by the tests and by plain-Python runs (``python -m gureum.recipes.run``). The platform's
context on Ray has the same surface, so a recipe cannot tell the two apart.

Layout under ``root``::

    checkpoints/ckpt-000003.pt   torch.save'd, written to a temporary name and renamed
    metrics.jsonl                one JSON object per ``log_metrics`` call
    log.txt                      ``log`` lines
    artifacts/                   ``artifacts_dir``
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

import torch

from gureum.recipes.base import RunContext

CHECKPOINT_RE = re.compile(r"^ckpt-(\d+)\.pt$")


class LocalRunContext:
    def __init__(
        self,
        root: Path | str,
        *,
        device: str = "cpu",
        keep_checkpoints: int = 2,
        stop: threading.Event | None = None,
        timeout_s: float | None = None,
        echo: TextIO | None = None,
        on_progress: Callable[[int, int, int], None] | None = None,
        models: Mapping[str, Path | str] | None = None,
    ) -> None:
        self.root = Path(root)
        # Registry models the run may read, by reference (a LoRA base model: ``base_model``);
        # on the platform these are the versions the server resolved, fetched by the worker.
        self.models = {ref: Path(folder) for ref, folder in (models or {}).items()}
        self._device = device
        self._keep = max(1, keep_checkpoints)
        self._stop = stop or threading.Event()
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._echo = echo
        self._on_progress = on_progress
        self.checkpoint_dir = self.root / "checkpoints"
        self.metrics_path = self.root / "metrics.jsonl"
        self.log_path = self.root / "log.txt"
        self._artifacts = self.root / "artifacts"
        for folder in (self.checkpoint_dir, self._artifacts):
            folder.mkdir(parents=True, exist_ok=True)
        self.last_progress: tuple[int, int, int] | None = None

    @property
    def device(self) -> str:
        return self._device

    @property
    def artifacts_dir(self) -> Path:
        return self._artifacts

    def log(self, msg: str) -> None:
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {msg}\n"
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(line)
        if self._echo is not None:
            self._echo.write(line)
            self._echo.flush()

    def log_metrics(self, step: int, metrics: dict[str, float], epoch: int | None = None) -> None:
        row: dict[str, Any] = {"step": step, "epoch": epoch, "time": round(time.time(), 3)}
        row.update({k: float(v) for k, v in metrics.items()})
        with open(self.metrics_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    def progress(self, epoch: int, step: int, total_steps: int) -> None:
        self.last_progress = (epoch, step, total_steps)
        if self._on_progress is not None:
            self._on_progress(epoch, step, total_steps)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        numbers = self._checkpoint_numbers()
        n = (numbers[-1] + 1) if numbers else 1
        final = self.checkpoint_dir / f"ckpt-{n:06d}.pt"
        tmp = self.checkpoint_dir / f".ckpt-{n:06d}.pt.{os.getpid()}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, final)  # readers see the whole file or none of it
        for old in numbers[: max(0, len(numbers) + 1 - self._keep)]:
            (self.checkpoint_dir / f"ckpt-{old:06d}.pt").unlink(missing_ok=True)

    def load_checkpoint(self) -> dict[str, Any] | None:
        numbers = self._checkpoint_numbers()
        if not numbers:
            return None
        path = self.checkpoint_dir / f"ckpt-{numbers[-1]:06d}.pt"
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        return state

    def should_stop(self) -> bool:
        if self._deadline is not None and time.monotonic() > self._deadline:
            return True
        return self._stop.is_set()

    def request_stop(self) -> None:
        self._stop.set()

    def metrics(self) -> list[dict[str, Any]]:
        """Every row ``log_metrics`` wrote, oldest first."""
        if not self.metrics_path.exists():
            return []
        with open(self.metrics_path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]

    def _checkpoint_numbers(self) -> list[int]:
        found = (CHECKPOINT_RE.match(p.name) for p in self.checkpoint_dir.iterdir())
        return sorted(int(m.group(1)) for m in found if m)


def stderr_context(root: Path | str, device: str = "cpu") -> LocalRunContext:
    """A context that also echoes log lines to stderr: what a person running by hand wants."""
    return LocalRunContext(root, device=device, echo=sys.stderr)


class ScratchContext:
    """A context for a helper model trained inside another run (the image generator's feature
    extractor): it shares the parent's device, log and cancellation, but its checkpoints and
    metrics go nowhere, so they never mix with the parent's."""

    def __init__(self, parent: RunContext, label: str) -> None:
        self._parent = parent
        self._label = label

    @property
    def device(self) -> str:
        return self._parent.device

    @property
    def artifacts_dir(self) -> Path:
        return self._parent.artifacts_dir

    def log(self, msg: str) -> None:
        self._parent.log(f"[{self._label}] {msg}")

    def log_metrics(self, step: int, metrics: dict[str, float], epoch: int | None = None) -> None:
        pass

    def progress(self, epoch: int, step: int, total_steps: int) -> None:
        pass

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        pass  # a helper model is cheap: a retry trains it afresh

    def load_checkpoint(self) -> dict[str, Any] | None:
        return None

    def should_stop(self) -> bool:
        return self._parent.should_stop()
