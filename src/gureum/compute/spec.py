"""What the control plane hands a job's Ray work, and what comes back.

Everything the work needs travels in the ``JobSpec``: the work never calls the control plane's
API or database, it reads blobs from the artifact store and reports through its supervisor
actor. Reports are plain dicts with a ``type`` (see ``Item``), numbered by the supervisor so the
control plane can store each exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from gureum.schemas.jobs import JobKind, Resources

Outcome = Literal["succeeded", "failed", "cancelled", "lost"]
# Item types a supervisor reports: started, log, metrics, progress, event, output, end.
Item = dict[str, Any]


class BlobFile(BaseModel):
    path: str
    sha256: str
    size: int = 0


class JobSpec(BaseModel):
    job_id: str
    attempt: int = Field(ge=1)
    workspace_id: int
    artifacts: str = Field(description="the artifact store URL (fsspec)")
    kind: JobKind
    recipe: str
    params: dict[str, Any] = Field(default_factory=dict)
    # The dataset version's manifest (kind, schema, split, files) with each file's sha256.
    dataset: dict[str, Any] | None = None
    code_files: list[BlobFile] = Field(default_factory=list)
    entrypoint: str | None = None
    args: list[str] = Field(default_factory=list)
    model_files: list[BlobFile] = Field(default_factory=list)
    # Registry versions of the job's workspace its parameters name (a LoRA ``base_model``), by
    # the pinned "NAME:V" the server resolved: fetched for the recipe as ``ctx.models``.
    models: dict[str, list[BlobFile]] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    workers: int = 1
    # A site admin allowed user code outside the sandbox (``allow_unsandboxed_code``).
    unsandboxed_ok: bool = False
    # The workspace's secrets for a script job's sandbox (never in params, events or logs).
    secrets: dict[str, str] = Field(default_factory=dict, repr=False)

    @property
    def attempt_name(self) -> str:
        """How Ray's task and Ray Train's run of this attempt are named (for reading Ray's
        own tools)."""
        return attempt_name(self.job_id, self.attempt)


NAMESPACE = "gureum"
RUNNER_PREFIX = "gureum-run-"


def attempt_name(job_id: str, attempt: int) -> str:
    return f"{job_id}-{attempt}"


def checkpoint_prefix(workspace_id: int, job_id: str) -> str:
    """Where a job's checkpoints live in the store: shared by all its attempts."""
    return f"workspaces/{workspace_id}/jobs/{job_id}/checkpoints"


@dataclass
class Report:
    """What one poll of an attempt returned: new items, and whether its supervisor lives."""

    items: list[Item]
    alive: bool
