"""The control plane fuzzed through its own OpenAPI schema (schemathesis), authenticated.

Every operation, stateful links included, with a fixed seed and a time budget: zero server
errors, every answer's status, content type and body as documented, no operation that works
without a key, nothing readable after it was deleted. Jobs only queue here (no compute
backend): Ray is not the point. Operations that would lock the run out with its own key
(revoking it, demoting or removing its user) are left out; their rules have their own tests.
So is deleting a consumer: it disables the consumer and revokes its keys but keeps it readable
(its usage and invoices name it), which the use-after-free check would call a failure;
tests/integration/test_consumers_api.py holds that rule.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import LiveServer
from tests.integration.schemathesis_run import fuzz

BUDGET_S = int(os.environ.get("GUREUM_FUZZ_SECONDS", "100"))
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "ignored_auth",
    "use_after_free",
]
LOCKOUT = r"^/v1/keys/\{key_id\}$|^/v1/users/\{name\}$"
KEPT_AFTER_DELETE = "DELETE /v1/consumers/{name}"


def _seed(server: LiveServer, tmp: Path) -> None:
    """Something to find: a dataset version, a plan and a consumer for the links to follow."""
    client = server.client()
    folder = tmp / "rows"
    folder.mkdir()
    (folder / "data.csv").write_text("x,y\n1,2\n3,4\n")
    client.datasets.push("fuzzed", folder)
    client.plans.create("basic", price_per_request=0.01)
    client.consumers.create("acme", plan="basic")


@pytest.mark.slow
def test_control_plane_survives_fuzzing(live_server: LiveServer, tmp_path: Path) -> None:
    _seed(live_server, tmp_path)
    fuzz(
        f"{live_server.url}/v1/openapi.json",
        live_server.cloud.admin_key,
        tmp_path,
        checks=CHECKS,
        budget_s=BUDGET_S,
        max_examples=25,
        extra=("--exclude-path-regex", LOCKOUT, "--exclude-name", KEPT_AFTER_DELETE),
    )
