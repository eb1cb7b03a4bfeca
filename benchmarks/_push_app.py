"""uvicorn factory for bench_push: the real gureum app on the benchmark's home."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI

from gureum.config import Settings
from gureum.server.app import create_app


def app() -> FastAPI:
    return create_app(Settings(home=Path(os.environ["BENCH_HOME"])))
