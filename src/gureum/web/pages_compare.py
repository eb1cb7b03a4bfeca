"""Runs side by side: ``/jobs/compare?ids=a,b,c`` shows 2 to 4 jobs' parameters, their final
metrics in one table (the best value of each marked), their metric curves overlaid (one chart
per metric, one series per run, drawn by ``static/compare.js`` from the REST API) and their
latest sample grids next to each other. The URL is the comparison: it can be shared.

The jobs list's checkboxes submit ``ids`` once per job; a model's versions compare by the jobs
that trained them (``versions=NAME:1,NAME:2``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, TypeGuard

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from sqlalchemy import select

from gureum.schemas.jobs import JobOut, JobOutputOut
from gureum.server.db.session import Database
from gureum.server.db.tables import JobOutput
from gureum.server.errors import ApiError
from gureum.server.services import jobs as job_svc
from gureum.server.services import models as model_svc
from gureum.web.pages import SignedIn
from gureum.web.render import error_page, page

router = APIRouter(include_in_schema=False)
MIN_RUNS, MAX_RUNS = 2, 4
# Raw query values taken at most (each may hold several comma-separated ids).
MAX_VALUES = 16
MAX_VALUE_CHARS = 400
Ids = Annotated[list[str] | None, Query()]
# Metrics where less is better; any other is taken as "more is better".
LOWER_IS_BETTER = re.compile(
    r"loss|error|err$|mse|mae|rmse|fid|kid|mmd|perplexity|bits_per_dim|bpd|nll|elbo|latency|time",
    re.I,
)
MAX_SAMPLES = 2000
IMAGE = re.compile(r"\.(png|jpe?g|gif|webp)$", re.I)
EPOCH_GRID = re.compile(r"(?:^|/)epoch-(\d+)\.(?:png|jpe?g|gif|webp)$", re.I)


@dataclass(frozen=True)
class Run:
    """One compared job as the page shows it."""

    job: JobOut
    grid: JobOutputOut | None  # its latest sample grid
    grid_caption: str


class _Refused(Exception):
    """Bad input, said on an error page with its status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _split(values: list[str] | None) -> list[str]:
    """Ids from ``a,b`` and from repeated values, in order, each once."""
    seen: list[str] = []
    for value in (values or [])[:MAX_VALUES]:
        if len(value) > MAX_VALUE_CHARS:
            raise _Refused(422, f"A value of ids or versions is over {MAX_VALUE_CHARS} characters.")
        for part in value.split(","):
            part = part.strip()
            if part and part not in seen:
                seen.append(part)
    return seen


def numeric(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def lower_is_better(metric: str) -> bool:
    return bool(LOWER_IS_BETTER.search(metric))


def metric_rows(jobs: list[JobOut]) -> list[tuple[str, list[Any], int | None]]:
    """A row per numeric final metric: its values per job and which one is best (an index,
    None when fewer than two runs have it or all are equal)."""
    names = sorted({k for j in jobs for k, v in j.metrics.items() if numeric(v)})
    rows: list[tuple[str, list[Any], int | None]] = []
    for name in names:
        values = [j.metrics.get(name) for j in jobs]
        have = [(i, float(v)) for i, v in enumerate(values) if numeric(v)]
        best: int | None = None
        if len(have) >= 2 and len({v for _, v in have}) > 1:
            pick = min if lower_is_better(name) else max
            best = pick(have, key=lambda iv: iv[1])[0]
        rows.append((name, values, best))
    return rows


def param_rows(jobs: list[JobOut]) -> list[tuple[str, list[str], bool]]:
    """A row per parameter: its value per job (as text, "—" where unset) and whether they differ."""
    names = sorted({k for j in jobs for k in j.params})
    rows = []
    for name in names:
        values = [str(j.params[name]) if name in j.params else "—" for j in jobs]
        rows.append((name, values, len(set(values)) > 1))
    return rows


def latest_grid(outputs: list[JobOutputOut]) -> tuple[JobOutputOut | None, str]:
    """The grid to show for a run: the final ``samples/all.png`` when there is one, else the
    grid of the latest epoch, else the first picture under ``samples/``."""
    pictures = [o for o in outputs if o.path.startswith("samples/") and IMAGE.search(o.path)]
    final = next((o for o in pictures if o.path == "samples/all.png"), None)
    if final is not None:
        return final, "final samples"
    epochs = [(int(m.group(1)), o) for o in pictures if (m := EPOCH_GRID.search(o.path))]
    if epochs:
        number, grid = max(epochs, key=lambda eo: eo[0])
        return grid, f"epoch {number}"
    return (pictures[0], pictures[0].path) if pictures else (None, "")


def _samples(db: Database, job_id: str) -> list[JobOutputOut]:
    """The pictures a job (already found in the workspace) left under ``samples/``, whatever
    other outputs it has."""
    with db.read() as s:
        rows = s.scalars(
            select(JobOutput)
            .where(JobOutput.job_id == job_id, JobOutput.path.startswith("samples/"))
            .order_by(JobOutput.path)
            .limit(MAX_SAMPLES)
        )
        return [JobOutputOut.model_validate(r) for r in rows]


def _versions_to_jobs(request: Request, signed: SignedIn, refs: list[str]) -> list[str]:
    """The jobs that trained model versions ``NAME:V`` (404 in words for one no job trained)."""
    ids = []
    for ref in refs:
        name, _, number = ref.rpartition(":")
        if not name or not number:
            raise _Refused(422, f"{ref[:80]!r} is not a model version (NAME:VERSION).")
        v = model_svc.get_version(request.app.state.db, signed.principal, name[:128], number[:32])
        if not v.job_id:
            raise _Refused(404, f"{name}:{v.version} was uploaded, not trained by a job here.")
        ids.append(v.job_id)
    return ids


@router.get("/jobs/compare")
def compare(request: Request, signed: SignedIn, ids: Ids = None, versions: Ids = None) -> Response:
    db = request.app.state.db
    try:
        wanted = _split(ids) + _split(_versions_to_jobs(request, signed, _split(versions)))
        wanted = list(dict.fromkeys(wanted))
        if len(wanted) < MIN_RUNS or len(wanted) > MAX_RUNS:
            raise _Refused(
                422,
                f"Pick {MIN_RUNS} to {MAX_RUNS} runs to compare; "
                f"{'only ' if len(wanted) < MIN_RUNS else ''}{len(wanted)} "
                f"{'was' if len(wanted) == 1 else 'were'} given.",
            )
        runs = []
        for job_id in wanted:
            if len(job_id) > 64:
                raise _Refused(404, f"There is no job {job_id[:64]!r}… in this workspace.")
            job = job_svc.get_job(db, signed.principal, job_id)
            grid, caption = latest_grid(_samples(db, job.id))
            runs.append(Run(job, grid, caption))
    except _Refused as exc:
        return error_page(request, signed, exc.status, exc.message)
    except ApiError as exc:
        message = exc.message
        if exc.status == 404 and message.startswith("no job"):
            message = f"There is {message} (compare takes the ids of this workspace's jobs)."
        return error_page(request, signed, exc.status, message)
    jobs = [r.job for r in runs]
    metrics = metric_rows(jobs)
    return page(
        request,
        "compare.html",
        signed,
        title="Compare " + ", ".join(j.id for j in jobs),
        nav="jobs",
        runs=runs,
        params=param_rows(jobs),
        metrics=metrics,
        lower=[n for n, _, _ in metrics if lower_is_better(n)],
        link="/jobs/compare?ids=" + ",".join(j.id for j in jobs),
    )
