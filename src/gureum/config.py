"""Settings shared by the server, the CLI and `gureum up`.

Everything comes from environment variables prefixed ``GUREUM_`` so that one machine,
a container and a cluster are configured the same way.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PORT = 8080
GiB = 1024**3


def default_home() -> Path:
    return Path(os.environ.get("GUREUM_HOME") or Path.home() / ".gureum").expanduser()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GUREUM_", extra="ignore")

    home: Path = Field(default_factory=default_home)
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    # Empty means "derive from home": sqlite file and local artifact folder.
    database_url: str = ""
    artifacts: str = ""
    ray_address: str = ""

    # Upload limits: a single file, and the expanded size / entry count of an archive.
    max_file_bytes: int = 20 * GiB
    max_archive_bytes: int = 50 * GiB
    max_archive_entries: int = 1_000_000
    default_page_size: int = 50
    max_page_size: int = 1000

    @cached_property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'gureum.db'}"

    @cached_property
    def resolved_artifacts(self) -> str:
        return self.artifacts or str(self.home / "artifacts")

    @property
    def credentials_path(self) -> Path:
        return self.home / "credentials.json"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"
