"""Plumbing for ``bench_jobs``: a local Ray head with a gureum server and its job controller,
probes that time each step of a job's start on Ray, and a torchrun entry point.

Only the standard library is imported at module level: Ray workers import this module to run
the probe functions, and ``python -m benchmarks._jobs_util`` is the torchrun entry point, which
must not pay for imports the plain run does not make.

    torchrun --standalone --nproc_per_node=2 -m benchmarks._jobs_util --recipe ... --data ...

runs ``gureum.recipes.run`` with a gloo process group set up (``gureum.recipes.run`` does not set
one up itself), so ``gureum.recipes.training.fit`` trains data-parallel; ranks other than 0 write
their (unused) output folder next to rank 0's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

TERMINAL = ("succeeded", "failed", "cancelled")


class JobFailed(RuntimeError):
    """A gureum job ended in a state other than succeeded."""


def ts(value: str | None) -> float | None:
    """A JobOut / event timestamp as seconds since the epoch."""
    if value is None:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# -- a server with the Ray job controller, in this process -------------------------------------


class JobCluster:
    """A fresh local Ray head (free ports, never 6379), a gureum app with ``RayBackend`` served
    through ``TestClient`` in this process, and a bootstrap token. Always stops its head."""

    def __init__(self, num_cpus: int, root: Path) -> None:
        self.num_cpus = num_cpus
        self.root = root
        self.head: Any = None
        self._stack = contextlib.ExitStack()
        self.http: Any = None
        self.client: Any = None
        self.headers: dict[str, str] = {}

    def __enter__(self) -> JobCluster:
        try:
            self._start()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def _start(self) -> None:
        from fastapi.testclient import TestClient

        from gureum.client import Client
        from gureum.compute.local_ray import start_head
        from gureum.compute.ray_backend import RayBackend
        from gureum.config import Settings
        from gureum.server.app import create_app
        from gureum.server.services.bootstrap import bootstrap

        temp = Path(tempfile.mkdtemp(prefix="gureum-ray-b", dir="/tmp"))  # short: unix sockets
        self._stack.callback(shutil.rmtree, temp, True)
        self.head = start_head(temp, self.root / "ray.log", num_cpus=self.num_cpus)
        backend = RayBackend(self.head.address)
        home = self.root / "home"
        settings = Settings(home=home, artifacts=str(home / "artifacts"))
        app = create_app(settings, compute=backend)
        token = bootstrap(app.state.db)
        assert token is not None
        self.headers = {"Authorization": f"Bearer {token}"}
        self.http = self._stack.enter_context(TestClient(app))
        self.client = Client("http://testserver", token, http=self.http)

    def __exit__(self, *exc: object) -> None:
        import ray

        from gureum.compute.local_ray import stop_head

        try:
            self._stack.close()  # the app (and its controller) first
        finally:
            with contextlib.suppress(Exception):
                ray.shutdown()
            if self.head is not None:
                stop_head(self.head)
                self.head = None

    # -- REST -------------------------------------------------------------------------------

    def push(self, name: str, folder: Path) -> None:
        self.client.datasets.push(name, folder)

    def submit(self, body: dict[str, Any]) -> tuple[str, float, float]:
        """POST /v1/jobs: (job id, time just before the request, time it returned)."""
        t0 = time.time()
        r = self.http.post("/v1/jobs", json=body, headers=self.headers)
        t1 = time.time()
        if r.status_code != 201:
            raise JobFailed(f"submit refused ({r.status_code}): {r.text}")
        return str(r.json()["id"]), t0, t1

    def get(self, job_id: str) -> dict[str, Any]:
        r = self.http.get(f"/v1/jobs/{job_id}", headers=self.headers)
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out

    def wait(
        self,
        job_id: str,
        *,
        until: tuple[str, ...] = TERMINAL,
        poll_s: float = 0.1,
        timeout: float = 900.0,
    ) -> tuple[dict[str, Any], float]:
        """Poll until the job's state is one of ``until`` (or terminal): (job, time seen)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job["state"] in until or job["state"] in TERMINAL:
                return job, time.time()
            if time.monotonic() > deadline:
                raise JobFailed(f"job {job_id} still {job['state']} after {timeout:.0f}s")
            time.sleep(poll_s)

    def wait_succeeded(self, job_id: str, poll_s: float = 0.1) -> tuple[dict[str, Any], float]:
        job, seen = self.wait(job_id, poll_s=poll_s)
        if job["state"] != "succeeded":
            raise JobFailed(
                f"job {job_id} {job['state']}: {job['error']}\n--- log tail ---\n"
                f"{self.logs(job_id)[-3000:]}"
            )
        return job, seen

    def _pages(self, path: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 1000}
            if cursor:
                params["cursor"] = cursor
            r = self.http.get(path, params=params, headers=self.headers)
            r.raise_for_status()
            page = r.json()
            items += page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return items

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return self._pages(f"/v1/jobs/{job_id}/events")

    def metrics(self, job_id: str) -> list[dict[str, Any]]:
        return self._pages(f"/v1/jobs/{job_id}/metrics")

    def logs(self, job_id: str) -> str:
        r = self.http.get(f"/v1/jobs/{job_id}/logs", headers=self.headers)
        return str(r.text)

    def train_seconds(self, job_id: str) -> float:
        """Sum of the epochs' ``epoch_seconds`` the job reported (the pure training loop)."""
        return float(sum(m["values"].get("epoch_seconds", 0.0) for m in self.metrics(job_id)))


