"""script: run the user's own Python entry point as a job, behind the same Recipe protocol.

The script runs as a child process (``sys.executable -u ENTRYPOINT ARGS``, cwd the code
folder) in its own process group, so a stop or timeout can end it and everything it started.
It talks back through ``gureum.run``: JSON lines in ``events.jsonl`` of a run folder that this
recipe tails, forwarding metrics, progress and checkpoints to the ``RunContext`` as they come.
Its output goes to ``ctx.log`` line by line (never held whole in memory). The model is whatever
the script wrote into ``model_dir()``; it counts as registered only when the script called
``register_model`` and exited 0, which ``registered.json`` beside the model folder records.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

import torch
from pydantic import ConfigDict, Field, field_validator

import gureum
from gureum import run as job_api
from gureum.recipes.base import (
    Cancelled,
    EvalOutput,
    Predictor,
    RecipeBase,
    RecipeError,
    RecipeParams,
    RunContext,
    TrainOutput,
)
from gureum.recipes.dataset import LocalDataset

if TYPE_CHECKING:
    from gureum.recipes.base import Recipe

NAME = "script"
RUN_DIR = "script-run"
MANIFEST_FILE = "manifest.json"
REGISTERED_FILE = "registered.json"
MAX_LINE = 64 * 1024
CUT_MARK = " ...[line cut at 64 KiB]"
TAIL_LINES = 20
TAIL_LINE_CHARS = 2000
POLL_S = 0.2
EVENTS_CHUNK = 4 * 1024 * 1024
STOP_GRACE_S = 3.0  # after writing ``stop``: time to save a checkpoint and exit by itself
KILL_AFTER_S = 5.0  # after the stop request: SIGTERM at STOP_GRACE_S, SIGKILL at this
DRAIN_S = 2.0  # after exit: how long output still held open by a stray process is read
_EOF = object()


class ScriptFailed(RecipeError):
    """The script exited non-zero or was killed; the message ends with its last output."""

    code = "script_failed"


class ScriptParams(RecipeParams):
    """``entrypoint``/``args`` come from the job's code; every other key is the user's own."""

    model_config = ConfigDict(extra="allow", validate_default=True)

    entrypoint: str = Field(..., min_length=1, description="the .py file to run, relative")
    args: list[str] = Field(default_factory=list, description="command-line arguments")

    @field_validator("entrypoint")
    @classmethod
    def _relative_py(cls, v: str) -> str:
        p = PurePosixPath(v)
        if p.is_absolute() or ".." in p.parts or "\\" in v or not v.endswith(".py"):
            raise ValueError("must be a relative path of a .py file inside the code folder")
        return v

    def user_params(self) -> dict[str, Any]:
        """What the script gets as ``gureum.run.params()``."""
        return {k: v for k, v in self.model_dump().items() if k not in {"entrypoint", "args"}}


class _Output:
    """Reads the script's merged stdout/stderr on a thread into a bounded queue, so a chatty
    script blocks on its pipe instead of filling our memory; ``ctx`` is only called from the
    supervising thread."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._q: queue.Queue[object] = queue.Queue(maxsize=1024)
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.done = False
        self._thread = threading.Thread(target=self._read, name="script-output", daemon=True)
        self._thread.start()

    @staticmethod
    def _text(raw: bytes) -> str:
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        if "\r" in text:  # progress bars redraw a line: keep what a terminal would show
            shown = [part for part in text.split("\r") if part.strip()]
            text = shown[-1] if shown else ""
        return text

    def _read(self) -> None:
        try:
            while raw := self._stream.readline(MAX_LINE):
                if len(raw) >= MAX_LINE and not raw.endswith(b"\n"):
                    self._q.put(self._text(raw) + CUT_MARK)
                    while raw and not raw.endswith(b"\n"):  # drop the rest of the line
                        raw = self._stream.readline(MAX_LINE)
                else:
                    self._q.put(self._text(raw))
        except (OSError, ValueError):
            pass  # the pipe was closed under us
        finally:
            self._q.put(_EOF)

    def forward(self, ctx: RunContext, wait_s: float, batch: int = 4096) -> None:
        """Hand queued lines to ``ctx.log``; waits up to ``wait_s`` for the first one."""
        for i in range(batch):
            try:
                item = (
                    self._q.get(timeout=wait_s) if i == 0 and wait_s > 0 else self._q.get_nowait()
                )
            except queue.Empty:
                return
            if item is _EOF:
                self.done = True
                return
            line = str(item)
            ctx.log(line)
            self.tail.append(line[:TAIL_LINE_CHARS])


