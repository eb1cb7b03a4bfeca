"""One way to run the schemathesis CLI against a live server, shared by the fuzz tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEED = 20261203


def fuzz(
    schema_url: str,
    key: str,
    cwd: Path,
    *,
    checks: list[str],
    budget_s: int,
    max_examples: int,
    extra: tuple[str, ...] = (),
) -> str:
    """Run schemathesis (fixed seed, one worker, our hooks) and fail with its failures section;
    return its output."""
    cmd = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        schema_url,
        "--header",
        f"Authorization: Bearer {key}",
        "--checks",
        ",".join(checks),
        "--seed",
        str(SEED),
        "--max-time",
        str(budget_s),
        "--max-examples",
        str(max_examples),
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--suppress-health-check",
        "all",
        "--no-color",
        *extra,
    ]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.integration.fuzz_hooks",
        "PYTHONPATH": str(ROOT),
        "SCHEMATHESIS_TELEMETRY": "false",
        "NO_COLOR": "1",
    }
    done = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=budget_s + 240
    )
    # The failures section, each line cut short (a fuzzed URL can be kilobytes long).
    out = done.stdout[done.stdout.find("FAILURES") :] if "FAILURES" in done.stdout else done.stdout
    report = "\n".join(line[:400] for line in (out + done.stderr).splitlines()[-300:])
    assert done.returncode == 0, report
    assert "Tested:" in done.stdout, report  # it ran operations, not nothing
    return done.stdout
