"""Ray's GCS fault tolerance: the head's control state kept in an external Redis.

By default Ray's control service (the GCS) keeps the cluster's tables (nodes, actors, jobs,
placement groups, its key-value store) in memory, and the cluster dies with it. With
``RAY_REDIS_ADDRESS`` set when the head starts, the GCS writes them to Redis and a GCS started
again on the same port (by whatever restarts the head: KubeRay, systemd, an operator) reloads
them; raylets, workers, actors and drivers reconnect, and running work carries on
(docs/deploy/README.md, "GCS fault tolerance").

Every cluster keeps its tables under a namespace of its own (``RAY_external_storage_namespace``,
keys ``RAY<namespace>@...``), so several clusters share one Redis. A head gureum starts is a new
cluster: what an earlier head left under its namespace is cleared first (a new GCS would
otherwise reload a dead cluster's actors), and `gureum down` clears it again.

The password goes to ``ray start --redis-password``; Ray hands it on to the GCS on the command
line (visible in that machine's process list), so we never log or record it ourselves.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from pydantic import BaseModel

from gureum.local.procs import port_open

# The variables that switch Ray's GCS storage to Redis; a head started without storage never
# inherits them from the environment of whoever started it (the setting is the one switch).
ENV_KEYS = ("RAY_REDIS_ADDRESS", "RAY_external_storage_namespace", "RAY_REDIS_PASSWORD")
NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
REACH_TIMEOUT_S = 3.0


class GcsStorageError(ValueError):
    pass


class GcsStorage(BaseModel):
    """Where a head keeps its GCS tables: Redis (``host:port``, ``redis://host:port`` or
    ``rediss://host:port`` for TLS) and the cluster's namespace there. No password: this is
    recorded in the run state."""

    address: str
    namespace: str

    @property
    def host_port(self) -> tuple[str, int, bool]:
        """Host, port, and whether the connection uses TLS."""
        return parse(self.address)


def parse(address: str) -> tuple[str, int, bool]:
    """``host``, ``port`` and TLS of a Redis address in the forms Ray accepts."""
    shown = _masked(address)
    scheme, sep, rest = address.strip().partition("://")
    if not sep:
        scheme, rest = "redis", scheme
    if scheme not in ("redis", "rediss") or "@" in rest or "/" in rest.rstrip("/"):
        raise GcsStorageError(
            f"invalid Redis address {shown!r}: expected host:port, redis://host:port or "
            "rediss://host:port (the password goes in GUREUM_RAY_REDIS_PASSWORD)"
        )
    host, colon, port = rest.rstrip("/").rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise GcsStorageError(f"invalid Redis address {shown!r}: expected host:port")
    return host.strip("[]"), int(port), scheme == "rediss"


def _masked(address: str) -> str:
    """``address`` fit for a message: credentials someone put in it are hidden."""
    head, at, host = address.strip().rpartition("@")
    if not at:
        return address.strip()
    scheme, sep, _ = head.partition("://")
    return f"{scheme}://***@{host}" if sep else f"***@{host}"


def default_namespace(home: Path) -> str:
    """One namespace per GUREUM_HOME, so two clouds can share a Redis."""
    digest = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:12]
    return f"gureum-{digest}"


def storage_for(address: str, namespace: str, home: Path) -> GcsStorage | None:
    """The storage the settings ask for (``Settings.ray_redis_*``); None when it is off."""
    if not address.strip():
        return None
    parse(address)
    namespace = namespace or default_namespace(home)
    if not NAMESPACE_RE.match(namespace):
        raise GcsStorageError(
            f"invalid Redis namespace {namespace!r}: 1 to 64 letters, digits, '_', '.' or '-'"
        )
    return GcsStorage(address=address.strip(), namespace=namespace)


def head_env(storage: GcsStorage) -> dict[str, str]:
    """What the head's processes need in their environment (Ray reads both variables)."""
    return {
        "RAY_REDIS_ADDRESS": storage.address,
        "RAY_external_storage_namespace": storage.namespace,
    }


def start_flags(username: str = "", password: str = "") -> list[str]:
    """``ray start`` flags for a Redis that wants credentials."""
    flags = [f"--redis-username={username}"] if username else []
    if password:
        flags.append(f"--redis-password={password}")
    return flags


def check_reachable(storage: GcsStorage) -> None:
    """Fail fast with a clear message: Ray would retry a missing Redis for minutes."""
    host, port, _ = storage.host_port
    if not port_open(host, port, timeout=REACH_TIMEOUT_S):
        raise GcsStorageError(f"cannot reach Redis at {host}:{port} (GUREUM_RAY_REDIS_ADDRESS)")


def clear(storage: GcsStorage, username: str = "", password: str = "") -> None:
    """Delete every key of ``storage``'s namespace (a cluster that is gone for good).
    Ray's own helper, the one KubeRay's cleanup job runs."""
    from ray._private.gcs_utils import cleanup_redis_storage

    host, port, tls = storage.host_port
    cleanup_redis_storage(
        host=host,
        port=port,
        password=password,
        use_ssl=tls,
        storage_namespace=storage.namespace,
        username=username or None,
    )
