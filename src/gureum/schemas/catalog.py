"""The model catalog: what a workspace can deploy, with its task and what a replica needs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gureum.schemas.common import Out

CatalogKind = Literal["version", "recipe", "format"]


class CatalogResources(Out):
    """A replica's needs, estimated from the files' size: the runtime plus twice the weights
    in memory (loaded tensors and their working copies); a second CPU past 1 GiB of files."""

    cpus: float
    memory_gb: float
    gpus: float = 0.0


class CatalogEntry(Out):
    kind: CatalogKind = Field(
        description='"version": a registered version ready to deploy (NAME deploys it); '
        '"recipe": a built-in recipe whose trained models serve; "format": an import format '
        "that serves without code"
    )
    name: str = Field(description='what to deploy or use: "NAME:V", a recipe or a format')
    recipe: str | None
    task: str
    unit: str = Field(description="what a call is billed by")
    openai: bool = Field(description="answers the OpenAI-compatible routes")
    how: str = Field(description="the command that deploys it, or makes a version of it")
    total_bytes: int | None = None
    resources: CatalogResources | None = None
