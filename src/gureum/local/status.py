"""`gureum status`: the health of each part of the local cloud, checked from outside."""

from __future__ import annotations

import os

import httpx
from pydantic import BaseModel

from gureum.client import Client
from gureum.client.errors import GureumError
from gureum.compute.local_ray import head_processes, parse_address, reachable
from gureum.config import Settings
from gureum.local.credentials import read_credentials
from gureum.local.procs import find
from gureum.local.state import RunState, load_state

PROBE_TIMEOUT = 3.0
PARTS = ("server", "database", "artifacts", "ray")


class Part(BaseModel):
    ok: bool
    detail: str


class StatusReport(BaseModel):
    running: bool
    url: str | None = None
    home: str
    mode: str | None = None
    parts: dict[str, Part]

    @property
    def healthy(self) -> bool:
        return all(p.ok for p in self.parts.values())


def status(settings: Settings) -> StatusReport:
    state = load_state(settings.run_dir)
    if state is None:
        down = {name: Part(ok=False, detail="not running") for name in PARTS}
        return StatusReport(running=False, home=str(settings.home), parts=down)
    parts = {"server": _server(state)}
    parts.update(_readiness(settings, state, parts["server"].ok))
    parts["ray"] = _ray(state)
    if parts["server"].ok:
        parts["sandbox"] = _sandbox(settings, state)
    return StatusReport(
        running=parts["server"].ok,
        url=state.url,
        home=str(settings.home),
        mode=state.mode,
        parts=parts,
    )


def _server(state: RunState) -> Part:
    proc = find(state.server) if state.server else None
    if proc is None:
        return Part(ok=False, detail="not running (the recorded process is gone)")
    try:
        resp = httpx.get(f"{state.url}/v1/health", timeout=PROBE_TIMEOUT)
    except httpx.TransportError as exc:
        return Part(ok=False, detail=f"pid {proc.pid} alive but {state.url} does not answer: {exc}")
    if resp.status_code != 200:
        return Part(ok=False, detail=f"pid {proc.pid}; /v1/health answered {resp.status_code}")
    try:
        leads = bool(resp.json().get("leader"))
    except ValueError:
        leads = False
    role = "leads the controllers" if leads else "does not lead the controllers"
    return Part(ok=True, detail=f"{state.url} (pid {proc.pid}, {state.mode}; {role})")


def _readiness(settings: Settings, state: RunState, server_ok: bool) -> dict[str, Part]:
    """Database and artifact store as the server sees them (/v1/health/ready)."""
    if not server_ok:
        return {
            "database": Part(ok=False, detail=f"unknown: server down ({state.database})"),
            "artifacts": Part(ok=False, detail=f"unknown: server down ({state.artifacts})"),
        }
    # This home's own credentials first: GUREUM_API_KEY may be meant for another server.
    key = read_credentials(settings.credentials_path).get("api_key") or os.environ.get(
        "GUREUM_API_KEY"
    )
    if not key:
        reason = f"unknown: no API key (set GUREUM_API_KEY or see {settings.credentials_path})"
        return {
            "database": Part(ok=False, detail=reason),
            "artifacts": Part(ok=False, detail=reason),
        }
    try:
        with Client(state.url, key, timeout=PROBE_TIMEOUT) as client:
            ready = client.ready()
    except GureumError as exc:
        reason = f"unknown: {exc.message}"
        return {
            "database": Part(ok=False, detail=reason),
            "artifacts": Part(ok=False, detail=reason),
        }
    return {
        "database": Part(ok=bool(ready.get("database")), detail=state.database),
        "artifacts": Part(ok=bool(ready.get("artifacts")), detail=state.artifacts),
    }


def _key(settings: Settings) -> str | None:
    found = read_credentials(settings.credentials_path).get("api_key")
    return found or os.environ.get("GUREUM_API_KEY")


def _sandbox(settings: Settings, state: RunState) -> Part:
    """Whether script jobs run sandboxed, as the server sees it (/v1/settings): down when
    they would be refused, ok with a warning when a site admin allowed unsandboxed code."""
    key = _key(settings)
    if not key:
        return Part(ok=False, detail="unknown: no API key")
    try:
        with Client(state.url, key, timeout=PROBE_TIMEOUT) as client:
            site = client.settings.get()
    except GureumError as exc:
        return Part(ok=False, detail=f"unknown: {exc.message}")
    if site.sandbox.available:
        extra = "; allow_unsandboxed_code is on" if site.allow_unsandboxed_code else ""
        return Part(ok=True, detail=site.sandbox.detail + extra)
    if site.allow_unsandboxed_code:
        return Part(
            ok=True,
            detail=f"UNSANDBOXED: {site.sandbox.detail}; a site admin allowed unsandboxed code",
        )
    return Part(ok=False, detail=f"{site.sandbox.detail}; script jobs are refused")


def _ray(state: RunState) -> Part:
    if state.ray is None:
        return Part(ok=False, detail="no Ray cluster recorded")
    address = state.ray.address
    head = state.ray.head
    owner = "local head started by `gureum up`" if head else "external cluster"
    if head is not None and not head_processes(head):
        return Part(ok=False, detail=f"{address}: the local head's processes are gone")
    if parse_address(address) is None:
        return Part(ok=True, detail=f"{address} ({owner}; address not checked)")
    if not reachable(address, timeout=PROBE_TIMEOUT):
        return Part(ok=False, detail=f"{address} does not answer ({owner})")
    return Part(ok=True, detail=f"{address} ({owner})")
