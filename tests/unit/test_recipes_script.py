"""The script recipe: a user's entry point run as a child process, reporting through
``gureum.run`` (metrics, checkpoints, registration), failing with its output's tail, stopped
with its whole process group; and ``gureum.run`` used by hand outside a job."""

from __future__ import annotations

import json
import os
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

import gureum.run as run
from gureum.recipes import Cancelled, InvalidParams, LocalDataset, LocalRunContext, parse_params
from gureum.recipes.script import (
    CUT_MARK,
    STOP_GRACE_S,
    ScriptFailed,
    ScriptParams,
    ScriptRecipe,
)

PRELUDE = "import os, sys, time\nimport gureum.run as run\n"


@pytest.fixture(autouse=True)
def _no_job_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the recipe's children nor ``gureum.run`` here may see an outer job's folder."""
    for key in [k for k in os.environ if k.startswith("GUREUM_")]:
        monkeypatch.delenv(key)


def code(tmp_path: Path, body: str, name: str = "train.py") -> ScriptRecipe:
    folder = tmp_path / "code"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(PRELUDE + textwrap.dedent(body))
    return ScriptRecipe().with_code(folder)


def params(entrypoint: str = "train.py", **extra: object) -> ScriptParams:
    return parse_params("script", ScriptParams, {"entrypoint": entrypoint, **extra})


def log_text(ctx: LocalRunContext) -> str:
    return ctx.log_path.read_text() if ctx.log_path.exists() else ""


def gone(pid: int) -> bool:
    """No such process, or a zombie waiting for whoever adopted it."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_script_reports_metrics_checkpoints_and_registers_its_model(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "rows.csv").write_text("x,y\n" + "".join(f"{i},{i % 2}\n" for i in range(20)))
    ds = LocalDataset.from_folder(data)
    recipe = code(
        tmp_path,
        """
        p = run.params()
        print("params", sorted(p.items()), "argv", sys.argv[1:])
        files = [f["path"] for f in run.manifest()["files"]]
        print("data", files, (run.data_dir() / "rows.csv").is_file(), run.device())
        assert run.load_checkpoint() is None and not run.should_stop()
        for step in (1, 2):
            run.log_metrics({"loss": 1.0 / step}, step=step, epoch=1)
            run.progress(1, step, 2)
        run.save_checkpoint({"epoch": 1, "w": __import__("torch").ones(2)})
        run.save_checkpoint({"epoch": 2, "w": __import__("torch").ones(3)})
        time.sleep(0.5)  # the runner takes both over meanwhile; the newest must still load
        print("reloaded epoch", run.load_checkpoint()["epoch"])
        (run.model_dir() / "weights.txt").write_text("w")
        extra = run.run_dir() / "extra.json"
        extra.write_text("{}")
        run.register_model(metrics={"acc": 0.9}, path=extra)
        """,
    )
    ctx = LocalRunContext(tmp_path / "run")
    out = recipe.train(ctx, ds, params(lr=0.5, args=["--fast"]))

    log = log_text(ctx)
    assert "params [('lr', 0.5), ('seed', 0)] argv ['--fast']" in log
    assert "data ['rows.csv'] True cpu" in log
    assert "reloaded epoch 2" in log
    rows = ctx.metrics()
    assert [(r["step"], r["epoch"], r["loss"]) for r in rows] == [(1, 1, 1.0), (2, 1, 0.5)]
    assert ctx.last_progress == (1, 2, 2)
    state = ctx.load_checkpoint()
    assert state is not None and state["epoch"] == 2 and torch.equal(state["w"], torch.ones(3))
    assert out.metrics == {"acc": 0.9} and out.epochs_run == 0
    assert ScriptRecipe.registered(out.model_dir)
    assert {p.name for p in out.model_dir.iterdir()} == {"weights.txt", "extra.json"}
    assert recipe.evaluate(ctx, out.model_dir, ds).metrics == {"acc": 0.9}


def test_a_failed_attempt_leaves_its_checkpoint_for_the_next(tmp_path: Path) -> None:
    ctx = LocalRunContext(tmp_path / "run")
    failing = code(
        tmp_path,
        """
        run.save_checkpoint({"epoch": 1})
        print("epoch 1 done, now failing")
        sys.exit(1)
        """,
    )
    with pytest.raises(ScriptFailed) as info:
        failing.train(ctx, None, params())
    assert info.value.code == "script_failed"
    message = str(info.value)
    assert message.startswith("script exited with status 1")
    assert "epoch 1 done, now failing" in message

    again = code(
        tmp_path,
        """
        state = run.load_checkpoint()
        print("resumed epoch", state["epoch"])
        """,
        name="again.py",
    )
    out = again.train(ctx, None, params("again.py"))
    assert "resumed epoch 1" in log_text(ctx)
    assert out.resumed_from_epoch == 1
    assert not ScriptRecipe.registered(out.model_dir)
    assert again.evaluate(ctx, out.model_dir, None).metrics == {}


