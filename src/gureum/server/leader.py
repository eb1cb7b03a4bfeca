"""Leader election: of the API servers on one database, exactly one runs the controllers.

The leader holds a lease row (``controller_leases``): it renews it every ``renew_s`` for
``lease_s`` by the database's clock, and any server may take it over once it has expired,
adding one to its ``epoch``. On PostgreSQL the leader also holds a session advisory lock on a
dedicated connection with TCP keepalives: a killed leader's connection closes at once, so the
server that gets the lock next takes the lease over without waiting for it to expire (a leader
that is paused, not dead, keeps its lock: its lease expires and is taken over all the same).
On SQLite (one server per file) the only server always wins.

Safety does not rest on timing. A leader's controller writes are fenced: each write
transaction first reads the lease row with a shared lock and checks that this server still
holds it in the same epoch (``fence``), and a takeover's UPDATE waits for those locks. A
deposed leader (paused, partitioned, slow) that wakes up mid-tick therefore has its next write
refused with ``NotLeader``; a leader also stops trusting its lease locally a renewal
interval before it could expire, so its loops stop ticking before another can take over.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, cast

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import (
    ColumnElement,
    Connection,
    CursorResult,
    Engine,
    create_engine,
    func,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from gureum.server.db.session import Database
from gureum.server.db.tables_leases import ControllerLease

log = logging.getLogger(__name__)
LEASE = "controllers"
LEASE_S = 5.0
RENEW_S = 1.0
# pg_try_advisory_lock's key: "gureum" in ASCII, one lock per database.
ADVISORY_KEY = 0x67757265756D
# The advisory connection notices a dead peer (and PostgreSQL a dead leader host) in seconds.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
              "keepalives_count": 3, "connect_timeout": 5}  # fmt: skip
_SERVER_KEEPALIVES = (
    "SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3"
)


class NotLeader(RuntimeError):
    """This server does not (or no longer) lead: a controller write is refused."""


def db_clock(db: Database) -> ColumnElement[Any]:
    """Seconds since the Unix epoch by the database's clock (every server reads the same one)."""
    if db.is_sqlite:
        return (func.julianday("now") - 2440587.5) * 86400.0
    return func.date_part("epoch", func.clock_timestamp())


