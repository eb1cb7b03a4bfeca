"""The sandbox for user code: bubblewrap's command line and the scrubbed environment (no bwrap
needed), then a script run through the script recipe under the platform's policy, in a real
bubblewrap sandbox: every way out it tries is denied, limits are enforced with their reason,
ranks meet on the sandbox's own loopback, and without bubblewrap user code is refused."""

from __future__ import annotations

import os
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from gureum.compute import sandbox
from gureum.recipes import Cancelled, LocalRunContext, parse_params
from gureum.recipes.script import SandboxRefused, ScriptFailed, ScriptParams, ScriptRecipe

SECRET = "gk_live_do_not_leak_4f1c"
HOSTILE_ENV = {
    "GUREUM_HOME": "/srv/gureum",
    "GUREUM_API_KEY": SECRET,
    "GUREUM_DATABASE_URL": "postgresql://admin:pw@db/gureum",
    "DATABASE_URL": "postgresql://admin:pw@db/gureum",
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "GOOGLE_APPLICATION_CREDENTIALS": "/srv/key.json",
    "AZURE_CLIENT_SECRET": SECRET,
    "RAY_ADDRESS": "127.0.0.1:6379",
    "RAY_AUTH_TOKEN": SECRET,
    "LANG": "en_US.UTF-8",
    "CUDA_VISIBLE_DEVICES": "1",
}
needs_bwrap = pytest.mark.skipif(
    sandbox.probe(sandbox.bwrap_path()) is not None,
    reason=f"no working bubblewrap: {sandbox.probe(sandbox.bwrap_path())}",
)


# -- the command line and the environment (pure) ---------------------------------------------


def _layout(tmp_path: Path, **kw: object) -> sandbox.Layout:
    for d in ("run", "code", "data"):
        (tmp_path / d).mkdir(exist_ok=True)
    return sandbox.Layout(
        tmp_path / "run",
        tmp_path / "code",
        data_dir=tmp_path / "data",
        **kw,  # type: ignore[arg-type]
    )