def test_an_exception_fails_with_the_traceback_tail(tmp_path: Path) -> None:
    recipe = code(tmp_path, 'raise RuntimeError("the loss went to nan at step 7")\n')
    with pytest.raises(ScriptFailed) as info:
        recipe.train(LocalRunContext(tmp_path / "run"), None, params())
    message = str(info.value)
    assert "exited with status 1" in message
    assert "Traceback (most recent call last)" in message
    assert "RuntimeError: the loss went to nan at step 7" in message


def test_a_killed_script_names_the_signal(tmp_path: Path) -> None:
    recipe = code(tmp_path, "import signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    with pytest.raises(ScriptFailed, match="killed by signal SIGKILL"):
        recipe.train(LocalRunContext(tmp_path / "run"), None, params())


def test_megabytes_of_output_reach_the_log_line_by_line(tmp_path: Path) -> None:
    recipe = code(
        tmp_path,
        """
        line = "x" * 1000
        for i in range(5200):
            print(line)
        sys.stdout.write("y" * 200_000 + "\\n")
        print("the end")
        """,
    )
    ctx = LocalRunContext(tmp_path / "run")
    recipe.train(ctx, None, params())
    assert ctx.log_path.stat().st_size > 4_000_000
    log = log_text(ctx)
    assert "y" * 1000 + CUT_MARK in log and "y" * 70_000 not in log
    lines = log.splitlines()
    cut = next(i for i, s in enumerate(lines) if s.endswith(CUT_MARK))
    assert lines[cut + 1].endswith(" the end")


def test_a_stop_ends_the_whole_process_group(tmp_path: Path) -> None:
    recipe = code(
        tmp_path,
        """
        import subprocess
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print("pids", os.getpid(), child.pid, flush=True)
        time.sleep(600)
        """,
    )
    ctx = LocalRunContext(tmp_path / "run", timeout_s=1)
    started = time.monotonic()
    with pytest.raises(Cancelled):
        recipe.train(ctx, None, params())
    assert time.monotonic() - started < 7.5
    line = next(s for s in log_text(ctx).splitlines() if " pids " in s)
    pids = [int(p) for p in line.split()[-2:]]
    deadline = time.monotonic() + 3
    while not all(gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(gone(p) for p in pids)


def test_a_cooperative_script_checkpoints_before_stopping(tmp_path: Path) -> None:
    recipe = code(
        tmp_path,
        """
        import torch  # a real script has it loaded long before it is asked to stop
        print("started", flush=True)
        while not run.should_stop():
            time.sleep(0.05)
        run.save_checkpoint({"epoch": 3, "w": torch.zeros(1)})
        """,
    )
    stop = threading.Event()
    ctx = LocalRunContext(tmp_path / "run", stop=stop)
    asked_at: list[float] = []

    def stop_once_started() -> None:
        while not stop.is_set():
            if "started" in log_text(ctx):
                asked_at.append(time.monotonic())
                stop.set()
            time.sleep(0.05)

    watcher = threading.Thread(target=stop_once_started, daemon=True)
    watcher.start()
    with pytest.raises(Cancelled):
        recipe.train(ctx, None, params())
    stop.set()
    watcher.join()
    # It left by itself before the SIGTERM (a killed script would have saved no checkpoint).
    assert asked_at and time.monotonic() - asked_at[0] < STOP_GRACE_S
    assert "stop requested" in log_text(ctx)
    state = ctx.load_checkpoint()
    assert state is not None and state["epoch"] == 3


def test_params_keep_user_keys_and_refuse_escaping_entrypoints(tmp_path: Path) -> None:
    p = params(epochs=3, args=["-v"])
    assert p.user_params() == {"seed": 0, "epochs": 3}
    for bad in ("../up.py", "/abs.py", "notes.txt"):
        with pytest.raises(InvalidParams, match="entrypoint"):
            params(bad)
    with pytest.raises(InvalidParams, match="entrypoint"):
        parse_params("script", ScriptParams, {})
    with pytest.raises(Exception, match="no code folder"):
        ScriptRecipe().train(LocalRunContext(tmp_path / "run"), None, p)


def test_gureum_run_by_hand_uses_a_local_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run.params() == {} and run.data_dir() is None and run.manifest() is None
    assert run.job_id() is None and run.device() in {"cpu", "cuda"}
    assert run.load_checkpoint() is None and not run.should_stop()
    run.log_metrics({"loss": torch.tensor(0.25)}, step=3)
    run.progress(0, 3, 10)
    for epoch in range(4):
        run.save_checkpoint({"epoch": epoch})
    assert run.load_checkpoint() == {"epoch": 3}
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\0" * 8)
    run.register_model({"acc": 1}, path=weights)

    local = tmp_path / "gureum-run"
    assert run.model_dir() == local / "model" and (local / "model" / "weights.bin").is_file()
    assert len(list((local / "spool").glob("ckpt-*.pt"))) == 2  # hand runs keep only the last
    events = [json.loads(line) for line in (local / "events.jsonl").read_text().splitlines()]
    assert [e["type"] for e in events] == ["metrics", "progress", *["checkpoint"] * 4, "register"]
    assert events[0] == {"type": "metrics", "step": 3, "epoch": None, "values": {"loss": 0.25}}
    assert events[-1] == {"type": "register", "metrics": {"acc": 1.0}}
    (local / "stop").touch()
    assert run.should_stop()
