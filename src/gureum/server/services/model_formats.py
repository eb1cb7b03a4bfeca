"""Checks that a new model version's files are what its ``format`` says, before it is recorded.

One function per format, in ``CHECKS``: a format without one is taken as it is. Each reads only
what it needs from the uploaded blobs and never runs anything in them: a safetensors header is
JSON, an ONNX file is parsed as protobuf (no operator runs, no external data is read). A refusal
is a 422 with the reason, so ``gureum models import`` says why a file is not a model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from gureum.recipes import hf_folder, image_lora_params
from gureum.schemas.datasets import FileEntry
from gureum.schemas.models import VersionCreate
from gureum.server.errors import Unprocessable
from gureum.storage.store import ArtifactStore

SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024
PYTORCH_SUFFIXES = (".pt", ".pth", ".bin")
# Protobuf's limit on one message: a larger ONNX file needs external data, which is refused.
ONNX_MAX_BYTES = 2 * 1024**3 - 1
Check = Callable[[ArtifactStore, int, VersionCreate], None]


class NotAModel(Unprocessable):
    """The files are not in the format the version names (the API's ``invalid_request``)."""


def check_format(store: ArtifactStore, workspace_id: int, body: VersionCreate) -> None:
    """422 unless the files are what ``body.format`` says."""
    check = CHECKS.get(body.format)
    if check is not None:
        check(store, workspace_id, body)


def _with_suffix(body: VersionCreate, suffixes: tuple[str, ...]) -> list[FileEntry]:
    """The files ending in one of ``suffixes``; 422 when there are none."""
    matching = [f for f in body.files if f.path.lower().endswith(suffixes)]
    if not matching:
        raise NotAModel(
            f"format {body.format!r} needs a file ending in {' or '.join(suffixes)}",
            details={"paths": [f.path for f in body.files][:100]},
        )
    return matching


# -- huggingface --------------------------------------------------------------------------


def check_huggingface(store: ArtifactStore, workspace_id: int, body: VersionCreate) -> None:
    huggingface_recipe(store, workspace_id, body)


def huggingface_recipe(store: ArtifactStore, workspace_id: int, body: VersionCreate) -> str:
    """The recipe that serves a Hugging Face folder, by the task its ``config.json`` names
    (``recipes.hf_folder``: read as bounded JSON, nothing of the folder runs); 422 with the
    reason for a folder the platform does not serve without code."""
    config = next((f for f in body.files if f.path == hf_folder.CONFIG), None)
    index = next((f for f in body.files if f.path == image_lora_params.MODEL_INDEX), None)
    if config is None and index is not None:
        return _diffusers_recipe(store, workspace_id, body, index)
    if config is None:
        raise NotAModel(
            "a huggingface model directory needs a config.json (a transformers model) or a "
            "model_index.json (a diffusers pipeline) at its root"
        )
    try:
        if config.size > hf_folder.MAX_CONFIG_BYTES:
            raise hf_folder.NotHuggingFace(
                f"config.json is {config.size} bytes; at most {hf_folder.MAX_CONFIG_BYTES}"
            )
        with store.open_blob(workspace_id, config.sha256) as fh:
            data = hf_folder.read_config(fh.read(hf_folder.MAX_CONFIG_BYTES + 1))
        return hf_folder.task_of(data, [f.path for f in body.files])
    except hf_folder.NotHuggingFace as exc:
        raise NotAModel(
            f"not a Hugging Face model served without code: {exc}",
            details={"reason": str(exc)},
        ) from None


def _diffusers_recipe(
    store: ArtifactStore, workspace_id: int, body: VersionCreate, index: FileEntry
) -> str:
    """A diffusers (Stable-Diffusion-format) folder: its ``model_index.json`` read as bounded
    JSON, every weight file safetensors; served (and LoRA-tuned) by image-lora."""
    try:
        if index.size > hf_folder.MAX_CONFIG_BYTES:
            raise hf_folder.NotHuggingFace(f"model_index.json is {index.size} bytes; too large")
        with store.open_blob(workspace_id, index.sha256) as fh:
            raw = fh.read(hf_folder.MAX_CONFIG_BYTES + 1)
        data = hf_folder.read_config(raw)
        return image_lora_params.check_diffusers(data, [f.path for f in body.files])
    except hf_folder.NotHuggingFace as exc:
        reason = str(exc).replace(hf_folder.CONFIG, image_lora_params.MODEL_INDEX)
        raise NotAModel(
            f"not a diffusers pipeline served without code: {reason}", details={"reason": reason}
        ) from None


# -- safetensors --------------------------------------------------------------------------


def _safetensors_ok(store: ArtifactStore, workspace_id: int, sha256: str) -> bool:
    """A safetensors file starts with a little-endian u64 header length and a JSON header."""
    with store.open_blob(workspace_id, sha256) as fh:
        head = fh.read(8)
        if len(head) != 8:
            return False
        n = int.from_bytes(head, "little")
        if n <= 0 or n > SAFETENSORS_MAX_HEADER:
            return False
        try:
            header = json.loads(fh.read(n))
        except ValueError:
            return False
    return isinstance(header, dict)


def check_safetensors(store: ArtifactStore, workspace_id: int, body: VersionCreate) -> None:
    matching = _with_suffix(body, (".safetensors",))
    bad = [f.path for f in matching if not _safetensors_ok(store, workspace_id, f.sha256)]
    if bad:
        raise NotAModel(
            f"{bad[0]} is not a safetensors file (no valid header)", details={"paths": bad}
        )


def check_pytorch(store: ArtifactStore, workspace_id: int, body: VersionCreate) -> None:
    _with_suffix(body, PYTORCH_SUFFIXES)


# -- onnx ---------------------------------------------------------------------------------


def check_onnx(store: ArtifactStore, workspace_id: int, body: VersionCreate) -> None:
    """Every ``.onnx`` file parses as an ONNX model, passes onnx's checker and keeps all its
    weights inside itself (external data would be read from paths the file names)."""
    for f in _with_suffix(body, (".onnx",)):
        reason = _onnx_problem(store, workspace_id, f)
        if reason is not None:
            raise NotAModel(
                f"{f.path} is not a usable ONNX model: {reason}",
                details={"path": f.path, "reason": reason},
            )


def _onnx_problem(store: ArtifactStore, workspace_id: int, f: FileEntry) -> str | None:
    import onnx  # a second or so to import: only when an ONNX file is registered
    from onnx.external_data_helper import uses_external_data

    if f.size > ONNX_MAX_BYTES:
        return (
            "over 2 GiB, so its weights must be external data, which is not supported; "
            "serve it through a predictor"
        )
    try:
        with store.open_blob(workspace_id, f.sha256) as fh:
            model = onnx.load_model(fh, load_external_data=False)
    except Exception as exc:  # protobuf's decode errors vary by backend; the file is at fault
        return f"it does not parse as ONNX protobuf ({_short(exc)})"
    if not model.HasField("graph") or not model.opset_import:
        return "it holds no graph or no opset (not an ONNX model file)"
    external = [t.name or "(unnamed)" for t in _tensors(model) if uses_external_data(t)]
    if external:
        return (
            f"its tensors {', '.join(external[:5])} are stored as external data, which is "
            "not supported; save the model with its weights inside the .onnx file"
        )
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx.checker.ValidationError and the C++ checker's errors
        return f"onnx's checker refused it ({_short(exc)})"
    return None


def _tensors(model: Any) -> Iterator[Any]:
    """Every tensor a model holds: initializers and attribute values of its graphs, subgraphs
    and functions."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _attribute_tensors(node)


def _graph_tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _attribute_tensors(node)


def _attribute_tensors(node: Any) -> Iterator[Any]:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for graph in attr.graphs:
            yield from _graph_tensors(graph)


def _short(exc: Exception) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


CHECKS: dict[str, Check] = {
    "huggingface": check_huggingface,
    "safetensors": check_safetensors,
    "pytorch": check_pytorch,
    "onnx": check_onnx,
}
