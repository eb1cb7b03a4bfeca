"""`gureum models import NAME WEIGHTS --predictor DIR`: weights (safetensors, a state dict, a
folder) and the ``gureum.serve.Predictor`` that serves them, registered the way a script job
registers its own predictor. The weights become a dataset version, a script job with the
predictor folder copies them into its model and registers it; so the predictor's schemas are
exported inside the sandbox, its requirements installed as for any script job, and the version
records where its files came from (that dataset version and the job)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from gureum.client.datasets import DatasetsAPI
from gureum.client.errors import GureumError
from gureum.client.jobs import JobsAPI
from gureum.client.upload import LocalPathError, Progress
from gureum.schemas.jobs import SCRIPT_RECIPE, JobOut

ENTRYPOINT = "gureum_import.py"
COPY = '''"""Written by `gureum models import --predictor`: the weights (this job's dataset) become
the model's files; registering exports the predictor's schemas inside the sandbox."""

import shutil

import gureum.run as run

source = run.data_dir()
for f in sorted(source.rglob("*")):
    if f.is_file():
        dest = run.model_dir() / f.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dest)
run.register_model()
'''


class ImportFailed(GureumError):
    """The import's job did not register a version; the message says why."""


def import_predictor(
    datasets: DatasetsAPI,
    jobs: JobsAPI,
    name: str,
    weights: str | Path,
    predictor_dir: str | Path,
    *,
    message: str = "",
    progress: Progress | None = None,
    timeout_s: float = 1800.0,
) -> JobOut:
    """Push ``weights``, run the registering job and return it once it succeeded."""
    code, source = Path(predictor_dir), Path(weights)
    if not (code / "predictor.py").is_file():
        raise LocalPathError(f"{code} has no predictor.py (a gureum.serve.Predictor)")
    if (code / ENTRYPOINT).exists():
        raise LocalPathError(f"{code} holds {ENTRYPOINT}, the name the import's job runs")
    if not source.exists():
        raise LocalPathError(f"{source} does not exist")
    pushed = datasets.push(
        f"{name}-weights",
        source,
        message=message or f"weights of model {name}",
        validation_ratio=0.0,
        progress=progress,
    )
    with tempfile.TemporaryDirectory(prefix="gureum-import-") as tmp:
        folder = Path(tmp) / "code"
        shutil.copytree(code, folder)
        (folder / ENTRYPOINT).write_text(COPY)
        job = jobs.train(
            SCRIPT_RECIPE,
            f"{pushed.dataset}:{pushed.version}",
            model=name,
            code_dir=folder,
            entrypoint=ENTRYPOINT,
            progress=progress,
        )
    done = jobs.wait(job.id, poll_s=0.5, timeout_s=timeout_s)
    if done.state != "succeeded" or not done.model_version:
        logs, _ = jobs.logs(job.id)
        tail = "\n".join(logs.splitlines()[-15:])
        raise ImportFailed(
            f"the import's job {job.id} {done.state}: {done.error or 'no version registered'}"
            + (f"\n{tail}" if tail else ""),
            code="import_failed",
        )
    return done
