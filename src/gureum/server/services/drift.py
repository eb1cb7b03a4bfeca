"""Drift: an endpoint's live inputs against the data its model was trained on.

Live inputs are the endpoint's captured calls in a window (a sample of its traffic: capture
must be on), compared with the training split of the dataset version the served (primary)
model was trained on. Tabular models get PSI and KS per feature and data-quality checks
(schema violations, missing and out-of-range values); image classifiers colour, brightness and
embedding statistics; text generators prompt lengths in characters and tokens (see
drift_stats). Below MIN_SAMPLES live samples there is no verdict.

The training data does not change, so its statistics are kept in memory per dataset version
(a small LRU); the live side is read on every call. Viewers may read the answer: it holds
numbers and column names, never a customer's values.
"""

from __future__ import annotations

import csv
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gureum.schemas.drift import (
    DriftHistoryOut,
    DriftOut,
    DriftPoint,
    DriftQuality,
    DriftReference,
    FeatureDrift,
)
from gureum.server.auth import Principal
from gureum.server.db.session import Database
from gureum.server.db.tables import Dataset, DatasetFile, DatasetVersion, Model, ModelVersion
from gureum.server.db.tables_capture import CapturedRequest
from gureum.server.db.tables_serving import Endpoint
from gureum.server.errors import NotFound, Unprocessable
from gureum.server.services import drift_data as data
from gureum.server.services import drift_stats as stats
from gureum.server.services.curate import target_column
from gureum.server.services.endpoints import config_of, find_endpoint
from gureum.storage.store import ArtifactStore

DEFAULT_WINDOW_S = 86_400
MIN_SAMPLES = 50
RECIPES = ("tabular", "image-classifier", "text-generator")
REFERENCE_CACHE = 16
# Unknown column names reported at most, each cut to this length.
MAX_UNKNOWN = 20
NAME_CHARS = 64

Reference = stats.TableReference | stats.PictureReference | stats.TextReference


@dataclass(frozen=True)
class _Trained:
    """A reference's statistics and its size."""

    stats: Reference
    samples: int
    total: int


class _References:
    """Training data statistics per (database, dataset version, recipe), least recently used
    dropped first. Versions never change, so an entry never goes stale."""

    def __init__(self, size: int = REFERENCE_CACHE) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, int, str], _Trained] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int, str]) -> _Trained | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: tuple[str, int, str], value: _Trained) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


REFERENCES = _References()


@dataclass(frozen=True)
class _Plan:
    """Everything drift needs from the database, read in one transaction."""

    endpoint: str
    workspace_id: int
    capturing: bool
    model: str
    recipe: str
    target: str
    drop: frozenset[str]
    version_id: int
    dataset: str
    split: dict[str, Any]
    files: list[data.TrainingFile]
    records: Sequence[data.Record]
    since: datetime
    until: datetime


def _limit(recipe: str) -> int:
    return data.PICTURE_SAMPLE if recipe == "image-classifier" else data.LIVE_CALLS


def _records(
    s: Session, endpoint_id: int, since: datetime, until: datetime | None, limit: int
) -> list[data.Record]:
    """The newest ``limit`` captured calls with inputs from ``since`` (to ``until``: none for
    the latest window, so a replica's clock a little ahead still counts); only the columns
    drift reads (whole rows cost several times as much to load)."""
    c = CapturedRequest
    where = [c.endpoint_id == endpoint_id, c.has_inputs.is_(True), c.time >= since]
    if until is not None:
        where.append(c.time < until)
    rows = s.execute(
        select(c.request_id, c.route, c.object, c.line)
        .where(*where)
        .order_by(c.time.desc(), c.request_id)
        .limit(limit)
    )
    return list(rows.all())


def _plan(
    s: Session, store: ArtifactStore, ep: Endpoint, window_s: int, read_records: bool = True
) -> _Plan:
    served = s.get(ModelVersion, ep.version_id)
    assert served is not None  # an endpoint's version cannot be deleted (RESTRICT)
    recipe = served.recipe or ""
    if recipe not in RECIPES:
        raise Unprocessable(
            f"drift is measured for {', '.join(RECIPES)} endpoints; {ep.name!r} serves a "
            f"{recipe or 'model without a recipe'}"
        )
    if served.dataset_version_id is None:
        raise Unprocessable(
            "the served model names no dataset it was trained on: there is nothing to compare "
            "its live inputs with"
        )
    dv = s.get(DatasetVersion, served.dataset_version_id)
    if dv is None:  # pragma: no cover - RESTRICT keeps a model's dataset version
        raise NotFound("the dataset version the served model was trained on is gone")
    dataset = s.scalar(select(Dataset.name).where(Dataset.id == dv.dataset_id))
    model = s.scalar(select(Model.name).where(Model.id == served.model_id))
    files = [
        data.TrainingFile(f.path, f.sha256, f.kind, f.split)
        for f in s.scalars(
            select(DatasetFile).where(DatasetFile.version_id == dv.id).order_by(DatasetFile.path)
        )
    ]
    until = datetime.now(UTC)
    since = until - timedelta(seconds=window_s)
    records = _records(s, ep.id, since, None, _limit(recipe)) if read_records else []
    drop = served.params.get("drop") if isinstance(served.params.get("drop"), list) else []
    return _Plan(
        endpoint=ep.name,
        workspace_id=ep.workspace_id,
        capturing=config_of(ep).rate > 0,
        model=f"{model}:{served.version}",
        recipe=recipe,
        target=target_column(s, store, ep.workspace_id, served) if recipe == "tabular" else "",
        drop=frozenset(str(c) for c in drop or ()),
        version_id=dv.id,
        dataset=f"{dataset}:{dv.version}",
        split=dict(dv.split),
        files=files,
        records=records,
        since=since,
        until=until,
    )


