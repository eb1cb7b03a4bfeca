"""Makes Ray Serve run what the endpoints table says, and watches what runs.

A reconciliation loop: each tick reads Ray Serve's application states, applies endpoints whose
desired state changed, promotes a rolled-out version once it has loaded (or drops it with the
reason when it fails to), rolls back canaries that breach their limits, and records the
replica-seconds every endpoint used; now and then (``capture_sweep_interval_s``) it erases
captured calls past their endpoint's retention. Restarting it at any time is safe: Ray Serve
keeps the replicas, and a re-applied application with an unchanged version is left running.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from gureum.compute.spec import BlobFile
from gureum.config import Settings
from gureum.schemas.endpoints import EndpointConfig, ReplicaCounts
from gureum.server.controllers.loop import ControlLoop, Looped, each
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables import Model, ModelVersion
from gureum.server.db.tables_serving import Endpoint
from gureum.server.services import capture_erasure, costs, prewarm, validations
from gureum.server.services.budget_enforce import held_autoscaling
from gureum.server.services.endpoint_stats import judge_canary
from gureum.server.services.endpoints import (
    add_event,
    changed,
    drop_canary,
    endpoint_token,
    promote_canary,
)
from gureum.server.services.jobs import model_files
from gureum.serving.backend import AppSpec, AppState, Route, ServingBackend, app_name
from gureum.serving.spec import ModelRef, ReplicaSpec, Role, TrafficConfig
from gureum.storage.store import ArtifactStore

log = logging.getLogger(__name__)
TICK_S = 1.0
JUDGE_EVERY_S = 5.0
METER_EVERY_S = 15.0
RUNNING = "RUNNING"
FAILED = frozenset({"DEPLOY_FAILED", "UNHEALTHY"})
# An application in these states may not list its deployment (and so its user_config) yet.
IN_TRANSIT = frozenset({"NOT_STARTED", "DEPLOYING", "DELETING"})
OWNER_CHARS = 16
FOLLOW_S = 1.0


def app_names(endpoint_id: int) -> dict[Role, str]:
    """Serve application names come from the endpoint's id: a user-chosen name could be another
    endpoint's canary (``x--canary``) or the router."""
    return {r: app_name(endpoint_id, r) for r in ("primary", "canary", "shadow")}


def owner(ep: Endpoint) -> str:
    """What an endpoint's applications record besides its id: a stored fingerprint unique to
    this endpoint of this control plane (an id alone repeats after a database is replaced)."""
    return ep.token_hash[:OWNER_CHARS]


