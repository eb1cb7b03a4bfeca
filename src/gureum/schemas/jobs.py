"""Request and response shapes of jobs: train, evaluate and batch-predict runs on Ray."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gureum.schemas.common import Out
from gureum.schemas.datasets import MAX_FILES, FileEntry, RelPath

JobKind = Literal["train", "evaluate", "predict"]
JobState = Literal["queued", "starting", "running", "succeeded", "failed", "cancelled"]
TERMINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
# A running job the budget stops (``Job.stop_state``): queued again, not ended.
BUDGET_PAUSE = "budget"
# A running job preempted for an endpoint's replica (``Job.stop_state``): queued again too.
PREEMPT = "preempt"
ACTIVE_STATES: frozenset[str] = frozenset({"starting", "running"})
SCRIPT_RECIPE = "script"
MAX_TIMEOUT_S = 30 * 24 * 3600.0
MIN_JOB_CPUS = 0.5


class In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Resources(In):
    """What one worker of the job gets from Ray, exactly: ``num_cpus``, ``num_gpus``,
    ``memory``, ``accelerator_type`` and custom resources (``{"TPU": 4}``, ``{"neuron_cores":
    2}``) for accelerators Ray knows by name only."""

    cpus: float = Field(
        default=1.0,
        ge=0,
        le=4096,
        description=f"CPUs per worker; less than {MIN_JOB_CPUS:g} is raised to {MIN_JOB_CPUS:g}",
    )
    gpus: float = Field(default=0.0, ge=0, le=256)
    memory_gb: float | None = Field(default=None, gt=0, le=65536)
    accelerator_type: str | None = Field(default=None, min_length=1, max_length=64)
    custom: dict[str, float] = Field(default_factory=dict, max_length=16)

    @field_validator("cpus")
    @classmethod
    def _real_cpus(cls, cpus: float) -> float:
        # A worker asking for no CPU would be placed without limit by Ray and slip past a
        # workspace's CPU quota: every job holds at least a real share of a CPU.
        return max(cpus, MIN_JOB_CPUS)

    @model_validator(mode="after")
    def _custom_ok(self) -> Self:
        for name, amount in self.custom.items():
            if not name or len(name) > 64 or name in {"CPU", "GPU", "memory"}:
                raise ValueError(f"custom resource name {name!r} is not allowed")
            if amount <= 0:
                raise ValueError(f"custom resource {name!r} must be a positive amount")
        return self


class CodeSpec(In):
    """A ``script`` job's code: blobs uploaded like dataset files, and the file to run."""

    files: list[FileEntry] = Field(min_length=1, max_length=MAX_FILES)
    entrypoint: RelPath = Field(description="the Python file to run, relative to the code root")
    args: list[str] = Field(default_factory=list, max_length=256)

    @model_validator(mode="after")
    def _entrypoint_present(self) -> Self:
        if self.entrypoint not in {f.path for f in self.files}:
            raise ValueError(f"entrypoint {self.entrypoint!r} is not among the uploaded files")
        if not self.entrypoint.endswith(".py"):
            raise ValueError(f"entrypoint {self.entrypoint!r} must be a .py file")
        return self


class JobCreate(In):
    kind: JobKind = "train"
    recipe: str | None = Field(
        default=None,
        max_length=64,
        description="built-in recipe or 'script'; evaluate/predict default to the model's",
    )
    dataset: str | None = Field(default=None, max_length=200, description='"NAME[:V]"')
    model: str | None = Field(
        default=None,
        max_length=200,
        description="train: the model to register the result under (NAME); "
        'evaluate/predict: the model version to use ("NAME[:V]")',
    )
    params: dict[str, Any] = Field(default_factory=dict)
    code: CodeSpec | None = None
    resources: Resources = Field(default_factory=Resources)
    workers: int = Field(default=1, ge=1, le=512)
    priority: int = Field(default=0, ge=-1000, le=1000)
    max_retries: int = Field(default=2, ge=0, le=50)
    timeout_s: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S)
    preemptible: bool = Field(
        default=True,
        description="an endpoint short of room may stop it (checkpoint kept, resumed later); "
        "false needs a workspace admin",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.kind == "train" and not self.recipe:
            raise ValueError("a train job needs a recipe")
        if self.kind != "train" and not self.model:
            raise ValueError(f"an {self.kind} job needs a model version (model: NAME[:V])")
        if (self.recipe == SCRIPT_RECIPE) != (self.code is not None):
            raise ValueError("code is given exactly when the recipe is 'script'")
        if self.kind != "train" and self.code is not None:
            raise ValueError("only train jobs run uploaded code")
        if self.kind != "train" and self.workers != 1:
            raise ValueError(f"an {self.kind} job runs on one worker")
        return self


class JobProgress(BaseModel):
    epoch: int | None = None
    step: int = 0
    total_steps: int | None = None
    loss: float | None = None
    eta_s: float | None = None


class JobOut(Out):
    id: str
    kind: JobKind
    state: JobState
    recipe: str
    dataset: str | None = Field(description='"NAME:V" the job reads')
    model: str | None = Field(
        description='train: the model name it registers under; else the "NAME:V" it uses'
    )
    model_version: str | None = Field(description='train: the "NAME:V" it registered')
    params: dict[str, Any]
    resources: Resources
    workers: int
    priority: int
    max_retries: int
    timeout_s: float | None
    preemptible: bool = True
    attempt: int = Field(description="1 for the first run, 2 after one retry, ...")
    wait_reason: str | None
    progress: JobProgress
    metrics: dict[str, Any] = Field(description="final evaluation metrics")
    error: str | None
    code_hash: str | None
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobEventOut(Out):
    seq: int
    time: datetime
    kind: str = Field(
        description="state, wait, retry, resume, checkpoint, checkpoint-ask, preempted, info, error"
    )
    message: str
    data: dict[str, Any] = Field(default_factory=dict)


class JobMetricOut(Out):
    seq: int
    step: int
    epoch: int | None
    time: datetime
    values: dict[str, float]


class JobOutputOut(Out):
    """A file the job produced (sample grids, predictions, reports); a blob of the workspace."""

    path: str
    sha256: str
    size: int


class WorkspaceQuotas(In):
    """Per-workspace ceilings: the queue holds jobs against the compute ones, uploads and
    pushes are refused past the storage one; ``null`` is no limit."""

    max_cpus: float | None = Field(default=None, ge=0)
    max_gpus: float | None = Field(default=None, ge=0)
    max_concurrent_jobs: int | None = Field(default=None, ge=0)
    max_storage_gb: float | None = Field(
        default=None,
        ge=0,
        le=1e9,
        description="GB (2^30 bytes, as cost reports count) its datasets, models and job "
        "outputs may hold; uploads and pushes past it are refused (413 storage_quota_exceeded)",
    )


class WorkspaceShare(In):
    """A workspace's guaranteed share of the pool (Kueue's nominal quota in a cohort): its
    running jobs may hold more while the pool has room, but what they hold beyond the share
    is borrowed and preempted first when serving needs the room. ``null``: no guarantee."""

    cpus: float | None = Field(default=None, ge=0, le=1e6)
    gpus: float | None = Field(default=None, ge=0, le=1e6)


class WorkspaceShareOut(WorkspaceShare):
    """The share, and what the workspace's running jobs hold within it and borrow beyond it."""

    workspace: str
    used_cpus: float = 0.0
    used_gpus: float = 0.0
    borrowed_cpus: float = 0.0
    borrowed_gpus: float = 0.0
