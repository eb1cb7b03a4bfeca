"""Running a user's predictor program in the sandbox, and reading what it exported.

``sandbox_argv`` builds bubblewrap's command line for ``predictor_worker`` (the registration's
export and the serving workers alike); ``export_manifest`` runs the export at registration, so
that the class's ``Input``/``Output`` JSON Schemas come out of the sandbox as data and the
replica never imports user code; ``read_manifest`` reads them back from a version's files,
checked again (a version's files may have been imported by hand).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]

import gureum
from gureum.compute import sandbox, user_env
from gureum.recipes.base import RecipeError
from gureum.serve import DISCOVERY_FILE
from gureum.serving import predictor_protocol as proto
from gureum.serving.predictor_protocol import PredictorManifest

MODEL_MOUNT = "/model"  # where a worker sees the version's files
SCRATCH_BYTES = 256 * sandbox.MiB
EXPORT_TIMEOUT_S = 120.0
EXPORT_MEMORY_BYTES = 2 * sandbox.GiB


class PredictorUnavailable(RecipeError):
    """The predictor cannot be served here (no sandbox, a bad manifest, a failed load)."""

    code = "predictor_unavailable"


def sandbox_argv(
    inner: list[str],
    limits: sandbox.Limits,
    scratch: Path,
    *,
    model_dir: Path | None,
    code_dir: Path,
    env_dir: Path | None,
    forbidden: tuple[Path, ...],
) -> tuple[list[str], dict[str, str]]:
    """bubblewrap's argv and the environment for one predictor program (``inner``): the
    platform's python and gureum, ``env_dir`` and ``code_dir`` read-only, ``scratch``
    writable (its home and working folder), ``model_dir`` read-only at ``/model``."""
    bwrap = sandbox.bwrap_path()
    why = sandbox.probe(bwrap)
    if why is not None:
        raise PredictorUnavailable(f"user predictors run only in a sandbox, and {why}")
    roots = sandbox.python_roots() + ((env_dir.resolve(),) if env_dir else ())
    # GPUs Ray gave this process (CUDA_VISIBLE_DEVICES names them): the devices are shown.
    gpu = bool(os.environ.get("CUDA_VISIBLE_DEVICES")) and any(Path("/dev").glob("nvidia*"))
    layout = sandbox.Layout(scratch, code_dir, forbidden=forbidden, python_roots=roots, gpu=gpu)
    try:
        args = sandbox.bwrap_args(layout)
    except sandbox.SandboxError as exc:
        raise PredictorUnavailable(str(exc)) from None
    if model_dir is not None:  # the version's own files only; bound after the checks above
        args += ["--ro-bind", str(model_dir.resolve()), MODEL_MOUNT]
    env = sandbox.environment({}, home=scratch, code_dir=code_dir, cpus=1)
    # gureum's own package only: the worker puts the code (and env_dir) first itself, after
    # its own imports, so user files cannot shadow the platform's modules it runs on.
    env["PYTHONPATH"] = str(Path(gureum.__file__).resolve().parent.parent)
    argv = sandbox.init_argv(inner, limits, ranks=1, run_dir=scratch)
    return [bwrap, *args, "--", *argv], env


def worker_command(mode: str, *paths: str, env_dir: Path | None) -> list[str]:
    flag = [f"--env={env_dir.resolve()}"] if env_dir else []
    module = "gureum.serving.predictor_worker"
    return [sys.executable, "-P", "-m", module, mode, *paths, *flag]


def export_manifest(
    code_dir: Path,
    *,
    forbidden: tuple[Path, ...] = (),
    log_line: Callable[[str], None] = print,
    memory_bytes: int = EXPORT_MEMORY_BYTES,
) -> PredictorManifest | None:
    """The manifest of the predictor in ``code_dir`` (None: the folder has no predictor.py),
    exported by importing it inside the sandbox; ``PredictorUnavailable`` says what is wrong."""
    if not (code_dir / DISCOVERY_FILE).is_file():
        return None
    env_dir = user_env.ensure(code_dir, log_line)
    scratch = Path(tempfile.mkdtemp(prefix="gureum-export-"))
    try:
        inner = worker_command("export", str(code_dir.resolve()), env_dir=env_dir)
        limits = sandbox.Limits(memory_bytes=memory_bytes, disk_bytes=SCRATCH_BYTES)
        argv, env = sandbox_argv(
            inner,
            limits,
            scratch,
            model_dir=None,
            code_dir=code_dir.resolve(),
            env_dir=env_dir,
            forbidden=forbidden,
        )
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert proc.stdout is not None and proc.stderr is not None
        try:
            reply = proto.recv(
                proc.stdout.fileno(),
                time.monotonic() + EXPORT_TIMEOUT_S,
                max_bytes=proto.MAX_MANIFEST_BYTES,
            )
        except proto.ChannelTimeout:
            raise PredictorUnavailable(
                f"importing predictor.py took over {EXPORT_TIMEOUT_S:.0f} s"
            ) from None
        except (proto.ChannelClosed, proto.ProtocolError) as exc:
            err = proc.stderr.read(4000).decode(errors="replace").strip()
            raise PredictorUnavailable(f"exporting the predictor failed ({exc!r}): {err}") from None
        finally:
            sandbox.signal_tree(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not isinstance(reply, dict) or not reply.get("ok"):
        what = reply.get("error") if isinstance(reply, dict) else None
        raise PredictorUnavailable(f"predictor.py: {str(what or reply)[-4000:]}")
    found = read_manifest_value(reply.get("manifest"))
    return found.model_copy(update={"requirements_sha256": user_env.digest_of(code_dir)})


def read_manifest_value(value: Any) -> PredictorManifest:
    """A manifest from untrusted JSON, its two schemas checked as JSON Schema."""
    try:
        found = PredictorManifest.model_validate(value)
        for schema in (found.input_schema, found.output_schema):
            jsonschema.Draft202012Validator.check_schema(schema)
    except (ValueError, jsonschema.SchemaError) as exc:
        raise PredictorUnavailable(f"not a valid predictor manifest: {exc}") from None
    return found


def read_manifest(model_dir: Path) -> PredictorManifest:
    path = model_dir / proto.MANIFEST_FILE
    try:
        raw = path.read_bytes()[: proto.MAX_MANIFEST_BYTES + 1]
    except OSError:
        raise PredictorUnavailable(
            f"the version has no {proto.MANIFEST_FILE}: register it from a script job whose "
            "code folder holds predictor.py"
        ) from None
    if len(raw) > proto.MAX_MANIFEST_BYTES:
        raise PredictorUnavailable(f"{proto.MANIFEST_FILE} is too large")
    try:
        return read_manifest_value(json.loads(raw))
    except ValueError as exc:
        raise PredictorUnavailable(f"{proto.MANIFEST_FILE} is not JSON: {exc}") from None


def code_hash(files: list[tuple[str, str]]) -> str:
    """The job's code hash as the control plane computes it (``services.jobs.code_hash``)."""
    body = json.dumps(sorted(files), separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(body).hexdigest()


def attach(
    code_dir: Path,
    model_dir: Path,
    code_files: list[tuple[str, str]],
    *,
    forbidden: tuple[Path, ...],
    memory_bytes: int,
    log_line: Callable[[str], None],
) -> PredictorManifest | None:
    """At registration of a script job's model: when its code folder holds a predictor,
    export the predictor's manifest in the sandbox and write it into ``model_dir`` as
    ``predictor.json`` (the caller adds the code as ``code/``). The two names are the
    platform's: a file or folder the script left there under them is dropped, with a log line."""
    if not (code_dir / DISCOVERY_FILE).is_file():
        return None
    for name in (proto.MANIFEST_FILE, proto.CODE_DIR):
        path = model_dir / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
        else:
            continue
        log_line(f"predictor: dropped {name} from the model folder (a name the platform uses)")
    log_line("predictor: exporting its input and output schemas in the sandbox")
    found = export_manifest(
        code_dir, forbidden=forbidden, log_line=log_line, memory_bytes=memory_bytes
    )
    if found is None:
        return None
    found = found.model_copy(update={"code_hash": code_hash(code_files)})
    (model_dir / proto.MANIFEST_FILE).write_text(found.model_dump_json(indent=2))
    log_line(f"predictor: registered {found.class_name} (unit {found.unit!r})")
    return found
