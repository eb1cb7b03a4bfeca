"""Plans, consumers (a workspace's customers) and their keys, and what replicas need of them.

A consumer key is ``gck_<key_id>_<secret>``; only sha256(secret) is stored, and the token is
returned once, at creation. Consumer keys are checked by the data plane against
``access_snapshot``; the control plane's authenticator accepts ``gk_`` keys only, so a consumer
key can never reach this API. Deleting a consumer disables it and revokes its keys: its usage
history stays, so invoices of past periods remain whole.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gureum.schemas.common import Page
from gureum.schemas.consumers import (
    CONSUMER_KEY_PREFIX,
    ConsumerCreate,
    ConsumerCreated,
    ConsumerKeyCreated,
    ConsumerKeyOut,
    ConsumerOut,
    ConsumerUpdate,
    InlinePlan,
    PlanCreate,
    PlanFields,
    PlanOut,
)
from gureum.schemas.metering import AccessKey, LeaseGranted
from gureum.server.auth import Principal, hash_secret
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables_serving import (
    Consumer,
    ConsumerKey,
    Endpoint,
    Plan,
    QuotaLease,
    UsageRecord,
)
from gureum.server.errors import Conflict, NotFound, Unprocessable
from gureum.server.pagination import PageParams, paginate
from gureum.server.services.audit import record

INLINE_FIELDS = tuple(InlinePlan.model_fields)
# Plan fields that may be set to null (meaning: unlimited).
NULLABLE = frozenset({"rate_limit", "monthly_quota"})


def month_start(now: datetime | None = None) -> datetime:
    """The first instant of the calendar month (UTC) that ``now`` falls in."""
    now = (now or utcnow()).astimezone(UTC)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def plan_out(plan: Plan) -> PlanOut:
    return PlanOut.model_validate(plan)


def _key_out(key: ConsumerKey, consumer: str) -> ConsumerKeyOut:
    return ConsumerKeyOut(
        key_id=key.key_id, consumer=consumer, created_at=key.created_at, revoked_at=key.revoked_at
    )


def _active_keys(s: Session, consumer_ids: Sequence[int]) -> dict[int, int]:
    if not consumer_ids:
        return {}
    rows = s.execute(
        select(ConsumerKey.consumer_id, func.count())
        .where(ConsumerKey.consumer_id.in_(consumer_ids), ConsumerKey.revoked_at.is_(None))
        .group_by(ConsumerKey.consumer_id)
    )
    return {consumer_id: int(n) for consumer_id, n in rows}


def _out(s: Session, consumer: Consumer, plan: Plan | None = None) -> ConsumerOut:
    plan = plan or s.get(Plan, consumer.plan_id)
    assert plan is not None  # consumers.plan_id is a RESTRICT foreign key
    return ConsumerOut(
        name=consumer.name,
        email=consumer.email,
        disabled=consumer.disabled,
        capture=not consumer.no_capture,
        plan=plan_out(plan),
        active_keys=_active_keys(s, [consumer.id]).get(consumer.id, 0),
        created_at=consumer.created_at,
    )


def find_plan(s: Session, workspace_id: int, name: str) -> Plan:
    plan = s.scalar(select(Plan).where(Plan.workspace_id == workspace_id, Plan.name == name))
    if plan is None:
        raise NotFound(f"plan '{name}' not found")
    return plan


def find_consumer(s: Session, workspace_id: int, name: str, *, lock: bool = False) -> Consumer:
    stmt = select(Consumer).where(Consumer.workspace_id == workspace_id, Consumer.name == name)
    consumer = s.scalar(stmt.with_for_update() if lock else stmt)
    if consumer is None:
        raise NotFound(f"consumer '{name}' not found")
    return consumer


def _plan_exists(s: Session, workspace_id: int, name: str) -> bool:
    stmt = select(Plan.id).where(Plan.workspace_id == workspace_id, Plan.name == name)
    return s.scalar(stmt) is not None


def _inline(body: InlinePlan) -> dict[str, Any]:
    """The plan fields the request set; null is refused where it means nothing."""
    given = {k: getattr(body, k) for k in INLINE_FIELDS if k in body.model_fields_set}
    nulls = sorted(k for k, v in given.items() if v is None and k not in NULLABLE)
    if nulls:
        raise Unprocessable(f"{', '.join(nulls)} cannot be null")
    return given


def _new_key(consumer: Consumer) -> tuple[ConsumerKey, str]:
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    key = ConsumerKey(consumer_id=consumer.id, key_id=key_id, secret_hash=hash_secret(secret))
    return key, f"{CONSUMER_KEY_PREFIX}_{key_id}_{secret}"


def _plan_details(plan: Plan) -> dict[str, Any]:
    return plan_out(plan).model_dump(mode="json", exclude={"created_at"})


# -- plans ---------------------------------------------------------------------------------------


def create_plan(db: Database, principal: Principal, body: PlanCreate) -> PlanOut:
    principal.require("admin")
    try:
        with db.write() as s:
            if _plan_exists(s, principal.workspace_id, body.name):
                raise Conflict(f"plan '{body.name}' already exists")
            plan = Plan(workspace_id=principal.workspace_id, **body.model_dump())
            s.add(plan)
            s.flush()
            record(s, principal, "plan.create", "plan", plan.name, _plan_details(plan))
            return plan_out(plan)
    except IntegrityError as exc:  # a concurrent create of the same name won
        raise Conflict(f"plan '{body.name}' already exists") from exc


def list_plans(db: Database, principal: Principal, params: PageParams) -> Page[PlanOut]:
    principal.require("viewer")
    stmt = select(Plan).where(Plan.workspace_id == principal.workspace_id)
    with db.read() as s:
        rows, cursor = paginate(s, stmt, Plan.id, params)
        return Page(items=[plan_out(p) for p in rows], next_cursor=cursor)


def get_plan(db: Database, principal: Principal, name: str) -> PlanOut:
    principal.require("viewer")
    with db.read() as s:
        return plan_out(find_plan(s, principal.workspace_id, name))


# -- consumers -----------------------------------------------------------------------------------


def create(db: Database, principal: Principal, body: ConsumerCreate) -> ConsumerCreated:
    """A consumer, its plan when given inline, and its first key, in one transaction."""
    principal.require("admin")
    inline = _inline(body)
    if body.plan is not None and inline:
        raise Unprocessable("give either plan (a plan's name) or plan fields, not both")
    ws = principal.workspace_id
    try:
        with db.write() as s:
            if s.scalar(
                select(Consumer.id).where(Consumer.workspace_id == ws, Consumer.name == body.name)
            ):
                raise Conflict(f"consumer '{body.name}' already exists")
            if body.plan is not None:
                plan = find_plan(s, ws, body.plan)
            else:
                if _plan_exists(s, ws, body.name):
                    raise Conflict(
                        f"a plan named '{body.name}' already exists: pass plan='{body.name}' "
                        "to use it, or give the consumer another name"
                    )
                fields = PlanFields.model_validate(inline).model_dump()
                plan = Plan(workspace_id=ws, name=body.name, **fields)
                s.add(plan)
                s.flush()
                record(s, principal, "plan.create", "plan", plan.name, _plan_details(plan))
            consumer = Consumer(workspace_id=ws, name=body.name, plan_id=plan.id, email=body.email)
            s.add(consumer)
            s.flush()
            key, token = _new_key(consumer)
            s.add(key)
            s.flush()
            details = {"plan": plan.name, "key_id": key.key_id, "email": body.email}
            record(s, principal, "consumer.create", "consumer", consumer.name, details)
            out = _out(s, consumer, plan)
    except IntegrityError as exc:  # a concurrent create of the same name won
        raise Conflict(f"consumer '{body.name}' already exists") from exc
    return ConsumerCreated(**out.model_dump(), key_id=key.key_id, token=token)


def list_consumers(db: Database, principal: Principal, params: PageParams) -> Page[ConsumerOut]:
    principal.require("viewer")
    stmt = select(Consumer).where(Consumer.workspace_id == principal.workspace_id)
    with db.read() as s:
        rows, cursor = paginate(s, stmt, Consumer.id, params)
        plans = {
            p.id: p for p in s.scalars(select(Plan).where(Plan.id.in_({c.plan_id for c in rows})))
        }
        keys = _active_keys(s, [c.id for c in rows])
        items = [
            ConsumerOut(
                name=c.name,
                email=c.email,
                disabled=c.disabled,
                capture=not c.no_capture,
                plan=plan_out(plans[c.plan_id]),
                active_keys=keys.get(c.id, 0),
                created_at=c.created_at,
            )
            for c in rows
        ]
    return Page(items=items, next_cursor=cursor)


def get(db: Database, principal: Principal, name: str) -> ConsumerOut:
    principal.require("viewer")
    with db.read() as s:
        return _out(s, find_consumer(s, principal.workspace_id, name))


def _own_plan(s: Session, consumer: Consumer, changes: dict[str, Any]) -> Plan:
    """The consumer's plan with ``changes``. The plan named after the consumer is changed in
    place when no other consumer is on it; else a copy of the current plan is made under that
    name. Another consumer's plan is never changed this way."""
    current = s.get(Plan, consumer.plan_id)
    assert current is not None
    base = {k: v for k, v in _plan_details(current).items() if k != "name"}
    merged = PlanFields.model_validate({**base, **changes}).model_dump()
    own = current if current.name == consumer.name else None
    if own is None:
        own = s.scalar(
            select(Plan).where(
                Plan.workspace_id == consumer.workspace_id, Plan.name == consumer.name
            )
        )
    if own is None:
        own = Plan(workspace_id=consumer.workspace_id, name=consumer.name, **merged)
        s.add(own)
        s.flush()
    else:
        shared = s.scalar(
            select(func.count())
            .select_from(Consumer)
            .where(Consumer.plan_id == own.id, Consumer.id != consumer.id)
        )
        if shared:
            raise Conflict(
                f"plan '{own.name}' is shared with other consumers; switch this consumer to "
                "another plan (plan: NAME) rather than change theirs"
            )
        for k, v in merged.items():
            setattr(own, k, v)
    consumer.plan_id = own.id
    return own


