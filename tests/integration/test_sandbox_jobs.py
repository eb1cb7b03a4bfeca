"""User code through the front door: script jobs refused without a sandbox unless a site admin
allowed unsandboxed code (only a site admin may, audited), ranks no single node can hold
refused; and on a real Ray cluster, a hostile script's every way out denied in its job log
while the job succeeds, and a two-rank job whose ranks meet inside one sandbox."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gureum.client import Client
from gureum.client.errors import GureumError
from gureum.compute import sandbox
from gureum.compute.ray_backend import RayBackend
from gureum.compute.resources import NodeInfo
from gureum.config import Settings
from gureum.server.app import create_app
from gureum.server.services.bootstrap import bootstrap
from tests.conftest import Cloud
from tests.integration.test_job_controller import FakeBackend
from tests.unit.test_sandbox import HOSTILE, PROBES, SECRET

BWRAP_OK = sandbox.probe(sandbox.bwrap_path()) is None


def _code(tmp_path: Path, body: str, name: str = "code") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "main.py").write_text(body)
    return folder


# -- the setting ---------------------------------------------------------------------------------


def test_only_a_site_admin_allows_unsandboxed_code_and_it_is_audited(cloud: Cloud) -> None:
    site = cloud.http()
    admin = cloud.client()
    admin.users.add("adam", role="admin")
    admin.users.add("vic", role="viewer")
    adam = cloud.http(admin.keys.create("adam-key", user="adam").token)
    vic = cloud.http(admin.keys.create("vic-key", user="vic").token)

    shown = vic.get("/v1/settings")
    assert shown.status_code == 200, shown.text
    assert shown.json()["allow_unsandboxed_code"] is False
    assert shown.json()["sandbox"]["available"] is BWRAP_OK

    for who in (adam, vic):
        r = who.put("/v1/settings/allow_unsandboxed_code", json={"value": True})
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "forbidden"
    assert site.get("/v1/settings").json()["allow_unsandboxed_code"] is False

    r = site.put("/v1/settings/allow_unsandboxed_code", json={"value": True})
    assert r.status_code == 200 and r.json()["allow_unsandboxed_code"] is True
    assert vic.get("/v1/settings").json()["allow_unsandboxed_code"] is True
    events = site.get("/v1/audit", params={"action": "setting.set"}).json()["items"]
    assert [(e["target"], e["details"]) for e in events] == [
        ("allow_unsandboxed_code", {"from": False, "to": True})
    ]

    assert site.put("/v1/settings/no_such", json={"value": True}).status_code == 404
    bad = site.put("/v1/settings/allow_unsandboxed_code", json={"value": [1]})
    assert bad.status_code == 422 and "error" in bad.json()


@dataclass
class TwoNodes(FakeBackend):
    """Two nodes of 2 CPUs: two 1-CPU ranks fit on one, two 2-CPU ranks only on both."""

    def nodes(self) -> list[NodeInfo]:
        return [NodeInfo("n1", {"CPU": 2.0}), NodeInfo("n2", {"CPU": 2.0})]


@pytest.fixture
def fake(settings: Settings) -> Iterator[tuple[Client, TwoNodes]]:
    backend = TwoNodes()
    app = create_app(settings, compute=backend)
    token = bootstrap(app.state.db)
    assert token is not None
    with TestClient(app, raise_server_exceptions=False) as http:  # runs the controller
        backend.app = app  # type: ignore[attr-defined]
        yield Client("http://testserver", token, http=http), backend
    app.state.db.dispose()


def _as(backend: FakeBackend, token: str) -> Client:
    """A client of its own (one HTTP client per key: the SDK sets its Authorization header)."""
    app = backend.app  # type: ignore[attr-defined]
    return Client("http://testserver", token, http=TestClient(app, raise_server_exceptions=False))


def _refused(call: object) -> GureumError:
    try:
        call()  # type: ignore[operator]
    except GureumError as exc:
        return exc
    raise AssertionError("not refused")


def _launched(backend: FakeBackend, job_id: str) -> bool:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if any(s.job_id == job_id for s in backend.launched):
            return True
        time.sleep(0.05)
    return False


def test_without_bubblewrap_script_jobs_are_refused_until_a_site_admin_allows(
    fake: tuple[Client, TwoNodes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, backend = fake
    monkeypatch.setenv(sandbox.BWRAP_ENV, str(tmp_path / "no-bwrap"))
    code = _code(tmp_path, "print('hi')\n")
    exc = _refused(lambda: client.jobs.train("script", None, code_dir=code))
    assert (exc.status, exc.code) == (422, "sandbox_unavailable")
    assert "no-bwrap" in exc.message and "allow_unsandboxed_code" in exc.message
    assert client.jobs.list() == []
    assert client.settings.get().sandbox.available is False

    client.settings.set("allow_unsandboxed_code", True)
    job = client.jobs.train("script", None, code_dir=code)
    assert job.state == "queued"
    assert _launched(backend, job.id)
    spec = next(s for s in backend.launched if s.job_id == job.id)
    assert spec.unsandboxed_ok is True  # the worker is told; it logs that it runs unsandboxed


@pytest.mark.skipif(not BWRAP_OK, reason="needs a working bubblewrap")
def test_ranks_no_single_node_holds_are_refused_with_the_reason(
    fake: tuple[Client, TwoNodes], tmp_path: Path
) -> None:
    client, backend = fake
    code = _code(tmp_path, "print('hi')\n")
    exc = _refused(
        lambda: client.jobs.train("script", None, code_dir=code, workers=2, resources={"cpus": 2})
    )
    assert (exc.status, exc.code) == (422, "sandbox_unavailable")
    assert "one node" in exc.message and "host network" in exc.message
    ok = client.jobs.train("script", None, code_dir=code, workers=2, resources={"cpus": 1})
    assert _launched(backend, ok.id)
    spec = next(s for s in backend.launched if s.job_id == ok.id)
    assert spec.unsandboxed_ok is False  # sandboxed: the supervisor runs both ranks as one task

    client.settings.set("allow_unsandboxed_code", True)
    spread = client.jobs.train("script", None, code_dir=code, workers=2, resources={"cpus": 2})
    assert spread.state == "queued"


# -- on Ray --------------------------------------------------------------------------------------


@dataclass
class RayCloud:
    settings: Settings
    client: Client


@pytest.fixture
def rc(tmp_path: Path, ray_cluster: str) -> Iterator[RayCloud]:
    home = tmp_path / "home"
    settings = Settings(home=home, artifacts=str(home / "artifacts"))
    app = create_app(settings, compute=RayBackend(ray_cluster))
    token = bootstrap(app.state.db)
    assert token is not None
    with TestClient(app, raise_server_exceptions=False) as http:
        client = Client("http://testserver", token, http=TestClient(app))
        http.headers["Authorization"] = f"Bearer {token}"
        yield RayCloud(settings, client)
        for job in client.jobs.list():
            if job.state not in ("succeeded", "failed", "cancelled"):
                client.jobs.cancel(job.id)


@pytest.fixture
def control_plane() -> Iterator[int]:
    """A listening port on the host's loopback, as the control plane's is."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                conn.close()
            except OSError:
                continue

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    srv.close()


