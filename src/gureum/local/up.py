"""`gureum up`: start the local cloud, detached or in the foreground.

This module pulls in the whole server stack (FastAPI, SQLAlchemy, Alembic, uvicorn), so the
CLI imports it only when `up` runs; `down` and `status` live in light modules.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import httpx
import uvicorn

from gureum.compute.local_ray import auth_env
from gureum.config import Settings
from gureum.local.down import STOP_TIMEOUT, server_alive, stop_ray
from gureum.local.prepare import (
    check_artifacts,
    check_port_free,
    check_ray_address,
    client_host,
    ensure_ray,
    mask_url,
    prepare_database,
    save_credentials,
    secure_home,
    server_url,
)
from gureum.local.procs import (
    ProcessRef,
    describe,
    free_port,
    port_open,
    process_tree,
    spawn_detached,
    tail,
    terminate,
)
from gureum.local.results import UpError, UpResult, server_log
from gureum.local.state import RayState, RunState, clear_state, load_state, run_lock, save_state
from gureum.server.app import create_app

SERVER_MODULE = "gureum.server.main"
START_TIMEOUT = 60.0


def _already(settings: Settings, state: RunState) -> UpResult:
    return UpResult(
        status="already_running",
        url=state.url,
        home=state.home,
        credentials=str(settings.credentials_path),
        has_credentials=settings.credentials_path.exists(),
        mode=state.mode,
        pid=state.server.pid if state.server else None,
        ray_address=state.ray.address if state.ray else "",
        ray_managed=bool(state.ray and state.ray.head),
        database=state.database,
        artifacts=state.artifacts,
        log=str(server_log(settings)),
    )


def _prepare(settings: Settings, previous: RunState | None) -> tuple[UpResult, RunState, bool]:
    """Everything before the server runs: port, database, key, artifacts, Ray."""
    url = server_url(settings.host, settings.port)
    check_port_free(settings.host, settings.port)
    check_ray_address(settings)
    token = prepare_database(settings)
    check_artifacts(settings)
    has_credentials = save_credentials(settings, url, token)
    ray, ray_started = ensure_ray(settings, previous.ray if previous else None)
    state = RunState(
        home=str(settings.home),
        url=url,
        host=settings.host,
        port=settings.port,
        ray=ray,
        database=mask_url(settings.resolved_database_url),
        artifacts=settings.resolved_artifacts,
    )
    result = UpResult(
        status="started",
        url=url,
        home=str(settings.home),
        credentials=str(settings.credentials_path),
        api_key=token,
        has_credentials=has_credentials,
        ray_address=ray.address,
        ray_managed=ray.head is not None,
        database=state.database,
        artifacts=state.artifacts,
        log=str(server_log(settings)),
    )
    return result, state, ray_started


def _server_env(settings: Settings, ray: RayState | None) -> dict[str, str]:
    env = dict(os.environ)
    ray_address = ray.address if ray else ""
    if ray is not None and ray.head is not None:
        env.pop("RAY_AUTH_TOKEN", None)
        env.update(auth_env(ray.head.network))
    env.update(
        GUREUM_HOME=str(settings.home),
        GUREUM_HOST=settings.host,
        GUREUM_PORT=str(settings.port),
        GUREUM_SERVE_HOST=settings.serve_host,
        GUREUM_DATABASE_URL=settings.resolved_database_url,
        GUREUM_ARTIFACTS=settings.resolved_artifacts,
        GUREUM_RAY_ADDRESS=ray_address,
        GUREUM_SERVE_PORT=str(serve_port(settings)),
        RAY_ADDRESS=ray_address,
    )
    return env


def serve_port(settings: Settings) -> int:
    """The data plane's port: the configured one, or a free one when another program (or
    another local cloud) holds it."""
    if port_open(client_host(settings.serve_host), settings.serve_port):
        return free_port(client_host(settings.serve_host))
    return settings.serve_port


def _wait_healthy(
    url: str, proc: subprocess.Popen[bytes], log: Path, offset: int, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1.0) as http:
        while True:
            rc = proc.poll()
            if rc is not None:
                raise UpError(
                    f"the server exited (code {rc}) while starting; from {log}:\n"
                    + tail(log, offset)
                )
            try:
                if http.get(f"{url}/v1/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise UpError(
                    f"the server did not answer at {url} within {timeout:.0f}s; from {log}:\n"
                    + tail(log, offset)
                )
            time.sleep(0.1)


def up(settings: Settings, *, timeout: float = START_TIMEOUT) -> UpResult:
    """Start the cloud detached and return once the server answers."""
    secure_home(settings)
    with run_lock(settings.run_dir):
        previous = load_state(settings.run_dir)
        if previous is not None and server_alive(previous):
            return _already(settings, previous)
        result, state, ray_started = _prepare(settings, previous)
        # Recorded before the server starts: from here on `down` can clean up after a crash.
        save_state(settings.run_dir, state)
        log = server_log(settings)
        offset = log.stat().st_size if log.exists() else 0
        proc: subprocess.Popen[bytes] | None = None
        try:
            proc = spawn_detached(
                [sys.executable, "-m", SERVER_MODULE],
                env=_server_env(settings, state.ray),
                log_path=log,
            )
            state.server = describe(proc.pid, SERVER_MODULE)
            save_state(settings.run_dir, state)
            _wait_healthy(result.url, proc, log, offset, timeout)
        except BaseException:
            if proc is not None:
                terminate(process_tree(proc.pid), STOP_TIMEOUT)
                proc.wait()
            state.server = None
            if ray_started:
                stop_ray(state.ray, settings=settings)
                state.ray = None
            _save_or_clear(settings, state)
            raise
        result.pid = proc.pid
        # The server lives on after we exit; forget it so Popen does not warn about it.
        proc.returncode = 0
        return result


def _save_or_clear(settings: Settings, state: RunState) -> None:
    if state.server is None and (state.ray is None or state.ray.head is None):
        clear_state(settings.run_dir)
    else:
        save_state(settings.run_dir, state)


class _Stop(Exception):
    """SIGTERM, turned into an exception so that every `finally` runs."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def run_foreground(settings: Settings, on_ready: Callable[[UpResult], None]) -> UpResult | None:
    """Serve in this process until SIGTERM or Ctrl-C (containers), then stop what we started.

    ``on_ready`` gets the details once everything but the server runs. Returns the running
    cloud's details if another `up` already serves this home, else None once stopped.
    """
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        return _foreground(settings, on_ready)
    except (_Stop, KeyboardInterrupt):
        return None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _foreground(settings: Settings, on_ready: Callable[[UpResult], None]) -> UpResult | None:
    secure_home(settings)
    with run_lock(settings.run_dir):
        previous = load_state(settings.run_dir)
        if previous is not None and server_alive(previous):
            return _already(settings, previous)
        result, state, _ = _prepare(settings, previous)
        try:
            state.mode = result.mode = "foreground"
            state.server = describe(os.getpid(), "gureum")
            result.pid = os.getpid()
            save_state(settings.run_dir, state)
        except BaseException:
            stop_ray(state.ray, settings=settings)
            raise
    try:
        on_ready(result)
        if state.ray is not None and state.ray.head is not None:
            os.environ.pop("RAY_AUTH_TOKEN", None)
            os.environ.update(auth_env(state.ray.head.network))
        _serve(settings, result.ray_address)
    finally:
        # The head is this process's child in all but name: started (or taken over from a
        # crashed `up`) for it, it stops with it. An external cluster is never touched.
        stop_ray(state.ray, settings=settings)
        _clear_if_ours(settings, state.server)
    return None


def _serve(settings: Settings, ray_address: str) -> None:
    if ray_address:
        os.environ["RAY_ADDRESS"] = ray_address
    update = {"ray_address": ray_address, "serve_port": serve_port(settings)}
    app = create_app(settings.model_copy(update=update), migrate=False)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        server_header=False,
        proxy_headers=False,  # create_app applies Settings.forwarded_allow_ips
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        raise UpError(f"the server could not listen on {settings.host}:{settings.port}")


def _clear_if_ours(settings: Settings, ref: ProcessRef | None) -> None:
    state = load_state(settings.run_dir)
    if state is not None and ref is not None and state.server == ref:
        clear_state(settings.run_dir)