def update(db: Database, principal: Principal, name: str, body: ConsumerUpdate) -> ConsumerOut:
    principal.require("admin")
    changes = _inline(body)
    if body.plan is not None and changes:
        raise Unprocessable("give either plan (a plan's name) or plan fields, not both")
    given = body.model_fields_set
    with db.write() as s:
        consumer = find_consumer(s, principal.workspace_id, name, lock=True)
        details: dict[str, Any] = {}
        if body.plan is not None:
            consumer.plan_id = find_plan(s, principal.workspace_id, body.plan).id
            details["plan"] = body.plan
        elif changes:
            plan = _own_plan(s, consumer, changes)
            details.update(plan=plan.name, changes=changes)
        if "email" in given:
            consumer.email = body.email
            details["email"] = body.email
        if body.disabled is not None:
            consumer.disabled = body.disabled
            details["disabled"] = body.disabled
        if body.capture is not None:
            # Replicas see it in their next access snapshot (seconds), nothing is redeployed.
            consumer.no_capture = not body.capture
            details["capture"] = body.capture
        s.flush()
        record(s, principal, "consumer.update", "consumer", name, details)
        return _out(s, consumer)


def delete(db: Database, principal: Principal, name: str) -> ConsumerOut:
    """Disable the consumer and revoke its keys; its usage and invoices stay."""
    principal.require("admin")
    with db.write() as s:
        consumer = find_consumer(s, principal.workspace_id, name, lock=True)
        keys = s.scalars(
            select(ConsumerKey).where(
                ConsumerKey.consumer_id == consumer.id, ConsumerKey.revoked_at.is_(None)
            )
        ).all()
        now = utcnow()
        for key in keys:
            key.revoked_at = now
        consumer.disabled = True
        s.flush()
        details = {"revoked_keys": [k.key_id for k in keys]}
        record(s, principal, "consumer.delete", "consumer", name, details)
        return _out(s, consumer)


