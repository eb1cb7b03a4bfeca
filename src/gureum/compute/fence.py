"""Attempts the control plane gave up on, recorded on the cluster itself.

A leader that lost its lease while launching (paused, cut off from the database) can still
hand its attempt to a supervisor after the new leader declared that attempt lost and started
the next. The new leader marks the lost attempt superseded in Ray's key-value store (the
GCS, which every supervisor reaches) before it retries: a supervisor refuses to start a
superseded attempt, and one already running is told to stop at its next report. The database's
fencing cannot do this: the late launch is a Ray call, not a write.
"""

from __future__ import annotations

import logging
import time

from ray.experimental import internal_kv

from gureum.compute.spec import NAMESPACE

log = logging.getLogger(__name__)
_PREFIX = "gureum-superseded:"


def _key(job_id: str, attempt: int | None = None) -> bytes:
    return f"{_PREFIX}{job_id}:{'' if attempt is None else attempt}".encode()


def supersede(job_id: str, attempt: int) -> None:
    """Attempt ``attempt`` of ``job_id`` must never run (again); the mark records when."""
    internal_kv._internal_kv_put(
        _key(job_id, attempt), str(time.time()).encode(), overwrite=True, namespace=NAMESPACE
    )


def superseded(job_id: str, attempt: int) -> bool:
    """Whether the control plane gave this attempt up; an unreachable store says no (the
    attempt runs, as it did before fences existed, rather than a job failing on a blip)."""
    try:
        return bool(internal_kv._internal_kv_exists(_key(job_id, attempt), namespace=NAMESPACE))
    except Exception:
        log.warning("cannot read the fence of %s/%s", job_id, attempt, exc_info=True)
        return False


def sweep(active: set[str], keep_s: float) -> int:
    """Drop the marks older than ``keep_s`` of jobs not in ``active``: a late launch comes
    seconds after the release, not minutes, and an ended job's marks would pile up."""
    dropped, now = 0, time.time()
    for key in internal_kv._internal_kv_list(_PREFIX, namespace=NAMESPACE):
        job_id = key.decode().removeprefix(_PREFIX).rsplit(":", 1)[0]
        if job_id in active:
            continue
        value = internal_kv._internal_kv_get(key, namespace=NAMESPACE)
        try:
            stale = value is None or now - float(value) > keep_s
        except ValueError:
            stale = True
        if stale:
            internal_kv._internal_kv_del(key, namespace=NAMESPACE)
            dropped += 1
    return dropped
