"""The demo's last chapter: the customer's calls were captured, the customer rates the pictures,
and the rated ones become the next version of the training data (issue 12's loop, up to the
retraining that pipelines will run)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from gureum.cli.output import Format, console
from gureum.client import Client
from gureum.client.errors import GureumError
from gureum.client.serving import EndpointClient, RateLimited

# What the demo's customer thinks of each call's pictures, in call order (1-5).
RATINGS = (5, 4, 2, 5)
# Replicas store captured calls and ship feedback about every second.
SHIPPED_TIMEOUT_S = 60.0


def rate_and_curate(
    client: Client,
    url: str,
    token: str,
    endpoint: str,
    dataset: str,
    calls: list[dict[str, Any]],
    since: datetime,
    captured_before: int,
    output: Format,
) -> dict[str, Any]:
    """Rate each served call as the consumer, wait until the control plane holds this run's
    captured calls and ratings, then curate them (the calls since ``since``) into the next
    version of ``dataset``."""
    rated_before = client.endpoints.feedback(endpoint).count
    rated = []
    with EndpointClient(url, token) as consumer:
        for call, rating in zip(calls, RATINGS * len(calls), strict=False):
            _feedback(consumer, call["request_id"], rating)
            rated.append(
                {"request_id": call["request_id"], "class": call["class"], "rating": rating}
            )
    _wait_shipped(client, endpoint, captured_before + len(calls), rated_before + len(calls))
    summary = client.endpoints.feedback(endpoint)
    version = client.datasets.curate(
        dataset,
        from_endpoint=endpoint,
        since=since,
        message="the demo customer's best-rated pictures",
    )
    source = version.source or {}
    if output is Format.table:
        console.print(
            f"{len(calls)} calls captured; {summary.count} rated in all, mean "
            f"{summary.mean_rating or 0:.1f}; curated [bold]{version.dataset}:{version.version}"
            f"[/bold]: {source.get('samples_added')} generated pictures rated 4 or more added "
            f"to {source.get('base')} as training data (capped at a quarter of the training "
            "pictures; the held-out pictures stay the base's)",
            soft_wrap=True,
        )
    return {
        "ratings": rated,
        "mean_rating": summary.mean_rating,
        "curated": f"{version.dataset}:{version.version}",
        "source": source,
    }


def _feedback(consumer: EndpointClient, request_id: str, rating: int) -> None:
    """One rating; over the plan's rate limit, wait as told and send it again."""
    for _ in range(3):
        try:
            consumer.feedback(request_id, rating=rating, note="demo customer")
            return
        except RateLimited as exc:
            if exc.code != "rate_limited":
                raise
            time.sleep(exc.retry_after or 1.0)
    consumer.feedback(request_id, rating=rating, note="demo customer")


def _wait_shipped(client: Client, endpoint: str, captured: int, rated: int) -> None:
    deadline = time.monotonic() + SHIPPED_TIMEOUT_S
    while time.monotonic() < deadline:
        if (
            client.endpoints.capture(endpoint).captured >= captured
            and client.endpoints.feedback(endpoint).count >= rated
        ):
            return
        time.sleep(0.5)
    raise GureumError(
        f"the endpoint's captured calls and ratings did not reach the control plane within "
        f"{SHIPPED_TIMEOUT_S:.0f} s",
        code="capture",
    )