# -- consumer keys -------------------------------------------------------------------------------


def create_key(db: Database, principal: Principal, name: str) -> ConsumerKeyCreated:
    principal.require("admin")
    with db.write() as s:
        consumer = find_consumer(s, principal.workspace_id, name)
        if consumer.disabled:
            raise Conflict(f"consumer '{name}' is disabled; enable it first (disabled: false)")
        key, token = _new_key(consumer)
        s.add(key)
        s.flush()
        record(s, principal, "consumer_key.create", "consumer_key", key.key_id, {"consumer": name})
        out = _key_out(key, name)
    return ConsumerKeyCreated(**out.model_dump(), token=token)


def list_keys(
    db: Database, principal: Principal, name: str, params: PageParams
) -> Page[ConsumerKeyOut]:
    principal.require("viewer")
    with db.read() as s:
        consumer = find_consumer(s, principal.workspace_id, name)
        stmt = select(ConsumerKey).where(ConsumerKey.consumer_id == consumer.id)
        rows, cursor = paginate(s, stmt, ConsumerKey.id, params)
    return Page(items=[_key_out(k, name) for k in rows], next_cursor=cursor)


def revoke_key(db: Database, principal: Principal, name: str, key_id: str) -> ConsumerKeyOut:
    """Revoke a key; revoking one already revoked changes nothing (and audits nothing)."""
    principal.require("admin")
    with db.write() as s:
        consumer = find_consumer(s, principal.workspace_id, name)
        key = s.scalar(
            select(ConsumerKey).where(
                ConsumerKey.consumer_id == consumer.id, ConsumerKey.key_id == key_id
            )
        )
        if key is None:
            raise NotFound(f"consumer '{name}' has no key '{key_id}'")
        if key.revoked_at is None:
            key.revoked_at = utcnow()
            s.flush()
            details = {"consumer": name}
            record(s, principal, "consumer_key.revoke", "consumer_key", key.key_id, details)
        return _key_out(key, name)


