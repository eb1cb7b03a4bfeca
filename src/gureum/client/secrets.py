"""SDK for workspace secrets (values go in, never come back)."""

from __future__ import annotations

from gureum.client.base import Transport, segment
from gureum.schemas.secrets import SecretOut


class SecretsAPI:
    def __init__(self, t: Transport) -> None:
        self._t = t

    def set(self, name: str, value: str) -> SecretOut:
        """Create or replace a secret; script jobs get it as the environment variable NAME."""
        data = self._t.json("PUT", f"/v1/secrets/{segment(name)}", json={"value": value})
        return SecretOut.model_validate(data)

    def list(self) -> list[SecretOut]:
        return [SecretOut.model_validate(s) for s in self._t.json("GET", "/v1/secrets")]

    def delete(self, name: str) -> None:
        self._t.json("DELETE", f"/v1/secrets/{segment(name)}")
