"""Settings shared by the server, the CLI and `gureum up`.

Everything comes from environment variables prefixed ``GUREUM_`` so that one machine,
a container and a cluster are configured the same way.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr
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
    # TLS-terminating proxies in front of the API (comma-separated addresses or networks, or
    # "*"): their X-Forwarded-Proto/For are believed, so behind https the session cookie is
    # Secure and the sign-in form's Origin check sees https. Nobody else's are.
    forwarded_allow_ips: str = "127.0.0.1"
    # Empty means "derive from home": sqlite file and local artifact folder.
    database_url: str = ""
    artifacts: str = ""
    ray_address: str = ""

    # Upload limits: a single file, and the expanded size / entry count of an archive.
    max_file_bytes: int = 20 * GiB
    max_archive_bytes: int = 50 * GiB
    max_archive_entries: int = 100_000
    # Inputs (docs/security.md, "Inputs and storage limits"): a request body of the control
    # plane (uploads have their own limits above), one that lists files (a push manifest, a
    # job's code), an archive's expanded-to-compressed ratio past 64 MiB expanded, a line of a
    # CSV / JSONL / text file, and the live log streams one key may hold open.
    max_request_bytes: int = Field(default=1024**2, ge=1024)
    max_manifest_bytes: int = Field(default=64 * 1024**2, ge=1024)
    max_archive_ratio: float = Field(default=100.0, ge=1)
    max_line_bytes: int = Field(default=1024**2, ge=1024)
    max_streams_per_key: int = Field(default=8, ge=1)
    stream_key_recheck_s: float = Field(default=10.0, gt=0)
    default_page_size: int = 50
    max_page_size: int = 1000

    # The data plane: Ray Serve's HTTP entry (HAProxy) where consumers call endpoints
    # (`gureum up --data-plane-host`); loopback unless set.
    serve_host: str = "127.0.0.1"
    serve_port: int = 8100
    # Where the local Ray head `gureum up` starts listens (`--ray-host`); it always runs with
    # Ray's token authentication (the token in `ray_token_path`).
    ray_host: str = "127.0.0.1"
    # Ray's GCS fault tolerance for that head (docs/deploy/README.md, "GCS fault tolerance"):
    # its control state kept in this Redis (host:port, redis:// or rediss://) under a namespace
    # of its own (default: one per home); the credentials only if Redis asks for them (never
    # logged or recorded). Empty: Ray's default, in memory.
    ray_redis_address: str = ""
    ray_redis_namespace: str = ""
    ray_redis_username: str = ""
    ray_redis_password: SecretStr = SecretStr("")
    # HAProxy's limits on a consumer's connection: seconds to send the request head, idle
    # seconds, and the number of header fields.
    data_plane_request_timeout_s: int = Field(default=10, ge=1)
    data_plane_client_timeout_s: int = Field(default=60, ge=1)
    data_plane_max_headers: int = Field(default=100, ge=8)
    # How replicas reach this server (to fetch keys and ship usage); derived from host/port
    # when empty. Set it when replicas run on other machines.
    control_url: str = ""
    # Metering and access on the data plane (docs/security.md, "Consumers and metering"). A
    # replica whose key table is older than this (the control plane unreachable) refuses calls.
    max_key_staleness_s: float = Field(default=300.0, gt=0)
    # Calls of a monthly quota a replica leases at a time: a quota of N allows at most N calls.
    quota_lease_calls: int = Field(default=100, ge=1)
    # Requests/s of one workspace key created with --data-plane (all replicas together).
    data_plane_key_rate_limit: float = Field(default=10.0, gt=0)
    # Seconds between sweeps that erase captured calls past their endpoint's retention.
    capture_sweep_interval_s: float = Field(default=600.0, gt=0)

    # One pool, serving first (docs/operations.md, "Serving first: preemption"): a replica
    # Ray cannot place waits this long (for room, or a node the autoscaler adds) before
    # preemptible jobs are stopped for it; a job that has run less than `preempt_min_run_s` is
    # left alone; a preempted job waits `preempt_hold_s` so the replica takes the room first.
    # A job chosen is first asked to save a checkpoint and stopped once it has (or ended), at
    # most `preempt_grace_s` later.
    preempt_after_s: float = Field(default=10.0, ge=0)
    preempt_min_run_s: float = Field(default=60.0, ge=0)
    preempt_hold_s: float = Field(default=30.0, ge=0)
    preempt_grace_s: float = Field(default=30.0, ge=0)
    # Serving headroom: for every endpoint application that serves (a replica running) and may
    # still scale up, room for this many more of its replicas is kept free of new training
    # jobs, so the next scale-up is placed at once; when a scale-up eats into it, the pool
    # preempts in the background (after `preempt_after_s` and at least 3 s) to
    # restore it. 0: no headroom, training may fill the pool and a scale-up waits for a
    # preemption. `serving_headroom_max_cpus` / `_gpus` cap the headroom of all endpoints
    # together (None: no cap).
    serving_headroom_replicas: int = Field(default=1, ge=0, le=1000)
    serving_headroom_max_cpus: float | None = Field(default=None, ge=0)
    serving_headroom_max_gpus: float | None = Field(default=None, ge=0)
    # Node autoscaling (docs/operations.md, "Node autoscaling"): queued jobs and replicas waiting
    # for room ask Ray's autoscaler for nodes (request_resources), cleared when nothing waits.
    # `autoscaling_config` names the cluster's autoscaler config (cluster launcher YAML, or any
    # YAML with `available_node_types`): submission then accepts a job that fits a node type the
    # autoscaler may add. Either setting turns node autoscaling on.
    node_autoscaling: bool = False
    autoscaling_config: str = ""

    # Compute and storage prices for cost reports (GUREUM_PRICE_*; the dict is JSON).
    price_currency: str = "USD"
    price_cpu_hour: float = Field(default=0.05, ge=0)
    price_gpu_hour: float = Field(default=2.50, ge=0)
    price_gpu_hour_by_type: dict[str, float] = Field(default_factory=dict)
    price_memory_gb_hour: float = Field(default=0.0, ge=0)
    price_storage_gb_month: float = Field(default=0.023, ge=0)
    # The capacity planner (`gureum plan`, docs/planning.md; GUREUM_PLAN_*): cloud on-demand is
    # priced as above; spot CPU/GPU-hours for jobs (preemptible: they checkpoint), the share of
    # job hours that gets spot, and a fleet bought for the peak: purchase price per CPU and per
    # GPU (its share of a server), years to amortise it over, power (with cooling) per hour it
    # runs, and months between the order and the first hour it serves.
    plan_spot_cpu_hour: float = Field(default=0.02, ge=0)
    plan_spot_gpu_hour: float = Field(default=1.00, ge=0)
    plan_spot_share: float = Field(default=1.0, ge=0, le=1)
    plan_purchase_per_cpu: float = Field(default=150.0, ge=0)
    plan_purchase_per_gpu: float = Field(default=25_000.0, ge=0)
    plan_amortisation_years: float = Field(default=3.0, gt=0)
    plan_power_per_cpu_hour: float = Field(default=0.002, ge=0)
    plan_power_per_gpu_hour: float = Field(default=0.10, ge=0)
    plan_lead_time_months: float = Field(default=3.0, ge=0)

    @cached_property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'gureum.db'}"

    @cached_property
    def resolved_artifacts(self) -> str:
        return self.artifacts or str(self.home / "artifacts")

    @property
    def resolved_control_url(self) -> str:
        if self.control_url:
            return self.control_url.rstrip("/")
        wildcard = self.host in ("0.0.0.0", "::", "")  # noqa: S104 (a comparison, not a bind)
        host = "127.0.0.1" if wildcard else self.host
        return f"http://{host}:{self.port}"

    @property
    def autoscales(self) -> bool:
        return self.node_autoscaling or bool(self.autoscaling_config)

    @property
    def serving_dir(self) -> Path:
        """Node-local spool of usage records and cache of model files for replicas."""
        return self.home / "serving"

    @property
    def credentials_path(self) -> Path:
        return self.home / "credentials.json"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def ray_token_path(self) -> Path:
        """Ray's auth token of the head `gureum up` starts (mode 0600)."""
        return self.home / "ray-token"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"
