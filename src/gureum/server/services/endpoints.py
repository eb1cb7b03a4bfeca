"""Endpoints: what version serves, what takes a share as canary or a mirror as shadow.

Every change here only writes the desired state and bumps ``generation``; the endpoint
controller makes Ray Serve match it and reports back through ``state`` and events.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gureum.recipes.specs import SPECS, serving_of
from gureum.schemas.capture import CaptureConfig
from gureum.schemas.common import Page
from gureum.schemas.endpoints import (
    CanaryOut,
    EndpointConfig,
    EndpointCreate,
    EndpointEventOut,
    EndpointOut,
    EndpointUpdate,
    ReplicaCounts,
    VersionRef,
)
from gureum.server.auth import Principal
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables import Model, ModelVersion, Workspace
from gureum.server.db.tables_serving import Endpoint, EndpointEvent
from gureum.server.errors import Conflict, NotFound, Unauthorized, Unprocessable
from gureum.server.pagination import PageParams, paginate
from gureum.server.services import base_models, budget_ledger, validations
from gureum.server.services.audit import record
from gureum.server.services.models import find_model, require_loadable, resolve_version_row
from gureum.storage.store import ArtifactStore

TOKEN_PREFIX = "gst"  # noqa: S105 (a prefix, not a secret)

# endpoint name -> replicas running per role, from the controller's last look at Ray Serve.
Live = Callable[[str], ReplicaCounts]


def _no_live(name: str) -> ReplicaCounts:
    return ReplicaCounts()


def endpoint_token(secret: bytes, ep: Endpoint) -> str:
    """Derived, not stored: the controller can hand it to new replicas after a restart."""
    msg = f"{ep.id}:{ep.name}:{ep.created_at.isoformat()}".encode()
    return f"{TOKEN_PREFIX}_{hmac.new(secret, msg, hashlib.sha256).hexdigest()}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add_event(s: Session, ep: Endpoint, kind: str, message: str, **data: Any) -> None:
    ep.event_seq += 1
    s.add(EndpointEvent(endpoint_id=ep.id, seq=ep.event_seq, kind=kind, message=message, data=data))


def changed(ep: Endpoint, state: str = "updating") -> None:
    ep.generation += 1
    ep.updated_at = utcnow()
    if ep.state != "deleting":
        ep.state = state


def config_of(ep: Endpoint) -> CaptureConfig:
    """The endpoint's capture settings (never configured: the defaults, capturing nothing)."""
    return CaptureConfig.model_validate(ep.capture) if ep.capture else CaptureConfig()


def describe_capture(config: CaptureConfig) -> str:
    parts = [p for p, on in (("inputs", config.inputs), ("outputs", config.outputs)) if on]
    if config.rate == 0 or not parts:
        return "capture off"
    text = f"capturing {config.rate:.4g} of the calls ({' and '.join(parts)})"
    if config.redact:
        text += f", redacting {', '.join(config.redact)}"
    if config.retention_days is not None:
        text += f", kept {config.retention_days} days"
    return text


def apply_capture(s: Session, ep: Endpoint, config: CaptureConfig) -> bool:
    """Store ``config`` on ``ep``, with an event when it changes. Replicas follow it from their
    access snapshot within seconds, so ``generation`` stays: nothing is redeployed."""
    new = config.model_dump(mode="json")
    if ep.capture == new or (ep.capture is None and config == CaptureConfig()):
        return False
    ep.capture = new
    add_event(s, ep, "capture", describe_capture(config), **new)
    return True


def _label(s: Session, version_id: int | None) -> VersionRef | None:
    if version_id is None:
        return None
    row = s.execute(
        select(Model.name, ModelVersion.version)
        .join(ModelVersion, ModelVersion.model_id == Model.id)
        .where(ModelVersion.id == version_id)
    ).one_or_none()
    if row is None:
        return None
    return VersionRef(version=row.version, label=f"{row.name}:{row.version}")