@pytest.mark.ray
@pytest.mark.skipif(not BWRAP_OK, reason="needs a working bubblewrap")
def test_a_hostile_script_job_is_denied_everything_and_succeeds(
    rc: RayCloud, tmp_path: Path, ray_cluster: str, control_plane: int
) -> None:
    home = rc.settings.home
    (home / "credentials.json").write_text(f'{{"api_key": "{SECRET}"}}')
    (home / "serving.key").write_text(SECRET)
    blob_dir = Path(rc.settings.resolved_artifacts)
    blob_dir.mkdir(parents=True, exist_ok=True)
    (blob_dir / "blob").write_text(SECRET)
    other = Path("/tmp/gureum-jobs") / "another-job-1-r0"
    other.mkdir(parents=True, exist_ok=True)
    (other / "secret.txt").write_text(SECRET)
    gcs = int(ray_cluster.rsplit(":", 1)[1])
    body = HOSTILE.format(
        secret=SECRET,
        home=str(home),
        store=str(blob_dir),
        other=str(other),
        port=control_plane,
        gcs=gcs,
        tail="(run.model_dir() / 'm.txt').write_text('mine')\nrun.register_model()",
    )
    try:
        job = rc.client.jobs.train("script", None, model="hostile", code_dir=_code(tmp_path, body))
        done = rc.client.jobs.wait(job.id, poll_s=0.3, timeout_s=240)
    finally:
        (other / "secret.txt").unlink()
        other.rmdir()
    text, _ = rc.client.jobs.logs(job.id)
    assert done.state == "succeeded", (done.error, text)
    assert "LEAK" not in text, text
    for probe in PROBES:
        assert f"DENIED {probe}" in text, (probe, text)
    assert done.model_version == "hostile:1"


TWO_RANKS = """
import os
import torch
import torch.distributed as dist
import gureum.run as run

dist.init_process_group("gloo")  # MASTER_ADDR/PORT: the sandbox's own loopback
rank = dist.get_rank()
t = torch.tensor([float(rank + 1)])
dist.all_reduce(t)
print(f"rank {rank} of {dist.get_world_size()} sum {t.item()}", flush=True)
if rank == 0:
    run.register_model(metrics={"sum": t.item()})
dist.destroy_process_group()
"""


