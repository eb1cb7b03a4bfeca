"""The ``predictor`` recipe: a user's ``gureum.serve.Predictor`` served by a pool of sandboxed
worker processes (Triton's Python backend model), never in the replica's own process.

Each worker is ``predictor_worker serve`` under bubblewrap (``compute.sandbox``: every
namespace unshared, no network, scrubbed environment, rlimits), the version's files bound
read-only at ``/model``, a scratch folder of its own writable. The replica talks to it over two
pipes (length-prefixed JSON frames, ``predictor_protocol``). One call takes one idle worker.

What the replica holds the user's code to, without importing it: every input is checked against
the exported input JSON Schema before a worker sees it (``BadInput``, a 422) and every output
against the output schema. Faults become ``ModelFault`` (a 5xx with a request id), and the
replica stays up: an exception in ``predict`` (500 ``model_error``; the worker lives on), a
call past ``timeout_s`` (504 ``model_timeout``), a worker over its memory (RSS of its process
tree, watched from outside every ``WATCH_S``; 500 ``model_out_of_memory``), a worker that dies
or breaks the protocol (500 ``model_crashed``/``model_error``), an output outside the schema
(500 ``bad_output``). A worker that was killed or broke is replaced in the background.

Workers are started by the pool's own long-lived thread: bubblewrap's ``--die-with-parent``
follows the thread that started it, and a replica's loading thread may not live on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import jsonschema  # type: ignore[import-untyped]
import psutil
from jsonschema.exceptions import best_match  # type: ignore[import-untyped]

from gureum.compute import sandbox, user_env
from gureum.config import default_home
from gureum.recipes import prediction_scores as scores
from gureum.recipes.base import BadInput, EvalOutput, RecipeError
from gureum.recipes.predictor import Counted
from gureum.serving import predictor_protocol as proto
from gureum.serving.predictor_protocol import PredictorManifest
from gureum.serving.predictor_sandbox import (
    MODEL_MOUNT,
    SCRATCH_BYTES,
    PredictorUnavailable,
    read_manifest,
    sandbox_argv,
    worker_command,
)
from gureum.serving.units import ModelFault

log = logging.getLogger("ray.serve.gureum")
WATCH_S = 0.25
DEFAULT_MEMORY_BYTES = 4 * sandbox.GiB
WORKER_PROCS = 64
EVAL_BATCH = 64  # inputs per worker call in an evaluation
LOAD_TIMEOUT_S = 600.0
START_WAIT_S = 60.0  # beyond timeout_s, how long a call waits for a worker to be free
RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
STDERR_LINE = 2000
STDERR_PER_S = 50
_STOP = object()


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes]
    scratch: Path
    watchdog: sandbox.Watchdog
    rfd: int = -1
    wfd: int = -1
    killed: str | None = None  # why the pool killed it
    gone: bool = False
    threads: list[threading.Thread] = field(default_factory=list)


def _stderr(index: int, stream: IO[bytes]) -> None:
    """The worker's stderr (and the user's prints) into the replica's log, line by line, at
    most STDERR_PER_S lines a second (the rest are counted, not logged: no log flood)."""
    second, shown, dropped = 0, 0, 0
    with contextlib.suppress(OSError, ValueError):
        for raw in iter(lambda: stream.readline(STDERR_LINE), b""):
            now = int(time.monotonic())
            if now != second:
                if dropped:
                    log.info("predictor[%d]: (%d lines not logged)", index, dropped)
                second, shown, dropped = now, 0, 0
            shown += 1
            if shown > STDERR_PER_S:
                dropped += 1
                continue
            log.info("predictor[%d]: %s", index, raw.decode(errors="replace").rstrip())


def _no_regex(*_: Any) -> Iterator[Any]:
    return iter(())


# JSON Schema checks in the replica, less regular expressions: a user's ``pattern`` could take
# Python's backtracking ``re`` exponential time on a consumer's input, on the replica's own
# thread. The worker's pydantic checks patterns too, in linear time (Rust's regex): a string
# that misses its pattern is refused there, as a 422 all the same.
Checker = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    {"pattern": _no_regex, "patternProperties": _no_regex},
)


def _kill(w: _Worker) -> None:
    sandbox.signal_tree(w.proc.pid, signal.SIGKILL)


def _message(err: jsonschema.ValidationError) -> str:
    where = "".join(f"[{p!r}]" for p in err.absolute_path)
    return f"{where}: {err.message}"


class PredictorPool:
    """``workers`` sandboxed processes serving the predictor in ``model_dir`` (its files, with
    ``code/`` and ``predictor.json``); ``predict`` is thread-safe and blocks its caller."""

    def __init__(
        self,
        model_dir: Path,
        *,
        workers: int = 1,
        memory_bytes: int | None = None,
        forbidden: tuple[Path, ...] = (),
        manifest: PredictorManifest | None = None,
        load_timeout_s: float = LOAD_TIMEOUT_S,
    ) -> None:
        self.model_dir = Path(model_dir).resolve()
        self.code_dir = self.model_dir / proto.CODE_DIR
        self.manifest = manifest or read_manifest(self.model_dir)
        self.unit = self.manifest.unit
        self.timeout_s = self.manifest.timeout_s
        self.size = max(1, workers)
        mb = self.manifest.memory_mb
        self.memory_bytes = memory_bytes or (mb * sandbox.MiB if mb else DEFAULT_MEMORY_BYTES)
        self.forbidden = forbidden
        self._in = Checker(self.manifest.input_schema)
        self._out = Checker(self.manifest.output_schema)
        self.env_dir = user_env.ensure(self.code_dir, lambda m: log.info("predictor: %s", m))
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._live: dict[int, _Worker] = {}
        self._closed = False
        self._failures = 0
        self.restarts = 0
        self._spawns: queue.Queue[Any] = queue.Queue()
        self._first_error: str | None = None
        self._ready = threading.Semaphore(0)
        self._manager = threading.Thread(
            target=_manage,
            args=(weakref.ref(self), self._spawns),
            name="predictor-pool",
            daemon=True,
        )
        self._finalizer = weakref.finalize(self, _shutdown, self._live, self._spawns)
        self._manager.start()
        for i in range(self.size):
            self._spawns.put((i, 0.0, True))
        deadline = time.monotonic() + load_timeout_s
        for _ in range(self.size):
            left = deadline - time.monotonic()
            if not self._ready.acquire(timeout=max(0.0, left)) or self._first_error:
                why = self._first_error or f"not loaded within {load_timeout_s:.0f} s"
                self.close()
                raise PredictorUnavailable(f"the predictor did not load: {why}")

    # -- workers ---------------------------------------------------------------------------

    def _start(self, index: int) -> _Worker:
        """Popen a worker (on the manager thread: see the module's docstring)."""
        scratch = Path(tempfile.mkdtemp(prefix=f"gureum-predictor-{index}-"))
        limits = sandbox.Limits(
            memory_bytes=self.memory_bytes, disk_bytes=SCRATCH_BYTES, max_procs=WORKER_PROCS
        )
        inner = worker_command(
            "serve", MODEL_MOUNT, f"{MODEL_MOUNT}/{proto.CODE_DIR}", env_dir=self.env_dir
        )
        argv, env = sandbox_argv(
            inner,
            limits,
            scratch,
            model_dir=self.model_dir,
            code_dir=scratch,
            env_dir=self.env_dir,
            forbidden=self.forbidden,
        )
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert proc.stdin and proc.stdout and proc.stderr
        w = _Worker(index, proc, scratch, sandbox.Watchdog(proc.pid, limits, scratch))
        w.wfd, w.rfd = proc.stdin.fileno(), proc.stdout.fileno()
        os.set_blocking(w.wfd, False)
        os.set_blocking(w.rfd, False)
        t = threading.Thread(target=_stderr, args=(index, proc.stderr), daemon=True)
        t.start()
        w.threads.append(t)
        return w

    def _handshake(self, w: _Worker, first: bool) -> None:
        """Wait for the worker's ready frame (on a thread of its own), then make it idle."""
        try:
            reply = proto.recv(w.rfd, time.monotonic() + LOAD_TIMEOUT_S, max_bytes=1 << 20)
            ok = isinstance(reply, dict) and reply.get("ready") is True
            why = "" if ok else str(reply.get("error") if isinstance(reply, dict) else reply)
        except (proto.ChannelClosed, proto.ChannelTimeout, proto.ProtocolError) as exc:
            ok, why = False, w.killed or f"the worker exited while loading ({type(exc).__name__})"
        if not ok:
            log.warning("predictor worker %d did not load: %s", w.index, why[-4000:])
            self._retire(w, why, replace=not first)
            if first and self._first_error is None:
                self._first_error = why[-2000:]
            if first:
                self._ready.release()
            return
        with self._cond:
            if self._closed:
                self._retire(w, "closed", replace=False)
                return
            self._failures = 0
            self._idle.append(w)
            self._cond.notify()
        if first:
            self._ready.release()

    def _retire(self, w: _Worker, why: str, replace: bool = True) -> None:
        """Kill ``w`` (its whole sandbox), reap it, free its folder; start another if asked."""
        with self._cond:
            if w.gone:
                return
            w.gone = True
            w.killed = w.killed or why
            self._live.pop(w.index, None)
            if w in self._idle:
                self._idle.remove(w)
        _kill(w)
        with contextlib.suppress(subprocess.TimeoutExpired):
            w.proc.wait(timeout=5)
        for f in (w.proc.stdin, w.proc.stdout):
            with contextlib.suppress(OSError):
                f.close()  # type: ignore[union-attr]
        shutil.rmtree(w.scratch, ignore_errors=True)
        if replace and not self._closed:
            self.restarts += 1
            self._failures += 1
            backoff = RESTART_BACKOFF_S[min(self._failures, len(RESTART_BACKOFF_S)) - 1]
            self._spawns.put(
                (w.index, time.monotonic() + (0 if self._failures < 2 else backoff), False)
            )

    def _watch(self) -> None:
        """Memory, processes and scratch of every worker; a dead idle worker is replaced."""
        now = time.monotonic()
        for w in list(self._live.values()):
            if w.gone:
                continue
            if w.proc.poll() is not None:
                with self._cond:
                    idle = w in self._idle
                if idle:
                    self._retire(w, "the worker exited while idle")
                continue
            why = w.watchdog.check(now)
            if why is not None:
                log.warning("predictor worker %d killed: it %s", w.index, why)
                w.killed = f"memory: {why}" if "memory" in why else why
                _kill(w)

    # -- calls -----------------------------------------------------------------------------

    def _take(self) -> _Worker:
        """An idle worker; waits for one to finish or to be started (a replacement loads)."""
        deadline = time.monotonic() + self.timeout_s + START_WAIT_S
        with self._cond:
            while self._closed or not self._idle:
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    raise ModelFault(503, "model_unavailable", "no model worker is free; retry")
                self._cond.wait(left)
            return self._idle.pop()

    def _give_back(self, w: _Worker) -> None:
        with self._cond:
            if not w.gone and not self._closed:
                self._idle.append(w)
                self._cond.notify()

    def check_inputs(self, inputs: list[Any]) -> None:
        for i, x in enumerate(inputs):
            if not self._in.is_valid(x):
                err = best_match(self._in.iter_errors(x))
                raise BadInput(f"inputs[{i}]{_message(err)}"[:2000])

    def predict(self, inputs: list[Any]) -> list[Any]:
        """Outputs for ``inputs`` (each a ``Counted`` with its units); ``BadInput`` for an
        input outside the schema, ``ModelFault`` for whatever the model did wrong."""
        self.check_inputs(inputs)
        payload = proto.dumps({"inputs": inputs})
        w = self._take()
        deadline = time.monotonic() + self.timeout_s
        try:
            proto.send(w.wfd, payload, deadline)
            reply = proto.recv(w.rfd, deadline)
        except proto.ChannelTimeout:
            w.killed = w.killed or "timeout"
            self._retire(w, "timeout")
            raise ModelFault(
                504, "model_timeout", f"the model did not answer within {self.timeout_s:g} s"
            ) from None
        except proto.ChannelClosed:
            self._watch_once(w)
            why = w.killed or "the worker process exited"
            self._retire(w, why)
            if why.startswith("memory"):
                raise ModelFault(
                    500,
                    "model_out_of_memory",
                    f"the model used more than its memory limit ({self.memory_bytes >> 20} MiB)",
                    why,
                ) from None
            raise ModelFault(500, "model_crashed", "the model's process exited", why) from None
        except proto.ProtocolError as exc:
            self._retire(w, f"protocol: {exc}")
            raise ModelFault(500, "model_error", "the model answered garbage", str(exc)) from None
        return self._outputs(w, reply, len(inputs))

    def _watch_once(self, w: _Worker) -> None:
        """A worker that died on its own may have died of memory the watchdog had not seen."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            w.proc.wait(timeout=1)

    def _outputs(self, w: _Worker, reply: Any, n: int) -> list[Any]:
        if not isinstance(reply, dict):
            self._retire(w, "protocol: not an object")
            raise ModelFault(500, "model_error", "the model answered garbage")
        if not reply.get("ok"):
            self._give_back(w)  # a Python exception: the worker is fine
            kind, detail = str(reply.get("kind")), str(reply.get("error", ""))
            if kind == "bad_input":
                raise BadInput(f"the model refused an input: {detail}"[:2000])
            if kind == "bad_output":
                raise ModelFault(
                    500, "bad_output", "the model's output does not match its schema", detail
                )
            raise ModelFault(500, "model_error", "the model failed", detail)
        outputs, units = reply.get("outputs"), reply.get("units")
        if not (isinstance(outputs, list) and isinstance(units, list) and len(outputs) == n):
            self._retire(w, "protocol: outputs")
            raise ModelFault(500, "bad_output", "the model's output does not match its schema")
        bad = next((o for o in outputs if not self._out.is_valid(o)), None)
        if bad is not None or len(units) != n or not all(_units_ok(u) for u in units):
            # The worker's own check passed these: it was bypassed, so it is not trusted again.
            detail = _message(best_match(self._out.iter_errors(bad))) if bad is not None else ""
            self._retire(w, "protocol: output outside its schema")
            raise ModelFault(
                500, "bad_output", "the model's output does not match its schema", detail
            )
        self._give_back(w)
        return [Counted(o, float(u)) for o, u in zip(outputs, units, strict=True)]

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._idle.clear()
            self._cond.notify_all()
        self._finalizer()


def _units_ok(u: Any) -> bool:
    return isinstance(u, int | float) and not isinstance(u, bool) and 0 <= u < float("inf")


def _shutdown(live: dict[int, _Worker], spawns: queue.Queue[Any]) -> None:
    spawns.put(_STOP)
    for w in list(live.values()):
        _kill(w)
        with contextlib.suppress(subprocess.TimeoutExpired):
            w.proc.wait(timeout=5)
        shutil.rmtree(w.scratch, ignore_errors=True)
    live.clear()


def _manage(ref: weakref.ref[PredictorPool], spawns: queue.Queue[Any]) -> None:
    """The pool's own thread: starts workers (their parent for ``--die-with-parent``) and
    watches them every WATCH_S. Holds the pool only weakly, so a pool nobody uses is closed
    by the garbage collector (a replica that loaded another version)."""
    pending: list[tuple[int, float, bool]] = []
    while True:
        try:
            item = spawns.get(timeout=WATCH_S)
        except queue.Empty:
            item = None
        if item is _STOP:
            return
        if item is not None:
            pending.append(item)
        pool = ref()
        if pool is None or pool._closed:
            return
        now = time.monotonic()
        due = [p for p in pending if p[1] <= now]
        pending = [p for p in pending if p[1] > now]
        for index, _, first in due:
            try:
                w = pool._start(index)
            except Exception as exc:  # no sandbox, no memory: say so, try again later
                log.warning("predictor worker %d did not start: %s", index, exc)
                if first:
                    pool._first_error = str(exc)
                    pool._ready.release()
                else:
                    pending.append((index, now + RESTART_BACKOFF_S[-1], False))
                continue
            pool._live[index] = w
            threading.Thread(target=pool._handshake, args=(w, first), daemon=True).start()
        pool._watch()
        del pool


def replica_resources() -> tuple[int, int | None]:
    """(CPUs, memory bytes) Ray gave this replica: one worker per CPU (at least one)."""
    try:
        import ray

        ctx = ray.get_runtime_context() if ray.is_initialized() else None
        assigned = ctx.get_assigned_resources() if ctx is not None else {}  # type: ignore[no-untyped-call]
    except Exception:
        assigned = {}
    cpus = max(1, int(assigned.get("CPU", 1) + 0.5))
    memory = assigned.get("memory")
    return cpus, int(memory) if memory else None


def fault_error(exc: ModelFault) -> RecipeError:
    """A model's fault in a job of the developer's own: the model's error text is theirs."""
    return RecipeError(f"{exc.code}: {exc.what}\n{exc.detail[-2000:]}".rstrip())


class PredictorRecipe:
    """The ``predictor`` recipe's implementation (``recipes.specs``): serves, does not train."""

    name = "predictor"
    description = "your own gureum.serve.Predictor, served by sandboxed worker processes"

    def __init__(self, forbidden: tuple[Path, ...] | None = None) -> None:
        self.forbidden = forbidden if forbidden is not None else (default_home(),)

    def evaluate(
        self, ctx: Any, model_dir: Path, ds: Any, params: dict[str, Any] | None = None
    ) -> EvalOutput:
        """The predictor's outputs on the validation split, scored against its truth (see
        ``recipes.prediction_scores``; tables name their truth column in ``params.target``)."""
        inputs, truth = scores.validation_examples(ds, params or {})
        ctx.log(f"evaluating on {len(inputs)} validation examples")
        pool = self.load(model_dir)
        try:
            return scores.scored(ctx, self.name, pool.predict, inputs, truth, EVAL_BATCH)
        except ModelFault as exc:
            raise fault_error(exc) from None
        finally:
            pool.close()

    def load(self, model_dir: Path, device: str = "cpu") -> PredictorPool:
        """A pool of one worker per CPU of the replica; each worker's memory is what the class
        asks for (``memory_mb``), else its share of the replica's, else a default bounded by
        this machine."""
        manifest = read_manifest(Path(model_dir))
        cpus, memory = replica_resources()
        if manifest.memory_mb:
            per_worker = manifest.memory_mb * sandbox.MiB
        elif memory:
            per_worker = memory // cpus
        else:
            per_worker = min(DEFAULT_MEMORY_BYTES, int(psutil.virtual_memory().total * 0.9) // cpus)
        return PredictorPool(
            Path(model_dir),
            workers=cpus,
            memory_bytes=per_worker,
            forbidden=self.forbidden,
            manifest=manifest,
        )
