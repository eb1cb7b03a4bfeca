"""The Python SDK: a typed REST client. The CLI uses nothing else to talk to the server."""

from __future__ import annotations

from typing import Any

import httpx

from gureum.client.base import Transport, resolve
from gureum.client.budgets import BudgetsAPI
from gureum.client.consumers import ConsumersAPI, PlansAPI
from gureum.client.datasets import DatasetsAPI
from gureum.client.endpoints import EndpointsAPI
from gureum.client.errors import GureumError
from gureum.client.jobs import JobsAPI
from gureum.client.models import ModelsAPI
from gureum.client.pipelines import PipelinesAPI
from gureum.client.planner import PlannerAPI
from gureum.client.secrets import SecretsAPI
from gureum.client.serving import EndpointClient, PredictResult
from gureum.client.site_settings import SettingsAPI
from gureum.client.tenancy import AuditAPI, KeysAPI, UsersAPI, WorkspacesAPI
from gureum.client.usage import CostsAPI, InvoicesAPI, UsageAPI


class Client:
    """Talks to one gureum server as one API key.

    With no arguments it uses GUREUM_URL / GUREUM_API_KEY, else the credentials `gureum up`
    wrote under GUREUM_HOME.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        url, api_key = resolve(url, api_key)
        kwargs: dict[str, Any] = {"http": http}
        if timeout is not None:
            kwargs["timeout"] = timeout
        self._t = Transport(url, api_key, **kwargs)
        self.url = url
        self.datasets = DatasetsAPI(self._t)
        self.workspaces = WorkspacesAPI(self._t)
        self.users = UsersAPI(self._t)
        self.keys = KeysAPI(self._t)
        self.audit = AuditAPI(self._t)
        self.models = ModelsAPI(self._t)
        self.jobs = JobsAPI(self._t)
        self.plans = PlansAPI(self._t)
        self.consumers = ConsumersAPI(self._t)
        self.usage = UsageAPI(self._t)
        self.invoices = InvoicesAPI(self._t)
        self.costs = CostsAPI(self._t)
        self.budgets = BudgetsAPI(self._t)
        self.endpoints = EndpointsAPI(self._t)
        self.settings = SettingsAPI(self._t)
        self.secrets = SecretsAPI(self._t)
        self.pipelines = PipelinesAPI(self._t)
        self.planner = PlannerAPI(self._t)

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self._t.json("GET", "/v1/health")
        return result

    def ready(self) -> dict[str, Any]:
        """Whether the server reaches its database and artifact store."""
        result: dict[str, Any] = self._t.json("GET", "/v1/health/ready")
        return result

    def whoami(self) -> dict[str, Any]:
        result: dict[str, Any] = self._t.json("GET", "/v1/whoami")
        return result

    def close(self) -> None:
        self._t.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Client", "EndpointClient", "EndpointsAPI", "GureumError", "JobsAPI", "PredictResult"]
