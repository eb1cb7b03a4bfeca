"""Dataset push throughput vs `cp -r` of the same data into the artifact folder.

Two data sets: 1,000 small images (drawn garments, 32x32 PNG) and one 200 MB file. Each round
copies with `cp -r` and pushes with gureum (the SDK in-process, and the CLI as a user runs it,
whose peak memory is measured), alternating, from the page cache. Every gureum push is a first
push: the workspace's blobs are wiped between rounds. An unchanged re-push is timed too.
Targets: gureum within 2x of `cp -r`; CLI peak memory under 200 MB.

    .venv/bin/python -m benchmarks.bench_push [--rounds 5] [--big-mb 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._util import free_port, median, save, start_uvicorn, stop, wait_http
from gureum import Client
from gureum.samples import write as write_sample
from gureum.server.db.migrate import upgrade
from gureum.server.db.session import Database
from gureum.server.services.bootstrap import bootstrap


def make_data(root: Path, big_mb: int) -> dict[str, Path]:
    images = root / "images"
    write_sample("garments", images, count=1000)
    big = root / "big"
    big.mkdir()
    with open(big / "weights.bin", "wb") as fh:
        for _ in range(big_mb):
            fh.write(os.urandom(1024 * 1024))
    return {"1000 images": images, f"{big_mb} MB file": big / "weights.bin"}


def timed_cp(src: Path, artifacts: Path) -> float:
    dest = artifacts / "cp-baseline"
    shutil.rmtree(dest, ignore_errors=True)
    t = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(dest)], check=True)
    elapsed = time.perf_counter() - t
    if dest.is_dir():
        shutil.rmtree(dest)
    else:
        dest.unlink()
    return elapsed


def timed_cp_and_hash(src: Path, artifacts: Path) -> float:
    """The floor of any content-addressed copy: `cp -r` plus one sha256 pass over the data."""
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    t = time.perf_counter()
    subprocess.run(["sha256sum", *map(str, files)], check=True, stdout=subprocess.DEVNULL)
    return timed_cp(src, artifacts) + (time.perf_counter() - t)


def wipe_blobs(artifacts: Path) -> None:
    for blobs in (artifacts / "workspaces").glob("*/blobs"):
        shutil.rmtree(blobs)


# Runs the CLI and prints its own peak RSS (VmHWM) at exit: the rusage of a child would also
# count the pages of the process it was forked from.
PEAK_RSS_LAUNCHER = (
    "import atexit, runpy, sys\n"
    "def peak():\n"
    "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')]\n"
    "    sys.stderr.write(hwm[0])\n"
    "atexit.register(peak)\n"
    "sys.argv[0] = 'gureum'\n"
    "runpy.run_module('gureum', run_name='__main__')\n"
)


def timed_cli(src: Path, name: str, env: dict[str, str]) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of `gureum datasets push` as its own process."""
    cmd = [
        sys.executable,
        "-c",
        PEAK_RSS_LAUNCHER,
        "datasets",
        "push",
        name,
        str(src),
        "-o",
        "json",
    ]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"gureum datasets push failed: {proc.stderr}")
    return elapsed, int(proc.stderr.rsplit("VmHWM:", 1)[1].split()[0]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--big-mb", type=int, default=200)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        home = root / "home"
        artifacts = home / "artifacts"
        db = Database(f"sqlite:///{home / 'gureum.db'}")
        upgrade(db.engine)
        token = bootstrap(db)
        db.dispose()
        assert token is not None
        port = free_port()
        server = start_uvicorn("benchmarks._push_app:app", port, {"BENCH_HOME": str(home)})
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "GUREUM_URL": url, "GUREUM_API_KEY": token}
        try:
            wait_http(f"{url}/v1/health")
            data = make_data(root / "data", args.big_mb)
            client = Client(url, token)
            for label, src in data.items():
                size = sum(p.stat().st_size for p in ([src] if src.is_file() else src.rglob("*")))
                cp, cp_hash, sdk, cli, rss, repush = [], [], [], [], [], []
                for i in range(args.rounds):
                    cp.append(timed_cp(src, artifacts))
                    cp_hash.append(timed_cp_and_hash(src, artifacts))
                    wipe_blobs(artifacts)
                    t = time.perf_counter()
                    client.datasets.push(f"sdk-{i}", src)
                    sdk.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    client.datasets.push(f"sdk-{i}", src)
                    repush.append(time.perf_counter() - t)
                    wipe_blobs(artifacts)
                    seconds, peak = timed_cli(src, f"cli-{i}", env)
                    cli.append(seconds)
                    rss.append(peak)
                mb = size / 1e6
                results.append(
                    {
                        "data": label,
                        "bytes": size,
                        "cp_median_s": round(median(cp), 4),
                        "cp_plus_sha256_median_s": round(median(cp_hash), 4),
                        "sdk_median_s": round(median(sdk), 4),
                        "cli_median_s": round(median(cli), 4),
                        "unchanged_repush_median_s": round(median(repush), 4),
                        "cp_MBps": round(mb / median(cp), 1),
                        "sdk_MBps": round(mb / median(sdk), 1),
                        "sdk_vs_cp": round(median(sdk) / median(cp), 2),
                        "cli_vs_cp": round(median(cli) / median(cp), 2),
                        "sdk_vs_cp_plus_sha256": round(median(sdk) / median(cp_hash), 2),
                        "cli_peak_rss_MB": round(max(rss), 1),
                        "target": "push time <= 2x cp -r; CLI peak RSS < 200 MB",
                    }
                )
            client.close()
        finally:
            stop(server)
    for r in results:
        print(
            f"{r['data']:>14}: cp -r {r['cp_median_s']}s | cp -r + sha256sum "
            f"{r['cp_plus_sha256_median_s']}s | SDK push {r['sdk_median_s']}s "
            f"({r['sdk_vs_cp']}x cp, {r['sdk_vs_cp_plus_sha256']}x cp+sha) | "
            f"CLI push {r['cli_median_s']}s ({r['cli_vs_cp']}x, peak "
            f"{r['cli_peak_rss_MB']} MB) | unchanged re-push {r['unchanged_repush_median_s']}s"
        )
    print(f"saved {save('push', {'rounds': args.rounds, 'results': results})}")


if __name__ == "__main__":
    main()
