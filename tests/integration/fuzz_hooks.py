"""schemathesis hooks for the API fuzz test: send tar uploads as raw bytes (random bytes make a
malformed archive, which must be a 400, not a crash); tie the data plane's Idempotency-Keys to
their request bodies."""

import hashlib

import schemathesis

schemathesis.serializer.alias("application/x-tar", "application/octet-stream")


@schemathesis.hook
def map_case(context: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
    """Data plane: an Idempotency-Key names one request body, as a client uses it. Generated
    keys repeat (hypothesis favours "0"), so most calls were 422s for a key reused with another
    body; tied to the body, a repeat is a replay instead (which must not be billed), and the
    reuse rule keeps its own tests (tests/unit/test_metering_abuse.py)."""
    headers = case.headers or {}
    name = next((k for k in headers if k.lower() == "idempotency-key"), None)
    value = headers.get(name) if name is not None else None
    if "/v1/endpoints/" in case.path and isinstance(value, str) and 0 < len(value) <= 100:
        digest = hashlib.sha256(repr(case.body).encode()).hexdigest()[:12]
        headers[name] = f"{value}.{digest}"  # type: ignore[index]
    return case
