"""SDK for site settings (read: any member; change: site admins)."""

from __future__ import annotations

from gureum.client.base import Transport, segment
from gureum.schemas.site_settings import SiteSettingsOut


class SettingsAPI:
    def __init__(self, t: Transport) -> None:
        self._t = t

    def get(self) -> SiteSettingsOut:
        """The site's settings and whether user code runs sandboxed on the server's machine."""
        return SiteSettingsOut.model_validate(self._t.json("GET", "/v1/settings"))

    def set(self, name: str, value: bool) -> SiteSettingsOut:
        """Change one site setting (site admins only; audited)."""
        data = self._t.json("PUT", f"/v1/settings/{segment(name)}", json={"value": value})
        return SiteSettingsOut.model_validate(data)
