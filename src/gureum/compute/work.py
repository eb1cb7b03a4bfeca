"""What one worker of a job does on the cluster: fetch its inputs, run the recipe, store outputs.

The same function runs as a plain Ray task (one worker) and inside every Ray Train worker
(data-parallel); only rank 0 stores outputs. Inputs come from the content-addressed store
(hard-linked when the store is a local folder, so a large dataset is not copied per attempt),
outputs go back to it as blobs the control plane then registers.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, cast

import torch

from gureum.compute import sandbox
from gureum.compute.runtime import CheckpointStore, ClusterRunContext, Reporter, Send
from gureum.compute.samples import SamplePublisher
from gureum.compute.spec import BlobFile, JobSpec
from gureum.config import default_home
from gureum.datasets.readers import TABLE_EXTENSIONS, extension, table_rows
from gureum.recipes.base import BadInput, Cancelled, Recipe
from gureum.recipes.dataset import LocalDataset
from gureum.recipes.predictor import NAME as PREDICTOR
from gureum.recipes.registry import get_recipe, train_and_evaluate
from gureum.recipes.script import ScriptRecipe
from gureum.recipes.specs import spec_of
from gureum.serving.predictor_pool import PredictorPool, PredictorRecipe, fault_error
from gureum.serving.predictor_protocol import CODE_DIR, PredictorManifest
from gureum.serving.predictor_sandbox import attach
from gureum.serving.units import ModelFault
from gureum.storage.store import ArtifactStore

MAX_OUTPUT_BYTES = 1 << 40
PREDICTIONS = "predictions.jsonl"


def workdir_for(spec: JobSpec, rank: int) -> Path:
    root = Path(tempfile.gettempdir()) / "gureum-jobs"
    path = root / f"{spec.job_id}-{spec.attempt}-r{rank}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def fetch(store: ArtifactStore, workspace_id: int, files: list[BlobFile], dest: Path) -> None:
    """Materialise blobs as files under ``dest`` (hard links from a local store)."""
    for f in files:
        target = dest / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        local = store.local_path(workspace_id, f.sha256)
        if local is not None:
            try:
                os.link(local, target)
                continue
            except OSError:
                pass  # another filesystem: copy below
        with store.open_blob(workspace_id, f.sha256) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)


def upload(store: ArtifactStore, workspace_id: int, root: Path, prefix: str = "") -> list[BlobFile]:
    """Every file under ``root`` as a blob; paths relative to ``root``, under ``prefix``."""
    out = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        with open(path, "rb") as fh:
            info = store.write_blob(
                workspace_id, iter(lambda: fh.read(1 << 20), b""), max_bytes=MAX_OUTPUT_BYTES
            )
        rel = path.relative_to(root).as_posix()
        out.append(BlobFile(path=prefix + rel, sha256=info.sha256, size=info.size))
    return out


def _recipe(spec: JobSpec, workdir: Path, store: ArtifactStore, ranks: int = 1) -> Recipe[Any]:
    if spec.recipe == PREDICTOR:  # a script job's own predictor: sandboxed workers
        forbidden = script_policy(spec, store, ranks).forbidden
        return cast("Recipe[Any]", PredictorRecipe(forbidden))
    if spec.recipe != "script":
        return get_recipe(spec.recipe)
    code_dir = workdir / "code"
    fetch(store, spec.workspace_id, spec.code_files, code_dir)
    return ScriptRecipe().with_code(code_dir, script_policy(spec, store, ranks))


def script_policy(spec: JobSpec, store: ArtifactStore, ranks: int) -> sandbox.Policy:
    """How this attempt's user code runs: all ``ranks`` in one sandbox, bounded by the job's
    memory; a rank of a job spread over nodes (``ranks`` 1 of several workers) needs the host
    network, which only unsandboxed code may have."""
    forbidden = [default_home()] + ([Path(store.root)] if store.is_local else [])
    limits = sandbox.Limits(memory_bytes=sandbox.memory_limit(spec.resources.memory_gb, ranks))
    return sandbox.Policy(
        limits=limits,
        ranks=ranks,
        cpus=spec.resources.cpus,
        unsandboxed_ok=spec.unsandboxed_ok,
        host_network=spec.workers > 1 and ranks == 1,
        forbidden=tuple(forbidden),
        secrets=tuple(spec.secrets.items()),
    )


def batch_inputs(spec: JobSpec, ds: LocalDataset | None) -> tuple[list[str], list[Any]]:
    """(what each input is, the inputs) for a batch prediction: ``params.inputs`` when given,
    else every image (raw bytes), table row or text line of the dataset."""
    given = spec.params.get("inputs")
    if given is not None:
        if not isinstance(given, list):
            raise BadInput("params.inputs must be a list")
        return [f"inputs[{i}]" for i in range(len(given))], list(given)
    if ds is None:
        raise BadInput("a batch prediction needs a dataset or params.inputs")
    names: list[str] = []
    inputs: list[Any] = []
    for f in ds.files:
        path = ds.path(f)
        if f.kind == "image":
            names.append(f.path)
            inputs.append(path.read_bytes())
        elif f.kind == "table":
            with open(path, "rb") as fh:
                rows = list(table_rows(fh, TABLE_EXTENSIONS.get(extension(f.path), ",")))
            names += [f"{f.path}#{i}" for i in range(len(rows))]
            inputs += rows
        elif f.kind == "text":
            lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
            names += [f"{f.path}:{i + 1}" for i in range(len(lines))]
            inputs += lines
    return names, inputs


def execute(
    spec: JobSpec, send: Send, rank: int = 0, device: str | None = None, ranks: int = 1
) -> dict[str, Any]:
    """Run one worker of an attempt; rank 0's return value is the attempt's result. ``ranks``
    > 1: a script job's ranks all run here, in one sandbox (see ``supervisor.one_node``)."""
    # Workers are reused across jobs: size torch's thread pool to this job's CPUs, not the
    # first job's the process ran.
    torch.set_num_threads(max(1, int(spec.resources.cpus)))
    workdir = workdir_for(spec, rank)
    store = ArtifactStore(spec.artifacts)
    reporter = Reporter(send)
    ctx = ClusterRunContext(
        reporter,
        CheckpointStore(store, spec.workspace_id, spec.job_id),
        workdir,
        device=device or ("cuda" if spec.resources.gpus > 0 else "cpu"),
        rank=rank,
    )
    # Rank 0's sample grids show on the job page as they are written (compute/samples.py).
    samples = SamplePublisher(store, spec.workspace_id, ctx.artifacts_dir, reporter.add)
    if rank == 0 and spec.kind == "train":
        samples.start()
    try:
        ds = None
        if spec.dataset is not None:
            files = [BlobFile.model_validate(f) for f in spec.dataset["files"]]
            fetch(store, spec.workspace_id, files, workdir / "data")
            ds = LocalDataset.from_manifest(workdir / "data", spec.dataset)
        for i, (ref, model) in enumerate(spec.models.items()):  # e.g. a LoRA base model
            fetch(store, spec.workspace_id, model, workdir / "models" / str(i))
            ctx.models[ref] = workdir / "models" / str(i)
        recipe = _recipe(spec, workdir, store, ranks)
        if spec.kind == "train":
            result = _train(ctx, spec, recipe, ds)
        else:
            model_dir = workdir / "model"
            fetch(store, spec.workspace_id, spec.model_files, model_dir)
            result = _evaluate(ctx, spec, recipe, model_dir, ds) if spec.kind == "evaluate" else {}
            if spec.kind == "predict":
                result = _predict(ctx, spec, recipe, model_dir, ds)
        if rank == 0:
            result["outputs"] = [
                f.model_dump() for f in upload(store, spec.workspace_id, ctx.artifacts_dir)
            ]
        return result
    finally:
        samples.close()
        reporter.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _train(
    ctx: ClusterRunContext, spec: JobSpec, recipe: Recipe[Any], ds: LocalDataset | None
) -> dict[str, Any]:
    data = ds if ds is not None else LocalDataset.empty(ctx.artifacts_dir.parent / "data")
    job = train_and_evaluate(ctx, recipe, spec.params, data)
    model_dir = job.train.model_dir
    register = not isinstance(recipe, ScriptRecipe) or recipe.registered(model_dir)
    model_files: list[BlobFile] = []
    predictor = None
    if register and model_dir.is_dir() and isinstance(recipe, ScriptRecipe):
        predictor = _attach_predictor(ctx, spec, recipe, model_dir)
    if register and model_dir.is_dir():
        model_files = upload(ArtifactStore(spec.artifacts), spec.workspace_id, model_dir)
        if predictor is not None:  # the code the version serves: the job's own blobs
            model_files += [
                f.model_copy(update={"path": f"{CODE_DIR}/{f.path}"}) for f in spec.code_files
            ]
        # The model's files travel as the version's files, not again as job outputs.
        shutil.rmtree(model_dir, ignore_errors=True)
    return {
        "metrics": job.evaluation.metrics if job.evaluation else job.train.metrics,
        "details": job.evaluation.details if job.evaluation else {},
        "params": job.params,
        "epochs_run": job.train.epochs_run,
        "resumed_from_epoch": job.train.resumed_from_epoch,
        "register": register and bool(model_files),
        "model_files": [f.model_dump() for f in model_files],
        "predictor": predictor is not None,
    }


