"""A preemption asks the job for a checkpoint before it stops it, and a checkpoint is written
whole or not at all: the supervisor's grace (without Ray), the answer reaching the recipe's
context, the shared epoch loop saving mid-epoch and resuming exactly, a script seeing the
request through ``gureum.run``, and a worker dying while it writes its checkpoint leaving the
previous one to resume from."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import gureum.run as run
from gureum.compute import fence
from gureum.compute import supervisor as sup
from gureum.compute.runtime import CheckpointStore, ClusterRunContext, Reporter
from gureum.compute.spec import JobSpec
from gureum.recipes import Cancelled, LocalRunContext, parse_params
from gureum.recipes.script import ScriptParams, ScriptRecipe
from gureum.recipes.training import fit
from gureum.storage import store as store_module
from gureum.storage.store import ArtifactStore


def _until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# -- the supervisor's grace ------------------------------------------------------------------


def _supervisor(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The actor's class itself, with an attempt under way (no Ray: the fence says no)."""
    monkeypatch.setattr(fence, "superseded", lambda *_: False)
    cls = sup.JobSupervisor.__ray_metadata__.modified_class  # type: ignore[attr-defined]
    s = cls()
    s.spec = JobSpec(
        job_id="job-1", attempt=1, workspace_id=1, artifacts="/x", kind="train", recipe="script"
    )
    return s


def _kinds(s: Any) -> list[str]:
    return [f"{i.get('kind')}: {i.get('message')}" for i in s.poll(0) if i["type"] == "event"]


def test_a_preemption_asks_for_a_checkpoint_and_stops_once_one_arrives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = _supervisor(monkeypatch)
    attempt = ("job-1", 1)
    assert s.report([], attempt) == 0
    s.stop(30.0)
    assert s.report([], attempt) == 1 << 1  # one checkpoint asked for, no stop yet
    s.stop(30.0)  # a new leader carrying out the same preemption: the same request
    assert s.report([], attempt) == 1 << 1
    time.sleep(0.3)
    assert s.report([{"type": "log", "text": "step\n"}], attempt) == 1 << 1
    saved = {"type": "event", "kind": "checkpoint", "message": "checkpoint 3 saved", "data": {}}
    s.report([saved], attempt)
    _until(lambda: s.report([], attempt) & sup.STOP == sup.STOP)
    kinds = _kinds(s)
    assert kinds[0].startswith("checkpoint-ask: asked to save a checkpoint"), kinds
    assert kinds[-1] == "info: checkpoint saved on request: stopping", kinds


def test_without_a_checkpoint_the_attempt_is_stopped_when_the_grace_runs_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = _supervisor(monkeypatch)
    began = time.monotonic()
    s.stop(0.5)
    _until(lambda: s.signals() & sup.STOP == sup.STOP)
    assert 0.45 <= time.monotonic() - began < 3
    assert "info: no checkpoint within 0.5s" in _kinds(s)[-1]


def test_a_plain_stop_is_at_once_and_an_ended_attempt_is_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = _supervisor(monkeypatch)
    s.stop()
    assert s.signals() == sup.STOP
    ended = _supervisor(monkeypatch)
    ended.stop(0.3)
    ended._done = True  # the work ended by itself within the grace
    time.sleep(0.6)
    assert ended.signals() & sup.STOP == 0
    assert not any(k.startswith("info:") for k in _kinds(ended))


# -- the answer reaching the recipe ----------------------------------------------------------


def test_the_request_reaches_the_context_even_when_the_job_is_quiet(tmp_path: Path) -> None:
    answer = [0]
    batches: list[list[Any]] = []

    def send(items: list[Any]) -> int:
        batches.append(items)
        return answer[0]

    reporter = Reporter(send, flush_s=0.01, heartbeat_s=0.05)
    store = CheckpointStore(ArtifactStore(str(tmp_path / "store")), 1, "job-1")
    ctx = ClusterRunContext(reporter, store, tmp_path / "w")
    other_rank = ClusterRunContext(reporter, store, tmp_path / "w1", rank=1)
    try:
        assert not ctx.should_checkpoint()
        answer[0] = 1 << 1
        _until(ctx.should_checkpoint)  # nothing was logged: a heartbeat carried it
        assert [] in batches
        assert not other_rank.should_checkpoint()  # rank 0 saves for all
        ctx.save_checkpoint({"epoch": 1})
        time.sleep(0.15)  # later answers still count one request: it stays answered
        assert not ctx.should_checkpoint() and not ctx.should_stop()
        answer[0] = (2 << 1) | 1
        _until(lambda: ctx.should_checkpoint() and ctx.should_stop())
    finally:
        reporter.close()


# -- the shared epoch loop ---------------------------------------------------------------------


class AskingContext(LocalRunContext):
    """Asks for a checkpoint at ``ask_at`` (a global step), and stops the run after it."""

    def __init__(self, root: Path, ask_at: int | None) -> None:
        super().__init__(root)
        self.ask_at, self.step, self.asked = ask_at, 0, False

    def progress(self, epoch: int, step: int, total_steps: int) -> None:
        self.step = step
        self.asked = self.asked or step == self.ask_at

    def should_checkpoint(self) -> bool:
        return self.asked and not self._stop.is_set()

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        super().save_checkpoint(state)
        if self.asked:
            self.request_stop()  # the platform stops it once the checkpoint is there


