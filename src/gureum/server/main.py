"""The API server process: ``python -m gureum.server.main``.

Configured only through GUREUM_* variables (what `gureum up` passes, or a container's env).
It logs requests, never settings: the database URL may hold a password, and keys only
ever travel in headers, which are not logged.
"""

from __future__ import annotations

import os

import uvicorn

from gureum.config import Settings
from gureum.server.app import create_app

GRACEFUL_SHUTDOWN_S = 10


def main() -> None:
    # The database, artifacts and spool it writes are gureum's alone (as under `gureum up`).
    os.umask(0o077)
    settings = Settings()
    # Migrations are idempotent: `gureum up` has run them already, a bare container has not.
    app = create_app(settings, migrate=True)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        server_header=False,
        proxy_headers=False,  # create_app applies Settings.forwarded_allow_ips
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )


if __name__ == "__main__":
    main()
