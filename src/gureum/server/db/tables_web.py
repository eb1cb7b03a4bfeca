"""Dashboard sign-in sessions: a browser exchanges an API key for one (kept apart from the API
key tables: a session is a browser's handle on a key, never a key of its own)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from gureum.server.db.base import Base, UTCDateTime, utcnow


class WebSession(Base):
    """Only a SHA-256 of the cookie's token is stored, so a copy of the database signs no one
    in. The key's own state (revoked, expired, role) is read again on every request."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    api_key_id: Mapped[int] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class PortalSession(Base):
    """A consumer's sign-in to the portal: scoped to one consumer key (a data-plane key, not a
    member's API key), stored as a hash. Rotating the key moves the rotating session to the new
    key; revoking or deleting a key ends every session opened with it (foreign key, cascade)."""

    __tablename__ = "portal_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    consumer_key_id: Mapped[int] = mapped_column(
        ForeignKey("consumer_keys.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