def _attach_predictor(
    ctx: ClusterRunContext, spec: JobSpec, recipe: ScriptRecipe, model_dir: Path
) -> PredictorManifest | None:
    """When the job's code folder holds a predictor: its manifest, exported in the sandbox
    and written into the model's folder (``serving.predictor_sandbox.attach``)."""
    if recipe.code_dir is None or recipe.policy is None:
        return None
    return attach(
        recipe.code_dir,
        model_dir,
        [(f.path, f.sha256) for f in spec.code_files],
        forbidden=recipe.policy.forbidden,
        memory_bytes=recipe.policy.limits.memory_bytes,
        log_line=ctx.log,
    )


def _evaluate(
    ctx: ClusterRunContext,
    spec: JobSpec,
    recipe: Recipe[Any],
    model_dir: Path,
    ds: LocalDataset | None,
) -> dict[str, Any]:
    if ds is None:
        raise BadInput("an evaluation needs a dataset")
    served = spec_of(recipe.name)
    if served is not None and not served.trainable:  # a table's truth column: the job names it
        out = recipe.evaluate(ctx, model_dir, ds, spec.params)  # type: ignore[call-arg]
    else:
        out = recipe.evaluate(ctx, model_dir, ds)
    return {"metrics": out.metrics, "details": out.details}


