"""`datasets curate`: the next dataset version from an endpoint's captured calls and feedback.

The calls (filtered by period, rating and labels) are turned into files in the shape the
endpoint's recipe trains on (see curate_rules), merged with a base version, and committed as a
new version whose ``source`` names the endpoint, period, filters and counts. The base's files
keep their split, and every curated file is training data (``train_only`` in the split
record): the held-out side stays the base's, fixed and free of captured data. Only records
that exist when it runs are read, so a consumer forgotten or records past retention never
reach a version made later. Nothing is committed when anything fails; blobs written for a
failed curation are removed again when nothing else uses them.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.orm import Session

from gureum.config import Settings
from gureum.datasets.scan import Entry
from gureum.schemas.datasets import CurateRequest, VersionOut
from gureum.server.auth import Principal
from gureum.server.db.session import Database
from gureum.server.db.tables import (
    Dataset,
    DatasetFile,
    DatasetVersion,
    Model,
    ModelFile,
    ModelVersion,
)
from gureum.server.db.tables_capture import CapturedRequest
from gureum.server.errors import NotFound, Unprocessable
from gureum.server.services import curate_rules as rules
from gureum.server.services.blobs import collect_garbage
from gureum.server.services.capture import merged_feedback, parse_line, read_lines_at
from gureum.server.services.dataset_push import PushOptions, commit_version, scan_entries
from gureum.server.services.datasets import resolve_version
from gureum.server.services.endpoints import find_endpoint
from gureum.storage.store import ArtifactStore

RECIPES = ("tabular", "image-classifier", "text-generator", "image-generator")
# A generator learns only from outputs its consumers rated at least this well by default.
GENERATOR_MIN_RATING = 4
READ_CHUNK = 5000


def _utc(t: datetime | None) -> datetime | None:
    if t is None:
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _base(s: Session, workspace_id: int, ref: str | None, served: ModelVersion) -> DatasetVersion:
    if ref is not None:
        name, _, number = ref.partition(":")
        return resolve_version(s, workspace_id, name, number or "latest")
    if served.dataset_version_id is None:
        raise Unprocessable(
            "the served model names no dataset it was trained on; give a base (--base NAME:V)"
        )
    base = s.get(DatasetVersion, served.dataset_version_id)
    if base is None:
        raise NotFound("the dataset version the served model was trained on is gone")
    return base


def target_column(s: Session, store: ArtifactStore, workspace_id: int, served: ModelVersion) -> str:
    """A tabular model's target column: from its training parameters, else from the
    ``config.json`` the recipe saved with it."""
    if served.params.get("target"):
        return str(served.params["target"])
    sha = s.scalar(
        select(ModelFile.sha256).where(
            ModelFile.version_id == served.id, ModelFile.path == "config.json"
        )
    )
    if sha is None:
        return ""
    try:
        with store.open_blob(workspace_id, sha) as fh:
            config = json.loads(fh.read(1 << 20))
    except (OSError, ValueError):
        return ""
    return str(config.get("target") or "") if isinstance(config, dict) else ""


def _located(s: Session, ep: Any, body: CurateRequest) -> Sequence[Row[str, str, str, int]]:
    """Where the endpoint's captured calls in the period are, in the order they were made:
    the four columns curation reads, as plain rows (the ORM's per-row loading cost as much as
    the rows' reading)."""
    stmt = select(
        CapturedRequest.request_id,
        CapturedRequest.route,
        CapturedRequest.object,
        CapturedRequest.line,
    ).where(CapturedRequest.endpoint_id == ep.id, CapturedRequest.has_inputs.is_(True))
    since, until = _utc(body.since), _utc(body.until)
    if since is not None:
        stmt = stmt.where(CapturedRequest.time >= since)
    if until is not None:
        stmt = stmt.where(CapturedRequest.time < until)
    order = stmt.order_by(CapturedRequest.time, CapturedRequest.request_id)
    return s.connection().execute(order).all()


def _records(
    s: Session, store: ArtifactStore, ep: Any, body: CurateRequest
) -> Iterator[rules.Captured]:
    """The endpoint's captured calls in the period with their feedback, filtered."""
    located = _located(s, ep, body)
    feedback = merged_feedback(s, ep)  # one query for all of them, not one per call
    read = _reader(store, ep.workspace_id)
    min_rating, labelled_only = body.min_rating, body.labelled_only
    for i in range(0, len(located), READ_CHUNK):
        chunk = located[i : i + READ_CHUNK]
        where = [(obj, number) for _, _, obj, number in chunk]
        lines = read_lines_at(store, ep.workspace_id, where)
        for (request_id, route, _, _), at in zip(chunk, where, strict=True):
            raw = lines.get(at)
            line = parse_line(raw) if raw is not None else None
            if raw is None or line is None:
                continue
            given, answer = line.get("input"), line.get("output")
            if b'"$' in raw:  # blob references or escaped keys: resolve them
                given, answer = rules.resolve(given, read), rules.resolve(answer, read)
            f = feedback.get(request_id)
            if f is None:
                rec = rules.Captured(request_id, route, given, answer)
            else:
                rec = rules.Captured(request_id, route, given, answer, f.rating, f.label, f.target)
            if min_rating is not None and (rec.rating or 0) < min_rating:
                continue
            if labelled_only and rec.correction is None:
                continue
            yield rec


class _Counted:
    """The calls a rule reads, counted as they pass."""

    def __init__(self, records: Iterator[rules.Captured]) -> None:
        self._records = records
        self.n = 0

    def __iter__(self) -> Iterator[rules.Captured]:
        for rec in self._records:
            self.n += 1
            yield rec


def _reader(store: ArtifactStore, workspace_id: int) -> rules.ReadBlob:
    def read(sha256: str) -> bytes:
        with store.open_blob(workspace_id, sha256) as fh:
            return fh.read()

    return read


def curate(
    db: Database,
    store: ArtifactStore,
    settings: Settings,
    principal: Principal,
    name: str,
    body: CurateRequest,
    *,
    run: dict[str, Any] | None = None,
) -> VersionOut:
    """``run``: the pipeline run curating, recorded in the version's source (how a resumed
    run finds the version it made)."""
    principal.require("developer")
    ws = principal.workspace_id
    with db.read() as s:
        ep = find_endpoint(s, ws, body.from_endpoint)
        served = s.get(ModelVersion, ep.version_id)
        assert served is not None  # an endpoint's version cannot be deleted (RESTRICT)
        recipe = served.recipe or ""
        if recipe not in RECIPES:
            raise Unprocessable(
                f"curation makes training data for {', '.join(RECIPES)}; the endpoint serves "
                f"a {recipe or 'model without a recipe'}"
            )
        if recipe == "image-generator" and body.min_rating is None:
            body = body.model_copy(update={"min_rating": GENERATOR_MIN_RATING})
        base = _base(s, ws, body.base, served)
        base_name = s.scalar(select(Dataset.name).where(Dataset.id == base.dataset_id))
        stored = s.scalars(select(DatasetFile).where(DatasetFile.version_id == base.id)).all()
        base_files = [rules.BaseFile(f.path, f.sha256, f.kind, f.label, f.split) for f in stored]
        sizes = {f.path: f.size for f in stored}
        target = target_column(s, store, ws, served)
        model = s.scalar(select(Model.name).where(Model.id == served.model_id))
        model_label = f"{model}:{served.version}"
        label = f"{base_name}:{base.version}"
        base_split = dict(base.split)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        path = f"captured/{ep.name}-{stamp}"
        # Streamed through the rule (100,000 calls need not be held at once, and holding
        # their parsed values made the collector scan them again and again).
        records = _Counted(_records(s, store, ep, body))
        read = _reader(store, ws)
        collecting = gc.isenabled()
        gc.disable()  # a bulk build of acyclic values: the cycle collector only slows it down
        try:
            if recipe == "tabular":
                curated = rules.tabular(records, base_files, read, target, f"{path}.csv")
            elif recipe == "image-classifier":
                curated = rules.image_classifier(records, base_files)
            elif recipe == "text-generator":
                curated = rules.text_generator(records, base_files, read, f"{path}.jsonl")
            else:
                curated = rules.image_generator(records, base_files, body.max_generated_share)
        except rules.CurateError as e:
            raise Unprocessable(f"{label}: {e}") from None
        finally:
            if collecting:
                gc.enable()
    if not curated.files:
        raise Unprocessable(
            f"no captured call of {ep.name!r} matches (records read {records.n}, duplicates "
            f"{curated.duplicates}, left out {curated.skipped}); nothing was made",
            details={"records": records.n, "duplicates": curated.duplicates},
        )
    written = [
        (p, store.write_blob(ws, [data], max_bytes=settings.max_file_bytes))
        for p, data in curated.files.items()
    ]
    new_paths = {p for p, _ in written}
    entries = [Entry(f.path, f.sha256, sizes[f.path]) for f in base_files]
    entries += [Entry(p, info.sha256, info.size) for p, info in written]
    source = {
        "kind": "curated",
        "endpoint": ep.name,
        "model": model_label,
        "recipe": recipe,
        "since": body.since.isoformat() if body.since else None,
        "until": body.until.isoformat() if body.until else None,
        "filters": {"min_rating": body.min_rating, "labelled_only": body.labelled_only},
        "base": label,
        "records": records.n,
        "records_used": curated.used,
        "samples_added": curated.samples,
        "duplicates_dropped": curated.duplicates,
        "left_out": curated.skipped,
        "files_added": sorted(new_paths),
    }
    if run is not None:
        source["pipeline_run"] = run
    opts = PushOptions(
        message=body.message or f"curated from endpoint {ep.name} on {label}",
        validation_ratio=float(base_split.get("validation_ratio", 0.2)),
        seed=int(base_split.get("seed", 0)),
        source=source,
    )
    try:
        result = scan_entries(store, settings, ws, entries, opts)
        splits = {f.path: f.split for f in base_files}
        for f in result.files:
            f.split = splits.get(f.path, "train")  # the base's sides; curated files train
        validation = sum(f.split == "validation" for f in result.files)
        split = {k: v for k, v in base_split.items() if k not in ("train", "validation")}
        if split.get("unit") != "row":
            split.update(train=len(result.files) - validation, validation=validation)
        split["train_only"] = sorted(new_paths)
        result.split = split
        return commit_version(db, store, principal, name, result, opts)
    except BaseException:
        collect_garbage(db, store, ws, [info.sha256 for _, info in written])
        raise
