"""The GCS fault-tolerance setting (GUREUM_RAY_REDIS_*): off by default and then nothing
changes, addresses checked before any Ray starts, a running head kept only with the storage it
started with, and the password never in a message or the recorded state."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from gureum.compute import gcs_storage
from gureum.compute.gcs_storage import GcsStorage, GcsStorageError
from gureum.compute.local_ray import RayHead, RayStartError, head_env, start_head
from gureum.config import Settings
from gureum.local import prepare
from gureum.local.results import UpError
from gureum.local.state import RayState


def test_off_by_default_and_a_stray_ray_redis_address_is_not_passed_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_REDIS_ADDRESS", "10.0.0.1:6379")
    monkeypatch.setenv("RAY_external_storage_namespace", "someone-elses")
    monkeypatch.delenv("GUREUM_RAY_REDIS_ADDRESS", raising=False)
    settings = Settings(home=tmp_path)
    assert settings.ray_redis_address == ""
    assert prepare.head_storage(settings) is None
    env = head_env()
    assert not set(gcs_storage.ENV_KEYS) & set(env)


def test_the_setting_comes_from_the_environment_with_a_namespace_per_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GUREUM_RAY_REDIS_ADDRESS", "redis.internal:6380")
    monkeypatch.setenv("GUREUM_RAY_REDIS_PASSWORD", "hunter2-secret")
    a = prepare.head_storage(Settings(home=tmp_path / "a"))
    b = prepare.head_storage(Settings(home=tmp_path / "b"))
    assert a is not None and b is not None
    assert a.address == "redis.internal:6380" and a.namespace.startswith("gureum-")
    assert a.namespace != b.namespace  # two clouds can share a Redis
    assert gcs_storage.head_env(a) == {
        "RAY_REDIS_ADDRESS": "redis.internal:6380",
        "RAY_external_storage_namespace": a.namespace,
    }
    settings = Settings(home=tmp_path / "a")
    assert "hunter2-secret" not in repr(settings)
    monkeypatch.setenv("GUREUM_RAY_REDIS_NAMESPACE", "prod-cluster")
    named = prepare.head_storage(Settings(home=tmp_path / "a"))
    assert named is not None and named.namespace == "prod-cluster"


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:6379", ("127.0.0.1", 6379, False)),
        ("redis://cache.internal:6380", ("cache.internal", 6380, False)),
        ("rediss://cache.internal:6380", ("cache.internal", 6380, True)),
        ("[::1]:6379", ("::1", 6379, False)),
    ],
)
def test_redis_addresses_in_the_forms_ray_takes(
    address: str, expected: tuple[str, int, bool]
) -> None:
    assert gcs_storage.parse(address) == expected


@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("redis://:hunter2@cache:6379", "GUREUM_RAY_REDIS_PASSWORD"),
        ("cache.internal", "host:port"),
        ("http://cache:6379", "redis://"),
        ("cache:99999", "host:port"),
        ("redis://cache:6379/0", "redis://"),
    ],
)
def test_a_bad_address_or_namespace_stops_up_before_anything_starts(
    tmp_path: Path, address: str, says: str
) -> None:
    with pytest.raises(UpError, match=says) as err:
        prepare.head_storage(Settings(home=tmp_path, ray_redis_address=address))
    assert "hunter2" not in str(err.value)
    with pytest.raises(UpError, match="namespace"):
        prepare.head_storage(
            Settings(home=tmp_path, ray_redis_address="cache:6379", ray_redis_namespace="a b*")
        )


def test_credentials_become_ray_start_flags_only_when_set() -> None:
    assert gcs_storage.start_flags() == []
    assert gcs_storage.start_flags(password="pw") == ["--redis-password=pw"]
    assert gcs_storage.start_flags("gureum", "pw") == [
        "--redis-username=gureum",
        "--redis-password=pw",
    ]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_redis_fails_fast_without_the_password_and_starts_no_head(
    tmp_path: Path,
) -> None:
    storage = GcsStorage(address=f"127.0.0.1:{_closed_port()}", namespace="gureum-x")
    with pytest.raises(RayStartError, match="cannot reach Redis") as err:
        start_head(
            tmp_path / "ray", tmp_path / "ray.log", storage=storage, redis_password="hunter2"
        )
    assert "hunter2" not in str(err.value)
    assert (
        not (tmp_path / "ray.log").exists() or "hunter2" not in (tmp_path / "ray.log").read_text()
    )


def test_a_running_head_is_kept_only_with_the_storage_it_started_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    settings = Settings(home=tmp_path, ray_redis_address="127.0.0.1:6379")
    monkeypatch.setattr(prepare, "head_alive", lambda head: True)
    monkeypatch.setattr(prepare, "ray_token", lambda s: tmp_path / "ray-token")
    network = prepare.head_network(settings)
    head = RayHead(
        address="127.0.0.1:1", session_id=1, temp_dir=str(tmp_path), gcs_port=1, network=network
    )
    with pytest.raises(UpError, match="other GCS storage settings"):
        prepare.ensure_ray(settings, RayState(address=head.address, head=head))
    same = head.model_copy(update={"gcs_storage": prepare.head_storage(settings)})
    state, started = prepare.ensure_ray(settings, RayState(address=head.address, head=same))
    assert state.head == same and not started
    # The recorded state names the storage, never a password.
    assert "password" not in same.model_dump_json()


def test_a_storage_error_is_a_gcs_storage_error() -> None:
    with pytest.raises(GcsStorageError):
        gcs_storage.storage_for("nope", "", Path("/tmp"))