class EndpointController(Looped):
    def __init__(
        self, db: Database, backend: ServingBackend, settings: Settings, secret: bytes
    ) -> None:
        self.db, self.backend, self.settings, self.secret = db, backend, settings, secret
        self.states: dict[str, AppState] = {}
        self.loop = ControlLoop("endpoint-controller", self.tick, TICK_S)
        self.loop.on_term = self.take_over
        self._judged = 0.0
        self._metered_at: dict[int, datetime] = {}
        self._last_meter = time.monotonic()
        self.store = ArtifactStore(settings.resolved_artifacts)
        self._swept: float | None = None  # the first tick sweeps: restarts never postpone it
        self._routes: dict[str, Route] | None = None
        # endpoint name -> (id, owner), from the last tick: live() is asked by name.
        self._known: dict[str, tuple[int, str]] = {}
        # Applications this controller applied: its own while Ray Serve does not yet report
        # what they record (a new application lists its deployment a moment later).
        self._applied: set[str] = set()
        self._followed = 0.0
        self.prewarm = prewarm.Prewarmer(db)

    @property
    def data_url(self) -> str:
        return self.backend.data_url

    def take_over(self) -> None:
        """At the start of each term: route and sweep at the first tick, and meter from it on
        (another leader may have metered meanwhile: never bill its time twice)."""
        self._routes, self._swept = None, None
        self._metered_at.clear()
        self._applied.clear()

    def live(self, name: str) -> ReplicaCounts:
        self._follow()
        return self._counts(name)

    def _counts(self, name: str) -> ReplicaCounts:
        """Replicas running for ``name`` as the last look at Ray Serve saw them (no I/O)."""
        known = self._known.get(name)
        if known is None:
            return ReplicaCounts()
        own = self._own(*known)
        counts = {r: (own[a].running if a in own else 0) for r, a in app_names(known[0]).items()}
        return ReplicaCounts(**counts)

    def _follow(self) -> None:
        """A server that does not lead ticks nothing: it reads what runs itself (at most
        once a second) to answer for the endpoints' replicas all the same."""
        gate = self.loop.gate
        if gate is None or gate.epoch is not None:  # leading (or between ticks of a term)
            return
        now = time.monotonic()
        if now - self._followed < FOLLOW_S:
            return
        self._followed = now
        try:
            self.states = self.backend.states()
            self._known = self._read_known()
        except Exception:
            log.warning("cannot read Ray Serve's applications", exc_info=True)

    def _read_known(self) -> dict[str, tuple[int, str]]:
        with self.db.read() as s:
            rows = s.execute(select(Endpoint.id, Endpoint.name, Endpoint.token_hash)).all()
        return {r.name: (r.id, r.token_hash[:OWNER_CHARS]) for r in rows}

    def _own(self, ep_id: int, fingerprint: str) -> dict[str, AppState]:
        """The applications Ray Serve runs for this endpoint: those named for it whose
        recorded endpoint id and owner match. Any other application under one of its names is
        not adopted, not counted and not deleted."""
        out = {}
        for name in app_names(ep_id).values():
            st = self.states.get(name)
            if st is None:
                continue
            if (st.endpoint_id, st.owner) == (ep_id, fingerprint) or (
                _unrecorded(st) and name in self._applied
            ):
                out[name] = st
        return out

    def _others(self, ep_id: int, own: dict[str, AppState]) -> tuple[list[str], list[str]]:
        """Applications under the endpoint's names that are not its own: those that record
        another endpoint (or none, settled), and those that do not say yet (in transit)."""
        foreign: list[str] = []
        unknown: list[str] = []
        for name in app_names(ep_id).values():
            st = self.states.get(name)
            if st is None or name in own:
                continue
            in_transit = _unrecorded(st) and st.status in IN_TRANSIT
            (unknown if in_transit else foreign).append(name)
        return foreign, unknown

    def tick(self) -> None:
        self.states = self.backend.states()
        self._known = self._read_known()
        self._retire_legacy(list(self._known))
        ids = [ep_id for ep_id, _ in self._known.values()]
        each(ids, self._reconcile_one, "reconciling endpoint", self._failed)
        self._route()
        now = time.monotonic()
        if now - self._judged >= JUDGE_EVERY_S:
            self._judged = now
            self._judge()
        if now - self._last_meter >= METER_EVERY_S:
            self._last_meter = now
            self._meter()
        if self._swept is None or now - self._swept >= self.settings.capture_sweep_interval_s:
            self._swept = now
            self._sweep_captured()
        self.prewarm.step()

    # -- desired state -> Ray Serve ----------------------------------------------------------

    def _reconcile(self, ep_id: int) -> None:
        with self.db.read() as s:
            ep = s.get(Endpoint, ep_id)
            if ep is None:
                return
            generation = ep.generation
            apps = app_names(ep.id)
            fingerprint = owner(ep)
            deleting = ep.state == "deleting"
            wanted = {apps["primary"]}
            wanted |= {apps["canary"]} if ep.canary_version_id else set()
            wanted |= {apps["shadow"]} if ep.shadow_version_id else set()
            own = self._own(ep.id, fingerprint)
            # Also when Ray Serve lost an application (a restarted cluster): apply it again.
            pending = ep.generation != ep.applied_generation or (
                not deleting and not wanted <= own.keys()
            )
            specs = self._specs(s, ep) if pending and not deleting else {}
        foreign, unknown = self._others(ep_id, own)
        if pending and not deleting and foreign:
            # Applying would replace an application this endpoint did not make (another
            # control plane's, or one left by an earlier database): refuse, and say so.
            raise ForeignApp(
                f"Ray Serve runs {', '.join(foreign)}, which is not this endpoint's "
                "(its recorded endpoint differs); it is left alone: delete it from Ray Serve "
                "to deploy this endpoint"
            )
        if pending and not deleting and unknown:
            return  # wait until Ray Serve says whose they are
        if pending:
            for role, app in apps.items():
                if role in specs:
                    self.backend.apply(specs[role])
                    self._applied.add(app)
                elif app in own:
                    self.backend.delete(app)
                    self._applied.discard(app)
            with self.db.write() as s:
                ep = s.get(Endpoint, ep_id)
                if ep is not None and ep.generation == generation:
                    ep.applied_generation = generation
            return
        if deleting:
            if not own:
                capture_erasure.erase_endpoint(self.db, self.store, ep_id)
                with self.db.write() as s:
                    ep = s.get(Endpoint, ep_id)
                    if ep is not None and ep.state == "deleting":
                        s.delete(ep)
            return
        self._observe(ep_id, apps, own)

    def _specs(self, s: Session, ep: Endpoint) -> dict[Role, AppSpec]:
        config = EndpointConfig.model_validate(ep.config)
        apps = app_names(ep.id)
        token = endpoint_token(self.secret, ep)
        versions: dict[Role, int | None] = {
            "primary": ep.version_id,
            "canary": ep.canary_version_id,
            "shadow": ep.shadow_version_id,
        }
        out: dict[Role, AppSpec] = {}
        for role, version_id in versions.items():
            if version_id is None:
                continue
            primary = role == "primary"
            traffic = TrafficConfig(
                model=_model_ref(s, version_id),
                canary_percent=ep.canary_percent if primary and ep.canary_version_id else 0.0,
                canary_app=apps["canary"] if primary and ep.canary_version_id else None,
                shadow_app=apps["shadow"] if primary and ep.shadow_version_id else None,
                max_batch_size=config.batching.max_batch_size,
                max_wait_ms=config.batching.max_wait_ms,
                max_streams_per_key=config.max_streams_per_key,
                endpoint_id=ep.id,
                owner=owner(ep),
                # Shadows take no customer traffic: not validated.
                validation=None if role == "shadow" else validations.spec_for(s, ep, version_id),
            )
            out[role] = AppSpec(
                name=apps[role],
                route_prefix=f"/v1/endpoints/{ep.name}" if primary else None,
                replica=self._replica(ep, role, token, config),
                traffic=traffic,
                resources=config.resources,
                # Held at its minimum while the workspace's budget is exceeded.
                autoscaling=prewarm.autoscaling(
                    s, ep, held_autoscaling(s, ep.workspace_id, config.autoscaling), primary
                ),
            )
        return out

    def _replica(self, ep: Endpoint, role: Role, token: str, config: EndpointConfig) -> ReplicaSpec:
        return ReplicaSpec(
            endpoint=ep.name,
            endpoint_id=ep.id,
            workspace_id=ep.workspace_id,
            role=role,
            artifacts=self.settings.resolved_artifacts,
            control_url=self.settings.resolved_control_url,
            token=token,
            spool_dir=str(self.settings.serving_dir / "spool"),
            max_request_bytes=config.max_request_bytes,
            scales_to_zero=config.autoscaling.min_replicas == 0,
            threads=max(1, int(config.resources.cpus)),
        )

    def _note_error(self, ep_id: int, message: str) -> None:
        with self.db.write() as s:
            ep = s.get(Endpoint, ep_id)
            if ep is not None and ep.message != message:
                ep.message = message
                add_event(s, ep, "error", message)

    def _retire_legacy(self, names: list[str]) -> None:
        """Applications an earlier gureum named after endpoint names hold their routes (Ray
        Serve gives a route prefix to one application): remove them, so that the ``ep-<id>``
        applications can take over. Only gureum endpoint applications (a TrafficConfig without
        an endpoint id in their user_config) named for an existing endpoint are removed."""
        for name in names:
            for app, route in (
                (name, f"/v1/endpoints/{name}"),
                (f"{name}--canary", None),
                (f"{name}--shadow", None),
            ):
                st = self.states.get(app)
                if st is None or not st.legacy or st.status == "DELETING":
                    continue
                if route is not None and st.route_prefix not in (route, None):
                    continue
                log.warning("removing Serve application %s, named by an earlier gureum", app)
                self.backend.delete(app)

    def _route(self) -> None:
        with self.db.read() as s:
            rows = s.execute(
                select(Endpoint.id, Endpoint.name, Endpoint.config, Endpoint.state)
            ).all()
        routes = {}
        for r in rows:
            if r.state == "deleting":
                continue
            config = EndpointConfig.model_validate(r.config)
            routes[r.name] = Route(
                app_name(r.id), config.cold_start_timeout_s, config.max_request_bytes
            )
        if routes != self._routes:
            self.backend.route(routes)
            self._routes = routes

    # -- what runs -> endpoint state -----------------------------------------------------------

    def _observe(self, ep_id: int, apps: dict[Role, str], own: dict[str, AppState]) -> None:
        primary = own.get(apps["primary"])
        canary = own.get(apps["canary"])
        with self.db.write() as s:
            ep = s.get(Endpoint, ep_id)
            if ep is None or ep.generation != ep.applied_generation or ep.state == "deleting":
                return
            if ep.canary_version_id is not None and canary is not None:
                if ep.rollout == "promote" and canary.status == RUNNING:
                    promote_canary(s, ep, "rollout", "it started and loaded")
                    ep.message = ""
                    return
                if canary.status in FAILED:
                    self._drop_failed(s, ep, canary)
                    return
            state, message = _state(primary)
            if state == "deploying" and ep.state == "failed":
                return  # it failed validation: Ray Serve retrying its replica does not undo that
            if state == "deploying" and ep.state in ("ready", "updating"):
                state = "updating"
            if ep.rollout == "promote" and state == "ready":
                state = "updating"
            if state != ep.state:
                if state == "ready" and ep.state == "deploying":
                    add_event(s, ep, "ready", "serving")
                if state == "failed":
                    add_event(s, ep, "failed", message)
                    ep.message = message
                ep.state = state

    def _drop_failed(self, s: Session, ep: Endpoint, canary: AppState) -> None:
        failed = s.scalar(
            select(ModelVersion.version).where(ModelVersion.id == ep.canary_version_id)
        )
        current = s.scalar(select(ModelVersion.version).where(ModelVersion.id == ep.version_id))
        what = "deploy" if ep.rollout == "promote" else "canary"
        message = (
            f"{what} of version {failed} failed: {canary.message.strip()[:2000]}; "
            f"version {current} keeps serving"
        )
        drop_canary(ep)
        add_event(s, ep, "failed", message, version=failed)
        ep.message = message
        changed(ep)

    # -- canary judge and cost -------------------------------------------------------------------

    def _judge(self) -> None:
        with self.db.read() as s:
            ids = list(
                s.scalars(
                    select(Endpoint.id).where(
                        Endpoint.canary_version_id.is_not(None),
                        Endpoint.rollout.is_(None),
                        Endpoint.canary_percent > 0,
                    )
                )
            )
        for ep_id in ids:
            with self.db.write() as s:
                ep = s.get(Endpoint, ep_id)
                if ep is None or ep.canary_version_id is None or ep.canary_started_at is None:
                    continue
                verdict = judge_canary(s, ep)
                if verdict is not None:
                    drop_canary(ep)
                    add_event(s, ep, "rollback", f"canary rolled back automatically: {verdict}")
                    ep.message = f"canary rolled back automatically: {verdict}"
                    changed(ep)

    def _reconcile_one(self, ep_id: int) -> None:
        try:
            self._reconcile(ep_id)
        except ForeignApp as e:  # expected: said on the endpoint, not logged as a failure
            self._note_error(ep_id, str(e))

    def _failed(self, ep_id: int, e: Exception) -> None:
        self._note_error(ep_id, f"{type(e).__name__}: {e}")

    def _sweep_captured(self) -> None:
        """Captured calls past retention; a failure is logged and tried at the next sweep."""
        try:
            capture_erasure.sweep_retention(self.db, self.store)
        except Exception:
            log.exception("the capture retention sweep failed")

    def _meter(self) -> None:
        """Replica-seconds since the last meter. The counts are read before the write
        transaction opens: nothing slow may run while it holds SQLite's one write lock."""
        now = utcnow()
        with self.db.read() as s:
            rows = s.execute(
                select(Endpoint.id, Endpoint.name, Endpoint.workspace_id, Endpoint.config)
            ).all()
        spans = []
        for r in rows:
            start = self._metered_at.get(r.id)
            self._metered_at[r.id] = now
            counts = self._counts(r.name)
            replicas = counts.primary + counts.canary + counts.shadow
            if start is not None and replicas:
                spans.append((r, start, replicas))
        if not spans:
            return
        with self.db.write() as s:
            for r, start, replicas in spans:
                config = EndpointConfig.model_validate(r.config)
                costs.record_endpoint(
                    s, r.workspace_id, r.name, start, now, replicas, config.resources
                )


def _unrecorded(st: AppState) -> bool:
    return st.endpoint_id is None and st.owner is None


class ForeignApp(RuntimeError):
    """A Serve application under one of an endpoint's names records another endpoint."""


def _model_ref(s: Session, version_id: int) -> ModelRef:
    row = s.execute(
        select(Model.name, ModelVersion.version, ModelVersion.recipe)
        .join(ModelVersion, ModelVersion.model_id == Model.id)
        .where(ModelVersion.id == version_id)
    ).one()
    return ModelRef(
        version_id=version_id,
        label=f"{row.name}:{row.version}",
        recipe=row.recipe,
        files=[BlobFile(**f) for f in model_files(s, version_id)],
    )


def _state(primary: AppState | None) -> tuple[str, str]:
    if primary is None or primary.status in ("DEPLOYING", "NOT_STARTED"):
        return "deploying", ""
    if primary.status == "DEPLOY_FAILED" and primary.running == 0:
        return "failed", primary.message.strip()[:4000]
    return "ready", ""
