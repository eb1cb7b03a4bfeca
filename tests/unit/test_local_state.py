"""Run state, credentials and process bookkeeping of `gureum up`, without starting a cloud."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from gureum.client.base import load_credentials
from gureum.compute.local_ray import (
    RayHead,
    default_temp_dir,
    head_processes,
    parse_address,
    stop_head,
)
from gureum.config import Settings
from gureum.local.credentials import update_url, write_credentials
from gureum.local.down import down, running
from gureum.local.prepare import client_host, mask_url, server_url
from gureum.local.procs import ProcessRef, describe, find, terminate
from gureum.local.state import RayState, RunState, load_state, save_state, state_path
from gureum.local.status import status

SLEEP = "import time; time.sleep(60)"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated live process in a session of its own: it must survive everything."""
    proc = subprocess.Popen([sys.executable, "-c", SLEEP], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _state(home: Path, server: ProcessRef | None, ray: RayState | None = None) -> RunState:
    return RunState(
        home=str(home), url="http://127.0.0.1:1", host="127.0.0.1", port=1, server=server, ray=ray
    )


def test_state_round_trips_and_is_private(tmp_path: Path) -> None:
    head = RayHead(address="10.0.0.1:6380", session_id=123, temp_dir="/tmp/x", gcs_port=6380)
    state = _state(
        tmp_path,
        ProcessRef(pid=1, create_time=2.5, marker="m"),
        RayState(address=head.address, head=head),
    )
    save_state(tmp_path / "run", state)
    assert load_state(tmp_path / "run") == state
    assert _mode(state_path(tmp_path / "run")) == 0o600


@pytest.mark.parametrize("content", [None, "", "{not json", '{"home": 3}', "[]"])
def test_missing_or_corrupt_state_reads_as_none(tmp_path: Path, content: str | None) -> None:
    if content is not None:
        (tmp_path / "state.json").write_text(content)
    assert load_state(tmp_path) is None


def test_credentials_are_0600_even_over_a_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    path.write_text("{}")
    path.chmod(0o644)
    old = os.umask(0)
    try:
        write_credentials(path, url="http://h:1", api_key="gk_a_b", workspace="default")
    finally:
        os.umask(old)
    assert _mode(path) == 0o600
    assert load_credentials(tmp_path) == {
        "url": "http://h:1",
        "api_key": "gk_a_b",
        "workspace": "default",
    }


def test_update_url_keeps_the_key(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    assert update_url(path, "http://h:2") is False
    assert not path.exists()
    write_credentials(path, url="http://h:1", api_key="gk_a_b", workspace="w")
    assert update_url(path, "http://h:2") is True
    assert load_credentials(tmp_path) == {
        "url": "http://h:2",
        "api_key": "gk_a_b",
        "workspace": "w",
    }
    assert _mode(path) == 0o600


def test_find_knows_its_own_process_only(sleeper: subprocess.Popen[bytes]) -> None:
    ref = describe(sleeper.pid, "time.sleep")
    assert find(ref) is not None
    # Same pid, but started at another time: the pid was reused.
    assert find(ref.model_copy(update={"create_time": ref.create_time - 100})) is None
    # Same pid, but a different program.
    assert find(ref.model_copy(update={"marker": "gureum.server.main"})) is None
    assert find(ProcessRef(pid=_dead_pid(), create_time=ref.create_time, marker="")) is None


def test_terminate_escalates_to_sigkill() -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print(1, flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline()  # handler installed
    started = time.monotonic()
    terminate([psutil.Process(proc.pid)], timeout=0.3)
    assert proc.wait(timeout=5) == -9
    assert time.monotonic() - started < 5
    proc.stdout.close()


def test_stop_head_never_touches_a_foreign_session(sleeper: subprocess.Popen[bytes]) -> None:
    head = RayHead(
        address="127.0.0.1:1", session_id=sleeper.pid, temp_dir="/tmp/gureum-ray-nope", gcs_port=1
    )
    assert head_processes(head) == []
    assert stop_head(head, timeout=0.5) is False
    assert sleeper.poll() is None


def test_stop_head_stops_its_whole_session(tmp_path: Path) -> None:
    marker = f"/tmp/gureum-ray-fake-{os.getpid()}"
    # A session leader naming the temp dir (as the GCS does) and a child that does not
    # (as Ray's workers do): both belong to the head.
    code = (
        "import subprocess, sys, time; "
        f"subprocess.Popen([sys.executable, '-c', {SLEEP!r}]); time.sleep(60)"
    )
    leader = subprocess.Popen([sys.executable, "-c", code, marker], start_new_session=True)
    head = RayHead(address="127.0.0.1:1", session_id=leader.pid, temp_dir=marker, gcs_port=1)
    deadline = time.monotonic() + 10
    while len(head_processes(head)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    members = head_processes(head)
    assert stop_head(head, timeout=3) is True
    assert leader.wait(timeout=5) is not None
    assert all(not m.is_running() or m.status() == psutil.STATUS_ZOMBIE for m in members)
    assert head_processes(head) == []


def test_parse_address() -> None:
    assert parse_address("10.1.2.3:6380") == ("10.1.2.3", 6380)
    assert parse_address("ray://head.example:10001") == ("head.example", 10001)
    assert parse_address("[::1]:6380") == ("::1", 6380)
    assert parse_address("auto") is None
    assert parse_address("host:port") is None


def test_urls_and_masks() -> None:
    assert client_host("0.0.0.0") == "127.0.0.1"
    assert server_url("127.0.0.1", 8080) == "http://127.0.0.1:8080"
    assert server_url("::", 8080) == "http://[::1]:8080"
    masked = mask_url("postgresql+psycopg://u:secretpw@db:5432/g")
    assert "secretpw" not in masked and "db:5432/g" in masked


def test_ray_temp_dir_is_short_and_per_home(tmp_path: Path) -> None:
    a, b = default_temp_dir(tmp_path / "a" / ("x" * 80)), default_temp_dir(tmp_path / "b")
    assert a != b
    assert len(str(a)) < 40  # Ray's unix sockets live below it and must fit in 107 bytes


def test_stale_state_is_not_running_and_down_kills_nothing(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    settings = Settings(home=tmp_path)
    # The recorded server pid now belongs to an unrelated process, and the recorded Ray
    # session is that process's session.
    ref = describe(sleeper.pid, "gureum.server.main")
    head = RayHead(address="127.0.0.1:1", session_id=sleeper.pid, temp_dir="/tmp/gr-x", gcs_port=1)
    save_state(settings.run_dir, _state(tmp_path, ref, RayState(address="127.0.0.1:1", head=head)))
    assert running(settings) is None
    report = status(settings)
    assert not report.running and not report.healthy
    assert not report.parts["server"].ok and not report.parts["ray"].ok
    result = down(settings, timeout=0.5)
    assert result.status == "not_running"
    assert sleeper.poll() is None
    assert load_state(settings.run_dir) is None


def test_status_without_state_says_down(tmp_path: Path) -> None:
    report = status(Settings(home=tmp_path))
    assert report.running is False
    assert set(report.parts) == {"server", "database", "artifacts", "ray"}
    assert not any(p.ok for p in report.parts.values())