# -- for the data plane --------------------------------------------------------------------------


def access_snapshot(s: Session, endpoint: Endpoint) -> list[AccessKey]:
    """Every key that may call ``endpoint`` now, with its limits and this month's use.

    Two queries: the keys with their consumers' plans, then the month's served requests of
    those consumers (status < 400, calendar month in UTC) from the usage ledger.
    """
    rows = s.execute(
        select(
            ConsumerKey.key_id,
            ConsumerKey.secret_hash,
            Consumer.id,
            Consumer.name,
            Consumer.no_capture,
            Plan.rate_limit,
            Plan.monthly_quota,
            Plan.endpoints,
        )
        .join(Consumer, Consumer.id == ConsumerKey.consumer_id)
        .join(Plan, Plan.id == Consumer.plan_id)
        .where(
            Consumer.workspace_id == endpoint.workspace_id,
            Consumer.disabled.is_(False),
            ConsumerKey.revoked_at.is_(None),
        )
        .order_by(ConsumerKey.id)
    ).all()
    allowed = [r for r in rows if not r.endpoints or endpoint.name in r.endpoints]
    ids = sorted({r.id for r in allowed})
    used: dict[int, int] = {}
    if ids:
        counts = s.execute(
            select(UsageRecord.consumer_id, func.count())
            .where(
                UsageRecord.consumer_id.in_(ids),
                UsageRecord.time >= month_start(),
                UsageRecord.status < 400,
            )
            .group_by(UsageRecord.consumer_id)
        )
        used = {consumer_id: int(n) for consumer_id, n in counts if consumer_id is not None}
    return [
        AccessKey(
            key_id=r.key_id,
            secret_hash=r.secret_hash,
            kind="consumer",
            consumer_id=r.id,
            consumer_name=r.name,
            rate_limit=r.rate_limit,
            monthly_quota=r.monthly_quota,
            used_this_month=used.get(r.id, 0),
            capture=not r.no_capture,
        )
        for r in allowed
    ]


def _used_this_month(s: Session, consumer_id: int) -> int:
    """Served calls (status < 400) of the consumer this calendar month, from the ledger."""
    stmt = select(func.count()).where(
        UsageRecord.consumer_id == consumer_id,
        UsageRecord.time >= month_start(),
        UsageRecord.status < 400,
    )
    return int(s.scalar(stmt) or 0)


def lease(
    s: Session, endpoint: Endpoint, consumer_id: int, release: int, block: int, replicas: int
) -> LeaseGranted:
    """Hand a replica the next block of a consumer's monthly quota (in the caller's write
    transaction).

    The month's row is locked (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's writers are
    serialized by ``BEGIN IMMEDIATE``), so concurrent leases never hand out more than the quota
    together. Blocks shrink as the quota runs out (about the remainder shared by twice the
    replicas, at least one call), so few calls sit unused on one replica while another refuses.
    What the ledger already counts is never leased again, whatever the counter says.
    """
    period = month_start().strftime("%Y-%m")
    row = s.execute(
        select(Consumer.disabled, Plan.monthly_quota, Plan.endpoints)
        .join(Plan, Plan.id == Consumer.plan_id)
        .where(Consumer.id == consumer_id, Consumer.workspace_id == endpoint.workspace_id)
    ).one_or_none()
    quota = row.monthly_quota if row is not None else None
    if row is None or row.disabled or (row.endpoints and endpoint.name not in row.endpoints):
        return LeaseGranted(consumer_id=consumer_id, granted=0, monthly_quota=quota, period=period)
    if quota is None:  # unlimited: nothing to count
        return LeaseGranted(
            consumer_id=consumer_id, granted=block, monthly_quota=None, period=period
        )
    dialect = s.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    s.execute(
        insert(QuotaLease)
        .values(consumer_id=consumer_id, period=period, leased=0, updated_at=utcnow())
        .on_conflict_do_nothing(index_elements=["consumer_id", "period"])
    )
    held = s.scalar(
        select(QuotaLease)
        .where(QuotaLease.consumer_id == consumer_id, QuotaLease.period == period)
        .with_for_update()
    )
    assert held is not None  # inserted above or by a concurrent lease
    base = max(held.leased - release, _used_this_month(s, consumer_id))
    remaining = quota - base
    granted = 0
    if remaining > 0 and not release:  # a replica giving calls back takes none
        granted = min(block, remaining, max(1, remaining // (2 * max(1, replicas))))
    held.leased = base + granted
    held.updated_at = utcnow()
    s.flush()
    return LeaseGranted(
        consumer_id=consumer_id, granted=granted, monthly_quota=quota, period=period
    )
