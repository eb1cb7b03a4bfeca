"""The API a ``script`` job's own code uses to talk to the platform.

    import gureum.run as run

    params = run.params()
    state = run.load_checkpoint() or {"epoch": 0}
    for epoch in range(state["epoch"], params.get("epochs", 3)):
        ...
        run.log_metrics({"loss": loss}, step=step, epoch=epoch)
        run.save_checkpoint({"epoch": epoch + 1, "model": net.state_dict()})
        if run.should_stop():
            break
        # Within a long epoch: the platform asks for a checkpoint before it preempts the job.
        # if run.should_checkpoint(): run.save_checkpoint({...})
    torch.save(net.state_dict(), run.model_dir() / "model.pt")
    run.register_model(metrics={"accuracy": acc})

The runner (``gureum.recipes.script``) sets ``GUREUM_*`` environment variables and reads
``events.jsonl`` in the run folder, so this module is plain files: no server, no network, and
torch is imported only when a checkpoint is saved or loaded. Outside a job (a script run by
hand) everything still works against ``./gureum-run``, so scripts can be developed locally.

Run folder layout::

    events.jsonl        one JSON object per call (metrics, progress, checkpoint, register)
    spool/ckpt-N.pt     checkpoints the runner has not taken over yet
    resume.pt           the job's last checkpoint (written by the runner)
    model/              model_dir(): the files registered as the model version
    stop                present once the runner asks the script to stop
    checkpoint          present once the runner asks for a checkpoint (before a preemption);
                        save_checkpoint() removes it
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any

__all__ = [
    "data_dir",
    "device",
    "job_id",
    "load_checkpoint",
    "log_metrics",
    "manifest",
    "model_dir",
    "params",
    "progress",
    "register_model",
    "run_dir",
    "save_checkpoint",
    "should_checkpoint",
    "should_stop",
]

LOCAL_RUN_DIR = "gureum-run"
EVENTS_FILE = "events.jsonl"
SPOOL_DIR = "spool"
RESUME_FILE = "resume.pt"
MODEL_DIR = "model"
STOP_FILE = "stop"
CHECKPOINT_FILE = "checkpoint"
SPOOL_RE = re.compile(r"^ckpt-(\d+)\.pt$")
LOCAL_KEEP = 2  # spool files kept by hand-runs, where no runner takes them over

_lock = threading.Lock()
_last_number = 0


def _in_job() -> bool:
    return bool(os.environ.get("GUREUM_RUN_DIR"))


def run_dir() -> Path:
    """The run folder: ``$GUREUM_RUN_DIR`` in a job, else ``./gureum-run`` (created)."""
    root = Path(os.environ.get("GUREUM_RUN_DIR") or Path.cwd() / LOCAL_RUN_DIR)
    root.mkdir(parents=True, exist_ok=True)
    return root


def params() -> dict[str, Any]:
    """The job's parameters (``GUREUM_PARAMS``); ``{}`` outside a job."""
    raw = os.environ.get("GUREUM_PARAMS")
    if not raw:
        return {}
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("GUREUM_PARAMS is not a JSON object")
    return value


def data_dir() -> Path | None:
    """The folder holding the dataset version's files, or None when the job has no dataset."""
    raw = os.environ.get("GUREUM_DATA_DIR")
    return Path(raw) if raw else None


def manifest() -> dict[str, Any] | None:
    """The dataset version's manifest (kind, schema, split, files with label and split)."""
    raw = os.environ.get("GUREUM_DATA_MANIFEST")
    if not raw:
        return None
    value = json.loads(Path(raw).read_text(encoding="utf-8"))
    return value if isinstance(value, dict) else None


def device() -> str:
    """``"cpu"`` or ``"cuda"`` as the platform chose; by hand, whatever this machine has."""
    chosen = os.environ.get("GUREUM_DEVICE")
    if chosen:
        return chosen
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def job_id() -> str | None:
    return os.environ.get("GUREUM_JOB_ID") or None


def _emit(event: dict[str, Any]) -> None:
    """One JSON line the runner tails; flushed so it sees it while the script runs on."""
    line = json.dumps(event) + "\n"
    with _lock, open(run_dir() / EVENTS_FILE, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in metrics.items()}