def endpoint_out(s: Session, ep: Endpoint, data_url: str | None, live: Live) -> EndpointOut:
    primary = _label(s, ep.version_id)
    assert primary is not None  # RESTRICT keeps a served version
    canary = _label(s, ep.canary_version_id)
    recipe = s.scalar(select(ModelVersion.recipe).where(ModelVersion.id == ep.version_id))
    ws = s.get(Workspace, ep.workspace_id)
    return EndpointOut(
        name=ep.name,
        workspace=ws.name if ws else "",
        model=primary.label.rsplit(":", 1)[0],
        version=primary.version,
        model_label=primary.label,
        recipe=recipe,
        canary=CanaryOut(**canary.model_dump(), percent=ep.canary_percent) if canary else None,
        shadow=_label(s, ep.shadow_version_id),
        previous=_label(s, ep.previous_version_id),
        config=EndpointConfig.model_validate(ep.config),
        state=ep.state,
        message=ep.message,
        url=f"{data_url}/v1/endpoints/{ep.name}" if data_url else None,
        replicas=live(ep.name),
        created_at=ep.created_at,
        updated_at=ep.updated_at,
    )


def find_endpoint(s: Session, workspace_id: int, name: str, *, lock: bool = False) -> Endpoint:
    stmt = select(Endpoint).where(Endpoint.name == name, Endpoint.workspace_id == workspace_id)
    ep = s.scalar(stmt.with_for_update() if lock else stmt)
    if ep is None:
        raise NotFound(f"no endpoint {name!r} in this workspace")
    return ep


def _version(s: Session, workspace_id: int, ref: str) -> ModelVersion:
    name, _, v = ref.partition(":")
    model = find_model(s, workspace_id, name)
    if v:
        version = resolve_version_row(s, model, v)
    else:
        has_production = s.scalar(
            select(ModelVersion.id).where(
                ModelVersion.model_id == model.id, ModelVersion.stage == "production"
            )
        )
        version = resolve_version_row(s, model, "production" if has_production else "latest")
    if serving_of(version.recipe) is None:
        made_by = f"recipe {version.recipe!r}" if version.recipe else "no recipe (imported)"
        servable = sorted(n for n, spec in SPECS.items() if spec.serving)
        raise Unprocessable(
            f"{name}:{version.version} was made by {made_by}; endpoints serve models of the "
            f"recipes {', '.join(servable)}, imported ONNX or Hugging Face models, and script "
            "models registered with a predictor"
        )
    require_loadable(version.recipe, version.platform_written, f"{name}:{version.version}")
    return version


def deploy(
    db: Database,
    principal: Principal,
    body: EndpointCreate,
    secret: bytes,
    data_url: str | None,
    live: Live = _no_live,
    *,
    store: ArtifactStore,
) -> tuple[EndpointOut, bool]:
    """Create the endpoint, or change what an existing one serves. True when created."""
    principal.require("developer")
    with db.write() as s:
        version = _version(s, principal.workspace_id, body.model)
        label = f"{body.model.partition(':')[0]}:{version.version}"
        base_models.check_loadable(s, store, version, version.recipe, label)  # its base: no path
        ep = s.scalar(select(Endpoint).where(Endpoint.name == body.name).with_for_update())
        if ep is not None and ep.workspace_id != principal.workspace_id:
            raise Conflict(f"the endpoint name {body.name!r} is taken; choose another")
        if ep is not None and ep.state == "deleting":
            raise Conflict(f"endpoint {body.name!r} is being deleted; deploy again when it is gone")
        created = fresh = ep is None
        canary_before = ep.canary_version_id if ep is not None else None
        _refuse_growth(s, principal.workspace_id, ep, body)
        if ep is None:
            if body.canary_percent is not None or body.shadow:
                raise Unprocessable("a canary or shadow needs an endpoint that already serves")
            ep = _create(s, principal, body, version, secret)
            add_event(s, ep, "deploy", f"deploying {label}", version=version.version)
        elif ep.state == "failed" and version.id == ep.version_id and not body.shadow:
            changed(ep, "deploying")  # its version again (new sample inputs): a fresh start
            add_event(s, ep, "deploy", f"deploying {label} again", version=version.version)
            fresh = True
        else:
            _update(s, ep, body, version, label)
        if body.capture is not None:
            apply_capture(s, ep, body.capture)
        if fresh or canary_before != ep.canary_version_id == version.id:
            # Validated in the first new replica before it takes traffic (services.validations).
            validations.open_for_deploy(
                s, store, ep, version, body.sample_inputs, principal.user_id
            )
        details: dict[str, Any] = {"model": label}
        if body.capture is not None:
            details["capture"] = body.capture.model_dump(mode="json")
        record(s, principal, "endpoint.deploy", "endpoint", ep.name, details)
        return endpoint_out(s, ep, data_url, live), created


