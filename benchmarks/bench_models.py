"""Serving any model (issue 11): imported ONNX, user predictors, validated deploys.

One local Ray head with a live gureum server in this process (``ServingCloud``); models are
built here (no hub). Every comparison runs both sides in the same run, alternating rounds, and
reports medians and ratios.

1. onnx: a small ONNX classifier (an MLP exported by torch) imported with ``models import`` and
   deployed, vs (a) a bare Ray Serve deployment running the same onnxruntime session (our ONNX
   recipe's loader, as a user would call onnxruntime) and (b) BentoML serving the same file from
   its own virtual environment (``--bento-python``; made with ``pip install bentoml onnxruntime``
   when absent). Sequential p50, closed-loop throughput, server CPU per request.
   Targets: throughput ours/(a) >= 0.8, p50 ours/(a) <= 1.3; (b) recorded.
2. predictor: the same model as a built-in recipe and as a user predictor (the image classifier's
   CNN, >= 5 ms per call, worker pool = replica CPUs): p50, replica CPU per request (the replica
   and its sandboxed workers), cold start (deploy until the first answer). Targets: p50 <= 1.2x,
   CPU <= 1.2x, cold start <= 1.3x.
3. validated: a deploy with validation (16 sample inputs) vs a plain replica start plus 16
   requests sent by hand.

    .venv/bin/python -m benchmarks.bench_models [--quick] [--only onnx,predictor,validated]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks._serving_load import closed_loop_apart, sequential
from benchmarks._serving_util import (
    JSON,
    ROW,
    ServingCloud,
    cpu_seconds,
    delete_bare,
    deploy_bare,
    digit_images,
    med,
    pct,
    replica_processes,
    rnd,
    rotate,
    train_classifier,
    train_tabular,
    wait_route,
)
from benchmarks._util import ROOT, exit_on_sigterm, free_port, load_average, save
from gureum.local.procs import port_open

NUM_CPUS = 4
FEATURES, HIDDEN, CLASSES = 64, 256, 10
PARTS = ("onnx", "predictor", "validated")
PROFILES: dict[str, dict[str, Any]] = {
    "full": {
        "rounds": 5,
        "requests": 200,
        "load_rounds": 3,
        "seconds": 8,
        "concurrency": 8,
        "cold_starts": 3,
    },
    "quick": {
        "rounds": 2,
        "requests": 50,
        "load_rounds": 1,
        "seconds": 3,
        "concurrency": 4,
        "cold_starts": 1,
    },
}
BENTO_VENV = Path("/tmp/gureum-bench-bento")


def build_onnx(root: Path) -> Path:
    """A softmax MLP over FEATURES inputs, exported with a dynamic batch axis."""
    import torch  # the benchmark's own model building, not the serving path

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, CLASSES),
        torch.nn.Softmax(dim=-1),
    ).eval()
    path = root / "onnx-model" / "mlp.onnx"  # a folder of its own: the loader looks for one file
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        net,
        (torch.zeros(1, FEATURES),),
        str(path),
        input_names=["x"],
        output_names=["probs"],
        dynamic_axes={"x": {0: "n"}, "probs": {0: "n"}},
        dynamo=False,
    )
    return path


def bento_python(given: str | None) -> Path:
    """A Python with BentoML and onnxruntime: ``given``, or a venv made once for the benchmark."""
    if given:
        return Path(given)
    python = BENTO_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(BENTO_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", "bentoml", "onnxruntime", "numpy"]
        subprocess.run(pip, check=True)
    return python


def start_bento(python: Path, model: Path, port: int) -> subprocess.Popen[bytes]:
    env = os.environ | {
        "GUREUM_BENCH_ONNX": str(model),
        "GUREUM_BENCH_THREADS": "1",
        "BENTOML_HOME": str(model.parent / "bentoml"),
    }
    cmd = [
        str(python.parent / "bentoml"),
        *("serve", "_bento_onnx:OnnxModel", "--working-dir", str(ROOT / "benchmarks")),
        *("--host", "127.0.0.1", "--port", str(port)),
    ]
    return subprocess.Popen(cmd, env=env, start_new_session=True)


def compare(
    targets: dict[str, tuple[str, dict[str, str]]],
    servers: dict[str, Callable[[], list[psutil.Process]]],
    body: bytes,
    cfg: dict[str, Any],
) -> dict[str, Any]:
    """Sequential p50/p99 in alternating rounds, then closed-loop throughput and server CPU
    per answered request, each target in turn."""
    names = list(targets)
    clients = {n: httpx.Client(headers=h, timeout=60) for n, (_, h) in targets.items()}
    seq: dict[str, list[float]] = {n: [] for n in names}
    try:
        for n, (url, _) in targets.items():
            sequential(clients[n], url, body, 50)  # warm: connections, caches, sessions
        for i in range(cfg["rounds"]):
            for n in rotate(names, i):
                seq[n] += sequential(clients[n], targets[n][0], body, cfg["requests"])
    finally:
        for c in clients.values():
            c.close()
    rps: dict[str, list[float]] = {n: [] for n in names}
    cpu_ms: dict[str, list[float]] = {n: [] for n in names}
    for i in range(cfg["load_rounds"]):
        for n in rotate(names, i):
            procs = servers[n]()
            before = cpu_seconds(procs)
            res = closed_loop_apart(
                targets[n][0], targets[n][1], body, cfg["concurrency"], cfg["seconds"]
            )
            cpu_ms[n].append((cpu_seconds(procs) - before) * 1000 / max(1, res.ok))
            rps[n].append(res.rps)
            if res.errors:
                print(f"  {n}: {res.errors} errors {res.statuses}", flush=True)
        print(f"  load round {i + 1}: " + ", ".join(f"{n} {rps[n][-1]:.0f}/s" for n in names))
    out: dict[str, Any] = {
        "p50_ms": {n: rnd(med(v)) for n, v in seq.items()},
        "p99_ms": {n: rnd(pct(v, 99)) for n, v in seq.items()},
        "throughput_rps": {n: rnd(med(v), 1) for n, v in rps.items()},
        "server_cpu_ms_per_request": {n: rnd(med(v)) for n, v in cpu_ms.items()},
    }
    first = names[0]
    for other in names[1:]:
        out[f"p50_ratio_{first}_vs_{other}"] = rnd(out["p50_ms"][first] / out["p50_ms"][other])
        out[f"throughput_ratio_{first}_vs_{other}"] = rnd(
            out["throughput_rps"][first] / out["throughput_rps"][other]
        )
    return out


def onnx(cloud: ServingCloud, root: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    model = build_onnx(root)
    cloud.client.models.import_weights("mlp", model)
    one = {"min_replicas": 1, "max_replicas": 1}
    url = cloud.deploy(
        "mlp",
        "mlp",
        {
            "resources": {"cpus": 1},
            "autoscaling": one,
            "batching": {"max_batch_size": 1, "max_wait_ms": 0},
        },
    )
    row = [round((i % 7) / 7, 3) for i in range(FEATURES)]
    body = json.dumps({"inputs": [row]}).encode()
    ours = cloud.consumer("bench-onnx")
    deploy_bare("bare", model.parent, "onnx", cpus=1, max_ongoing_requests=64)
    wait_route(f"{cloud.data_url}/bare", body, JSON)
    port = free_port()
    bento = start_bento(bento_python(cfg.get("bento_python")), model, port)
    try:
        wait_listening(port, 180)
        wait_route(f"http://127.0.0.1:{port}/predict", body, JSON)
        targets = {
            "gureum": (f"{url}/predict", ours),
            "ray": (f"{cloud.data_url}/bare", JSON),
            "bentoml": (f"http://127.0.0.1:{port}/predict", JSON),
        }
        servers: dict[str, Callable[[], list[psutil.Process]]] = {
            "gureum": lambda: replica_processes("mlp"),
            "ray": lambda: replica_processes("bare"),
            "bentoml": lambda: _tree(bento.pid),
        }
        return compare(targets, servers, body, cfg)
    finally:
        stop_group(bento)
        delete_bare("bare")
        cloud.delete("mlp")


def wait_listening(port: int, timeout: float) -> None:
    """Until something accepts connections on the port (BentoML starts in a few seconds)."""
    deadline = time.monotonic() + timeout
    while not port_open("127.0.0.1", port, timeout=1):
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on port {port} after {timeout:.0f} s")
        time.sleep(0.5)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """BentoML forks its workers: stop the whole session it was started in."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def report(results: dict[str, Any]) -> None:
    for part in PARTS:
        if part in results:
            print(f"{part}: {json.dumps(results[part], indent=1)}")


