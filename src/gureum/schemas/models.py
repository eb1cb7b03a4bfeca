"""Request and response shapes of the model registry: models, versions, gates, promotion."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gureum.schemas.common import Out
from gureum.schemas.datasets import MAX_FILES, FileEntry

ModelFormat = Literal["gureum", "safetensors", "pytorch", "onnx", "huggingface"]
Stage = Literal["none", "staging", "production", "archived"]
GateOp = Literal[">=", "<=", ">", "<"]
MetricsSource = Literal["measured", "reported"]
MAX_GATES = 50


class In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MetricGate(In):
    """A threshold a metric of a production candidate must meet."""

    metric: str = Field(min_length=1, max_length=128)
    op: GateOp
    threshold: float
    measured: bool = Field(
        default=False,
        description="pass only on metrics the platform measured (a built-in recipe's train "
        'job), not on metrics "reported" by whoever registered the version',
    )


class MustBeat(In):
    """The candidate's ``metric`` must be strictly better than the production version's."""

    metric: str = Field(min_length=1, max_length=128)
    higher_is_better: bool = True
    measured: bool = Field(
        default=False, description="the candidate's metric must be platform-measured"
    )


class ModelUpdate(In):
    """PATCH body; a field left out stays as it is, ``must_beat_production: null`` clears it.

    Changing ``gates`` or ``must_beat_production`` needs a workspace admin (audited): they are
    what stands between a developer's version and production."""

    description: str | None = Field(default=None, max_length=10_000)
    gates: list[MetricGate] | None = Field(default=None, max_length=MAX_GATES)
    must_beat_production: MustBeat | None = None


class VersionCreate(In):
    files: list[FileEntry] = Field(min_length=1, max_length=MAX_FILES)
    format: ModelFormat = "gureum"
    recipe: str | None = Field(default=None, max_length=64)
    params: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    dataset: str | None = Field(
        default=None, max_length=200, description='lineage: a dataset version "NAME[:V]"'
    )
    job_id: str | None = Field(
        default=None,
        max_length=64,
        description="lineage note; it does not make the files trusted or the metrics measured",
    )
    code_hash: str | None = Field(default=None, max_length=128)
    message: str = Field(default="", max_length=10_000)
    description: str | None = Field(
        default=None, max_length=10_000, description="the model's description (set or replaced)"
    )

    @model_validator(mode="after")
    def _unique_paths(self) -> Self:
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            dupes = sorted({p for p in paths if paths.count(p) > 1})
            raise ValueError(f"duplicate paths: {', '.join(dupes[:10])}")
        return self


class PromoteRequest(In):
    stage: Stage
    force: bool = Field(default=False, description="skip the gates (admin only)")


class ModelOut(Out):
    name: str
    description: str
    gates: list[MetricGate]
    must_beat_production: MustBeat | None
    latest_version: int | None
    production_version: int | None
    version_count: int
    created_at: datetime
    updated_at: datetime


class ModelVersionOut(Out):
    model: str
    version: int
    stage: Stage
    format: ModelFormat
    recipe: str | None
    params: dict[str, Any]
    metrics: dict[str, Any]
    dataset: str | None = Field(description='lineage: "NAME:V" of the dataset version')
    job_id: str | None
    code_hash: str | None
    platform_written: bool = Field(
        description="the files were written by a platform train job (marked by the server, "
        "never by the caller): only such files are ever unpickled"
    )
    metrics_source: MetricsSource = Field(
        description='"measured": by the platform (a built-in recipe\'s train job); '
        '"reported": given by whoever registered the version'
    )
    file_count: int
    total_bytes: int
    message: str
    created_by: str | None
    created_at: datetime
    stage_changed_at: datetime | None


class ModelFileOut(Out):
    path: str
    sha256: str
    size: int


class GateCheck(BaseModel):
    """One check of a promotion to production: what was required and what the version has."""

    check: Literal["gate", "must_beat_production"]
    metric: str
    op: GateOp
    required: float | None
    actual: float | None
    passed: bool
    reason: str
    measured: bool = Field(default=False, description="the gate required measured metrics")


class PromoteOut(BaseModel):
    version: ModelVersionOut
    previous_stage: Stage
    archived: list[int] = Field(description="versions moved from production to archived")
    checks: list[GateCheck]
    forced: bool
