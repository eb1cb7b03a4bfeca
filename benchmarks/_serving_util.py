"""Plumbing for ``bench_serving``: a local Ray head with a live gureum server (replicas reach the
control plane over HTTP, so a real uvicorn server, not TestClient), tiny models trained here,
bare Ray Serve apps beside our endpoints, a replica-count sampler, the plain FastAPI baseline's
process and CPU-time probes of the processes that serve. The load generators are in
``_serving_load``.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self, cast

import httpx
import psutil
import uvicorn
from ray import serve
from ray._private import auto_init_hook
from ray.serve import Deployment
from sqlalchemy import select
from tests.integration.trained_models import register_trained

from benchmarks._serving_bare import MODEL_DIR_ENV, RECIPE_ENV, BareBatched, BareModel
from benchmarks._util import ROOT, free_port, start_uvicorn
from gureum import samples
from gureum.client import Client
from gureum.compute.local_ray import (
    RayHead,
    haproxy_dir,
    remove_temp_dir,
    start_head,
    stop_head,
)
from gureum.config import Settings
from gureum.recipes import LocalDataset, LocalRunContext, train_and_evaluate
from gureum.server.app import create_app
from gureum.server.controllers.endpoints import app_names
from gureum.server.db.tables_serving import Endpoint, ResourceUsage
from gureum.server.services.bootstrap import bootstrap

# One row of the tabular sample (garment orders; the model predicts "returned").
ROW = {"price": 30, "garment": "dress", "size": "M", "usual_size": "M", "fabric": "cotton"}
JSON = {"content-type": "application/json"}
# High enough never to be hit, so the token bucket runs on every request but never refuses.
RATE_LIMIT = 100_000.0


def pct(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return float(ordered[rank - 1])


def med(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def rnd(x: float, nd: int = 3) -> float:
    return round(x, nd)


def rotate(names: list[str], i: int) -> list[str]:
    """``names`` started at the ``i``-th: each round puts another contender first."""
    k = i % len(names)
    return names[k:] + names[:k]


# -- the cloud ---------------------------------------------------------------------------------


# Our endpoints' Serve applications are named by endpoint id (ep-<id>), never by name: the
# benchmark's endpoint names, mapped to their applications as they are deployed.
SERVE_APPS: dict[str, str] = {}


class ServingCloud:
    """A fresh local Ray head (free ports; Ray Serve in HAProxy mode), a gureum server on a
    uvicorn thread with the endpoint controller, and the bootstrap admin's SDK client.
    Always stops its head, also when start-up fails half-way."""

    def __init__(self, root: Path, num_cpus: int) -> None:
        self.root = root
        self.num_cpus = num_cpus
        self.head: RayHead | None = None
        self.client: Client
        self.data_url = ""
        self.settings: Settings
        self.app: Any = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> ServingCloud:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _start(self) -> None:
        # Ray workers (Serve replicas included) inherit the head's environment: the bare
        # deployment's module must be importable there.
        path = os.environ.get("PYTHONPATH", "")
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), path) if p)
        # A Ray call made after this process left the cluster (a deployment handle's metrics
        # thread does that) must fail, not start a local cluster (it writes ~/.ray/auth_token,
        # which breaks later `ray start` + connect on this machine).
        auto_init_hook.enable_auto_connect = False
        temp = Path(tempfile.mkdtemp(prefix="gureum-ray-v", dir="/tmp"))  # short: unix sockets
        self._stack.callback(shutil.rmtree, temp, True)
        self.head = start_head(temp, self.root / "ray.log", num_cpus=self.num_cpus)
        self._stack.callback(self._stop_head)
        port, serve_port = free_port(), free_port()
        home = self.root / "home"
        self.settings = Settings(
            home=home,
            artifacts=str(home / "artifacts"),
            ray_address=self.head.address,
            port=port,
            serve_port=serve_port,
        )
        self.app = create_app(self.settings)
        token = bootstrap(self.app.state.db)
        assert token is not None
        server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, name="gureum-server", daemon=True)
        thread.start()
        self._stack.callback(self._stop_server, server, thread)
        deadline = time.monotonic() + 180
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gureum server did not start; see the log above")
            time.sleep(0.05)
        self.client = Client(f"http://127.0.0.1:{port}", token)
        self.data_url = f"http://127.0.0.1:{serve_port}"

    @staticmethod
    def _stop_server(server: uvicorn.Server, thread: threading.Thread) -> None:
        server.should_exit = True
        thread.join(timeout=60)

    def _stop_head(self) -> None:
        if self.head is not None:
            stop_head(self.head)
            remove_temp_dir(self.head)
            self.head = None

    # -- what the benchmarks deploy ---------------------------------------------------------

    def register(self, name: str, model_dir: Path, recipe: str) -> None:
        """The model trained here by the recipe's own code, registered as the platform's train
        job would have (uploaded files of a recipe that unpickles are never loaded)."""
        register_trained(self.client, self.app.state.db, name, model_dir, recipe=recipe)

    def deploy(self, name: str, model: str, config: dict[str, Any]) -> str:
        """Our endpoint, waited for; its data-plane URL."""
        ep = self.client.endpoints.deploy(name, model, config=config, wait=True, timeout_s=300)
        assert ep.url is not None
        with self.app.state.db.read() as s:
            endpoint_id = s.scalar(select(Endpoint.id).where(Endpoint.name == name))
        SERVE_APPS[name] = app_names(int(endpoint_id))["primary"]
        return ep.url

    def delete(self, name: str, timeout: float = 120.0) -> None:
        self.client.endpoints.delete(name)
        deadline = time.monotonic() + timeout
        while any(e.name == name for e in self.client.endpoints.list()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"endpoint {name} was not deleted within {timeout:.0f}s")
            time.sleep(0.5)

    def consumer(self, name: str) -> dict[str, str]:
        """A consumer on a plan with a rate limit that is checked on every request but never
        hit; the headers to call as it."""
        created = self.client.consumers.create(name, rate_limit=RATE_LIMIT)
        return {**JSON, "authorization": f"Bearer {created.token}"}

    def ledger_replica_seconds(self, endpoint: str, t0: float, t1: float) -> dict[str, float]:
        """Replica-seconds our cost ledger (ResourceUsage) recorded for ``endpoint`` in metering
        windows lying wholly within [t0, t1] (epoch seconds), and those windows' bounds."""
        with self.app.state.db.read() as s:
            rows = s.scalars(
                select(ResourceUsage).where(
                    ResourceUsage.kind == "endpoint", ResourceUsage.ref == endpoint
                )
            ).all()
            spans = [(_epoch(r.start), _epoch(r.end), r.replica_seconds) for r in rows]
        inside = [sp for sp in spans if sp[0] >= t0 and sp[1] <= t1]
        if not inside:
            return {"replica_seconds": 0.0, "start": t0, "end": t0}
        return {
            "replica_seconds": sum(sp[2] for sp in inside),
            "start": min(sp[0] for sp in inside),
            "end": max(sp[1] for sp in inside),
        }


