"""The model registry in the SDK: register and import versions, read them, gate and promote."""

from __future__ import annotations

import builtins
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gureum.client import hub
from gureum.client.base import Transport, VersionRef, pages, segment
from gureum.client.datasets import PUSH_TIMEOUT
from gureum.client.errors import BadRequestError
from gureum.client.jobs import WaitTimeout
from gureum.client.upload import BlobUploader, LocalPathError, Progress, scan
from gureum.schemas.catalog import CatalogEntry
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
from gureum.schemas.validations import ValidationOut

PYTORCH_SUFFIXES = (".pt", ".pth", ".bin")
HF_CONFIG = "config.json"
DIFFUSERS_INDEX = "model_index.json"  # a diffusers pipeline folder (image-lora's base)


class UnknownFormat(BadRequestError):
    """`import` was pointed at something that is not a known weights format."""


class Unset:
    pass


UNSET = Unset()


def detect_format(path: str | os.PathLike[str]) -> ModelFormat:
    """The weights format of a file (by extension) or a folder (a Hugging Face model dir)."""
    source = Path(path)
    if source.is_dir():
        if (source / HF_CONFIG).is_file() or (source / DIFFUSERS_INDEX).is_file():
            return "huggingface"
        raise UnknownFormat(
            f"{source} is a folder without {HF_CONFIG} or {DIFFUSERS_INDEX}; only Hugging Face "
            "model folders (transformers or diffusers) can be imported as folders",
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
        """Register external weights (safetensors, PyTorch, ONNX, Hugging Face folder) as-is.

        ``hf://ORG/MODEL[@REVISION]`` pulls the folder from the Hugging Face hub first
        (safetensors, config and tokenizer files only); ``hub.HubError`` when it cannot."""
        if hub.is_hub_ref(path):
            with hub.pulled(str(path)) as folder:
                note = message or str(path)
                return self.import_weights(
                    name, folder, message=note, description=description, progress=progress
                )
        fmt = detect_format(path)
        return self.register(
            name, path, format=fmt, message=message, description=description, progress=progress
        )

    def import_predictor(
        self,
        name: str,
        weights: str | os.PathLike[str],
        predictor_dir: str | os.PathLike[str],
        *,
        message: str = "",
        progress: Progress | None = None,
        timeout_s: float = 1800.0,
    ) -> ModelVersionOut:
        """Register ``weights`` (a file or folder) with the ``gureum.serve.Predictor`` in
        ``predictor_dir`` that serves them (``client.predictor_import``): a script job on the
        cluster exports its schemas in the sandbox; returns the new version."""
        from gureum.client.datasets import DatasetsAPI
        from gureum.client.jobs import JobsAPI
        from gureum.client.predictor_import import import_predictor

        done = import_predictor(
            DatasetsAPI(self._t),
            JobsAPI(self._t),
            name,
            Path(weights),
            Path(predictor_dir),
            message=message,
            progress=progress,
            timeout_s=timeout_s,
        )
        model, _, version = str(done.model_version).rpartition(":")
        return self.version(model, int(version))

    def promote(
        self, name: str, version: VersionRef, stage: Stage, *, force: bool = False
    ) -> PromoteOut:
        """Move a version to a stage; to production only through the model's gates."""
        path = f"/v1/models/{segment(name)}/versions/{segment(version)}/promote"
        data = self._t.json("POST", path, json={"stage": stage, "force": force})
        return PromoteOut.model_validate(data)

    # -- validation ----------------------------------------------------------------------------

    def validate(
        self,
        name: str,
        version: VersionRef = "latest",
        *,
        sample_inputs: Sequence[Any] | None = None,
        count: int | None = None,
        wait: bool = True,
        timeout_s: float | None = 600.0,
        poll_s: float = 1.0,
    ) -> ValidationOut:
        """Load the version and smoke-test it on the cluster, as a deploy's first replica does:
        on ``sample_inputs``, else ``count`` inputs (16 by default) from the validation split
        of its dataset. With ``wait``, returns the finished report (passed or failed)."""
        body: dict[str, Any] = {}
        if sample_inputs is not None:
            body["sample_inputs"] = list(sample_inputs)
        if count is not None:
            body["count"] = count
        path = f"/v1/models/{segment(name)}/versions/{segment(version)}/validate"
        report = ValidationOut.model_validate(self._t.json("POST", path, json=body))
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while wait and report.state in ("pending", "running"):
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(
                    f"{name}:{report.version} is still being validated after {timeout_s:g} s",
                    code="timeout",
                )
            time.sleep(poll_s)
            report = self.validation(name, report.version)
        return report

    def validation(self, name: str, version: VersionRef = "latest") -> ValidationOut:
        """The version's newest validation report (of a deploy or of :meth:`validate`)."""
        path = f"/v1/models/{segment(name)}/versions/{segment(version)}/validation"
        return ValidationOut.model_validate(self._t.json("GET", path))

    def catalog(self) -> builtins.list[CatalogEntry]:
        """What this workspace can deploy: its servable versions, the recipes whose trained
        models serve and the formats that serve once imported, with what a replica needs."""
        return [CatalogEntry.model_validate(e) for e in self._t.json("GET", "/v1/catalog")]
