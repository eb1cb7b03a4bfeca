"""HTTP plumbing of the SDK: finding the server and key, and turning errors into exceptions."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from gureum.client.errors import ConnectionFailed, GureumError, error_for
from gureum.config import default_home

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=5.0)

# A version by number, or by name ("latest"; for models also "production").
VersionRef = int | str


def segment(value: str | int) -> str:
    """One URL path segment: names and refs are quoted so nothing can change the route."""
    return quote(str(value), safe="")


def load_credentials(home: Path | None = None) -> dict[str, str]:
    path = (home or default_home()) / "credentials.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def resolve(url: str | None, api_key: str | None) -> tuple[str, str | None]:
    """Explicit arguments win, then GUREUM_URL / GUREUM_API_KEY, then what `gureum up` wrote."""
    creds = load_credentials() if not (url and api_key) else {}
    url = url or os.environ.get("GUREUM_URL") or creds.get("url") or "http://127.0.0.1:8080"
    api_key = api_key or os.environ.get("GUREUM_API_KEY") or creds.get("api_key")
    return url.rstrip("/"), api_key


class Transport:
    def __init__(
        self,
        url: str,
        api_key: str | None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        http: httpx.Client | None = None,
    ) -> None:
        self.url = url
        self.api_key = api_key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = http or httpx.Client(base_url=url, timeout=timeout)
        self.http.headers.update(headers)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ConnectionFailed(
                f"cannot reach the gureum server at {self.url}: {exc}. Is it running? "
                "(start it with `gureum up`)"
            ) from exc
        if resp.status_code >= 400:
            raise error_for(resp.status_code, _json_or_text(resp))
        return resp

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.request(method, path, **kwargs)
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    def stream(self, method: str, path: str, **kwargs: Any) -> Any:
        """A context manager over a streamed response that raises API errors first."""
        return _Stream(self, method, path, kwargs)

    def close(self) -> None:
        self.http.close()


class _Stream:
    def __init__(self, t: Transport, method: str, path: str, kwargs: dict[str, Any]) -> None:
        self._cm = t.http.stream(method, path, **kwargs)
        self._url = t.url

    def __enter__(self) -> httpx.Response:
        try:
            resp = self._cm.__enter__()
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"cannot reach the gureum server at {self._url}: {exc}") from exc
        if resp.status_code >= 400:
            resp.read()
            err = error_for(resp.status_code, _json_or_text(resp))
            self._cm.__exit__(None, None, None)
            raise err
        return resp

    def __exit__(self, *exc: Any) -> None:
        self._cm.__exit__(*exc)


def _json_or_text(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return resp.text


def pages(transport: Transport, path: str, params: dict[str, Any] | None = None) -> list[Any]:
    """Follow next_cursor to the end and return every item."""
    params = dict(params or {})
    params.setdefault("limit", 1000)
    items: list[Any] = []
    while True:
        page = transport.json("GET", path, params=params)
        items.extend(page["items"])
        if not page.get("next_cursor"):
            return items
        params["cursor"] = page["next_cursor"]


__all__ = [
    "GureumError",
    "Transport",
    "VersionRef",
    "load_credentials",
    "pages",
    "resolve",
    "segment",
]