@pytest.mark.ray
@pytest.mark.skipif(not BWRAP_OK, reason="needs a working bubblewrap")
def test_a_two_rank_script_job_meets_inside_one_sandbox(rc: RayCloud, tmp_path: Path) -> None:
    job = rc.client.jobs.train(
        "script",
        None,
        model="ddp",
        code_dir=_code(tmp_path, TWO_RANKS),
        workers=2,
        resources={"cpus": 1},
    )
    done = rc.client.jobs.wait(job.id, poll_s=0.3, timeout_s=300)
    text, _ = rc.client.jobs.logs(job.id)
    assert done.state == "succeeded", (done.error, text)
    assert done.metrics["sum"] == 3.0
    assert "rank 0 of 2 sum 3.0" in text and "[rank 1] rank 1 of 2 sum 3.0" in text


# -- workspace secrets ---------------------------------------------------------------------------


def test_secrets_are_stored_encrypted_listed_by_name_and_reach_script_jobs(
    fake: tuple[Client, TwoNodes], settings: Settings, tmp_path: Path
) -> None:
    import stat

    from sqlalchemy import create_engine, text

    from gureum.client.errors import ForbiddenError

    admin, backend = fake
    value = "hf_live_0123456789abcdef"
    admin.users.add("dora", role="developer")
    admin.users.add("vic", role="viewer")
    dora = _as(backend, admin.keys.create("d", user="dora").token)
    vic = _as(backend, admin.keys.create("v", user="vic").token)

    out = dora.secrets.set("HF_TOKEN", value)
    assert out.name == "HF_TOKEN" and out.updated_by == "dora"
    listed = vic.secrets.list()
    assert [s.name for s in listed] == ["HF_TOKEN"]
    assert value not in vic._t.http.get("/v1/secrets").text
    with pytest.raises(ForbiddenError):
        vic.secrets.set("OTHER", "x" * 8)
    for bad in ("lower", "GUREUM_API_KEY", "PATH", "RAY_ADDRESS", "LD_PRELOAD"):
        exc = _refused(lambda bad=bad: dora.secrets.set(bad, "x" * 8))  # type: ignore[misc]
        assert exc.status == 422, bad

    # At rest: ciphertext only; the key is a 0600 file under GUREUM_HOME, not in the database.
    engine = create_engine(settings.resolved_database_url)
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT ciphertext FROM workspace_secrets")).scalar_one()
        audit_rows = conn.execute(text("SELECT details FROM audit_events")).all()
    engine.dispose()
    assert value not in stored and value not in str(audit_rows)
    key = settings.home / "settings" / "secrets.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600

    # A script job's spec carries it for the sandbox; params and the spec's repr do not.
    job = dora.jobs.train("script", None, code_dir=_code(tmp_path, "print('x')\n"))
    assert _launched(backend, job.id)
    spec = next(s for s in backend.launched if s.job_id == job.id)
    assert spec.secrets == {"HF_TOKEN": value}
    assert value not in repr(spec) and value not in str(spec.params)
    assert value not in str(dora.jobs.get(job.id).model_dump())

    dora.secrets.delete("HF_TOKEN")
    assert vic.secrets.list() == []
    assert _refused(lambda: dora.secrets.delete("HF_TOKEN")).status == 404
    assert _refused(lambda: dora.secrets.delete("NUL\x00BYTE")).status == 404  # not a 500 on PG


def test_gureum_status_shows_whether_user_code_is_sandboxed(
    live_server: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from gureum.local import status as status_mod
    from gureum.local.credentials import write_credentials

    live = live_server
    settings = Settings(home=tmp_path / "cli-home")
    settings.home.mkdir()
    key = live.cloud.admin_key  # type: ignore[attr-defined]
    write_credentials(settings.credentials_path, url=live.url, api_key=key, workspace="default")  # type: ignore[attr-defined]
    state = SimpleNamespace(url=live.url)  # type: ignore[attr-defined]
    monkeypatch.setenv(sandbox.BWRAP_ENV, str(tmp_path / "no-bwrap"))
    part = status_mod._sandbox(settings, state)  # type: ignore[arg-type]
    assert not part.ok and "script jobs are refused" in part.detail
    live.client().settings.set("allow_unsandboxed_code", True)  # type: ignore[attr-defined]
    part = status_mod._sandbox(settings, state)  # type: ignore[arg-type]
    assert part.ok and part.detail.startswith("UNSANDBOXED")
    if BWRAP_OK:
        monkeypatch.delenv(sandbox.BWRAP_ENV)
        part = status_mod._sandbox(settings, state)  # type: ignore[arg-type]
        assert part.ok and "bubblewrap" in part.detail