def _reference(db: Database, store: ArtifactStore, plan: _Plan) -> _Trained:
    key = (db.url, plan.version_id, plan.recipe)
    cached = REFERENCES.get(key)
    if cached is not None:
        return cached
    ws, files, split = plan.workspace_id, plan.files, plan.split
    ref: Reference
    if plan.recipe == "tabular":
        try:
            rows, columns = data.training_rows(store, ws, files, split)
        except csv.Error as exc:
            raise Unprocessable(f"{plan.dataset}: a table is not valid CSV: {exc}") from None
        ref, size = stats.table_reference(rows.items, columns), (len(rows.items), rows.total)
    elif plan.recipe == "image-classifier":
        pictures = data.training_pictures(store, ws, files, split)
        decoded = stats.pictures(pictures.items)
        ref, size = stats.picture_reference(decoded), (decoded.count, pictures.total)
    else:
        texts = data.training_texts(store, ws, files, split)
        ref, size = stats.text_reference(texts.items), (len(texts.items), texts.total)
    if not size[0]:
        raise Unprocessable(f"{plan.dataset} holds no training data for a {plan.recipe} model")
    trained = _Trained(ref, *size)
    REFERENCES.put(key, trained)
    return trained


def _live(store: ArtifactStore, plan: _Plan) -> tuple[list[Any], int]:
    """The live samples of the window (bounded) and how many calls held them."""
    calls = data.captured_inputs(store, plan.workspace_id, plan.records)
    samples: list[Any]
    if plan.recipe == "tabular":
        samples = data.live_rows(calls)
    elif plan.recipe == "image-classifier":
        samples = data.live_pictures(calls)
    else:
        samples = data.live_prompts(calls)
    limit = data.PICTURE_SAMPLE if plan.recipe == "image-classifier" else data.LIVE_CALLS
    return data.bounded(samples, limit), len(calls)


def _compare(ref: Reference, plan: _Plan, samples: list[Any]) -> stats.Drift:
    if isinstance(ref, stats.TableReference):
        return stats.table_drift(ref, samples, skip={plan.target, *plan.drop} - {""})
    if isinstance(ref, stats.PictureReference):
        return stats.picture_drift(ref, stats.pictures(samples))
    return stats.text_drift(ref, samples)


def _quality(q: stats.Quality) -> DriftQuality:
    unknown = sorted(q.unknown_columns.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_UNKNOWN]
    return DriftQuality(
        samples=q.samples,
        schema_violations=q.schema_violations,
        not_rows=q.not_rows,
        unknown_columns={k[:NAME_CHARS]: n for k, n in unknown},
        invalid_values=dict(q.invalid_values),
        undecodable_share=q.undecodable_share,
        empty_share=q.empty_share,
    )


def _drift(db: Database, store: ArtifactStore, plan: _Plan, window_s: int) -> DriftOut:
    trained = _reference(db, store, plan)
    samples, calls = _live(store, plan)
    result = _compare(trained.stats, plan, samples) if samples else None
    enough = len(samples) >= MIN_SAMPLES
    score = result.score if enough and result is not None else None
    if not enough:
        message = f"not enough captured calls ({len(samples)} of {MIN_SAMPLES})"
        if not plan.capturing:
            message += f"; capture is off: `gureum endpoints capture {plan.endpoint} --rate R`"
    else:
        worst = max(result.features, key=lambda f: f.psi) if result and result.features else None
        message = (
            f"{stats.verdict(score)}: largest PSI {score:.3f} ({worst.name})"
            if score is not None and worst is not None
            else "no feature to compare"
        )
    return DriftOut(
        endpoint=plan.endpoint,
        model=plan.model,
        recipe=plan.recipe,
        window_s=window_s,
        since=plan.since,
        until=plan.until,
        captured_calls=calls,
        samples=len(samples),
        min_samples=MIN_SAMPLES,
        enough=enough,
        score=score,
        verdict=stats.verdict(score) if score is not None else None,
        message=message,
        reference=DriftReference(
            dataset=plan.dataset, samples=trained.samples, total=trained.total
        ),
        features=[FeatureDrift.model_validate(f) for f in result.features]
        if enough and result is not None
        else [],
        quality=_quality(result.quality) if result is not None else DriftQuality(),
    )


