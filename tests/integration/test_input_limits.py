"""Issue 10, items 7 and 10, on SQLite and PostgreSQL: request bodies of the control plane
are bounded before they are parsed (authentication included), live log streams are capped per
key and end when the key is revoked, server text reaches the terminal without control
characters, and a job asking for no CPU still holds a real share of one."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from gureum import samples
from gureum.cli.main import app as cli_app
from gureum.schemas.jobs import MIN_JOB_CPUS
from gureum.server.db.tables import Dataset, Job, JobLog
from tests.conftest import Cloud, LiveServer
from tests.integration.test_blobs_api import limit, member_key, sha
from tests.integration.test_job_controller import Env
from tests.integration.test_job_controller import env as env  # a fixture

MiB = 1 << 20


def _error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    assert error["code"] == code and "message" in error and "details" in error
    return error


# -- request bodies -----------------------------------------------------------------------


def test_a_body_over_the_limit_is_413_before_authentication(cloud: Cloud) -> None:
    body = b'{"name": "' + b"a" * (2 * MiB) + b'"}'
    h = cloud.http(key=False)  # type: ignore[arg-type]
    r = h.post("/v1/keys", content=body, headers={"Content-Type": "application/json"})
    error = _error(r, 413, "payload_too_large")
    assert error["details"] == {"limit": MiB}
    # The same with a key: the body is refused before the route parses it.
    r = cloud.http().post(
        "/v1/workspaces", content=body, headers={"Content-Type": "application/json"}
    )
    _error(r, 413, "payload_too_large")


def test_a_body_without_a_length_is_counted_as_it_streams(live_server: LiveServer) -> None:
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"name": "'
        for _ in range(64):  # 4 MiB in 64 KiB pieces, no Content-Length (chunked)
            sent += 64 * 1024
            yield b"a" * (64 * 1024)
        yield b'"}'

    with httpx.Client(base_url=live_server.url, timeout=30) as h:
        r = h.post(
            "/v1/workspaces",
            content=chunks(),
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {live_server.cloud.admin_key}",
            },
        )
    assert "content-length" not in r.request.headers
    _error(r, 413, "payload_too_large")


def test_manifests_and_uploads_take_their_own_limits(cloud: Cloud) -> None:
    h = cloud.http()
    files = [
        {"path": f"folder/file-{i:06d}.bin", "sha256": sha(str(i).encode()), "size": 1}
        for i in range(20_000)
    ]
    body = json.dumps({"files": files}).encode()
    assert len(body) > 2 * MiB
    r = h.post(
        "/v1/datasets/big/versions", content=body, headers={"Content-Type": "application/json"}
    )
    _error(r, 400, "missing_blobs")  # parsed: the manifest limit is 64 MiB
    data = b"\1" * (3 * MiB)
    assert h.put(f"/v1/blobs/{sha(data)}", content=data).status_code == 201
    limit(cloud, max_manifest_bytes=MiB)
    r = h.post(
        "/v1/datasets/big/versions", content=body, headers={"Content-Type": "application/json"}
    )
    _error(r, 413, "payload_too_large")
    limit(cloud, max_file_bytes=MiB)
    _error(h.put(f"/v1/blobs/{sha(data)}", content=data), 413, "payload_too_large")


# -- live log streams ---------------------------------------------------------------------


def _queued_job(cloud: Cloud, tmp_path: Path, key: str) -> str:
    samples.write("tabular", tmp_path / "orders", count=30)
    cloud.client().datasets.push("orders", tmp_path / "orders")
    r = cloud.http(key).post(
        "/v1/jobs",
        json={"recipe": "tabular", "dataset": "orders", "params": {"target": "returned"}},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])  # no cluster: it stays queued, so its stream stays open


class _Stream:
    """An SSE stream read on a thread over a raw socket (closing it is a disconnect at
    once): the status, the events, and whether the server ended it."""

    def __init__(self, base: str, path: str, key: str) -> None:
        url = urlparse(base)
        assert url.hostname is not None and url.port is not None
        self.events: list[str] = []
        self.status = 0
        self.ended = threading.Event()
        self._sock = socket.create_connection((url.hostname, url.port), timeout=30)
        self._sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        self._file = self._sock.makefile("rb")
        status_line = self._file.readline().decode()
        self.status = int(status_line.split()[1])
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            for raw in self._file:
                line = raw.decode(errors="replace").strip()
                if line.startswith("event: "):
                    self.events.append(line.removeprefix("event: "))
        except (OSError, ValueError):
            pass
        finally:
            self.ended.set()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self.ended.wait(10)


def test_live_streams_are_capped_per_key_and_end_when_the_key_is_revoked(
    live_server: LiveServer, tmp_path: Path
) -> None:
    cloud = live_server.cloud
    limit(cloud, max_streams_per_key=2, stream_key_recheck_s=0.2)
    key = member_key(cloud, "developer")
    job = _queued_job(cloud, tmp_path, key)
    path = f"/v1/jobs/{job}/logs/stream"
    url = live_server.url + path
    first, second = _Stream(live_server.url, path, key), _Stream(live_server.url, path, key)
    assert first.status == second.status == 200
    r = httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    error = _error(r, 429, "rate_limited")
    assert error["details"] == {"max_streams_per_key": 2}
    other = _Stream(live_server.url, path, cloud.admin_key)  # another key: its own streams
    assert other.status == 200
    second.close()
    deadline = time.monotonic() + 10
    third = _Stream(live_server.url, path, key)
    while third.status != 200 and time.monotonic() < deadline:  # the slot comes back
        third.close()
        time.sleep(0.1)
        third = _Stream(live_server.url, path, key)
    assert third.status == 200
    key_id = key.split("_")[1]
    r = httpx.delete(
        f"{live_server.url}/v1/keys/{key_id}",
        headers={"Authorization": f"Bearer {cloud.admin_key}"},
    )
    assert r.status_code == 200, r.text
    revoked = time.monotonic()
    assert first.ended.wait(10) and third.ended.wait(10)
    assert time.monotonic() - revoked < 2.5  # within the 0.2 s recheck, not the 5 s cache
    assert first.events[-1] == "error" and "end" not in first.events
    assert not other.ended.is_set()  # the admin's stream goes on
    other.close()


# -- terminal output ----------------------------------------------------------------------

HOSTILE = (
    "ok \x1b]0;pwned\x07\x1b[2J\x1b]8;;http://evil\x1b\\click\x1b]8;;\x1b\\ \u202etxt.exe\x9b1m"
)


def _cli(live_server: LiveServer, tmp_path: Path, *args: str) -> str:
    variables = {
        "GUREUM_URL": live_server.url,
        "GUREUM_API_KEY": live_server.cloud.admin_key,
        "GUREUM_HOME": str(tmp_path / "cli-home"),
    }
    result = CliRunner().invoke(cli_app, list(args), env=variables)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_the_cli_prints_server_text_without_control_characters(
    live_server: LiveServer, tmp_path: Path
) -> None:
    cloud = live_server.cloud
    job = _queued_job(cloud, tmp_path, cloud.admin_key)
    with cloud.app.state.db.write() as s:
        ds = s.scalar(select(Dataset).where(Dataset.name == "orders"))
        assert ds is not None
        ds.description = HOSTILE
        text = "step 1\rstep 2 \x1b[31mred\x1b[0m " + HOSTILE + "\n"
        s.add(JobLog(job_id=job, offset=0, text=text))
    for args in (("datasets", "list"), ("datasets", "show", "orders"), ("jobs", "logs", job)):
        out = _cli(live_server, tmp_path, *args)
        assert not any(c in out for c in "\x1b\x07\x9b\r\u202e"), repr(out)
    out = _cli(live_server, tmp_path, "jobs", "logs", job)
    assert "step 1\nstep 2 red ok " in out and "click" in out
    # JSON output keeps the text as it is, escaped by JSON itself.
    out = _cli(live_server, tmp_path, "jobs", "logs", job, "-o", "json")
    assert "\x1b" not in out and json.loads(out)["text"] == text


# -- CPUs ---------------------------------------------------------------------------------


def test_a_job_asking_for_no_cpu_gets_a_real_share_and_counts_against_quotas(
    env: Env,
) -> None:
    env.fake.cpus = 8.0
    assert env.http.put("/v1/workspaces/default/quotas", json={"max_cpus": 1}).status_code == 200
    jobs = [env.submit(resources={"cpus": 0}) for _ in range(3)]
    assert all(j["resources"]["cpus"] == MIN_JOB_CPUS for j in jobs)
    env.controller.tick()
    launched = [s.job_id for s in env.fake.launched]
    assert launched == [jobs[0]["id"], jobs[1]["id"]]
    assert all(s.resources.cpus == MIN_JOB_CPUS for s in env.fake.launched)
    assert env.job(jobs[2]["id"])["wait_reason"] == "workspace quota: 1 CPUs in use of 1"
    with env.controller.db.read() as s:
        stored = s.scalar(select(Job.resources).where(Job.id == jobs[2]["id"]))
    assert stored is not None and stored["cpus"] == MIN_JOB_CPUS
    # Without a quota, Ray's free CPUs hold them back the same way.
    env.http.put("/v1/workspaces/default/quotas", json={})
    env.fake.free = {"CPU": 0.0}
    env.controller.tick()
    assert env.job(jobs[2]["id"])["wait_reason"] == f"waiting for {MIN_JOB_CPUS:g} CPUs"


@pytest.mark.parametrize("cpus", [0.0, 0.1])
def test_the_minimum_share_is_in_the_schema(cpus: float) -> None:
    from gureum.schemas.jobs import Resources

    assert Resources(cpus=cpus).cpus == MIN_JOB_CPUS
    assert Resources(cpus=2).cpus == 2
