"""The credentials file `gureum up` writes and the SDK reads (client.base.load_credentials).

It holds the bootstrap admin key, so it is created with mode 0600 and never world-readable,
not even for an instant.
"""

from __future__ import annotations

import json
from pathlib import Path

from gureum.local.state import write_private


def read_credentials(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def write_credentials(path: Path, *, url: str, api_key: str, workspace: str) -> None:
    body = {"url": url, "api_key": api_key, "workspace": workspace}
    write_private(path, (json.dumps(body, indent=2) + "\n").encode())


def update_url(path: Path, url: str) -> bool:
    """Point existing credentials at a new URL (a later `up` on another port).

    Returns False when there are no usable credentials to update.
    """
    creds = read_credentials(path)
    if not creds.get("api_key"):
        return False
    if creds.get("url") != url:
        write_credentials(
            path, url=url, api_key=creds["api_key"], workspace=creds.get("workspace", "")
        )
    return True