def local_train_seconds(out: Path) -> float:
    """The same sum for a plain run, from its ``metrics.jsonl``."""
    import json

    path = out / "metrics.jsonl"
    if not path.is_file():
        return 0.0
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return float(sum(r.get("epoch_seconds", 0.0) for r in rows))


# -- where the start of a job goes: probes run on the cluster --------------------------------


def probe_task() -> float:
    """A bare Ray task: the time its body starts."""
    return time.time()


class ProbeActor:
    """A detached actor like the supervisor; optionally imports what the supervisor imports."""

    def __init__(self, module: str | None = None) -> None:
        self.entered = time.time()
        self.imported_s = 0.0
        if module:
            import importlib

            t = time.perf_counter()
            importlib.import_module(module)
            self.imported_s = time.perf_counter() - t

    def info(self) -> dict[str, float]:
        return {"entered": self.entered, "imported_s": self.imported_s, "pid": os.getpid()}


def bare_task_latency(n: int) -> list[float]:
    """Seconds from ``.remote()`` to the body of a 1-CPU task starting, ``n`` times in turn."""
    import ray

    task = ray.remote(num_cpus=1)(probe_task)
    ray.get(task.remote())  # the function is exported once, as for any driver
    out = []
    for _ in range(n):
        t0 = time.time()
        started = ray.get(task.remote())
        out.append(started - t0)
    return out


def actor_start(module: str | None, name: str) -> dict[str, float]:
    """A new detached, named, 0-CPU actor (the supervisor's options): seconds to ``__init__``
    entered, seconds spent importing ``module`` in it, seconds until it answered."""
    import ray

    cls: Any = ray.remote(num_cpus=0, max_restarts=0)(ProbeActor)
    t0 = time.time()
    handle = cls.options(
        name=name, namespace="gureum-bench", lifetime="detached", max_concurrency=8
    ).remote(module)
    info: dict[str, float] = ray.get(handle.info.remote())
    t1 = time.time()
    ray.kill(handle, no_restart=True)
    return {
        "to_init_s": info["entered"] - t0,
        "import_s": info["imported_s"],
        "ready_s": t1 - t0,
    }


