"""The HAProxy wrapper and the head's command line: side ports on loopback, the consumer
frontend where the operator says, a private admin socket, request timeouts and header limits;
checked on the configuration Ray 2.60's own template renders."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from ray.serve._private.haproxy import BackendConfig, HAProxyApi, HAProxyConfig, ServerConfig
from ray.serve.config import HTTPOptions

from gureum.compute import haproxy_wrap, local_ray
from gureum.compute.haproxy_wrap import Limits, RewriteError, rewrite
from gureum.compute.local_ray import HeadNetwork, RayStartError
from gureum.config import Settings
from gureum.local import prepare
from gureum.local.results import UpError

BIND = re.compile(r"^\s+bind\s+(\S+)", re.M)


def ray_config(tmp_path: Path, host: str = "0.0.0.0") -> str:
    """What Ray Serve writes for a head with one app and one replica."""
    cfg = HAProxyConfig(
        http_options=HTTPOptions(host=host, port=8100),
        socket_path=str(tmp_path / "admin.sock"),
        server_state_base=str(tmp_path),
        server_state_file=str(tmp_path / "server-state"),
        stats_port=8404,
        metrics_port=9101,
        is_head=True,
    )
    api = HAProxyApi(cfg, config_file_path=str(tmp_path / "haproxy.cfg"))
    server = ServerConfig(name="r1", host="127.0.0.1", port=20000)
    api.set_backend_configs({"app": BackendConfig(name="app", path_prefix="/e", servers=[server])})
    api._generate_config_file_internal()
    return (tmp_path / "haproxy.cfg").read_text()


def binds(config: str) -> list[str]:
    return BIND.findall(config)


def section_of(config: str, line_start: str) -> str:
    """The header of the section holding the first line that starts with ``line_start``."""
    section = ""
    for line in config.splitlines():
        if line and not line[0].isspace():
            section = line
        elif line.strip().startswith(line_start):
            return section
    raise AssertionError(f"no line {line_start!r}")


def test_ray_template_binds_everywhere_and_the_rewrite_moves_side_ports_to_loopback(
    tmp_path: Path,
) -> None:
    original = ray_config(tmp_path)
    # What Ray renders today (the finding): stats and metrics on every address, the admin
    # socket writable by anyone, no request timeout.
    assert set(binds(original)) == {"*:8404", ":9101", "*:8100"}
    assert "mode 666" in original and "timeout http-request" not in original

    out = rewrite(original)
    assert sorted(binds(out)) == ["127.0.0.1:8100", "127.0.0.1:8404", "127.0.0.1:9101"]
    assert "mode 600 level admin" in out and "mode 666" not in out
    defaults = out.split("\ndefaults\n", 1)[1].split("\nfrontend ", 1)[0]
    for line in ("timeout http-request 10s", "timeout client 60s", "timeout http-keep-alive 30s"):
        assert out.count(line) == 1 and line in defaults
    assert out.count("timeout client ") == 1  # Ray's own 3600 s is replaced, not doubled
    assert section_of(out, "tune.http.maxhdr 100") == "global"
    assert rewrite(out) == out  # idempotent: reloads rewrite the file again


def test_the_data_plane_frontend_binds_where_the_operator_says(tmp_path: Path) -> None:
    original = ray_config(tmp_path)
    limits = Limits(http_request_s=3, client_s=7, keep_alive_s=5, max_headers=20)
    out = rewrite(original, data_plane_host="0.0.0.0", limits=limits)
    assert sorted(binds(out)) == ["0.0.0.0:8100", "127.0.0.1:8404", "127.0.0.1:9101"]
    assert section_of(out, "bind 0.0.0.0:8100") == "frontend http_frontend"
    for line in ("timeout http-request 3s", "timeout client 7s", "tune.http.maxhdr 20"):
        assert line in out
    v6 = rewrite(original, data_plane_host="::1")
    assert "bind [::1]:8100" in v6 and "bind 127.0.0.1:8404" in v6


def test_a_file_that_is_not_rays_config_is_refused() -> None:
    with pytest.raises(RewriteError):
        rewrite("frontend x\n    bind *:80\n")
    with pytest.raises(RewriteError):
        rewrite("global\ndefaults\nfrontend x\n    bind somewhere\n")
    with pytest.raises(RewriteError):
        haproxy_wrap.config_path(["-db", "-f", "a", "-f", "b"])


@pytest.fixture
def fake_haproxy(tmp_path: Path) -> Path:
    """Stands in for HAProxy: records its arguments and the config it was given."""
    path = tmp_path / "fake-haproxy"
    path.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/args\ncp "$3" {tmp_path}/seen.cfg\n'
    )
    path.chmod(0o700)
    return path


def test_the_wrapper_gureum_writes_rewrites_in_place_and_execs_haproxy_with_rays_args(
    tmp_path: Path, fake_haproxy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_ray, "real_haproxy", lambda: str(fake_haproxy))
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    cfg = cfg_dir / "haproxy.cfg"
    cfg.write_text(ray_config(cfg_dir))
    folder = local_ray.private_dir(tmp_path / "hp")
    network = HeadNetwork(data_plane_host="0.0.0.0", http_request_timeout_s=4)
    wrapper = local_ray.write_haproxy_wrapper(folder, network)
    assert stat.S_IMODE(wrapper.stat().st_mode) == 0o700
    args = ["-db", "-f", str(cfg), "-dR", "-sf", "123", "-x", str(folder / "a b.sock")]
    subprocess.run([str(wrapper), *args], check=True, timeout=30)
    assert (tmp_path / "args").read_text().splitlines() == args
    seen = (tmp_path / "seen.cfg").read_text()
    assert seen == cfg.read_text()  # rewritten in place: Ray finds HAProxy by this path
    assert sorted(binds(seen)) == ["0.0.0.0:8100", "127.0.0.1:8404", "127.0.0.1:9101"]
    assert "timeout http-request 4s" in seen


def test_the_wrapper_refuses_to_start_haproxy_on_a_config_it_cannot_read(
    tmp_path: Path, fake_haproxy: Path
) -> None:
    script = haproxy_wrap.__file__
    missing = str(tmp_path / "nope.cfg")
    res = subprocess.run(
        [sys.executable, "-I", script, "--haproxy", str(fake_haproxy), "--", "-f", missing],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 2 and "refusing to start HAProxy" in res.stderr
    assert not (tmp_path / "args").exists()


def test_the_head_command_and_environment_keep_ray_on_loopback(tmp_path: Path) -> None:
    cmd = local_ray._start_command(tmp_path, 1234, None, None, HeadNetwork())
    assert "--node-ip-address=127.0.0.1" in cmd and "--dashboard-host=127.0.0.1" in cmd
    env = local_ray.head_env(HeadNetwork())
    # `ray start` would turn 127.0.0.1 into the machine's address without this switch.
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert env["RAY_AUTH_MODE"] == "disabled"
    assert env["AUTOSCALER_METRIC_PORT"] != "44217"
    token = HeadNetwork(auth_token_path="/t")
    assert local_ray.auth_env(token) == {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": "/t",
    }
    exposed = HeadNetwork(host="192.0.2.7", auth_token_path="/t")
    assert "--node-ip-address=192.0.2.7" in local_ray._start_command(
        tmp_path, 1, None, None, exposed
    )
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in local_ray.auth_env(exposed)
    with pytest.raises(RayStartError, match="token"):
        local_ray.start_head(tmp_path / "t", tmp_path / "log", network=HeadNetwork(host="0.0.0.0"))
    assert not (tmp_path / "t").exists()


def test_serve_env_starts_haproxy_through_the_wrapper_in_a_private_folder(
    tmp_path: Path, fake_haproxy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_ray, "real_haproxy", lambda: str(fake_haproxy))
    temp_dir = tmp_path / "ray"
    folder = local_ray.haproxy_dir(temp_dir)
    folder.mkdir(mode=0o755)  # left by an older gureum
    try:
        env = local_ray.serve_env(temp_dir)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert env["RAY_SERVE_HAPROXY_BINARY_PATH"] == str(folder / "haproxy")
        assert Path(env["RAY_SERVE_HAPROXY_SOCKET_PATH"]).parent == folder
    finally:
        local_ray.remove_temp_dir(
            local_ray.RayHead(address="", session_id=0, temp_dir=str(temp_dir), gcs_port=0)
        )


def test_up_always_gives_its_head_a_private_token_and_refuses_a_head_on_other_settings(
    tmp_path: Path,
) -> None:
    settings = Settings(home=tmp_path / "home")
    net = prepare.head_network(settings)
    assert net.auth_token_path == str(settings.ray_token_path)
    assert stat.S_IMODE(settings.ray_token_path.stat().st_mode) == 0o600
    assert len(settings.ray_token_path.read_text()) == 64
    assert prepare.head_network(settings) == net  # the token is made once
    head = local_ray.RayHead(address="a", session_id=1, temp_dir="t", gcs_port=1, network=net)
    prepare._check_same_network(head, net)
    wider = prepare.head_network(settings.model_copy(update={"serve_host": "0.0.0.0"}))
    with pytest.raises(UpError, match="gureum down"):
        prepare._check_same_network(head, wider)
    with pytest.raises(UpError):  # a head an older gureum started listens everywhere
        prepare._check_same_network(head.model_copy(update={"network": None}), net)


def test_secure_home_sets_umask_077_and_tightens_what_an_older_version_left(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    (home / "artifacts").mkdir(parents=True)
    home.chmod(0o755)
    (home / "artifacts").chmod(0o755)
    db = home / "gureum.db"
    db.write_text("")
    db.chmod(0o644)
    old = os.umask(0o022)
    try:
        prepare.secure_home(Settings(home=home))
        assert os.umask(0o022) == 0o077
    finally:
        os.umask(old)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "artifacts").stat().st_mode) == 0o700
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
