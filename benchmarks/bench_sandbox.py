"""Sandbox start-up (issue 10): a no-op script job's run, under bubblewrap vs unsandboxed.

Both go through the script recipe's ``train`` exactly as a job's worker calls it (the same
supervisor, event channel and model upload folder), so the difference is what the sandbox adds:
building the bwrap command, the namespaces, the read-only binds and the in-sandbox launcher.
Rounds alternate which variant goes first; the first round warms caches and is dropped.
Target: median sandboxed - median unsandboxed <= 0.3 s.

    .venv/bin/python -m benchmarks.bench_sandbox [--rounds 10]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks._util import load_average
from gureum.compute import sandbox
from gureum.recipes import LocalRunContext, parse_params
from gureum.recipes.script import ScriptParams, ScriptRecipe

TARGET_S = 0.3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=10, help="timed rounds (one warm-up more)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gureum-bench-sandbox-"))
    try:
        code = root / "code"
        code.mkdir()
        (code / "main.py").write_text("print('no-op')\n")
        params = parse_params("script", ScriptParams, {"entrypoint": "main.py"})
        variants = {
            "sandboxed": ScriptRecipe().with_code(code, sandbox.Policy()),
            "unsandboxed": ScriptRecipe().with_code(code),
        }
        sandbox.probe(sandbox.bwrap_path())  # once per process, as on a worker
        times: dict[str, list[float]] = {name: [] for name in variants}
        for i in range(args.rounds + 1):
            order = list(variants) if i % 2 == 0 else list(variants)[::-1]
            for name in order:
                run = root / f"run-{name}"
                shutil.rmtree(run, ignore_errors=True)
                t0 = time.perf_counter()
                variants[name].train(LocalRunContext(run), None, params)
                if i:
                    times[name].append(time.perf_counter() - t0)
        med = {name: statistics.median(v) for name, v in times.items()}
        diff = med["sandboxed"] - med["unsandboxed"]
        result = {
            "rounds": args.rounds,
            "median_s": {k: round(v, 4) for k, v in med.items()},
            "difference_s": round(diff, 4),
            "target_s": TARGET_S,
            "met": diff <= TARGET_S,
            "load_average": load_average(),
        }
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
