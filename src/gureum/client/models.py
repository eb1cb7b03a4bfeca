"""The model registry in the SDK: register and import versions, read them, gate and promote."""

from __future__ import annotations

import builtins
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gureum.client.base import Transport, VersionRef, pages, segment
from gureum.client.datasets import PUSH_TIMEOUT
from gureum.client.errors import BadRequestError
from gureum.client.upload import BlobUploader, LocalPathError, Progress, scan
from gureum.schemas.datasets import FileEntry, check_relative_path
from gureum.schemas.models import (
    MetricGate,
    ModelFileOut,
    ModelFormat,
    ModelOut,
    ModelVersionOut,
    MustBeat,
    PromoteOut,
    Stage,
)

PYTORCH_SUFFIXES = (".pt", ".pth", ".bin")
HF_CONFIG = "config.json"


class UnknownFormat(BadRequestError):
    """`import` was pointed at something that is not a known weights format."""


class Unset:
    pass


UNSET = Unset()


def detect_format(path: str | os.PathLike[str]) -> ModelFormat:
    """The weights format of a file (by extension) or a folder (a Hugging Face model dir)."""
    source = Path(path)
    if source.is_dir():
        if (source / HF_CONFIG).is_file():
            return "huggingface"
        raise UnknownFormat(
            f"{source} is a folder without {HF_CONFIG}; only Hugging Face model folders "
            "can be imported as folders",
            status=422,
            code="invalid_request",
        )
    if not source.exists():
        raise LocalPathError(f"cannot read {source}: no such file or folder", code="not_found")
    suffix = source.suffix.lower()
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in PYTORCH_SUFFIXES:
        return "pytorch"
    if suffix == ".onnx":
        return "onnx"
    raise UnknownFormat(
        f"cannot tell the format of {source.name}: expected .safetensors, "
        f"{', '.join(PYTORCH_SUFFIXES)}, .onnx, or a Hugging Face model folder",
        status=422,
        code="invalid_request",
    )


class ModelsAPI:
    def __init__(self, t: Transport) -> None:
        self._t = t

    # -- reading -----------------------------------------------------------------------------

    def list(self) -> builtins.list[ModelOut]:
        return [ModelOut.model_validate(m) for m in pages(self._t, "/v1/models")]

    def get(self, name: str) -> ModelOut:
        return ModelOut.model_validate(self._t.json("GET", f"/v1/models/{segment(name)}"))

    def versions(self, name: str) -> builtins.list[ModelVersionOut]:
        items = pages(self._t, f"/v1/models/{segment(name)}/versions")
        return [ModelVersionOut.model_validate(v) for v in items]

    def version(self, name: str, version: VersionRef = "latest") -> ModelVersionOut:
        path = f"/v1/models/{segment(name)}/versions/{segment(version)}"
        return ModelVersionOut.model_validate(self._t.json("GET", path))

    def files(self, name: str, version: VersionRef = "latest") -> builtins.list[ModelFileOut]:
        items = pages(self._t, f"/v1/models/{segment(name)}/versions/{segment(version)}/files")
        return [ModelFileOut.model_validate(f) for f in items]

    # -- changing ----------------------------------------------------------------------------

    def update(
        self,
        name: str,
        *,
        description: str | None = None,
        gates: Sequence[MetricGate | dict[str, Any]] | None = None,
        must_beat_production: MustBeat | dict[str, Any] | Unset | None = UNSET,
    ) -> ModelOut:
        """Change the description or gates; ``must_beat_production=None`` clears that rule."""
        body: dict[str, Any] = {}
        if description is not None:
            body["description"] = description
        if gates is not None:
            body["gates"] = [MetricGate.model_validate(g).model_dump() for g in gates]
        if not isinstance(must_beat_production, Unset):
            body["must_beat_production"] = (
                None
                if must_beat_production is None
                else MustBeat.model_validate(must_beat_production).model_dump()
            )
        data = self._t.json("PATCH", f"/v1/models/{segment(name)}", json=body)
        return ModelOut.model_validate(data)

    def register(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        format: ModelFormat = "gureum",
        recipe: str | None = None,
        params: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        dataset: str | None = None,
        job_id: str | None = None,
        code_hash: str | None = None,
        message: str = "",
        description: str | None = None,
        progress: Progress | None = None,
    ) -> ModelVersionOut:
        """Upload a file or folder of model files and register them as a new version."""
        source = Path(path)
        files = scan(source)
        if not files:
            raise LocalPathError(f"{source} holds no files to register", code="bad_request")
        for f in files:
            try:
                check_relative_path(f.path)
            except ValueError as exc:
                raise LocalPathError(
                    f"cannot register {f.path!r}: {exc}", code="invalid_request"
                ) from exc
        hashed = BlobUploader(self._t, progress).upload(files)
        body: dict[str, Any] = {
            "files": [
                FileEntry(path=f.path, sha256=f.sha256, size=f.size).model_dump() for f in hashed
            ],
            "format": format,
            "recipe": recipe,
            "params": params or {},
            "metrics": metrics or {},
            "dataset": dataset,
            "job_id": job_id,
            "code_hash": code_hash,
            "message": message,
            "description": description,
        }
        body = {k: v for k, v in body.items() if v is not None}
        data = self._t.json(
            "POST", f"/v1/models/{segment(name)}/versions", json=body, extensions=PUSH_TIMEOUT
        )
        return ModelVersionOut.model_validate(data)

    def import_weights(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        message: str = "",
        description: str | None = None,
        progress: Progress | None = None,
    ) -> ModelVersionOut:
        """Register external weights (safetensors, PyTorch, ONNX, Hugging Face folder) as-is."""
        fmt = detect_format(path)
        return self.register(
            name, path, format=fmt, message=message, description=description, progress=progress
        )

    def promote(
        self, name: str, version: VersionRef, stage: Stage, *, force: bool = False
    ) -> PromoteOut:
        """Move a version to a stage; to production only through the model's gates."""
        path = f"/v1/models/{segment(name)}/versions/{segment(version)}/promote"
        data = self._t.json("POST", path, json={"stage": stage, "force": force})
        return PromoteOut.model_validate(data)
