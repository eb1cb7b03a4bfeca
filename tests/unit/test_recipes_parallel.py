"""Data-parallel training: two processes in a gloo process group (as Ray Train's TorchTrainer
sets one up) split each epoch between them and keep one model."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.multiprocessing as mp
from torch import distributed as dist

from gureum import samples
from gureum.recipes import LocalDataset, LocalRunContext, get_recipe
from tests.conftest import free_port

PARAMS = {"epochs": 2, "image_size": 16, "width": 8, "batch_size": 8}
WORLD = 2


def _worker(rank: int, port: int, data: str, out: str) -> None:
    # A TCP store on a free port: the file:// store was flaky when the last rank removed its
    # file while the other still read it.
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        torch.set_num_threads(1)
        recipe = get_recipe("image-classifier")
        ctx = LocalRunContext(Path(out))
        recipe.train(ctx, LocalDataset.from_folder(data), recipe.Params(**PARAMS))
    finally:
        dist.destroy_process_group()


def test_two_workers_split_each_epoch_and_rank_zero_writes(tmp_path: Path) -> None:
    samples.write("garments", tmp_path / "data", count=60)
    ds = LocalDataset.from_folder(tmp_path / "data")
    train_n = len(ds.select("image", "train"))
    mp.spawn(
        _worker,
        args=(free_port(), str(tmp_path / "data"), str(tmp_path / "out")),
        nprocs=WORLD,
        join=True,
    )
    ctx = LocalRunContext(tmp_path / "out")
    state = ctx.load_checkpoint()
    assert state is not None and state["epoch"] == 2
    per_rank = -(-train_n // WORLD)  # each rank sees half the pictures per epoch
    assert state["step"] == 2 * -(-per_rank // PARAMS["batch_size"])
    epochs = [m for m in ctx.metrics() if "val_accuracy" in m]
    assert [m["epoch"] for m in epochs] == [1, 2]  # logged once, by rank 0
    assert (tmp_path / "out" / "artifacts" / "model" / "model.safetensors").is_file()