PREDICTOR = """
import torch
from pydantic import BaseModel, ConfigDict

from gureum.recipes.image_classifier import ImageClassifier
from gureum.serve import Predictor


class Picture(BaseModel):
    image: str


class Label(BaseModel):
    model_config = ConfigDict(extra="allow")
    label: str
    confidence: float


class SameCNN(Predictor):
    \"\"\"The built-in classifier's own model code, as a user would wrap it.\"\"\"

    Input, Output = Picture, Label
    unit = "image"

    def load(self, model_dir):
        torch.set_num_threads(1)
        self.model = ImageClassifier().load(model_dir)

    def predict_batch(self, inputs):
        return self.model.predict([{"image": i.image} for i in inputs])
"""

COPY = """
import shutil
import gureum.run as run

for f in run.data_dir().rglob("*"):
    if f.is_file():
        shutil.copyfile(f, run.model_dir() / f.name)
run.register_model()
"""
CNN = {"width": 96, "image_size": 48, "count": 200}


def predictor(cloud: ServingCloud, root: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """The image classifier's CNN served by its built-in recipe and by a user predictor that
    calls the same code (registered through a script job, so its schemas are exported in the
    sandbox), each on one 1-CPU replica with batching off."""
    model = train_classifier(root, **CNN)
    cloud.register("cnn", model, "image-classifier")
    cloud.client.datasets.push("cnn-files", model)
    code = root / "predictor-code"
    code.mkdir()
    (code / "main.py").write_text(COPY)
    (code / "predictor.py").write_text(PREDICTOR)
    job = cloud.client.jobs.train("script", "cnn-files", model="cnn-user", code_dir=code)
    done = cloud.client.jobs.wait(job.id, poll_s=0.5, timeout_s=600)
    if done.state != "succeeded":
        raise RuntimeError(f"the predictor's script job {done.state}: {done.error}")
    images = digit_images(root, 8)
    body = json.dumps({"inputs": [{"image": images[0]}]}).encode()
    config = {
        "resources": {"cpus": 1},
        "autoscaling": {"min_replicas": 1, "max_replicas": 1},
        "batching": {"max_batch_size": 1, "max_wait_ms": 0},
    }
    cold: dict[str, list[float]] = {"builtin": [], "user": []}
    models = {"builtin": "cnn", "user": "cnn-user"}
    key = cloud.consumer("bench-predictor")
    for i in range(cfg["cold_starts"]):  # deploy until the first answer, alternating
        for n in rotate(list(models), i):
            started = time.perf_counter()
            url = cloud.deploy(f"cold-{n}", models[n], config)
            wait_route(f"{url}/predict", body, key, timeout=300)
            cold[n].append(time.perf_counter() - started)
            cloud.delete(f"cold-{n}")
    urls = {n: cloud.deploy(f"cnn-{n}", m, config) for n, m in models.items()}
    try:
        for u in urls.values():
            wait_route(f"{u}/predict", body, key)
        targets = {"user": (f"{urls['user']}/predict", key)}
        targets["builtin"] = (f"{urls['builtin']}/predict", key)
        servers: dict[str, Callable[[], list[psutil.Process]]] = {
            "user": lambda: _with_children(replica_processes("cnn-user")),
            "builtin": lambda: _with_children(replica_processes("cnn-builtin")),
        }
        out = compare(targets, servers, body, cfg)
    finally:
        for n in urls:
            cloud.delete(f"cnn-{n}")
    out["cold_start_s"] = {n: rnd(med(v)) for n, v in cold.items()}
    out["cold_start_ratio_user_vs_builtin"] = rnd(med(cold["user"]) / med(cold["builtin"]))
    out["cpu_ratio_user_vs_builtin"] = rnd(
        out["server_cpu_ms_per_request"]["user"] / out["server_cpu_ms_per_request"]["builtin"]
    )
    return out


def _with_children(procs: list[psutil.Process]) -> list[psutil.Process]:
    """A replica and the processes it started (a user predictor's sandboxed workers)."""
    out = list(procs)
    for p in procs:
        out += p.children(recursive=True)
    return out


def validated(cloud: ServingCloud, root: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """Time from deploy to ready of a tabular endpoint with the 16-input smoke test, vs with
    the load check only plus the same 16 requests sent by hand once it is ready."""
    tab = train_tabular(root)
    cloud.register("tabv", tab, "tabular")
    rows = [dict(ROW, price=20 + i) for i in range(16)]
    config = {"resources": {"cpus": 0.5}, "autoscaling": {"min_replicas": 1, "max_replicas": 1}}
    key = cloud.consumer("bench-validated")
    times: dict[str, list[float]] = {"validated": [], "plain_plus_16": []}
    for i in range(cfg["cold_starts"]):
        for n in rotate(list(times), i):
            started = time.perf_counter()
            if n == "validated":
                cloud.client.endpoints.deploy(
                    "v", "tabv", config=config, wait=True, timeout_s=300, sample_inputs=rows
                )
            else:
                url = cloud.deploy("v", "tabv", config)
                wait_route(f"{url}/predict", json.dumps({"inputs": rows[:1]}).encode(), key)
                with httpx.Client(headers=key, timeout=60) as http:
                    for row in rows[1:]:
                        http.post(f"{url}/predict", json={"inputs": [row]}).raise_for_status()
            times[n].append(time.perf_counter() - started)
            cloud.delete("v")
    out: dict[str, Any] = {n: rnd(med(v)) for n, v in times.items()}
    out["ratio_validated_vs_plain_plus_16"] = rnd(
        med(times["validated"]) / med(times["plain_plus_16"])
    )
    return out


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _section(results: dict[str, Any], name: str, fn: Callable[..., Any], *args: Any) -> None:
    print(f"== {name}", flush=True)
    started = time.perf_counter()
    try:
        results[name] = fn(*args)
    except Exception as exc:  # one part failing must not lose the others' numbers
        traceback.print_exc()
        results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    results[name]["seconds"] = rnd(time.perf_counter() - started, 1)


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="short settings")
    ap.add_argument("--only", default=",".join(PARTS), help="comma-separated parts")
    ap.add_argument("--bento-python", default=None, help="a Python that has bentoml installed")
    return ap.parse_args()


PART_FUNCS: dict[str, Callable[[ServingCloud, Path, dict[str, Any]], dict[str, Any]]] = {
    "onnx": onnx,
    "predictor": predictor,
    "validated": validated,
}


def main() -> None:
    args = _args()
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        sys.exit(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    cfg = dict(PROFILES["quick" if args.quick else "full"], bento_python=args.bento_python)
    exit_on_sigterm()  # unwinds through ServingCloud, which stops the Ray head
    results: dict[str, Any] = {"profile": "quick" if args.quick else "full", "config": cfg}
    results["load_before"] = load_average()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gureum-bench-models-") as tmp_name:
        tmp = Path(tmp_name)
        with ServingCloud(tmp, NUM_CPUS) as cloud:
            for part in parts:
                _section(results, part, PART_FUNCS[part], cloud, tmp, cfg)
    results["load_after"] = load_average()
    results["total_s"] = rnd(time.perf_counter() - started, 1)
    report(results)
    name = "models_quick" if args.quick else "models"
    if set(parts) != set(PARTS):
        name += "_" + "_".join(sorted(parts))
    print(f"total {results['total_s']}s; saved {save(name, results)}")
    if any(isinstance(r, dict) and "error" in r for r in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
