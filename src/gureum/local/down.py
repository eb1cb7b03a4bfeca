"""`gureum down`: stop exactly what `gureum up` recorded, and nothing else."""

from __future__ import annotations

import logging

from gureum.compute import gcs_storage
from gureum.compute.local_ray import remove_temp_dir, stop_head
from gureum.config import Settings
from gureum.local.procs import find, terminate, with_children
from gureum.local.results import DownResult
from gureum.local.state import RayState, RunState, clear_state, load_state, run_lock

STOP_TIMEOUT = 10.0
log = logging.getLogger(__name__)


def server_alive(state: RunState | None) -> bool:
    """True if the recorded server process is still alive (and really ours)."""
    return state is not None and state.server is not None and find(state.server) is not None


def running(settings: Settings) -> RunState | None:
    """The recorded state if its server is still running."""
    state = load_state(settings.run_dir)
    return state if server_alive(state) else None


def stop_ray(
    ray: RayState | None, timeout: float = STOP_TIMEOUT, settings: Settings | None = None
) -> bool:
    """Stop the Ray head if `up` started it (an external cluster is never touched), and
    delete the GCS tables it kept in Redis: that cluster is gone for good."""
    if ray is None or ray.head is None:
        return False
    stopped = stop_head(ray.head, timeout)
    remove_temp_dir(ray.head)
    storage = ray.head.gcs_storage
    if storage is not None:
        try:
            gcs_storage.check_reachable(storage)
            gcs_storage.clear(
                storage,
                settings.ray_redis_username if settings else "",
                settings.ray_redis_password.get_secret_value() if settings else "",
            )
        except Exception:
            log.warning("cannot delete the Ray head's GCS tables in Redis (%s)", storage.address)
    return stopped


def down(settings: Settings, *, timeout: float = STOP_TIMEOUT) -> DownResult:
    """Stop the server and, only if `up` started it, the Ray head.

    A server pid that now belongs to another program is left alone (procs.find checks).
    """
    with run_lock(settings.run_dir):
        state = load_state(settings.run_dir)
        if state is None:
            return DownResult(status="not_running", stopped=[])
        stopped: list[str] = []
        proc = find(state.server) if state.server else None
        if proc is not None:
            terminate(with_children(proc), timeout)
            stopped.append(f"server (pid {proc.pid})")
        if stop_ray(state.ray, timeout, settings):
            stopped.append(f"ray head ({state.ray.address if state.ray else ''})")
        clear_state(settings.run_dir)
        return DownResult(status="stopped" if stopped else "not_running", stopped=stopped)
