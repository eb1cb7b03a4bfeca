"""The program that runs a user's predictor, inside the sandbox (``python -P -m`` this module).

``export CODE_DIR [--env=DIR]``: find the predictor class in ``CODE_DIR/predictor.py`` and
answer one frame with its manifest (JSON Schemas of ``Input`` and ``Output``, unit, limits).
``serve MODEL_DIR CODE_DIR [--env=DIR]``: load the class once, answer ``{"ready": true}``, then
one reply frame per request frame: ``{"inputs": [...]}`` -> ``{"ok": true, "outputs": [...],
"units": [...]}`` or ``{"ok": false, "kind": "bad_input" | "model_error" | "bad_output",
"error": ...}``. ``--env``: the installed packages of the folder's ``requirements.txt``.

Frames travel on what were stdin and stdout when the program started; both are moved aside
first, so the user's ``print`` goes to stderr (the operator's log) and cannot corrupt a frame.
Imports pydantic and the platform's light modules only, before any user code.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from gureum.serve import DISCOVERY_FILE, Predictor
from gureum.serving.predictor_protocol import (
    MAX_TIMEOUT_S,
    ChannelClosed,
    PredictorManifest,
    dumps,
    recv,
    send,
)

MODULE = "predictor"
ENV_FLAG = "--env="
ERROR_CHARS = 8000


class NoPredictor(Exception):
    """The code folder's predictor module does not give one usable class; says why."""


def _channel() -> tuple[int, int]:
    """(read fd, write fd) of the frames; fd 0 becomes /dev/null and fd 1 a copy of fd 2."""
    rfd, wfd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return rfd, wfd


def discover(code_dir: Path, env_dir: Path | None = None) -> type[Predictor]:
    """The served class: ``PREDICTOR`` in ``predictor.py`` if set, else its only subclass of
    ``gureum.serve.Predictor`` (defined in that module, not imported into it). The code folder,
    then the packages of its ``requirements.txt`` (``env_dir``), come first on the path: after
    the platform's own imports, so a package the user pinned cannot replace them."""
    path = code_dir / DISCOVERY_FILE
    if not path.is_file():
        raise NoPredictor(f"no {DISCOVERY_FILE} at the top of the code folder")
    sys.path[:0] = [str(code_dir), *([str(env_dir)] if env_dir else [])]
    spec = importlib.util.spec_from_file_location(MODULE, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE] = module
    spec.loader.exec_module(module)
    chosen = getattr(module, "PREDICTOR", None)
    if chosen is not None:
        if not (isinstance(chosen, type) and issubclass(chosen, Predictor)):
            raise NoPredictor("PREDICTOR must name a subclass of gureum.serve.Predictor")
        return _checked(chosen)
    found = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, Predictor)
        and obj is not Predictor
        and obj.__module__ == MODULE
    ]
    if len(found) != 1:
        names = ", ".join(sorted(c.__name__ for c in found)) or "none"
        raise NoPredictor(
            f"{DISCOVERY_FILE} must define exactly one subclass of gureum.serve.Predictor "
            f"(found: {names}); with several, name the served one: PREDICTOR = MyPredictor"
        )
    return _checked(found[0])


def _checked(cls: type[Predictor]) -> type[Predictor]:
    for attr in ("Input", "Output"):
        model = getattr(cls, attr, None)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise NoPredictor(f"{cls.__name__}.{attr} must be a pydantic model class")
    return cls