def _train(ctx: LocalRunContext) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng = np.random.default_rng([7, epoch])
        for _ in range(5):
            x = torch.tensor(rng.normal(size=(16, 4)), dtype=torch.float32)
            noise = torch.randn(16, 1) * 0.01  # consumes torch's RNG as augmentations do
            yield x, x.sum(dim=1, keepdim=True) + noise

    def step(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
        x, y = batch
        loss = nn.functional.mse_loss(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss.item(), "samples": len(x)}

    fit(ctx, model, opt, epochs=3, steps_per_epoch=5, batches=batches, step=step, log_every=1)
    return model


def test_a_checkpoint_asked_mid_epoch_resumes_exactly_where_it_left_off(tmp_path: Path) -> None:
    straight = _train(AskingContext(tmp_path / "straight", ask_at=None))
    ctx = AskingContext(tmp_path / "preempted", ask_at=8)  # step 3 of epoch 2
    with pytest.raises(Cancelled):
        _train(ctx)
    state = ctx.load_checkpoint()
    assert state is not None
    assert (state["epoch"], state["step"], state["within"]["steps"]) == (1, 8, 3)
    resumed_ctx = AskingContext(tmp_path / "preempted", ask_at=None)
    resumed = _train(resumed_ctx)
    assert "epoch 1 of 3 done at step 8; starting epoch 2, 3 steps into it" in (
        resumed_ctx.log_path.read_text()
    )
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), "the resumed run diverged from the straight one"


# -- scripts -----------------------------------------------------------------------------------


class ScriptAsker(LocalRunContext):
    """Asks for a checkpoint once the script has started; a save answers it."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.answered = threading.Event()

    def should_checkpoint(self) -> bool:
        return not self.answered.is_set()

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        super().save_checkpoint(state)
        self.answered.set()


def test_a_script_sees_the_request_through_gureum_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.startswith("GUREUM_")]:
        monkeypatch.delenv(key)
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text(
        textwrap.dedent(
            """
            import time
            import gureum.run as run
            for step in range(600):
                if run.should_checkpoint():
                    run.save_checkpoint({"step": step})
                    assert not run.should_checkpoint()  # the save answered it
                    print(f"checkpointed at step {step}", flush=True)
                    break
                time.sleep(0.05)
            else:
                raise SystemExit("never asked")
            """
        )
    )
    ctx = ScriptAsker(tmp_path / "run")
    params = parse_params("script", ScriptParams, {"entrypoint": "train.py"})
    ScriptRecipe().with_code(code).train(ctx, None, params)
    state = ctx.load_checkpoint()
    assert state is not None and isinstance(state["step"], int)
    assert "checkpointed at step" in ctx.log_path.read_text()
    assert "checkpoint requested; asking the script to save one" in ctx.log_path.read_text()


# -- a worker dying while it writes its checkpoint -------------------------------------------


def test_a_store_write_cut_off_leaves_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    checkpoints = CheckpointStore(store, 1, "job-1")
    assert checkpoints.save({"epoch": 1}) == 1

    def killed(src: str, dst: str) -> None:
        raise SystemExit("the worker died before the rename")

    with monkeypatch.context() as m:
        m.setattr(store_module.os, "replace", killed)
        with pytest.raises(SystemExit):
            checkpoints.save({"epoch": 2, "weights": torch.zeros(10_000)})
    half = [p for p in store.fs.ls(checkpoints.prefix, detail=False) if str(p).endswith(".tmp")]
    assert len(half) == 1 and os.path.getsize(half[0]) > 0
    assert checkpoints.numbers() == [1]
    found = checkpoints.load()  # what the next attempt does first
    assert found is not None and found[0] == 1 and found[1]["epoch"] == 1
    assert not [p for p in store.fs.ls(checkpoints.prefix, detail=False) if ".tmp" in str(p)]
    assert checkpoints.save({"epoch": 2}) == 2  # numbering carries on


def test_a_script_killed_while_saving_resumes_from_its_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real process dies (SIGKILL-like ``os._exit``) halfway through ``torch.save``."""
    monkeypatch.setenv("GUREUM_RUN_DIR", str(tmp_path / "run"))
    child = textwrap.dedent(
        """
        import os, torch
        import gureum.run as run
        run.save_checkpoint({"epoch": 1})
        def dying_save(state, path):
            with open(path, "wb") as fh:
                fh.write(b"PK" + b"\\0" * 4096)  # the start of a zip, then nothing
                fh.flush()
            os._exit(137)
        torch.save = dying_save
        run.save_checkpoint({"epoch": 2})
        """
    )
    done = subprocess.run([sys.executable, "-c", child], env=dict(os.environ), timeout=120)
    assert done.returncode == 137
    spool = tmp_path / "run" / run.SPOOL_DIR
    assert [p.name for p in spool.iterdir() if p.name.endswith(".tmp")], "no half-written file"
    assert run.load_checkpoint() == {"epoch": 1}
