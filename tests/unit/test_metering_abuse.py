"""How a consumer might cheat the meter, tried against a replica's ingress (the deployment's
request path, without Ray: a fake model and a fake control plane), and what stops it:
Idempotency-Key replays, quota leases under concurrent clients, an old key table, made-up keys.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gureum.client.errors import GureumError
from gureum.client.serving import EndpointClient
from gureum.serving import deployment
from gureum.serving import replica as replica_module
from gureum.serving.access import Caller
from gureum.serving.idempotency import ReplayCache, Stored
from gureum.serving.replica import ReplicaCore, Reply
from tests.unit.test_serving_replica import (
    FakeControl,
    QuietSpool,
    key,
    model,
    spec,
)

ACME = "gck_k1_s3cret"
RIVAL = "gck_k2_rival"
BODY = b'{"inputs": [{"x": 1}]}'


class CountingPredictor:
    def __init__(self) -> None:
        self.calls = 0

    def predict(self, inputs: list[Any]) -> list[Any]:
        self.calls += 1
        return [{"y": self.calls} for _ in inputs]


class Replicas:
    """Replicas of one endpoint (their ingress), sharing one fake control plane."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp_path = tmp_path
        self.monkeypatch = monkeypatch
        self.servers: list[deployment.ModelServer] = []
        self.predictors: list[CountingPredictor] = []

    def make(self, control: FakeControl) -> deployment.ModelServer:
        folder = self.tmp_path / f"r{len(self.servers)}"
        predictor = CountingPredictor()

        def core(spec_: Any, model_: Any, **kw: Any) -> ReplicaCore:
            return ReplicaCore(spec_, model_, predictor=predictor, control=control, **kw)

        self.monkeypatch.setattr(deployment, "ReplicaCore", core)
        server = deployment.ModelServer(spec(folder).model_dump())
        server.reconfigure({"model": model().model_dump(), "max_batch_size": 1})
        self.servers.append(server)
        self.predictors.append(predictor)
        return server

    def close(self) -> None:
        for s in self.servers:
            control = s.core.control
            assert isinstance(control, FakeControl)
            control.down = False
            s.core.close()


@pytest.fixture
def replicas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Replicas]:
    monkeypatch.setattr(replica_module, "UsageSpool", QuietSpool)
    monkeypatch.setattr(replica_module, "REFRESH_S", 3600.0)
    r = Replicas(tmp_path, monkeypatch)
    yield r
    r.close()


def consumers(quota: int | None = None, block: int = 100, staleness: float = 300.0) -> FakeControl:
    return FakeControl(
        [key("k1", "s3cret", 7, "acme", quota=quota), key("k2", "rival", 8, "rival")],
        block=block,
        staleness=staleness,
    )


async def call(
    server: deployment.ModelServer,
    token: str = ACME,
    body: bytes = BODY,
    idempotency_key: str | None = None,
) -> tuple[int, dict[str, str], Any]:
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    if idempotency_key is not None:
        headers["idempotency-key"] = idempotency_key
    response = await server._ingress("predict", "POST", headers, body, None)
    data = bytes(response.body)
    return response.status_code, dict(response.headers), json.loads(data) if data else None


def post(server: deployment.ModelServer, **kw: Any) -> tuple[int, dict[str, str], Any]:
    return asyncio.run(call(server, **kw))


def usage(control: FakeControl, *servers: deployment.ModelServer) -> list[dict[str, Any]]:
    for s in servers:
        s.core.spool.flush()
    return control.records


# -- Idempotency-Key -------------------------------------------------------------------------------


def test_one_idempotency_key_for_every_call_does_not_make_calls_free(replicas: Replicas) -> None:
    """The finding: every call sent with the same Idempotency-Key got the same usage id, so
    the ledger kept one of them and the consumer never reached its quota."""
    control = consumers()
    server = replicas.make(control)
    statuses = []
    for i in range(5):
        body = json.dumps({"inputs": [{"x": i}]}).encode()
        status, _, data = post(server, body=body, idempotency_key="same")
        statuses.append((status, data["error"]["code"] if status >= 400 else None))
    assert statuses == [(200, None)] + [(422, "idempotency_key_reused")] * 4
    assert replicas.predictors[0].calls == 1
    records = usage(control, server)
    assert [r["status"] for r in records] == [200]  # the refused ones ran nothing