def _binds(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_bwrap_unshares_everything_drops_privileges_and_binds_only_the_job(tmp_path: Path) -> None:
    args = sandbox.bwrap_args(_layout(tmp_path, forbidden=(tmp_path / "home",)))
    assert "--unshare-all" in args and "--share-net" not in args
    assert args[args.index("--uid") + 1] == args[args.index("--gid") + 1] == "65534"
    assert args[args.index("--cap-drop") + 1] == "ALL"
    assert {"--new-session", "--die-with-parent"} <= set(args)
    assert "/tmp" in _binds(args, "--tmpfs") and args[args.index("--proc") + 1] == "/proc"
    assert args[args.index("--dev") + 1] == "/dev"
    # One writable folder: the run folder. Code and data are read-only.
    assert _binds(args, "--bind") == [str((tmp_path / "run").resolve())]
    ro = _binds(args, "--ro-bind")
    assert str((tmp_path / "code").resolve()) in ro and str((tmp_path / "data").resolve()) in ro
    assert not any(b == "/" or b.startswith(str(tmp_path / "home")) for b in ro)
    assert not any(b in ("/etc", "/root", "/home", "/var", "/run", "/sys") for b in ro)
    assert args[args.index("--chdir") + 1] == str((tmp_path / "code").resolve())


def test_a_bind_holding_gureum_home_or_the_store_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with pytest.raises(sandbox.SandboxError, match="holds"):
        sandbox.bwrap_args(_layout(tmp_path, forbidden=(home,), python_roots=(tmp_path,)))
    with pytest.raises(sandbox.SandboxError, match="holds"):
        sandbox.bwrap_args(_layout(tmp_path, forbidden=(tmp_path / "code" / "artifacts",)))


def test_the_environment_is_an_allow_list(tmp_path: Path) -> None:
    job = {"GUREUM_RUN_DIR": "/r", "GUREUM_PARAMS": "{}", "GUREUM_DEVICE": "cpu"}
    env = sandbox.environment(
        job, home=tmp_path, code_dir=tmp_path / "code", cpus=3, host=HOSTILE_ENV
    )
    assert SECRET not in "".join(f"{k}={v}" for k, v in env.items())
    gureum_keys = {k for k in env if k.startswith("GUREUM_")}
    assert gureum_keys == set(job)
    for prefix in ("DATABASE", "AWS_", "GOOGLE_", "AZURE_", "RAY_"):
        assert not any(k.startswith(prefix) for k in env), prefix
    assert env["HOME"] == str(tmp_path) and env["PYTHONUNBUFFERED"] == "1"
    assert env["OMP_NUM_THREADS"] == env["TORCH_NUM_THREADS"] == "3"
    assert env["LANG"] == "en_US.UTF-8" and env["CUDA_VISIBLE_DEVICES"] == "1"
    with pytest.raises(sandbox.SandboxError, match="not a job variable"):
        sandbox.environment(
            {"GUREUM_API_KEY": "x"}, home=tmp_path, code_dir=tmp_path, cpus=1, host={}
        )


def test_a_missing_bwrap_is_reported_with_its_path(tmp_path: Path) -> None:
    why = sandbox.probe(str(tmp_path / "no-bwrap"))
    assert why is not None and "not found" in why and "bubblewrap" in why


def test_rlimits_go_in_front_of_the_command(tmp_path: Path) -> None:
    limits = sandbox.Limits(memory_bytes=1 << 30, disk_bytes=5 << 20, open_files=64)
    argv = sandbox.init_argv(["python", "x.py"], limits, ranks=2, run_dir=tmp_path)
    assert argv[argv.index("--fsize") + 1] == str(5 << 20)
    assert argv[argv.index("--nofile") + 1] == "64"
    assert argv[argv.index("--ranks") + 1] == "2" and argv[-2:] == ["python", "x.py"]


# -- a real sandbox ------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_job_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("GUREUM_")]:
        monkeypatch.delenv(key)


@pytest.fixture
def listener() -> Iterator[int]:
    """A service on the host's loopback (stands for the control plane), answering 'hello'."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            conn.sendall(b"hello")
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    srv.close()


def _recipe(tmp_path: Path, body: str, **policy: object) -> ScriptRecipe:
    folder = tmp_path / "code"
    folder.mkdir(exist_ok=True)
    (folder / "main.py").write_text(textwrap.dedent(body))
    return ScriptRecipe().with_code(folder, sandbox.Policy(**policy))  # type: ignore[arg-type]


def _params() -> ScriptParams:
    return parse_params("script", ScriptParams, {"entrypoint": "main.py"})


def _log(ctx: LocalRunContext) -> str:
    return ctx.log_path.read_text() if ctx.log_path.exists() else ""


# Each probe prints DENIED or LEAK; the script then does its own work and registers a model.
HOSTILE = """
import os, socket, sys
import gureum.run as run

def read(what, path):
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        print("DENIED", what, type(exc).__name__)
        return
    print("LEAK" if {secret!r}.encode() in data else "DENIED", what, "(no secret in it)")

def connect(what, port):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", port))
        print("LEAK", what, "connected")
    except OSError as exc:
        print("DENIED", what, type(exc).__name__)
    finally:
        s.close()

read("credentials", {home!r} + "/credentials.json")
read("serving_key", {home!r} + "/serving.key")
read("blob", {store!r} + "/blob")
read("other_job", {other!r} + "/secret.txt")
read("proc1_environ", "/proc/1/environ")
print("LEAK env" if any({secret!r} in v for v in os.environ.values()) else "DENIED env")
connect("postgresql", 5432)
connect("redis", 6379)
connect("control_plane", {port})
connect("ray_gcs", {gcs})
try:
    import ray
    ray.init(address="auto")
    print("LEAK ray_init connected")
except Exception as exc:
    print("DENIED ray_init", type(exc).__name__)
{tail}
"""
PROBES = [
    "credentials", "serving_key", "blob", "other_job", "proc1_environ", "env",
    "postgresql", "redis", "control_plane", "ray_gcs", "ray_init",
]  # fmt: skip


def _hostile(tmp_path: Path, port: int, gcs: int, tail: str) -> str:
    home = tmp_path / "home"
    (home / "artifacts").mkdir(parents=True)
    (home / "credentials.json").write_text(f'{{"api_key": "{SECRET}"}}')
    (home / "serving.key").write_text(SECRET)
    (home / "artifacts" / "blob").write_text(SECRET)
    other = tmp_path / "other-job"
    other.mkdir()
    (other / "secret.txt").write_text(SECRET)
    return HOSTILE.format(
        secret=SECRET,
        home=str(home),
        store=str(home / "artifacts"),
        other=str(other),
        port=port,
        gcs=gcs,
        tail=tail,
    )


@needs_bwrap
def test_a_hostile_script_is_denied_everything_and_still_succeeds(
    tmp_path: Path, listener: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GUREUM_API_KEY", SECRET)  # the worker's own environment holds a key
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{listener}")
    body = _hostile(tmp_path, listener, 6380, "run.register_model(metrics={'score': 1.0})")
    # The service really is reachable from the host: the denial below is the sandbox's.
    with socket.create_connection(("127.0.0.1", listener), timeout=2) as s:
        assert s.recv(5) == b"hello"
    ctx = LocalRunContext(tmp_path / "run")
    out = _recipe(tmp_path, body).train(ctx, None, _params())
    log = _log(ctx)
    assert "LEAK" not in log, log
    for probe in PROBES:
        assert f"DENIED {probe}" in log, (probe, log)
    assert out.metrics == {"score": 1.0}


@needs_bwrap
def test_a_hostile_script_fails_on_its_own_merits(tmp_path: Path, listener: int) -> None:
    body = _hostile(tmp_path, listener, 6380, "raise SystemExit('my own bug: 3 != 4')")
    ctx = LocalRunContext(tmp_path / "run")
    with pytest.raises(ScriptFailed, match="my own bug"):
        _recipe(tmp_path, body).train(ctx, None, _params())
    assert "LEAK" not in _log(ctx) and "DENIED postgresql" in _log(ctx)


@needs_bwrap
def test_memory_over_the_limit_kills_the_sandbox_with_the_reason(tmp_path: Path) -> None:
    body = "import time\nblock = bytearray(400 * 1024 * 1024)\ntime.sleep(30)\n"
    recipe = _recipe(tmp_path, body, limits=sandbox.Limits(memory_bytes=150 * 1024**2))
    started = time.monotonic()
    with pytest.raises(ScriptFailed, match=r"memory, over the job's limit of 0\.15 GiB"):
        recipe.train(LocalRunContext(tmp_path / "run"), None, _params())
    assert time.monotonic() - started < 20


@needs_bwrap
def test_the_work_folder_has_a_disk_cap(tmp_path: Path) -> None:
    one_file = (
        "import gureum.run as run\nopen(run.run_dir() / 'big', 'wb').write(b'x' * (30 << 20))\n"
    )
    limits = sandbox.Limits(disk_bytes=8 << 20)
    with pytest.raises(ScriptFailed, match="File too large"):  # RLIMIT_FSIZE
        _recipe(tmp_path, one_file, limits=limits).train(
            LocalRunContext(tmp_path / "run"), None, _params()
        )
    many = """
        import time
        import gureum.run as run
        for i in range(5):
            open(run.run_dir() / f"part-{i}", "wb").write(b"x" * (3 << 20))
        time.sleep(30)
    """
    with pytest.raises(ScriptFailed, match="over the job's disk limit"):  # the watchdog
        _recipe(tmp_path, many, limits=limits).train(
            LocalRunContext(tmp_path / "run2"), None, _params()
        )


@needs_bwrap
def test_a_killed_sandboxed_script_names_the_signal(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    with pytest.raises(ScriptFailed, match="killed by signal SIGKILL"):
        recipe.train(LocalRunContext(tmp_path / "run"), None, _params())


def _marked(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if marker in " ".join(p.info["cmdline"] or []):
            found.append(p)
    return found


@needs_bwrap
def test_a_stop_ends_everything_in_the_sandbox(tmp_path: Path) -> None:
    marker = f"sleep-marker-{os.getpid()}"
    body = f"""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "{marker}"])
        print("started", flush=True)
        time.sleep(600)
    """
    ctx = LocalRunContext(tmp_path / "run", timeout_s=1)
    with pytest.raises(Cancelled):
        _recipe(tmp_path, body).train(ctx, None, _params())
    deadline = time.monotonic() + 5
    while _marked(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in _marked(marker) if p.status() != psutil.STATUS_ZOMBIE]


@needs_bwrap
def test_two_ranks_meet_on_the_sandboxs_own_loopback(tmp_path: Path) -> None:
    body = """
        import os, socket, time
        import gureum.run as run
        rank, port = int(os.environ["RANK"]), int(os.environ["MASTER_PORT"])
        assert os.environ["WORLD_SIZE"] == "2" and os.environ["MASTER_ADDR"] == "127.0.0.1"
        if rank == 0:
            srv = socket.create_server(("127.0.0.1", port))
            conn, _ = srv.accept()
            got = b"".join(iter(lambda: conn.recv(64), b"")).decode()
            print(f"rank 0 got {got}", flush=True)  # one write: the ranks' lines interleave
            run.register_model(metrics={"peers": float(got == "hi from 1")})
        else:
            for _ in range(100):
                try:
                    c = socket.create_connection(("127.0.0.1", port))
                    break
                except OSError:
                    time.sleep(0.05)
            c.sendall(b"hi from 1")
            c.close()
            print("sent", flush=True)
    """
    ctx = LocalRunContext(tmp_path / "run")
    out = _recipe(tmp_path, body, ranks=2).train(ctx, None, _params())
    assert out.metrics == {"peers": 1.0}
    log = _log(ctx)
    assert "rank 0 got hi from 1" in log and "[rank 1] sent" in log


@needs_bwrap
def test_a_failing_rank_fails_the_job(tmp_path: Path) -> None:
    body = """
        import os, sys, time
        if os.environ["RANK"] == "1":
            sys.exit("rank 1 gave up")
        time.sleep(60)
    """
    started = time.monotonic()
    with pytest.raises(ScriptFailed, match="rank 1 gave up"):
        _recipe(tmp_path, body, ranks=2).train(LocalRunContext(tmp_path / "run"), None, _params())
    assert time.monotonic() - started < 30


def test_without_bwrap_user_code_is_refused_unless_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(sandbox.BWRAP_ENV, str(tmp_path / "missing-bwrap"))
    body = "import os\nprint('ran as', os.getuid(), 'home', os.environ['HOME'])\n"
    with pytest.raises(SandboxRefused, match=r"not found at .*missing-bwrap"):
        _recipe(tmp_path, body).train(LocalRunContext(tmp_path / "run"), None, _params())
    ctx = LocalRunContext(tmp_path / "run2")
    _recipe(tmp_path, body, unsandboxed_ok=True).train(ctx, None, _params())
    log = _log(ctx)
    assert "WITHOUT a sandbox" in log and f"ran as {os.getuid()}" in log


def test_ranks_spread_over_nodes_need_unsandboxed_leave(tmp_path: Path) -> None:
    body = "print('ok')\n"
    with pytest.raises(SandboxRefused, match="span nodes"):
        _recipe(tmp_path, body, host_network=True).train(
            LocalRunContext(tmp_path / "run"), None, _params()
        )


def test_sandbox_init_runs_without_site_packages() -> None:
    """The init program is stdlib only: it must start under ``-I -S``."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-I", "-S", str(sandbox.INIT), "--", "/bin/sh", "-c", "exit 3"],
        check=False,
    )
    assert done.returncode == 3


