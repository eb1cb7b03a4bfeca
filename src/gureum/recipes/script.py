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
import stat
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch

import gureum
from gureum import run as job_api
from gureum.compute import sandbox, user_env
from gureum.compute.sandbox_init import RANKS_DIR
from gureum.recipes.base import (
    Cancelled,
    EvalOutput,
    Predictor,
    RecipeBase,
    RecipeError,
    RunContext,
    TrainOutput,
    checkpoint_requested,
)
from gureum.recipes.dataset import LocalDataset
from gureum.recipes.params import SCRIPT as NAME
from gureum.recipes.params import ScriptParams as ScriptParams
from gureum.recipes.params import check_script_dataset
from gureum.recipes.specs import SPECS

if TYPE_CHECKING:
    from gureum.recipes.base import Recipe

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
WATCH_S = 0.5  # how often the sandbox's memory, processes and disk are checked
HOME_DIR = "home"
REDACTED = "[secret]"
DIST_ENV = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "NODE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
)
MIN_REDACT = 4  # shorter secret values would blank out ordinary text
_EOF = object()


class ScriptFailed(RecipeError):
    """The script exited non-zero or was killed; the message ends with its last output."""

    code = "script_failed"


class SandboxRefused(RecipeError):
    """User code would have to run outside the sandbox, and no site admin allowed that."""

    code = "sandbox_unavailable"


class _Output:
    """Reads the script's merged stdout/stderr on a thread into a bounded queue, so a chatty
    script blocks on its pipe instead of filling our memory; ``ctx`` is only called from the
    supervising thread."""

    def __init__(self, stream: IO[bytes], redact: tuple[str, ...] = ()) -> None:
        self._stream = stream
        # Longest first, so a secret containing another is hidden whole.
        self._redact = sorted((v for v in redact if len(v) >= MIN_REDACT), key=len, reverse=True)
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

    def _hide(self, text: str) -> str:
        for value in self._redact:
            if value in text:
                text = text.replace(value, REDACTED)
        return text

    def _read(self) -> None:
        try:
            while raw := self._stream.readline(MAX_LINE):
                if len(raw) >= MAX_LINE and not raw.endswith(b"\n"):
                    self._q.put(self._hide(self._text(raw)) + CUT_MARK)
                    while raw and not raw.endswith(b"\n"):  # drop the rest of the line
                        raw = self._stream.readline(MAX_LINE)
                else:
                    self._q.put(self._hide(self._text(raw)))
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
                with _open_nofollow(self._path) as fh:
                    fh.seek(self._offset)
                    data = fh.read(EVENTS_CHUNK)
            except OSError:  # not there yet, or a link (ELOOP): nothing we may read
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
            with _open_nofollow(path) as fh:
                state = torch.load(fh, map_location="cpu", weights_only=True)
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


def _open_nofollow(path: Path) -> IO[bytes]:
    """Open a file the script wrote, refusing a symlink (it could point at our secrets)."""
    return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb")


def _touch_nofollow(path: Path) -> None:
    """Create ``path`` in a folder the script controls without following its links."""
    if path.parent.is_symlink():
        return
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644))


def _keep_plain_files(ctx: RunContext, run_dir: Path) -> None:
    """Remove symlinks and special files the script left in its model folder: we upload
    that folder as the control plane's OS user, and a link could name any file of ours."""
    model = run_dir / job_api.MODEL_DIR
    if model.is_symlink() or (model.exists() and not model.is_dir()):
        model.unlink()
    model.mkdir(exist_ok=True)
    for folder, dirs, files in os.walk(model):  # never follows links
        for name in [*dirs, *files]:
            path = Path(folder) / name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode) or not (
                stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)
            ):
                path.unlink()
                ctx.log(
                    f"{NAME}: dropped {path.relative_to(run_dir)} "
                    "(links and special files are not kept)"
                )
        dirs[:] = [
            d for d in dirs if (Path(folder) / d).is_dir() and not (Path(folder) / d).is_symlink()
        ]