def manifest(cls: type[Predictor]) -> PredictorManifest:
    """What the replica needs to serve ``cls`` without importing it."""
    out = cls.Output.model_json_schema(mode="serialization")
    if out.get("type") != "object":
        raise NoPredictor(f"{cls.__name__}.Output must be a model whose JSON is an object")
    timeout = float(cls.timeout_s)
    if not 0 < timeout <= MAX_TIMEOUT_S:
        raise NoPredictor(f"timeout_s must be over 0 and at most {MAX_TIMEOUT_S:g}")
    try:
        return PredictorManifest(
            class_name=cls.__name__,
            input_schema=cls.Input.model_json_schema(mode="validation"),
            output_schema=out,
            unit=cls.unit,
            timeout_s=timeout,
            memory_mb=cls.memory_mb,
            batched=cls.predict_batch is not Predictor.predict_batch,
            counts_units=cls.units is not Predictor.units,
        )
    except ValidationError as exc:
        raise NoPredictor(f"{cls.__name__}: {exc}") from None


def _error(kind: str, text: str) -> dict[str, Any]:
    return {"ok": False, "kind": kind, "error": text[-ERROR_CHARS:]}


def answer(obj: Predictor, cls: type[Predictor], raw: Any) -> dict[str, Any]:
    """One request's reply (never raises for what the user's code does)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("inputs"), list):
        return _error("model_error", "a request frame without inputs")
    try:
        inputs = [cls.Input.model_validate(x) for x in raw["inputs"]]
    except ValidationError as exc:
        return _error("bad_input", str(exc))
    try:
        results = list(obj.predict_batch(inputs))
    except Exception:
        return _error("model_error", traceback.format_exc())
    if len(results) != len(inputs):
        return _error("bad_output", f"{len(results)} outputs for {len(inputs)} inputs")
    outputs: list[Any] = []
    units: list[float] = []
    try:
        for x, y in zip(inputs, results, strict=True):
            if isinstance(y, BaseModel) and not isinstance(y, cls.Output):
                y = y.model_dump()
            model = y if isinstance(y, cls.Output) else cls.Output.model_validate(y)
            outputs.append(model.model_dump(mode="json"))
            units.append(float(obj.units(x, model)))
    except ValidationError as exc:
        return _error("bad_output", str(exc))
    except Exception:
        return _error("model_error", traceback.format_exc())
    if not all(math.isfinite(u) and u >= 0 for u in units):
        return _error("bad_output", "units() must return a finite number >= 0")
    return {"ok": True, "outputs": outputs, "units": units}


def _export(wfd: int, code_dir: Path, env_dir: Path | None) -> int:
    try:
        found = manifest(discover(code_dir, env_dir))
    except NoPredictor as exc:
        send(wfd, dumps(_error("bad_predictor", str(exc))))
        return 1
    except Exception:
        send(wfd, dumps(_error("bad_predictor", traceback.format_exc())))
        return 1
    send(wfd, dumps({"ok": True, "manifest": found.model_dump(mode="json")}))
    return 0


def _serve(rfd: int, wfd: int, model_dir: Path, code_dir: Path, env_dir: Path | None) -> int:
    try:
        cls = discover(code_dir, env_dir)
        obj = cls()
        obj.load(model_dir)
    except Exception:
        send(wfd, dumps(_error("load_failed", traceback.format_exc())))
        return 1
    send(wfd, dumps({"ok": True, "ready": True, "pid": os.getpid()}))
    while True:
        try:
            raw = recv(rfd)
        except ChannelClosed:
            return 0
        try:
            reply = dumps(answer(obj, cls, raw))
        except (TypeError, ValueError) as exc:  # an output JSON cannot carry (NaN)
            reply = dumps(_error("bad_output", f"output is not JSON: {exc}"))
        send(wfd, reply)


def main(argv: list[str]) -> int:
    rfd, wfd = _channel()
    env = Path(argv[-1][len(ENV_FLAG) :]) if argv and argv[-1].startswith(ENV_FLAG) else None
    args = argv[:-1] if env is not None else argv
    if len(args) == 2 and args[0] == "export":
        return _export(wfd, Path(args[1]), env)
    if len(args) == 3 and args[0] == "serve":
        return _serve(rfd, wfd, Path(args[1]), Path(args[2]), env)
    print(
        "usage: predictor_worker export CODE_DIR | serve MODEL_DIR CODE_DIR [--env=DIR]",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