@needs_bwrap
def test_secrets_reach_the_sandbox_but_not_the_log(tmp_path: Path) -> None:
    token = "hf_live_9a8b7c6d5e"
    body = """
        import os
        print("token is", os.environ["HF_TOKEN"], flush=True)
        assert os.environ["HF_TOKEN"] == "hf_live_9a8b7c6d5e"
    """
    ctx = LocalRunContext(tmp_path / "run")
    _recipe(tmp_path, body, secrets=(("HF_TOKEN", token),)).train(ctx, None, _params())
    log = _log(ctx)
    assert "token is [secret]" in log and token not in log


def test_a_secret_cannot_shadow_what_the_sandbox_sets(tmp_path: Path) -> None:
    for name in ("PATH", "HOME", "GUREUM_RUN_DIR", "PYTHONPATH", "LD_PRELOAD"):
        with pytest.raises(sandbox.SandboxError, match="shadow"):
            sandbox.environment(
                {"GUREUM_RUN_DIR": "/r"},
                home=tmp_path,
                code_dir=tmp_path,
                cpus=1,
                host={},
                secrets={name: "x"},
            )


@needs_bwrap
def test_links_the_script_leaves_never_lead_the_supervisor_outside(tmp_path: Path) -> None:
    """The supervisor reads and writes the run folder as the control plane's user: a link
    planted there must not make it upload, log or overwrite a file of ours."""
    secret = tmp_path / "ours" / "credentials.json"
    secret.parent.mkdir()
    secret.write_text(f'{{\n  "api_key": "{SECRET}"\n}}\n')
    victim = tmp_path / "ours" / "bashrc"
    victim.write_text("untouched\n")
    body = f"""
        import os, time
        import gureum.run as run
        root = run.run_dir()
        (run.model_dir() / "w.bin").write_bytes(b"w")
        os.symlink({str(secret)!r}, run.model_dir() / "creds")
        run.register_model()
        time.sleep(0.8)  # the supervisor has taken the event
        os.symlink({str(secret)!r}, root / "events.tmp")
        os.replace(root / "events.tmp", root / "events.jsonl")
        os.symlink({str(victim)!r}, root / "registered.json")
        time.sleep(0.8)
    """
    ctx = LocalRunContext(tmp_path / "run")
    out = _recipe(tmp_path, body).train(ctx, None, _params())
    log = _log(ctx)
    assert SECRET not in log and "dropped model/creds" in log
    assert sorted(p.name for p in out.model_dir.iterdir()) == ["w.bin"]
    assert victim.read_text() == "untouched\n"
    assert ScriptRecipe.registered(out.model_dir)
    assert not (out.model_dir.parent / "registered.json").is_symlink()


def test_a_rank_spread_over_nodes_keeps_ray_trains_meeting_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only with unsandboxed code allowed: the rank runs on the host, and Ray Train's
    RANK/MASTER_* (set in its worker) reach it; nothing else of the worker's does."""
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.5")
    monkeypatch.setenv("GUREUM_API_KEY", SECRET)
    body = (
        "import os\nenv = os.environ\n"
        "print('dist', env['RANK'], env['MASTER_ADDR'], env.get('GUREUM_API_KEY'))\n"
    )
    ctx = LocalRunContext(tmp_path / "run")
    _recipe(tmp_path, body, host_network=True, unsandboxed_ok=True).train(ctx, None, _params())
    assert "dist 3 10.0.0.5 None" in _log(ctx)