def _predict(
    ctx: ClusterRunContext,
    spec: JobSpec,
    recipe: Recipe[Any],
    model_dir: Path,
    ds: LocalDataset | None,
) -> dict[str, Any]:
    names, inputs = batch_inputs(spec, ds)
    ctx.log(f"predicting {len(inputs)} inputs")
    predictor = recipe.load(model_dir, ctx.device)
    if isinstance(predictor, PredictorPool):  # JSON only: an image's bytes go as base64
        inputs = [base64.b64encode(x).decode() if isinstance(x, bytes) else x for x in inputs]
    batch = int(spec.params.get("batch_size", 64))
    try:
        with open(ctx.artifacts_dir / PREDICTIONS, "w", encoding="utf-8") as out:
            for start in range(0, len(inputs), batch):
                if ctx.should_stop():
                    raise Cancelled("stopped during batch prediction")
                chunk = inputs[start : start + batch]
                for name, pred in zip(names[start:], predictor.predict(chunk), strict=False):
                    out.write(json.dumps({"input": name, "output": pred}) + "\n")
                ctx.progress(1, min(start + batch, len(inputs)), len(inputs))
    except ModelFault as exc:
        raise fault_error(exc) from None
    finally:
        if isinstance(predictor, PredictorPool):
            predictor.close()
    return {"metrics": {"predictions": float(len(inputs))}, "details": {}}
