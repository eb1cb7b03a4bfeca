"""image-diffusion vs image-generator (issue 15): equal CPU time, the same metrics.

Both recipes train in this process (no Ray: the recipes' own code path, as a job runs it) on
the garments sample with their default parameters, for ``--seconds`` of this process's CPU
time each (``time.process_time``: machine load from other work does not change the budget).
A run stops inside the epoch that crosses the budget; its last complete epoch's checkpoint is
then resumed with ``epochs`` set to that epoch, which saves the model as the recipe's own
train does. Both models are evaluated with the shared measurement (``recipes.sample_quality``:
KID against the held-out pictures in a fixed CNN's features, that CNN's accuracy on samples
asked for a class) and their sample grids are copied to ``docs/images/`` (``--label`` added to
the names, so runs side by side keep theirs). The load average before and after is printed: on a
shared machine, use ``--threads 1`` (waiting threads spin and count as CPU time).

    .venv/bin/python -m benchmarks.diffusion_vs_vae [--seconds 180] [--count 320] [--label L]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from gureum import samples
from gureum.recipes import Cancelled, LocalDataset, LocalRunContext, get_recipe, parse_params
from gureum.recipes.base import RunContext

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"
RECIPES = ("image-generator", "image-diffusion")
FOREVER = 5000  # epochs: the CPU budget ends the run, not the epoch count


class CpuBudget:
    """A run context that asks the recipe to stop after ``seconds`` of process CPU time."""

    def __init__(self, ctx: LocalRunContext, seconds: float) -> None:
        self._ctx, self._seconds = ctx, seconds
        self._start = time.process_time()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    def should_stop(self) -> bool:
        return time.process_time() - self._start > self._seconds


def run(
    recipe_name: str,
    ds: LocalDataset,
    root: Path,
    seconds: float,
    extra: dict[str, str],
    label: str = "",
) -> dict[str, Any]:
    recipe = get_recipe(recipe_name)
    ctx = LocalRunContext(root / recipe_name)
    params = parse_params(recipe_name, recipe.Params, {**extra, "epochs": FOREVER})
    cpu0, wall0 = time.process_time(), time.perf_counter()
    boxed: RunContext = CpuBudget(ctx, seconds)  # type: ignore[assignment]
    with contextlib.suppress(Cancelled):
        recipe.train(boxed, ds, params)
    train_cpu, train_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    checkpoint = ctx.load_checkpoint()
    assert checkpoint is not None, f"{recipe_name} finished no epoch in {seconds} s"
    epochs, steps = int(checkpoint["epoch"]), int(checkpoint["step"])
    done = parse_params(recipe_name, recipe.Params, {**extra, "epochs": epochs})
    out = recipe.train(ctx, ds, done)  # resumes at the last epoch: saves the model
    cpu1, wall1 = time.process_time(), time.perf_counter()
    evaluation = recipe.evaluate(ctx, out.model_dir, ds)
    tag = "".join(f"-{k}{v}" for k, v in sorted(extra.items())) + (f"-{label}" if label else "")
    grid = IMAGES / f"bench-{recipe_name}{tag}.png"
    IMAGES.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ctx.artifacts_dir / "samples" / "all.png", grid)
    return {
        "recipe": recipe_name,
        "params": extra,
        "epochs": epochs,
        "steps": steps,
        "train_cpu_s": round(train_cpu, 1),
        "train_wall_s": round(train_wall, 1),
        "eval_cpu_s": round(time.process_time() - cpu1, 1),
        "eval_wall_s": round(time.perf_counter() - wall1, 1),
        "grid": str(grid.relative_to(ROOT)),
        **{k: round(v, 4) for k, v in evaluation.metrics.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=180.0, help="CPU seconds per recipe")
    ap.add_argument("--count", type=int, default=320, help="garments pictures")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--only", choices=RECIPES, help="run one recipe")
    ap.add_argument("--label", default="", help="added to the grids' file names")
    ap.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="RECIPE:KEY=VALUE",
        help="a parameter other than the default, e.g. image-diffusion:batch_size=8",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="diffusion-vs-vae-"))
    samples.write("garments", root / "garments", count=args.count)
    ds = LocalDataset.from_folder(root / "garments")
    extra: dict[str, dict[str, str]] = {name: {} for name in RECIPES}
    for given in args.param:
        name, _, pair = given.partition(":")
        key, _, value = pair.partition("=")
        extra[name][key] = value
    names = [args.only] if args.only else list(RECIPES)
    load_before = os.getloadavg()
    rows = [run(name, ds, root, args.seconds, extra[name], args.label) for name in names]
    print(f"load average before {load_before}, after {os.getloadavg()}")
    keys = [
        "epochs",
        "steps",
        "train_cpu_s",
        "train_wall_s",
        "mmd",
        "mmd_std",
        "mmd_reference",
        "class_accuracy",
        "eval_cpu_s",
        "eval_wall_s",
        "grid",
    ]
    print(f"{'':16}" + "".join(f"{r['recipe']:>32}" for r in rows))
    for k in keys:
        print(f"{k:16}" + "".join(f"{r.get(k, '-')!s:>32}" for r in rows))
    print(json.dumps(rows))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