def _refuse_growth(
    s: Session, workspace_id: int, ep: Endpoint | None, body: EndpointCreate
) -> None:
    """What the budget refuses while exceeded (409): anything that adds replicas."""
    if ep is None:
        budget_ledger.refuse_more_serving(s, workspace_id, "a new endpoint")
    elif body.shadow or body.canary_percent is not None:
        budget_ledger.refuse_more_serving(s, workspace_id, "a canary or shadow")
    elif body.config is not None and _raises_minimum(ep, body.config):
        budget_ledger.refuse_more_serving(s, workspace_id, "raising the minimum replicas")


def _raises_minimum(ep: Endpoint, config: EndpointConfig) -> bool:
    before = EndpointConfig.model_validate(ep.config).autoscaling.min_replicas
    return config.autoscaling.min_replicas > before


def _create(
    s: Session, principal: Principal, body: EndpointCreate, version: ModelVersion, secret: bytes
) -> Endpoint:
    config = body.config or EndpointConfig()
    ep = Endpoint(
        name=body.name,
        workspace_id=principal.workspace_id,
        model_id=version.model_id,
        version_id=version.id,
        config=config.model_dump(mode="json"),
        state="deploying",
        generation=1,
        applied_generation=0,
        token_hash="",
        created_by=principal.user_id,
        created_at=utcnow(),
        updated_at=utcnow(),
    )
    s.add(ep)
    s.flush()
    ep.token_hash = token_hash(endpoint_token(secret, ep))
    return ep


def _update(
    s: Session, ep: Endpoint, body: EndpointCreate, version: ModelVersion, label: str
) -> None:
    if body.config is not None:
        ep.config = body.config.model_dump(mode="json")
    if body.shadow:
        ep.shadow_version_id = version.id
        add_event(s, ep, "shadow", f"mirroring traffic to {label}", version=version.version)
    elif body.canary_percent is not None:
        if version.id == ep.version_id:
            raise Unprocessable(f"{label} already serves all traffic; a canary must be another")
        _start_canary(ep, version.id, body.canary_percent, rollout=None)
        add_event(s, ep, "canary", f"canary {label} at {body.canary_percent:g}% of traffic")
    elif version.id != ep.version_id:
        # Start the new version beside the old at 0 %: the old keeps all traffic until the new
        # one has loaded, and keeps serving if it fails to.
        _start_canary(ep, version.id, 0.0, rollout="promote")
        add_event(s, ep, "rollout", f"starting {label}; it replaces the current version once up")
    elif ep.rollout == "promote":
        # The serving version again while another was rolling out: cancel that rollout.
        add_event(s, ep, "rollout", f"rollout cancelled; {label} keeps serving")
        drop_canary(ep)
    elif body.config is None:
        return  # the same version, nothing to change
    changed(ep)


def _start_canary(ep: Endpoint, version_id: int, percent: float, rollout: str | None) -> None:
    ep.canary_version_id = version_id
    ep.canary_percent = percent
    ep.canary_started_at = utcnow()
    ep.rollout = rollout


def list_endpoints(
    db: Database, principal: Principal, params: PageParams, data_url: str | None, live: Live
) -> Page[EndpointOut]:
    stmt = select(Endpoint).where(Endpoint.workspace_id == principal.workspace_id)
    with db.read() as s:
        rows, cursor = paginate(s, stmt, Endpoint.id, params)
        return Page(items=[endpoint_out(s, e, data_url, live) for e in rows], next_cursor=cursor)


def get_endpoint(
    db: Database, principal: Principal, name: str, data_url: str | None, live: Live
) -> EndpointOut:
    with db.read() as s:
        return endpoint_out(s, find_endpoint(s, principal.workspace_id, name), data_url, live)


def update(
    db: Database,
    principal: Principal,
    name: str,
    body: EndpointUpdate,
    data_url: str | None,
    live: Live,
) -> EndpointOut:
    principal.require("developer")
    with db.write() as s:
        ep = find_endpoint(s, principal.workspace_id, name, lock=True)
        if body.config is not None and _raises_minimum(ep, body.config):
            budget_ledger.refuse_more_serving(s, ep.workspace_id, "raising the minimum replicas")
        if body.canary_percent is not None:
            if ep.canary_version_id is None or ep.rollout is not None:
                raise Conflict(f"endpoint {name!r} has no canary to give traffic to")
            ep.canary_percent = body.canary_percent
            add_event(s, ep, "canary", f"canary at {body.canary_percent:g}% of traffic")
        if body.config is not None:
            ep.config = body.config.model_dump(mode="json")
            add_event(s, ep, "config", "configuration changed")
        changed(ep)
        record(s, principal, "endpoint.update", "endpoint", name, body.model_dump(mode="json"))
        return endpoint_out(s, ep, data_url, live)