def test_a_repeat_with_the_same_body_is_replayed_and_not_billed(replicas: Replicas) -> None:
    control = consumers()
    server = replicas.make(control)
    first = post(server, idempotency_key="call-1")
    again = post(server, idempotency_key="call-1")
    assert first[0] == again[0] == 200
    assert again[2] == first[2]  # the same answer, byte for byte
    assert again[1]["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first[1]
    assert replicas.predictors[0].calls == 1
    assert len(usage(control, server)) == 1


def test_a_retry_landing_on_another_replica_is_computed_and_billed_again(
    replicas: Replicas,
) -> None:
    control = consumers()
    one, two = replicas.make(control), replicas.make(control)
    assert post(one, idempotency_key="call-1")[0] == 200
    status, headers, _ = post(two, idempotency_key="call-1")
    assert status == 200 and "idempotent-replayed" not in headers
    ids = [r["id"] for r in usage(control, one, two)]
    assert len(ids) == 2 and len(set(ids)) == 2  # two computations, two billed records
    assert ids[0][:20] == ids[1][:20]  # of one call, as the ledger can tell


def test_another_consumers_use_of_the_same_idempotency_key_is_a_new_call(
    replicas: Replicas,
) -> None:
    control = consumers()
    server = replicas.make(control)
    assert post(server, idempotency_key="shared")[0] == 200
    status, headers, _ = post(server, token=RIVAL, idempotency_key="shared")
    assert status == 200 and "idempotent-replayed" not in headers
    other_body = post(server, token=RIVAL, body=b'{"input": 2}', idempotency_key="shared")
    assert other_body[0] == 422  # the rival's own call now has its body
    assert [r["consumer_name"] for r in usage(control, server)] == ["acme", "rival"]


def test_a_failed_call_is_not_kept_so_its_retry_is_computed(replicas: Replicas) -> None:
    control = consumers()
    server = replicas.make(control)
    assert post(server, body=b'{"nope": 1}', idempotency_key="k")[0] == 400
    status, headers, _ = post(server, idempotency_key="k")  # corrected body, same key
    assert status == 200 and "idempotent-replayed" not in headers


def test_a_repeat_while_the_first_is_computed_is_told_to_wait(replicas: Replicas) -> None:
    server = replicas.make(consumers())
    core = server.core
    first = core.idempotent(Caller(7, "acme", "k1"), "busy", BODY)
    assert isinstance(first, Caller) and first.request_hash is not None
    busy = core.idempotent(Caller(7, "acme", "k1"), "busy", BODY)
    assert isinstance(busy, Reply) and busy.status == 409
    assert json.loads(busy.body)["error"]["code"] == "request_in_progress"
    assert busy.headers["retry-after"] == "1"
    too_long = core.idempotent(Caller(7, "acme", "k1"), "x" * 201, BODY)
    assert isinstance(too_long, Reply) and too_long.status == 400


def test_a_replay_spends_no_quota(replicas: Replicas) -> None:
    control = consumers(quota=2)
    server = replicas.make(control)
    for _ in range(5):
        assert post(server, idempotency_key="same")[0] == 200
    assert post(server, idempotency_key="other")[0] == 200
    status, _, data = post(server, idempotency_key="third")
    assert status == 429 and data["error"]["code"] == "quota_exhausted"


def test_the_replay_cache_is_capped_in_bytes() -> None:
    cache = ReplayCache(max_bytes=10_000, entry_bytes=4_000)
    for i in range(10):
        assert cache.begin("k1", f"call-{i}", "h") == "new"
        cache.finish("k1", f"call-{i}", "h", Stored(200, b"x" * 3_000, {}))
    assert cache.bytes <= 10_000 and len(cache) == 3
    assert cache.begin("k1", "call-0", "h") == "new"  # evicted: computed (and billed) again
    assert isinstance(cache.begin("k1", "call-9", "h"), Stored)
    # An answer too big to keep: the call's body hash is still kept.
    assert cache.begin("k1", "big", "h") == "new"
    cache.finish("k1", "big", "h", Stored(200, b"x" * 5_000, {}))
    assert cache.begin("k1", "big", "h") == "new"
    cache.finish("k1", "big", "h")
    assert cache.begin("k1", "big", "other") == "conflict"


# -- quotas ----------------------------------------------------------------------------------------


def test_a_quota_holds_under_8_concurrent_clients_over_3_replicas(replicas: Replicas) -> None:
    """The finding: each replica counted its own calls since its last snapshot and reset
    the count at every refresh, so a quota of N let through up to N per replica."""
    quota, block = 60, 7
    control = consumers(quota=quota, block=block)
    servers = [replicas.make(control) for _ in range(3)]

    async def client(n: int, served: list[int]) -> None:
        for i in range(30):
            server = servers[(n + i) % len(servers)]
            status, _, _ = await call(server)
            if status == 200:
                served.append(1)
            else:
                assert status == 429

    async def main() -> int:
        served: list[int] = []
        await asyncio.gather(*(client(n, served) for n in range(8)))
        for s in servers:  # refreshes between bursts give nobody calls back
            await asyncio.to_thread(s.core.refresh)
        await asyncio.gather(*(client(n, served) for n in range(8)))
        return len(served)

    served = asyncio.run(main())
    assert served <= quota + len(servers) * block
    assert served == quota  # leases are exact: no more, and none lost while replicas live
    assert sum(control.leased.values()) == quota
    assert len(usage(control, *servers)) == quota


def test_unused_leased_calls_go_back_at_shutdown(replicas: Replicas) -> None:
    control = consumers(quota=100, block=10)
    server = replicas.make(control)
    assert post(server)[0] == 200
    assert control.leased == {7: 10}
    server.core.close()
    assert control.leased == {7: 1}


# -- an old key table, made-up keys ---------------------------------------------------------------


def test_a_key_revoked_while_the_control_plane_is_down_is_refused_within_the_staleness(
    replicas: Replicas,
) -> None:
    control = consumers(staleness=0.5)
    server = replicas.make(control)
    assert post(server)[0] == 200
    control.down = True  # the control plane stops ...
    control.keys = [k for k in control.keys if k.key_id != "k1"]  # ... and the key is revoked
    assert server.core.refresh() is False
    time.sleep(0.6)
    status, headers, data = post(server)
    assert (status, data["error"]["code"]) == (503, "keys_stale")
    assert int(headers["retry-after"]) >= 1
    assert post(server, token=RIVAL)[0] == 503  # every key: the table cannot be trusted
    control.down = False
    assert server.core.refresh() is True
    assert post(server)[0] == 401
    assert post(server, token=RIVAL)[0] == 200


def test_made_up_keys_are_remembered_and_cost_no_more_lookups(
    replicas: Replicas, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replica_module, "UNKNOWN_KEY_REFRESH_S", 0.0)
    control = consumers()
    server = replicas.make(control)
    before = control.access_calls
    for _ in range(20):
        assert post(server, token="gck_madeup_x")[0] == 401
    assert control.access_calls == before + 1


def test_a_key_lookup_runs_off_the_event_loop(
    replicas: Replicas, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replica_module, "UNKNOWN_KEY_REFRESH_S", 0.0)
    control = consumers()
    server = replicas.make(control)
    slow = threading.Event()
    fetch = control.access

    def slow_access() -> Any:
        slow.wait(0.5)
        return fetch()

    control.access = slow_access  # type: ignore[method-assign]

    async def main() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        done = asyncio.Event()
        task = asyncio.ensure_future(ticker())
        assert (await call(server, token="gck_fresh_x"))[0] == 401
        done.set()
        await task
        return ticks

    assert asyncio.run(main()) >= 10  # the loop kept running while the table was fetched


# -- the SDK's retries -----------------------------------------------------------------------------


def test_the_sdk_retries_a_call_in_progress_with_its_key_and_body_and_sees_the_replay() -> None:
    sent: list[tuple[str | None, bytes]] = []
    answers = [
        httpx.Response(
            409,
            headers={"Retry-After": "1"},
            json={"error": {"code": "request_in_progress", "message": "wait", "details": None}},
        ),
        httpx.Response(
            200,
            headers={"Idempotent-Replayed": "true"},
            json={"outputs": [{"y": 1}], "model": "m:1", "units": 1.0, "unit": "row"},
        ),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append((request.headers.get("idempotency-key"), request.content))
        return answers[len(sent) - 1]

    slept: list[float] = []
    client = EndpointClient(
        "http://x/v1/endpoints/shop",
        ACME,
        transport=httpx.MockTransport(handler),
        sleep=slept.append,
    )
    result = client.predict([{"x": 1}])
    assert result.replayed and result.outputs == [{"y": 1}]
    assert slept == [1.0]
    assert len(sent) == 2 and sent[0] == sent[1] and sent[0][0]  # same key, same bytes


def test_the_sdk_does_not_retry_a_reused_idempotency_key() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        body = {"error": {"code": "idempotency_key_reused", "message": "no", "details": None}}
        return httpx.Response(422, json=body)

    client = EndpointClient(
        "http://x/v1/endpoints/shop", ACME, transport=httpx.MockTransport(handler)
    )
    with pytest.raises(GureumError) as err:
        client.predict([{"x": 1}])
    assert err.value.code == "idempotency_key_reused" and calls == 1