def endpoint_drift(
    db: Database,
    store: ArtifactStore,
    principal: Principal,
    name: str,
    window_s: int = DEFAULT_WINDOW_S,
) -> DriftOut:
    """The endpoint's drift over the last ``window_s`` seconds (viewer role)."""
    principal.require("viewer")
    with db.read() as s:
        plan = _plan(s, store, find_endpoint(s, principal.workspace_id, name), window_s)
    return _drift(db, store, plan, window_s)


def compute(
    db: Database, store: ArtifactStore, endpoint_name: str, window_s: int = DEFAULT_WINDOW_S
) -> DriftOut:
    """The same answer for the control plane's own use (metrics, pipeline triggers): by the
    endpoint's name, which is unique across workspaces."""
    with db.read() as s:
        ep = s.scalar(select(Endpoint).where(Endpoint.name == endpoint_name))
        if ep is None:
            raise NotFound(f"no endpoint {endpoint_name!r}")
        plan = _plan(s, store, ep, window_s)
    return _drift(db, store, plan, window_s)


def drift_score(
    db: Database, store: ArtifactStore, endpoint_name: str, window_s: int = DEFAULT_WINDOW_S
) -> float | None:
    """The largest feature PSI of the window (what a pipeline's ``--on-drift THRESHOLD``
    compares), or None when there are too few captured calls to say."""
    return compute(db, store, endpoint_name, window_s).score


# -- history ------------------------------------------------------------------------------------

DEFAULT_BUCKETS = 24
MAX_BUCKETS = 48
MIN_BUCKET_S = 60
# Captured calls read per bucket at most (the newest of each): the whole history reads about
# as many as one report does.
HISTORY_CALLS = 2_000
HISTORY_PICTURES = 250
# Features whose PSI each point carries: those that drifted most over the history.
HISTORY_FEATURES = 6


def _point(
    store: ArtifactStore, plan: _Plan, trained: _Trained
) -> tuple[DriftPoint, dict[str, float]]:
    samples, calls = _live(store, plan)
    result = _compare(trained.stats, plan, samples) if len(samples) >= MIN_SAMPLES else None
    psi = {f.name: round(f.psi, 4) for f in result.features} if result is not None else {}
    score = result.score if result is not None else None
    point = DriftPoint(
        since=plan.since,
        until=plan.until,
        captured_calls=calls,
        samples=len(samples),
        score=score,
        verdict=stats.verdict(score) if score is not None else None,
    )
    return point, psi


def endpoint_history(
    db: Database,
    store: ArtifactStore,
    principal: Principal,
    name: str,
    window_s: int = DEFAULT_WINDOW_S,
    buckets: int = DEFAULT_BUCKETS,
) -> DriftHistoryOut:
    """The drift score of ``buckets`` consecutive windows covering the last ``window_s``
    seconds, oldest first (viewer role). Computed on demand: each bucket reads its newest
    HISTORY_CALLS captured calls, so the cost is bounded whatever the traffic; the training
    statistics are the report's (cached)."""
    principal.require("viewer")
    buckets = max(1, min(buckets, MAX_BUCKETS, window_s // MIN_BUCKET_S))
    step = timedelta(seconds=window_s / buckets)
    with db.read() as s:
        ep = find_endpoint(s, principal.workspace_id, name)
        plan = _plan(s, store, ep, window_s, read_records=False)
        per_bucket = HISTORY_PICTURES if plan.recipe == "image-classifier" else HISTORY_CALLS
        spans = [
            (plan.until - (buckets - i) * step, plan.until - (buckets - i - 1) * step)
            for i in range(buckets)
        ]
        chunks = [
            _records(s, ep.id, lo, None if i == buckets - 1 else hi, per_bucket)
            for i, (lo, hi) in enumerate(spans)
        ]
    trained = _reference(db, store, plan)
    points: list[DriftPoint] = []
    psis: list[dict[str, float]] = []
    for (lo, hi), records in zip(spans, chunks, strict=True):
        point, psi = _point(store, replace(plan, records=records, since=lo, until=hi), trained)
        points.append(point)
        psis.append(psi)
    worst: dict[str, float] = {}
    for psi in psis:
        for k, v in psi.items():
            worst[k] = max(worst.get(k, 0.0), v)
    keep = sorted(worst, key=lambda k: (-worst[k], k))[:HISTORY_FEATURES]
    for point, psi in zip(points, psis, strict=True):
        point.features = {k: psi[k] for k in keep if k in psi}
    return DriftHistoryOut(
        endpoint=plan.endpoint,
        model=plan.model,
        recipe=plan.recipe,
        window_s=window_s,
        bucket_s=round(step.total_seconds()),
        min_samples=MIN_SAMPLES,
        calls_per_bucket=per_bucket,
        reference=DriftReference(
            dataset=plan.dataset, samples=trained.samples, total=trained.total
        ),
        points=points,
    )