class _Events:
    """Tails ``events.jsonl`` from where it last stopped; only whole lines are taken."""

    def __init__(self, ctx: RunContext, run_dir: Path) -> None:
        self._ctx = ctx
        self._run_dir = run_dir.resolve()
        self._path = run_dir / job_api.EVENTS_FILE
        self._offset = 0
        self.registered: dict[str, float] | None = None
        self.checkpoints = 0

    def poll(self) -> None:
        """Handle every whole line written since the last call, a bounded chunk at a time."""
        while True:
            try:
                with open(self._path, "rb") as fh:
                    fh.seek(self._offset)
                    data = fh.read(EVENTS_CHUNK)
            except FileNotFoundError:
                return
            end = data.rfind(b"\n")
            if end < 0:
                if len(data) == EVENTS_CHUNK:  # one absurd line: skip it, it is no event
                    self._offset += len(data)
                    continue
                return
            self._offset += end + 1
            for raw in data[: end + 1].splitlines():
                if raw.strip():
                    self._handle(raw)
            if len(data) < EVENTS_CHUNK:
                return

    def _handle(self, raw: bytes) -> None:
        try:
            ev = json.loads(raw)
            kind = ev["type"]
            if kind == "metrics":
                values = {str(k): float(v) for k, v in ev["values"].items()}
                epoch = ev.get("epoch")
                self._ctx.log_metrics(
                    int(ev["step"]), values, None if epoch is None else int(epoch)
                )
            elif kind == "progress":
                self._ctx.progress(int(ev["epoch"]), int(ev["step"]), int(ev["total_steps"]))
            elif kind == "checkpoint":
                self._checkpoint(str(ev["path"]))
            elif kind == "register":
                self.registered = {str(k): float(v) for k, v in (ev.get("metrics") or {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self._ctx.log(f"{NAME}: ignored a malformed event ({exc}): {raw[:200]!r}")

    def _checkpoint(self, raw_path: str) -> None:
        path = (self._run_dir / raw_path).resolve()  # an absolute raw_path stays itself
        if not path.is_relative_to(self._run_dir) or not path.is_file():
            self._ctx.log(f"{NAME}: ignored checkpoint {raw_path!r}: no such file in the run")
            return
        try:
            # weights_only: the context reloads it so on a retry; a state it cannot load there
            # is better refused now, loudly, than at the start of the retry.
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            self._ctx.log(
                f"{NAME}: checkpoint not kept for retries (only tensors, numbers, strings, "
                f"lists and dicts can be resumed): {str(exc).splitlines()[0][:300]}"
            )
            state = None
        if isinstance(state, dict):
            self._ctx.save_checkpoint(state)
            self.checkpoints += 1
        # The newest state becomes resume.pt, so load_checkpoint() later in this run finds it.
        os.replace(path, self._run_dir / job_api.RESUME_FILE)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _has_exited(proc: subprocess.Popen[bytes]) -> bool:
    """Exited, but not reaped: its pid still names the group, so stray children can be
    killed without the pid having been reused."""
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return proc.poll() is not None


def _exit_text(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exited with status {rc}"


class ScriptRecipe(RecipeBase):
    name = NAME
    description = "your own Python entry point, reporting through gureum.run"
    Params = ScriptParams

    def __init__(self, code_dir: Path | None = None) -> None:
        self.code_dir = code_dir

    def with_code(self, code_dir: Path) -> ScriptRecipe:
        """A copy that runs the code in ``code_dir``; the registry's instance has none."""
        return ScriptRecipe(Path(code_dir))

    def check_dataset(self, ds: LocalDataset | None, params: ScriptParams | None = None) -> None:
        """Any dataset, or none: the script decides what it can read."""

    @staticmethod
    def registered(model_dir: Path) -> bool:
        """Whether the script that wrote ``model_dir`` called ``register_model`` and exited 0."""
        return (Path(model_dir).parent / REGISTERED_FILE).is_file()

    def train(self, ctx: RunContext, ds: LocalDataset | None, params: ScriptParams) -> TrainOutput:
        if self.code_dir is None:
            raise RecipeError(f"{NAME}: no code folder given (ScriptRecipe.with_code)")
        code_dir = self.code_dir.resolve()
        entry = code_dir / params.entrypoint
        if not entry.is_file():
            raise RecipeError(f"{NAME}: entrypoint {params.entrypoint!r} is not in the code")
        if ctx.should_stop():
            raise Cancelled("stopped before the script started")
        run_dir = ctx.artifacts_dir.parent / RUN_DIR
        shutil.rmtree(run_dir, ignore_errors=True)  # an earlier attempt's events and stop file
        (run_dir / job_api.MODEL_DIR).mkdir(parents=True)
        resumed = self._write_resume(ctx, run_dir)
        env = self._env(ctx, ds, params, code_dir, run_dir)
        ctx.log(f"{NAME}: running {params.entrypoint} {' '.join(params.args)}".rstrip())
        proc = subprocess.Popen(
            [sys.executable, "-u", str(entry), *params.args],
            cwd=code_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            events, output, stopped = self._supervise(ctx, proc, run_dir)
        finally:
            if proc.returncode is None:  # we are failing ourselves: leave nothing running
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
        rc = proc.returncode
        if events.checkpoints:
            ctx.log(f"{NAME}: kept {events.checkpoints} checkpoint(s)")
        if stopped:
            raise Cancelled(f"script stopped ({_exit_text(rc)})")
        if rc != 0:
            tail = "\n".join(output.tail)
            raise ScriptFailed(f"script {_exit_text(rc)}" + (f"\n{tail}" if tail else ""))
        metrics = events.registered or {}
        if events.registered is not None:
            marker = {"metrics": metrics, "time": round(time.time(), 3)}
            (run_dir / REGISTERED_FILE).write_text(json.dumps(marker, indent=2))
        else:
            ctx.log(f"{NAME}: the script did not call gureum.run.register_model()")
        return TrainOutput(
            run_dir / job_api.MODEL_DIR, metrics, epochs_run=0, resumed_from_epoch=resumed
        )

    @staticmethod
    def _write_resume(ctx: RunContext, run_dir: Path) -> int | None:
        """The context's last checkpoint as ``resume.pt``; returns its ``epoch`` if it has one."""
        state = ctx.load_checkpoint()
        if state is None:
            return None
        tmp = run_dir / f".{job_api.RESUME_FILE}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, run_dir / job_api.RESUME_FILE)
        epoch = state.get("epoch")
        ctx.log(
            f"{NAME}: resuming from the last checkpoint" + (f" (epoch {epoch})" if epoch else "")
        )
        return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None

    @staticmethod
    def _env(
        ctx: RunContext,
        ds: LocalDataset | None,
        params: ScriptParams,
        code_dir: Path,
        run_dir: Path,
    ) -> dict[str, str]:
        env = dict(os.environ)
        for key in ("GUREUM_DATA_DIR", "GUREUM_DATA_MANIFEST"):
            env.pop(key, None)
        if ds is not None:
            manifest = run_dir / MANIFEST_FILE
            manifest.write_text(json.dumps(ds.to_manifest(), indent=2))
            env["GUREUM_DATA_DIR"] = str(Path(ds.root).resolve())
            env["GUREUM_DATA_MANIFEST"] = str(manifest.resolve())
        job_id = getattr(ctx, "job_id", None)
        if isinstance(job_id, str) and job_id:
            env["GUREUM_JOB_ID"] = job_id
        # The code first, then whatever was there, then this gureum, so `import gureum.run`
        # works even where gureum is on our sys.path only (tests, a source checkout).
        package_root = str(Path(gureum.__file__).resolve().parent.parent)
        paths = [str(code_dir), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join([*paths, package_root])
        env.update(
            GUREUM_RUN_DIR=str(run_dir.resolve()),
            GUREUM_PARAMS=json.dumps(params.user_params()),
            GUREUM_DEVICE=ctx.device,
            PYTHONUNBUFFERED="1",
        )
        return env

    @staticmethod
    def _supervise(
        ctx: RunContext, proc: subprocess.Popen[bytes], run_dir: Path
    ) -> tuple[_Events, _Output, bool]:
        """Forward output and events until the script has exited and its output is drained;
        on a stop request: ``stop`` file, then SIGTERM, then SIGKILL to the whole group."""
        assert proc.stdout is not None
        events = _Events(ctx, run_dir)
        output = _Output(proc.stdout)
        stop_at: float | None = None
        term_sent = False
        exit_at: float | None = None
        next_poll = 0.0
        while True:
            output.forward(ctx, POLL_S)
            now = time.monotonic()
            if exit_at is None and _has_exited(proc):
                exit_at = now
                _signal_group(proc.pid, signal.SIGKILL)  # whatever it left behind
            if now >= next_poll or exit_at is not None:
                events.poll()
                next_poll = now + POLL_S
                if stop_at is None and exit_at is None and ctx.should_stop():
                    stop_at = now
                    (run_dir / job_api.STOP_FILE).touch()
                    ctx.log(f"{NAME}: stop requested; asking the script to stop")
            if stop_at is not None and exit_at is None:
                if not term_sent and now - stop_at >= STOP_GRACE_S:
                    term_sent = True
                    _signal_group(proc.pid, signal.SIGTERM)
                if now - stop_at >= KILL_AFTER_S:
                    _signal_group(proc.pid, signal.SIGKILL)
            if exit_at is not None and (output.done or now - exit_at >= DRAIN_S):
                break
        proc.wait()
        output.forward(ctx, 0)
        if output.done:
            proc.stdout.close()
        else:
            ctx.log(f"{NAME}: a process outside the script's group still holds its output")
        events.poll()
        return events, output, stop_at is not None

    def evaluate(self, ctx: RunContext, model_dir: Path, ds: LocalDataset | None) -> EvalOutput:
        """Scripts evaluate themselves: the metrics they registered with the model."""
        marker = Path(model_dir).parent / REGISTERED_FILE
        try:
            metrics = json.loads(marker.read_text())["metrics"]
        except FileNotFoundError:
            return EvalOutput({}, {"registered": False})
        return EvalOutput({str(k): float(v) for k, v in metrics.items()}, {"registered": True})

    def load(self, model_dir: Path, device: str = "cpu") -> Predictor:
        raise RecipeError(f"a {NAME} model has no built-in predictor")

    def export(self, model_dir: Path, dest: Path) -> list[Path]:
        raise RecipeError(f"a {NAME} model has no built-in export; download its files")


if TYPE_CHECKING:
    _satisfies: Recipe[Any] = ScriptRecipe()