def rollback(
    db: Database, principal: Principal, name: str, data_url: str | None, live: Live
) -> EndpointOut:
    """Drop the canary (or shadow); with neither, serve the previous version again."""
    principal.require("developer")
    with db.write() as s:
        ep = find_endpoint(s, principal.workspace_id, name, lock=True)
        if ep.canary_version_id is not None:
            dropped = _label(s, ep.canary_version_id)
            drop_canary(ep)
            add_event(s, ep, "rollback", f"canary {dropped.label if dropped else ''} rolled back")
        elif ep.shadow_version_id is not None:
            ep.shadow_version_id = None
            add_event(s, ep, "rollback", "shadow removed")
        elif ep.previous_version_id is not None:
            back = _label(s, ep.previous_version_id)
            _start_canary(ep, ep.previous_version_id, 0.0, rollout="promote")
            add_event(s, ep, "rollback", f"rolling back to {back.label if back else ''}")
        else:
            raise Conflict(
                f"endpoint {name!r} has no canary and no previous version to roll back to"
            )
        changed(ep)
        record(s, principal, "endpoint.rollback", "endpoint", name, {})
        return endpoint_out(s, ep, data_url, live)


def promote(
    db: Database, principal: Principal, name: str, data_url: str | None, live: Live
) -> EndpointOut:
    principal.require("developer")
    with db.write() as s:
        ep = find_endpoint(s, principal.workspace_id, name, lock=True)
        if ep.canary_version_id is None:
            raise Conflict(f"endpoint {name!r} has no canary to promote")
        promote_canary(s, ep, "promote", "promoted by hand")
        record(s, principal, "endpoint.promote", "endpoint", name, {})
        return endpoint_out(s, ep, data_url, live)


def promote_canary(s: Session, ep: Endpoint, kind: str, why: str) -> None:
    assert ep.canary_version_id is not None
    new = _label(s, ep.canary_version_id)
    ep.previous_version_id, ep.version_id = ep.version_id, ep.canary_version_id
    ep.model_id = (
        s.scalar(select(ModelVersion.model_id).where(ModelVersion.id == ep.canary_version_id))
        or ep.model_id
    )
    drop_canary(ep)
    add_event(
        s, ep, kind, f"{new.label if new else 'the new version'} now serves all traffic: {why}"
    )
    changed(ep)


def drop_canary(ep: Endpoint) -> None:
    ep.canary_version_id = None
    ep.canary_percent = 0.0
    ep.canary_started_at = None
    ep.rollout = None


def delete(
    db: Database, principal: Principal, name: str, data_url: str | None, live: Live
) -> EndpointOut:
    principal.require("developer")
    with db.write() as s:
        ep = find_endpoint(s, principal.workspace_id, name, lock=True)
        ep.state = "deleting"
        changed(ep, "deleting")
        add_event(s, ep, "delete", "deleting")
        record(s, principal, "endpoint.delete", "endpoint", name, {})
        return endpoint_out(s, ep, data_url, live)


def list_events(
    db: Database, principal: Principal, name: str, after_seq: int = 0
) -> list[EndpointEventOut]:
    with db.read() as s:
        ep = find_endpoint(s, principal.workspace_id, name)
        rows = s.scalars(
            select(EndpointEvent)
            .where(EndpointEvent.endpoint_id == ep.id, EndpointEvent.seq > after_seq)
            .order_by(EndpointEvent.seq)
        )
        return [EndpointEventOut.model_validate(r) for r in rows]


def by_token(s: Session, name: str, authorization: str | None) -> Endpoint:
    """The endpoint whose replicas present this token (the internal API's only caller)."""
    token = (authorization or "").removeprefix("Bearer ").strip()
    ep = s.scalar(select(Endpoint).where(Endpoint.name == name))
    if ep is None or not token or not hmac.compare_digest(token_hash(token), ep.token_hash):
        raise Unauthorized("not a replica of this endpoint")
    return ep


def load_secret(path: Path) -> bytes:
    """The key endpoint tokens derive from: made once, readable by the server's user only."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())