def _kill(pid: int) -> None:
    """SIGKILL to the process group and to every process under ``pid`` (a sandbox's own
    session included; its namespace dies with it anyway)."""
    sandbox.signal_tree(pid, signal.SIGKILL, include_root=False)
    _signal_group(pid, signal.SIGKILL)


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
    description = SPECS[NAME].description
    Params = ScriptParams

    def __init__(self, code_dir: Path | None = None, policy: sandbox.Policy | None = None) -> None:
        self.code_dir = code_dir
        self.policy = policy

    def with_code(self, code_dir: Path, policy: sandbox.Policy | None = None) -> ScriptRecipe:
        """A copy that runs the code in ``code_dir``; the registry's instance has none.

        The platform always gives a ``policy`` (sandboxed, scrubbed environment, limits);
        without one the script runs as a plain child process, for a script run by hand."""
        return ScriptRecipe(Path(code_dir), policy)

    def check_dataset(self, ds: LocalDataset | None, params: ScriptParams | None = None) -> None:
        check_script_dataset(ds, params)

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
        job_env = self._job_env(ctx, ds, params, run_dir)
        command = [sys.executable, "-u", str(entry), *params.args]
        env_dir = user_env.ensure(code_dir, ctx.log)  # requirements.txt: wheels, cached
        if self.policy is None:
            argv, env = command, self._host_env(job_env, code_dir)
        else:
            argv, env = self._policed(
                ctx, self.policy, ds, code_dir, run_dir, command, job_env, env_dir
            )
        if env_dir is not None:  # right after the code folder on the script's path
            first, _, rest = env["PYTHONPATH"].partition(os.pathsep)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [first, str(env_dir), rest]))
        ctx.log(f"{NAME}: running {params.entrypoint} {' '.join(params.args)}".rstrip())
        proc = subprocess.Popen(
            argv,
            cwd=code_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        watchdog = None
        if self.policy is not None:
            watchdog = sandbox.Watchdog(proc.pid, self.policy.limits, run_dir)
        try:
            events, output, stopped, killed = self._supervise(
                ctx, proc, run_dir, watchdog, self.policy
            )
        finally:
            if proc.returncode is None:  # we are failing ourselves: leave nothing running
                _kill(proc.pid)
                proc.wait()
        rc = proc.returncode
        if self.policy is not None and rc > 128 and rc - 128 in signal.valid_signals():
            rc = 128 - rc  # bwrap and sandbox_init report a signal as 128 + its number
        if events.checkpoints:
            ctx.log(f"{NAME}: kept {events.checkpoints} checkpoint(s)")
        if stopped:
            raise Cancelled(f"script stopped ({_exit_text(rc)})")
        if killed is not None:
            raise ScriptFailed(f"script killed by the platform: it {killed}")
        if rc != 0:
            tail = "\n".join(output.tail)
            raise ScriptFailed(f"script {_exit_text(rc)}" + (f"\n{tail}" if tail else ""))
        metrics = events.registered or {}
        _keep_plain_files(ctx, run_dir)  # the script's links must not lead us outside
        (run_dir / REGISTERED_FILE).unlink(missing_ok=True)  # only ours counts
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
    def _job_env(
        ctx: RunContext, ds: LocalDataset | None, params: ScriptParams, run_dir: Path
    ) -> dict[str, str]:
        """The ``gureum.run`` channel: the only variables of ours the script gets."""
        env: dict[str, str] = {}
        if ds is not None:
            manifest = run_dir / MANIFEST_FILE
            manifest.write_text(json.dumps(ds.to_manifest(), indent=2))
            env["GUREUM_DATA_DIR"] = str(Path(ds.root).resolve())
            env["GUREUM_DATA_MANIFEST"] = str(manifest.resolve())
        job_id = getattr(ctx, "job_id", None)
        if isinstance(job_id, str) and job_id:
            env["GUREUM_JOB_ID"] = job_id
        env.update(
            GUREUM_RUN_DIR=str(run_dir.resolve()),
            GUREUM_PARAMS=json.dumps(params.user_params()),
            GUREUM_DEVICE=ctx.device,
        )
        return env

    @staticmethod
    def _host_env(job_env: dict[str, str], code_dir: Path) -> dict[str, str]:
        """By hand (no policy): our environment plus the job's channel."""
        env = dict(os.environ)
        for key in ("GUREUM_DATA_DIR", "GUREUM_DATA_MANIFEST"):
            env.pop(key, None)
        # The code first, then whatever was there, then this gureum, so `import gureum.run`
        # works even where gureum is on our sys.path only (tests, a source checkout).
        package_root = str(Path(gureum.__file__).resolve().parent.parent)
        paths = [str(code_dir), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join([*paths, package_root])
        env.update(job_env, PYTHONUNBUFFERED="1")
        return env

    @staticmethod
    def _policed(
        ctx: RunContext,
        policy: sandbox.Policy,
        ds: LocalDataset | None,
        code_dir: Path,
        run_dir: Path,
        command: list[str],
        job_env: dict[str, str],
        env_dir: Path | None = None,
    ) -> tuple[list[str], dict[str, str]]:
        """(argv, environment) of the platform's run: ``sandbox_init`` (rlimits, ranks) inside
        bubblewrap, or on the host only where a site admin allowed unsandboxed code."""
        home = run_dir / HOME_DIR
        home.mkdir(exist_ok=True)
        try:
            env = sandbox.environment(
                job_env,
                home=home,
                code_dir=code_dir,
                cpus=policy.cpus,
                secrets=dict(policy.secrets),
            )
        except sandbox.SandboxError as exc:
            raise SandboxRefused(f"{NAME}: {exc}") from None
        if policy.host_network:  # a Ray Train rank: Ray Train set where the ranks meet
            env.update({k: os.environ[k] for k in DIST_ENV if k in os.environ})
        inner = sandbox.init_argv(command, policy.limits, ranks=policy.ranks, run_dir=run_dir)
        bwrap = sandbox.bwrap_path()
        why = "its ranks span nodes" if policy.host_network else sandbox.probe(bwrap)
        if why is None:
            layout = sandbox.Layout(
                run_dir,
                code_dir,
                data_dir=Path(ds.root) if ds is not None and Path(ds.root).is_dir() else None,
                forbidden=policy.forbidden,
                gpu=ctx.device.startswith("cuda"),
                python_roots=sandbox.python_roots() + ((env_dir,) if env_dir else ()),
            )
            try:
                return [bwrap, *sandbox.bwrap_args(layout), "--", *inner], env
            except sandbox.SandboxError as exc:
                raise SandboxRefused(f"{NAME}: {exc}") from None
        if not policy.unsandboxed_ok:
            raise SandboxRefused(
                f"{NAME}: user code runs only in a sandbox and {why}; a site admin can allow "
                "unsandboxed code (PUT /v1/settings/allow_unsandboxed_code)"
            )
        ctx.log(f"{NAME}: running WITHOUT a sandbox ({why}); a site admin allowed unsandboxed code")
        return inner, env

    @staticmethod
    def _supervise(
        ctx: RunContext,
        proc: subprocess.Popen[bytes],
        run_dir: Path,
        watchdog: sandbox.Watchdog | None = None,
        policy: sandbox.Policy | None = None,
    ) -> tuple[_Events, _Output, bool, str | None]:
        """Forward output and events until the script has exited and its output is drained;
        on a stop request: ``stop`` file, then SIGTERM, then SIGKILL to the whole group; over a
        limit the watchdog names: SIGKILL, and the reason is returned."""
        assert proc.stdout is not None
        events = _Events(ctx, run_dir)
        output = _Output(proc.stdout, tuple(v for _, v in policy.secrets) if policy else ())
        stop_at: float | None = None
        term_sent = asked = False
        exit_at: float | None = None
        next_poll = next_watch = 0.0
        killed: str | None = None
        while True:
            output.forward(ctx, POLL_S)
            now = time.monotonic()
            if exit_at is None and _has_exited(proc):
                exit_at = now
                _signal_group(proc.pid, signal.SIGKILL)  # whatever it left behind
            if watchdog is not None and exit_at is None and killed is None and now >= next_watch:
                next_watch = now + WATCH_S
                killed = watchdog.check(now)
                if killed is not None:
                    ctx.log(f"{NAME}: killing the script: it {killed}")
                    _kill(proc.pid)
            if now >= next_poll or exit_at is not None:
                events.poll()
                next_poll = now + POLL_S
                if stop_at is None and exit_at is None and ctx.should_stop():
                    stop_at = now
                    for folder in [run_dir, *(run_dir / RANKS_DIR).glob("*")]:
                        _touch_nofollow(folder / job_api.STOP_FILE)
                    ctx.log(f"{NAME}: stop requested; asking the script to stop")
                if not asked and exit_at is None and checkpoint_requested(ctx):
                    asked = True  # a preemption: gureum.run.should_checkpoint() says so
                    for folder in [run_dir, *(run_dir / RANKS_DIR).glob("*")]:
                        _touch_nofollow(folder / job_api.CHECKPOINT_FILE)
                    ctx.log(f"{NAME}: checkpoint requested; asking the script to save one")
            if stop_at is not None and exit_at is None:
                if not term_sent and now - stop_at >= STOP_GRACE_S:
                    term_sent = True
                    _signal_group(proc.pid, signal.SIGTERM)
                    # A sandbox's processes sit in their own session: signal them directly.
                    sandbox.signal_tree(proc.pid, signal.SIGTERM, include_root=False)
                if now - stop_at >= KILL_AFTER_S:
                    _kill(proc.pid)
            if exit_at is not None and (output.done or now - exit_at >= DRAIN_S):
                break
        proc.wait()
        output.forward(ctx, 0)
        if output.done:
            proc.stdout.close()
        else:
            ctx.log(f"{NAME}: a process outside the script's group still holds its output")
        events.poll()
        return events, output, stop_at is not None, killed

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