def _epoch(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def deploy_bare(
    name: str,
    model_dir: Path,
    recipe: str,
    *,
    cpus: float,
    threads: int = 1,
    num_replicas: int | None = None,
    autoscaling: dict[str, Any] | None = None,
    max_ongoing_requests: int | None = None,
    batch: tuple[int, float] | None = None,
) -> str:
    """A plain Ray Serve app of :class:`BareModel` (with ``batch`` = (max size, wait s):
    :class:`BareBatched`) at route ``/{name}`` on the same cluster (and HAProxy) as our
    endpoints; returns its path. Blocks until Ray Serve says it runs."""
    options: dict[str, Any] = {"name": "bare", "ray_actor_options": {"num_cpus": cpus}}
    if autoscaling is not None:
        options["autoscaling_config"] = autoscaling
    else:
        options["num_replicas"] = num_replicas or 1
    if max_ongoing_requests is not None:
        options["max_ongoing_requests"] = max_ongoing_requests
    cls: type = BareModel if batch is None else BareBatched
    deployment = cast(Deployment, serve.deployment(cls)).options(**options)
    args = (str(model_dir), recipe, threads, *(batch or ()))
    serve.run(deployment.bind(*args), name=name, route_prefix=f"/{name}")
    return f"/{name}"


def wait_route(url: str, body: bytes, headers: dict[str, str], timeout: float = 120.0) -> None:
    """Until ``POST url`` answers 200: HAProxy learns a new route a moment after Ray Serve
    says the app runs (until then the catch-all app at "/" answers)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(headers=headers, timeout=30) as http:
        while True:
            r = http.post(url, content=body)
            if r.status_code == 200:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"POST {url} still answers {r.status_code}: {r.text[:300]}")
            time.sleep(0.2)


def delete_bare(name: str) -> None:
    serve.delete(name)


# -- tiny models, trained here ---------------------------------------------------------------


def train_tabular(root: Path) -> Path:
    """A gradient-boosted classifier on 300 rows of the tabular sample (well under 1 s)."""
    samples.write("tabular", root / "tab-data", count=300)
    ctx = LocalRunContext(root / "tab-run")
    data = LocalDataset.from_folder(root / "tab-data")
    result = train_and_evaluate(ctx, "tabular", {"max_iter": 20, "target": "returned"}, data)
    return result.train.model_dir


def train_classifier(root: Path, width: int, image_size: int, count: int) -> Path:
    """The image-classifier's CNN after one epoch on ``count`` digits: the weights do not
    matter here, only the work per image."""
    samples.write("digits", root / "digits", count=count)
    ctx = LocalRunContext(root / "cls-run")
    params = {"epochs": 1, "width": width, "image_size": image_size}
    data = LocalDataset.from_folder(root / "digits")
    return train_and_evaluate(ctx, "image-classifier", params, data).train.model_dir


def digit_images(root: Path, n: int) -> list[str]:
    files = sorted((root / "digits").rglob("*.png"))[:n]
    return [base64.b64encode(f.read_bytes()).decode() for f in files]


# -- replicas over time -------------------------------------------------------------------------


def replica_counts(apps: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Per Serve app (or our endpoint, by name): (replicas running, replicas in any state:
    starting and stopping ones hold their resources too)."""
    status = serve.status().applications
    out = {}
    for app in apps:
        running = total = 0
        if SERVE_APPS.get(app, app) in status:
            for dep in status[SERVE_APPS.get(app, app)].deployments.values():
                for state, n in dep.replica_states.items():
                    total += n
                    running += n if str(getattr(state, "value", state)) == "RUNNING" else 0
        out[app] = (running, total)
    return out


class Ticker:
    """Calls ``tick`` every ``interval`` s on a daemon thread while entered (a benchmark's
    background sampler or driver); a tick that raises is skipped, the next one still runs."""

    def __init__(self, interval: float, name: str) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def tick(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.tick()
            self._stop.wait(self.interval)


class ReplicaSampler(Ticker):
    """Samples Ray Serve's replica counts of some apps every ``interval`` s on a thread."""

    def __init__(self, apps: Sequence[str], interval: float = 0.5) -> None:
        super().__init__(interval, "replica-sampler")
        self.apps = list(apps)
        self.samples: list[tuple[float, dict[str, tuple[int, int]]]] = []

    def tick(self) -> None:
        self.samples.append((time.time(), replica_counts(self.apps)))

    def replica_seconds(self, app: str, t0: float, t1: float, running_only: bool = False) -> float:
        """The integral of the replica count over [t0, t1] (epoch seconds), each sample held
        until the next."""
        total = 0.0
        points = [*self.samples, (t1, {})]
        for (ta, counts), (tb, _) in itertools.pairwise(points):
            lo, hi = max(ta, t0), min(tb, t1)
            if hi > lo:
                running, every = counts.get(app, (0, 0))
                total += (running if running_only else every) * (hi - lo)
        return total

    def peak(self, app: str, t0: float, t1: float) -> int:
        seen = [c.get(app, (0, 0))[1] for t, c in self.samples if t0 <= t <= t1]
        return max(seen, default=0)

    def timeline(self, app: str, t0: float, step: float = 5.0) -> list[int]:
        """Replicas (any state) every ``step`` s from ``t0``: a compact picture for the report."""
        out: list[int] = []
        nxt = t0
        for t, counts in self.samples:
            if t >= nxt:
                out.append(counts.get(app, (0, 0))[1])
                nxt += step
        return out


def wait_replicas(app: str, want: int, timeout: float) -> float:
    """Seconds until the app has exactly ``want`` replicas in any state."""
    start = time.monotonic()
    while replica_counts([app])[app][1] != want:
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"{app} did not reach {want} replicas within {timeout:.0f}s")
        time.sleep(0.2)
    return time.monotonic() - start


# -- the plain FastAPI baseline -------------------------------------------------------------


def replica_processes(app: str) -> list[psutil.Process]:
    """The Serve replica processes of ``app`` (or of our endpoint of that name) here."""
    app = SERVE_APPS.get(app, app)
    out = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(proc.info["cmdline"] or [])
            if cmd.startswith("ray::ServeReplica") and f":{app}:" in cmd:
                out.append(proc)
    return out


def replica_nice(app: str) -> int | None:
    """The nice value Ray runs a Serve replica of ``app`` at (its workers run niced)."""
    procs = replica_processes(app)
    return int(procs[0].nice()) if procs else None


def haproxy_processes(head: RayHead) -> list[psutil.Process]:
    """The HAProxy processes of ``head``'s Ray Serve (their config lies in its own folder)."""
    folder = str(haproxy_dir(head.temp_dir))
    out = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(proc.info["cmdline"] or [])
            if "haproxy" in (proc.info["name"] or "") and folder in cmd:
                out.append(proc)
    return out


def cpu_seconds(procs: Sequence[psutil.Process]) -> float:
    """User + system CPU seconds the processes (all their threads) have used so far."""
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


def start_plain(port: int, model_dir: Path, recipe: str, nice: int) -> subprocess.Popen[bytes]:
    """``plain_app`` on one uvicorn worker (httptools, uvloop), at niceness ``nice``."""
    env = {"OMP_NUM_THREADS": "1", MODEL_DIR_ENV: str(model_dir), RECIPE_ENV: recipe}
    return start_uvicorn("benchmarks._serving_bare:plain_app", port, env, nice=nice)