def start_spans(job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """From Ray's task timeline, for each job's first attempt (epoch seconds): when the work
    task's body began, and, where the attempt's supervisor actor was created for it, when that
    actor's ``__init__`` began (after its worker process started and imported its module);
    with the worker processes that ran them."""
    import ray

    events = [e for e in ray.timeline() if e.get("ph") == "X" and "ts" in e]
    out: dict[str, dict[str, Any]] = {}
    for job_id in job_ids:
        spans: dict[str, Any] = {}
        for e in sorted(events, key=lambda e: e["ts"]):
            cat, name = str(e.get("cat", "")), str(e.get("name", ""))
            if job_id not in cat:
                continue
            if name == "__init__" and "actor_init" not in spans:
                spans["actor_init"], spans["actor_worker"] = e["ts"] / 1e6, e.get("tid")
            elif "run_one" in name and "work_start" not in spans:
                spans["work_start"], spans["work_worker"] = e["ts"] / 1e6, e.get("tid")
        out[job_id] = spans
    return out


def probe_pid() -> int:
    return os.getpid()


class ProbeOwner:
    """An actor that runs a 1-CPU task and says which worker process ran it."""

    def run(self) -> int:
        import ray

        pid: int = ray.get(ray.remote(num_cpus=1)(probe_pid).remote())
        return pid


def task_worker_reuse(detached: bool, n: int) -> int:
    """How many distinct worker processes ran the tasks of ``n`` actors created in turn (each
    running one task): 1 when a warm worker is reused, ``n`` when each needs a new process."""
    import ray

    cls: Any = ray.remote(num_cpus=0)(ProbeOwner)
    pids = set()
    for i in range(n):
        opts: dict[str, Any] = {
            "name": f"probe-owner-{detached}-{i}-{os.getpid()}",
            "namespace": "gureum-bench",
        }
        if detached:
            opts["lifetime"] = "detached"
        handle = cls.options(**opts).remote()
        pids.add(ray.get(handle.run.remote()))
        ray.kill(handle, no_restart=True)
        time.sleep(1.0)  # the task's worker is back in the pool, idle
    return len(pids)


def probe_work_task(module: str) -> float:
    """A work task that needs what a job's task needs: the time its body starts."""
    import importlib

    importlib.import_module(module)
    return time.time()


def probe_pid_modules(module: str) -> tuple[int, bool]:
    return os.getpid(), module in sys.modules


class ProbeHost:
    """One long-lived detached actor that launches every job's work (instead of one new
    detached actor per attempt): its tasks share one root, so Ray reuses their warm workers."""

    def launch(self, module: str) -> float:
        import ray

        task = ray.remote(num_cpus=1, max_retries=0)(probe_work_task)
        started: float = ray.get(task.remote(module))
        return started


def host_task_latency(module: str, n: int) -> list[float]:
    """Seconds from asking one detached host actor (already running) to launch a work task
    that imports ``module`` until the task body runs, ``n`` launches in turn."""
    import ray

    cls: Any = ray.remote(num_cpus=0)(ProbeHost)
    host = cls.options(
        name=f"probe-host-{os.getpid()}",
        namespace="gureum-bench",
        lifetime="detached",
        max_concurrency=8,
    ).remote()
    out = []
    try:
        for _ in range(n):
            t0 = time.time()
            out.append(ray.get(host.launch.remote(module)) - t0)
            time.sleep(0.5)
    finally:
        ray.kill(host, no_restart=True)
    return out


def probe_entry_task(module: str) -> tuple[int, float]:
    """What a job's work task does first: import its entry module; (pid, time it got here)."""
    import importlib

    importlib.import_module(module)
    return os.getpid(), time.time()


class ProbeSpare:
    """A supervisor started ahead of need; ``warm`` also runs a no-op 0-CPU task from it, so a
    worker process bound to it (Ray ties a detached actor's task workers to it) is started and
    has imported the entry module before the real work arrives."""

    def __init__(self, module: str, warm: bool) -> None:
        import ray

        self.module = module
        self.warm_pid = None
        if warm:
            task = ray.remote(num_cpus=0)(probe_entry_task)
            self.warm_pid = ray.get(task.remote(module))[0]

    def run(self) -> dict[str, Any]:
        import ray

        task = ray.remote(num_cpus=1, max_retries=0)(probe_entry_task)
        t0 = time.time()
        pid, started = ray.get(task.remote(self.module))
        return {"start_s": started - t0, "reused_warm_worker": pid == self.warm_pid}


def spare_task_latency(module: str, warm: bool, idle_s: float, n: int) -> list[dict[str, Any]]:
    """Seconds from a ready spare supervisor submitting a 1-CPU work task (after ``idle_s`` of
    waiting for a job) until the task body runs, for ``n`` spares in turn."""
    import ray

    cls: Any = ray.remote(num_cpus=0)(ProbeSpare)
    out = []
    for i in range(n):
        handle = cls.options(
            name=f"probe-spare-{warm}-{i}-{os.getpid()}",
            namespace="gureum-bench",
            lifetime="detached",
        ).remote(module, warm)
        ray.get(handle.__ray_ready__.remote())
        time.sleep(idle_s)
        out.append(ray.get(handle.run.remote()))
        ray.kill(handle, no_restart=True)
    return out


def fresh_import_seconds(module: str, repeats: int = 1) -> dict[str, float]:
    """Wall seconds of ``python -c 'import module'`` in a new process (median of repeats), and
    what the biggest parts cost by ``-X importtime`` (one run)."""
    walls = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
        walls.append(time.perf_counter() - t)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    bare = time.perf_counter() - t
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
    )
    cumulative: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2].strip()
        cumulative[name] = max(cumulative.get(name, 0.0), int(parts[1]) / 1e6)
    parts_of_interest = {
        "torch": "torch",
        "sklearn (gureum.recipes.tabular)": "sklearn",
        "ray": "ray",
        "httpx (gureum/__init__ -> gureum.client)": "httpx",
        "gureum.recipes (all built-in recipes)": "gureum.recipes",
        "gureum.compute.work": "gureum.compute.work",
    }
    out = {"python_startup_s": round(bare, 3), "import_wall_s": round(statistics.median(walls), 3)}
    for label, mod in parts_of_interest.items():
        out[label] = round(cumulative.get(mod, 0.0), 3)
    return out


# -- torchrun entry point --------------------------------------------------------------------


def _torchrun_main(argv: list[str]) -> int:
    from torch import distributed as dist

    from gureum.recipes.run import main

    if "RANK" in os.environ:
        dist.init_process_group("gloo")
    rank = int(os.environ.get("RANK", "0"))
    if rank:
        argv = list(argv)
        i = argv.index("--out")
        argv[i + 1] = f"{argv[i + 1]}-rank{rank}"
        argv.append("--quiet")
    try:
        code = main(argv)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(_torchrun_main(sys.argv[1:]))