class Leadership:
    """This server's part in the election. ``epoch`` is the term it leads in, or None."""

    def __init__(
        self,
        db: Database,
        *,
        name: str = LEASE,
        lease_s: float = LEASE_S,
        renew_s: float = RENEW_S,
        holder: str | None = None,
    ) -> None:
        self.db, self.name, self.lease_s, self.renew_s = db, name, lease_s, renew_s
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.listeners: list[Callable[[], None]] = []  # told of every change of term
        self._epoch: int | None = None
        self._last: int | None = None  # the epoch last held (renewable while unchanged)
        self._valid_until = 0.0  # monotonic: the lease is trusted locally until then
        self._shy_until = 0.0  # a deposed server leaves the advisory lock alone a while
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._advisory: Connection | None = None
        self._locked = False
        self._unlock = False  # deposed by a fence: the leader thread lets the lock go
        self.started = False  # in the election (the app's lifespan started it)

    # -- state ------------------------------------------------------------------------------

    @property
    def epoch(self) -> int | None:
        with self._lock:
            if self._epoch is not None and time.monotonic() >= self._valid_until:
                log.warning("controller lease %s not renewed in time: stepping down", self.name)
                self._set(None)
            return self._epoch

    @property
    def leading(self) -> bool:
        return self.epoch is not None

    def _set(self, epoch: int | None) -> None:
        """Called with ``_lock`` held."""
        if epoch == self._epoch:
            return
        if epoch is not None:
            log.info("leading the controllers (epoch %d, %s)", epoch, self.holder)
        elif self._epoch is not None:
            log.info("no longer leading the controllers (epoch %d)", self._epoch)
        self._epoch = epoch
        for listener in self.listeners:
            with suppress(Exception):
                listener()

    # -- running ----------------------------------------------------------------------------

    def start(self) -> None:
        self.started = True
        self.step()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="gureum-leader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.renew_s):
            self.step()

    def stop(self) -> None:
        """Stop renewing and hand the lease back, so another server takes over at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            last, self._last = self._last, None
            self._set(None)
        if last is not None:
            with suppress(Exception), self.db.write() as s:
                s.execute(
                    update(ControllerLease)
                    .where(ControllerLease.name == self.name)
                    .where(ControllerLease.holder == self.holder, ControllerLease.epoch == last)
                    .values(expires_at=0.0)
                )
        self._drop_advisory()

    def step(self) -> None:
        """One renewal, or one attempt to take the lease over; never raises."""
        started = time.monotonic()
        try:
            beacon = self._beacon()
            epoch = self._renew_or_take(beacon)
        except Exception:
            log.warning("lease %s: the database did not answer", self.name, exc_info=True)
            return  # the lease runs out locally unless a later step renews it
        with self._lock:
            if epoch is None:
                if self._epoch is not None or self._last is not None:
                    self._deposed()
                self._last = None
                self._set(None)
            else:
                self._last = epoch
                self._valid_until = started + self.lease_s - self.renew_s
                self._set(epoch)

    def _renew_or_take(self, beacon: bool) -> int | None:
        lease = ControllerLease
        now = db_clock(self.db)
        with self.db.write() as s:
            if self._last is not None:
                renewed = _count(
                    s,
                    update(lease)
                    .where(lease.name == self.name, lease.holder == self.holder)
                    .where(lease.epoch == self._last)
                    .values(renewed_at=now, expires_at=now + self.lease_s),
                )
                if renewed:
                    return self._last
                return None  # deposed: it lets the lock go before it may lead again
            takeover = lease.expires_at < now
            taken = _count(
                s,
                update(lease)
                .where(lease.name == self.name, or_(takeover, true()) if beacon else takeover)
                .values(
                    holder=self.holder,
                    epoch=lease.epoch + 1,
                    renewed_at=now,
                    expires_at=now + self.lease_s,
                ),
            )
            if taken:
                return s.scalar(select(lease.epoch).where(lease.name == self.name))
            exists = s.scalar(select(lease.name).where(lease.name == self.name))
        if exists is None:
            self._create()
        return None

    def _create(self) -> None:
        with suppress(IntegrityError), self.db.write() as s:
            s.add(ControllerLease(name=self.name, epoch=0, renewed_at=0.0, expires_at=0.0))

    # -- the PostgreSQL advisory lock -------------------------------------------------------

    def _beacon(self) -> bool:
        """Whether this server holds the advisory lock (taking it when it is free): the lock
        goes free at once when its holder's connection closes, as a killed process's does."""
        if self._unlock:
            self._unlock = False
            self._release_advisory()
        if self.db.is_sqlite or time.monotonic() < self._shy_until:
            return False
        try:
            if self._advisory is None:
                engine = _dedicated_engine(self.db)
                self._advisory = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                self._advisory.exec_driver_sql(_SERVER_KEEPALIVES)
            if self._locked:
                self._advisory.exec_driver_sql("SELECT 1")
            else:
                got = self._advisory.execute(
                    text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_KEY}
                ).scalar()
                self._locked = bool(got)
            return self._locked
        except Exception:
            log.warning("controller lease %s: the advisory lock's connection failed", self.name)
            self._drop_advisory()
            with self._lock:
                self._set(None)  # another server may hold the lock and the lease already
            return False

    def _deposed(self) -> None:
        """Another server took over: let the advisory lock go (in the leader's thread, which
        owns its connection) and leave it alone a lease long, or the two would take turns."""
        self._shy_until = time.monotonic() + self.lease_s
        self._unlock = True

    def _release_advisory(self) -> None:
        if self._advisory is not None and self._locked:
            with suppress(Exception):
                self._advisory.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_KEY})
        self._locked = False

    def _drop_advisory(self) -> None:
        conn, self._advisory, self._locked = self._advisory, None, False
        if conn is not None:
            with suppress(Exception):
                conn.close()
            with suppress(Exception):
                conn.engine.dispose()

    # -- fencing ----------------------------------------------------------------------------

    def fence(self, s: Session) -> None:
        """Refuse a controller write unless this server still leads in the same epoch. The
        shared row lock it takes holds off a takeover until the write's transaction ends.
        Before the election starts nothing is fenced: a controller driven by hand (tests)."""
        if not self.started:
            return
        epoch = self.epoch
        if epoch is None:
            raise NotLeader("this API server does not lead the controllers")
        held = s.scalar(
            select(ControllerLease.epoch)
            .where(ControllerLease.name == self.name, ControllerLease.holder == self.holder)
            .with_for_update(read=True)
        )
        if held != epoch:
            with self._lock:
                self._deposed()
                self._last = None
                self._set(None)
            raise NotLeader(f"the controller lease was taken over (epoch {epoch} is over)")

    def fenced(self, db: Database) -> Database:
        return FencedDatabase(db, self.fence)


def _dedicated_engine(db: Database) -> Engine:
    """An engine of one dedicated connection (no pool to recycle it under the lock)."""
    return create_engine(db.engine.url, poolclass=NullPool, connect_args=KEEPALIVES)


def _count(s: Session, statement: Any) -> int:
    """Rows an UPDATE matched."""
    return int(cast(CursorResult[Any], s.execute(statement)).rowcount)


class FencedDatabase(Database):
    """The same engine and sessions as ``db``, but every write transaction is fenced first:
    what the controllers are given, so each of their writes carries the leader's epoch."""

    def __init__(self, db: Database, fence: Callable[[Session], None]) -> None:
        self.url, self.engine, self.is_sqlite = db.url, db.engine, db.is_sqlite
        self._reader, self._writer = db._reader, db._writer
        self._fence = fence

    @contextmanager
    def write(self) -> Iterator[Session]:
        with super().write() as s:
            self._fence(s)
            yield s

    def dispose(self) -> None:
        """The engine is the wrapped database's to dispose of."""


class LeaderCollector(Collector):
    """Prometheus gauges: whether this API server leads the controllers, and in which term
    (an alert fires when no server of a database leads, or when the epoch moves often)."""

    def __init__(self, leadership: Leadership) -> None:
        self.leadership = leadership

    def collect(self) -> Iterator[Metric]:
        epoch = self.leadership.epoch
        yield GaugeMetricFamily(
            "gureum_controller_leader",
            "1 when this API server leads the controllers, else 0.",
            value=0.0 if epoch is None else 1.0,
        )
        if epoch is not None:
            yield GaugeMetricFamily(
                "gureum_controller_epoch", "The leader's term (one more per takeover).", value=epoch
            )