def log_metrics(metrics: dict[str, float], step: int, epoch: int | None = None) -> None:
    """Scalars at a training step (0-d tensors are fine); they appear in the job's charts."""
    values = _floats(metrics)
    _emit(
        {
            "type": "metrics",
            "step": int(step),
            "epoch": None if epoch is None else int(epoch),
            "values": values,
        }
    )


def progress(epoch: int, step: int, total_steps: int) -> None:
    """``step`` counts from the start of training, out of ``total_steps`` for the run."""
    _emit(
        {
            "type": "progress",
            "epoch": int(epoch),
            "step": int(step),
            "total_steps": int(total_steps),
        }
    )


def _spool_numbers(spool: Path) -> list[int]:
    if not spool.is_dir():
        return []
    found = (SPOOL_RE.match(p.name) for p in spool.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def save_checkpoint(state: dict[str, Any]) -> None:
    """Keep ``state`` so a retry resumes from it (``load_checkpoint``). Tensors, numbers,
    strings, lists and dicts only: that is what a resume can load safely."""
    import torch

    global _last_number
    spool = run_dir() / SPOOL_DIR
    spool.mkdir(parents=True, exist_ok=True)
    with _lock:
        numbers = _spool_numbers(spool)
        _last_number = max([_last_number, *numbers]) + 1
        n = _last_number
    final = spool / f"ckpt-{n:06d}.pt"
    tmp = spool / f".ckpt-{n:06d}.pt.{os.getpid()}.tmp"
    (run_dir() / CHECKPOINT_FILE).unlink(missing_ok=True)  # this one answers the request
    torch.save(state, tmp)
    os.replace(tmp, final)  # the runner sees the whole file or none of it
    _emit({"type": "checkpoint", "path": str(final.resolve())})
    if not _in_job():
        for old in _spool_numbers(spool)[:-LOCAL_KEEP]:
            (spool / f"ckpt-{old:06d}.pt").unlink(missing_ok=True)


def load_checkpoint() -> dict[str, Any] | None:
    """The job's last checkpoint (from an earlier attempt or earlier in this one), or None.

    The newest spool file is newer than ``resume.pt``; the runner moves spool files onto
    ``resume.pt`` as it takes them over, so a file vanishing mid-look means: look again.
    """
    import torch

    root = run_dir()
    spool = root / SPOOL_DIR
    for _ in range(10):
        candidates = [spool / f"ckpt-{n:06d}.pt" for n in reversed(_spool_numbers(spool))]
        candidates.append(root / RESUME_FILE)
        for path in candidates:
            try:
                state = torch.load(path, map_location="cpu", weights_only=False)
            except FileNotFoundError:
                continue
            if not isinstance(state, dict):
                raise ValueError(f"{path} does not hold a dict")
            return state
        if not _spool_numbers(spool):
            return None
    return None


def model_dir() -> Path:
    """The folder the script writes its model files into (created)."""
    path = run_dir() / MODEL_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def register_model(metrics: dict[str, float] | None = None, path: str | Path | None = None) -> None:
    """Ask for ``model_dir()`` to become a model version with these final metrics once the
    script exits 0. ``path`` (a file or folder) is copied into ``model_dir()`` first."""
    target = model_dir()
    if path is not None:
        src = Path(path).resolve()
        if not src.exists():
            raise FileNotFoundError(f"{src} does not exist")
        if src.is_dir():
            if src != target.resolve():
                shutil.copytree(src, target, dirs_exist_ok=True)
        elif src.parent != target.resolve():
            shutil.copy2(src, target / src.name)
    _emit({"type": "register", "metrics": _floats(metrics or {})})


def should_stop() -> bool:
    """True once the platform asked the job to stop (cancel, timeout): save and exit."""
    return (run_dir() / STOP_FILE).exists()


def should_checkpoint() -> bool:
    """True once the platform asked for a checkpoint: it is about to preempt the job (an
    endpoint needs the room) and waits up to a grace period (``preempt_grace_s``, 30 s by
    default) for one. Save one with ``save_checkpoint`` (which answers the request) at the next
    step; the job is then stopped and later resumes from it (``load_checkpoint``)."""
    return (run_dir() / CHECKPOINT_FILE).exists()
