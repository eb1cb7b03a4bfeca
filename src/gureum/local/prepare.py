"""The steps `gureum up` runs in its own process before any server starts.

Migrations and the bootstrap run here, not in the server, so the one-time admin key is
handed straight to the credentials file and never passes through a server log.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from gureum.compute import gcs_storage
from gureum.compute.gcs_storage import GcsStorage, GcsStorageError
from gureum.compute.local_ray import (
    HeadNetwork,
    RayHead,
    RayStartError,
    default_temp_dir,
    head_alive,
    parse_address,
    reachable,
    remove_temp_dir,
    start_head,
    stop_head,
)
from gureum.config import Settings
from gureum.local.credentials import update_url, write_credentials
from gureum.local.procs import port_open
from gureum.local.results import UpError
from gureum.local.state import RayState, write_private
from gureum.server.db.migrate import upgrade
from gureum.server.db.session import Database
from gureum.server.services.bootstrap import DEFAULT_WORKSPACE, bootstrap
from gureum.storage.store import ArtifactStore


def mask_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def client_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to ``host``."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104


def server_url(host: str, port: int) -> str:
    h = client_host(host)
    return f"http://[{h}]:{port}" if ":" in h else f"http://{h}:{port}"


def check_port_free(host: str, port: int) -> None:
    if port_open(client_host(host), port):
        raise UpError(
            f"port {port} on {client_host(host)} is already in use by another program; "
            "choose another with --port"
        )


def prepare_database(settings: Settings) -> str | None:
    """Migrate the database and bootstrap it; the admin key on first start, else None."""
    url = settings.resolved_database_url
    try:
        db = Database(url)
    except (ArgumentError, ImportError, ValueError) as exc:
        raise UpError(f"invalid database URL {mask_url(url)}: {exc}") from exc
    try:
        upgrade(db.engine)
        return bootstrap(db)
    except SQLAlchemyError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UpError(f"cannot prepare the database {mask_url(url)}: {first}") from exc
    finally:
        db.dispose()


def secure_home(settings: Settings) -> None:
    """Make what gureum keeps private to its OS user: files it creates from here on (umask
    077, inherited by the server and the Ray head), the home folder, the SQLite database and a
    local artifact store made by an earlier version."""
    os.umask(0o077)
    home = settings.home
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    _restrict(home, 0o700)
    url = make_url(settings.resolved_database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        for suffix in ("", "-wal", "-shm", "-journal"):
            _restrict(Path(f"{url.database}{suffix}"), 0o600)
    if "://" not in settings.resolved_artifacts:
        _restrict(Path(settings.resolved_artifacts), 0o700)


def _restrict(path: Path, mode: int) -> None:
    """Drop group and world bits of ``path`` if it exists and is ours."""
    try:
        st = path.stat()
        if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o077:
            path.chmod(stat.S_IMODE(st.st_mode) & mode)
    except OSError:
        pass


def check_artifacts(settings: Settings) -> None:
    url = settings.resolved_artifacts
    try:
        ArtifactStore(url)
    except Exception as exc:  # any fsspec backend error: missing driver, bad URL, no access
        raise UpError(f"cannot open the artifact store {url}: {exc}") from exc


def save_credentials(settings: Settings, url: str, token: str | None) -> bool:
    """Write the admin key on first start, else point saved credentials at ``url``.

    Returns False when there are no credentials to use (a database set up elsewhere).
    """
    path = settings.credentials_path
    if token is not None:
        write_credentials(path, url=url, api_key=token, workspace=DEFAULT_WORKSPACE)
        return True
    return update_url(path, url)


def requested_ray_address(settings: Settings) -> str:
    return settings.ray_address or os.environ.get("RAY_ADDRESS", "")


def check_ray_address(settings: Settings) -> None:
    """Fail early, before touching the database, if a given Ray cluster does not answer."""
    address = requested_ray_address(settings)
    if address and parse_address(address) is not None and not reachable(address, timeout=3.0):
        raise UpError(f"cannot reach the Ray cluster at {address}")


def ensure_ray(settings: Settings, previous: RayState | None) -> tuple[RayState, bool]:
    """The Ray cluster to use, and whether this call started it.

    A given address is used as it is (check_ray_address has checked it). Otherwise a head
    that an earlier `up` started and that is still alive (the server crashed, Ray did not)
    is kept, so running jobs survive.
    """
    old_head = previous.head if previous else None
    address = requested_ray_address(settings)
    storage = None if address else head_storage(settings)
    if old_head is not None:
        if not address and head_alive(old_head):
            _check_same_network(old_head, head_network(settings))
            _check_same_storage(old_head, storage)
            return RayState(address=old_head.address, head=old_head), False
        # Ours, and no longer used (or half dead): stop what is left of it.
        stop_head(old_head)
        remove_temp_dir(old_head)
    if address:
        return RayState(address=address), False
    try:
        head = start_head(
            default_temp_dir(settings.home),
            settings.log_dir / "ray.log",
            network=head_network(settings),
            storage=storage,
            redis_username=settings.ray_redis_username,
            redis_password=settings.ray_redis_password.get_secret_value(),
        )
    except RayStartError as exc:
        raise UpError(f"cannot start a local Ray head: {exc}") from exc
    return RayState(address=head.address, head=head), True


def head_network(settings: Settings) -> HeadNetwork:
    """Where the local head listens, always with Ray's token auth: every Ray service binds
    the head's address, but Ray Serve's replicas also open an inter-deployment gRPC port on
    every address (hard-coded ``[::]:0`` in Ray 2.60); the token is what guards it."""
    return HeadNetwork(
        host=settings.ray_host,
        data_plane_host=settings.serve_host,
        auth_token_path=str(ray_token(settings)),
        http_request_timeout_s=settings.data_plane_request_timeout_s,
        client_timeout_s=settings.data_plane_client_timeout_s,
        max_headers=settings.data_plane_max_headers,
    )


def head_storage(settings: Settings) -> GcsStorage | None:
    """Where the local head's GCS keeps its tables (GUREUM_RAY_REDIS_*), or None."""
    try:
        return gcs_storage.storage_for(
            settings.ray_redis_address, settings.ray_redis_namespace, settings.home
        )
    except GcsStorageError as exc:
        raise UpError(str(exc)) from exc


def _check_same_storage(head: RayHead, wanted: GcsStorage | None) -> None:
    """A running head keeps the GCS storage it started with (see _check_same_network)."""
    if head.gcs_storage != wanted:
        raise UpError(
            "the local Ray head still running was started with other GCS storage settings "
            "(GUREUM_RAY_REDIS_ADDRESS / _NAMESPACE); run `gureum down` first "
            "(it stops running jobs), then `gureum up` again"
        )


def ray_token(settings: Settings) -> Path:
    """The local head's Ray auth token (made once, mode 0600, never logged)."""
    path = settings.ray_token_path
    if not path.exists() or not path.read_text().strip():
        write_private(path, secrets.token_hex(32).encode())
    return path


def _check_same_network(head: RayHead, wanted: HeadNetwork) -> None:
    """A running head keeps the addresses and auth it started with: refuse to serve with
    other network settings (its jobs would be lost if we restarted it unasked)."""
    if head.network != wanted:
        raise UpError(
            "the local Ray head still running was started with other network settings "
            "(addresses, token auth or HAProxy limits); run `gureum down` first "
            "(it stops running jobs), then `gureum up` again"
        )
