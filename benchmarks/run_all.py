"""Run every benchmark in turn, each in a process of its own (so one's Ray head, servers and
threads never meet another's); results land in ``benchmarks/out/`` as each one writes them.

    .venv/bin/python -m benchmarks.run_all [--quick] [--only metadata_api,push,jobs,serving]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from benchmarks._util import ROOT

# name -> (module, arguments for a full run, arguments for a quick one)
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "metadata_api": ("benchmarks.bench_metadata_api", [], ["--rounds", "2", "--seconds", "2"]),
    "push": ("benchmarks.bench_push", [], ["--rounds", "2", "--big-mb", "50"]),
    "jobs": ("benchmarks.bench_jobs", [], ["--quick"]),
    "serving": ("benchmarks.bench_serving", [], ["--quick"]),
    "sandbox": ("benchmarks.bench_sandbox", [], ["--rounds", "4"]),
    "models": ("benchmarks.bench_models", [], ["--quick"]),
    "dashboard": ("benchmarks.bench_dashboard", [], ["--runs", "5"]),
    "pool": ("benchmarks.bench_pool", [], ["--quick"]),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="short settings for every benchmark")
    ap.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated names")
    args = ap.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        sys.exit(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    failed = []
    for name in names:
        module, full, quick = BENCHMARKS[name]
        cmd = [sys.executable, "-m", module, *(quick if args.quick else full)]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        started = time.perf_counter()
        code = subprocess.run(cmd, cwd=ROOT).returncode
        print(f"== {name}: exit {code} after {time.perf_counter() - started:.0f}s", flush=True)
        if code:
            failed.append(name)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
