"""A replica's work outside Ray Serve, with a fake model and a fake control plane: who gets in,
what each served request is metered as, cold starts and the gauges shipped with usage."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from gureum.schemas.capture import CaptureBatch, CaptureSettings
from gureum.schemas.metering import (
    OUTPUT_CHARS,
    AccessKey,
    AccessSnapshot,
    LeaseGranted,
    UsageBatch,
)
from gureum.server.services.endpoint_stats import LiveGauges
from gureum.serving import replica as replica_module
from gureum.serving.access import Caller
from gureum.serving.replica import ControlPlane, ReplicaCore, Reply, load_predictor
from gureum.serving.spec import ModelRef, ReplicaSpec
from gureum.serving.spool import Ship, UsageSpool

TOKEN = "gck_k1_s3cret"
MEMBER = "gk_m1_team"


class FakePredictor:
    def predict(self, inputs: list[Any]) -> list[Any]:
        return [{"y": 1} for _ in inputs]


class FakeControl(ControlPlane):
    """The control plane as a replica sees it; ``down`` makes every call fail like httpx does.
    Leases follow the server's rule: never more than a consumer's quota in all."""

    def __init__(
        self,
        keys: list[AccessKey],
        replicas: int = 1,
        staleness: float = 300.0,
        block: int = 100,
    ) -> None:
        self.keys = keys
        self.replicas = replicas
        self.staleness = staleness
        self.block = block
        self.down = False
        self.access_calls = 0
        self.lease_calls = 0
        self.leased: dict[int, int] = {}
        self.batches: list[UsageBatch] = []
        self.captured: list[CaptureBatch] = []
        self.capture: CaptureSettings | None = None
        self.closed = False
        self._lock = threading.Lock()

    def access(self) -> AccessSnapshot:
        self.access_calls += 1
        if self.down:
            raise httpx.ConnectError("control plane down")
        return AccessSnapshot(
            endpoint="shop",
            keys=list(self.keys),
            replicas=self.replicas,
            generated_at=datetime.now(UTC),
            max_staleness_s=self.staleness,
            capture=self.capture,
        )

    def lease(self, consumer_id: int, release: int = 0) -> LeaseGranted:
        if self.down:
            raise httpx.ConnectError("control plane down")
        quota = next(k.monthly_quota for k in self.keys if k.consumer_id == consumer_id)
        with self._lock:  # the server's row lock
            self.lease_calls += 1
            held = max(0, self.leased.get(consumer_id, 0) - release)
            granted = 0 if release or quota is None else max(0, min(self.block, quota - held))
            self.leased[consumer_id] = held + granted
        return LeaseGranted(
            consumer_id=consumer_id, granted=granted, monthly_quota=quota, period="2026-12"
        )

    def ship(self, batch: UsageBatch) -> None:
        if self.down:
            raise httpx.ConnectError("control plane down")
        self.batches.append(batch)

    def ship_captured(self, rows: list[dict[str, Any]]) -> None:
        if self.down:
            raise httpx.ConnectError("control plane down")
        self.captured.append(CaptureBatch.model_validate_json(json.dumps({"records": rows})))

    def close(self) -> None:
        self.closed = True

    @property
    def records(self) -> list[dict[str, Any]]:
        return [r.model_dump() for b in self.batches for r in b.records]


def key(
    key_id: str,
    secret: str,
    consumer_id: int | None,
    name: str,
    *,
    rate_limit: float | None = None,
    quota: int | None = None,
) -> AccessKey:
    return AccessKey(
        key_id=key_id,
        secret_hash=hashlib.sha256(secret.encode()).hexdigest(),
        kind="consumer" if consumer_id is not None else "member",
        consumer_id=consumer_id,
        consumer_name=name,
        rate_limit=rate_limit,
        monthly_quota=quota,
    )


MODEL_FIELDS = ("version_id", "label", "recipe", "files")


def model(**over: Any) -> ModelRef:
    data: dict[str, Any] = {
        "version_id": 42,
        "label": "returns:3",
        "recipe": "tabular",
        "files": [],
    }
    return ModelRef.model_validate({**data, **{k: v for k, v in over.items() if k in MODEL_FIELDS}})


def spec(tmp_path: Path, **over: Any) -> ReplicaSpec:
    over = {k: v for k, v in over.items() if k not in MODEL_FIELDS}
    data: dict[str, Any] = {
        "endpoint": "shop",
        "endpoint_id": 1,
        "workspace_id": 1,
        "role": "primary",
        "artifacts": str(tmp_path / "artifacts"),
        "control_url": "http://127.0.0.1:9",
        "token": "gst_x",
        "spool_dir": str(tmp_path / "serving" / "spool"),
        "max_request_bytes": 1 << 20,
    }
    return ReplicaSpec.model_validate({**data, **over})


class QuietSpool(UsageSpool):
    """Ships only when the test says so (flush, close): no background shipment races it."""

    def __init__(
        self,
        folder: Path,
        endpoint: str,
        ship: Ship,
        interval_s: float = 1.0,
        max_bytes: int | None = None,
    ) -> None:
        super().__init__(folder, endpoint, ship, interval_s=3600.0, max_bytes=max_bytes)


class Make:
    """Builds replicas and closes them all at the end of the test (they run threads)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.made: list[ReplicaCore] = []

    def __call__(self, control: FakeControl | None = None, **over: Any) -> ReplicaCore:
        control = control or FakeControl(
            [key("k1", "s3cret", 7, "acme", rate_limit=1), key("m1", "team", None, "member:ann")]
        )
        # One spool folder per replica: a spool file is named after its process.
        folder = self.tmp_path / f"r{len(self.made)}"
        core = ReplicaCore(
            spec(folder, **over), model(**over), predictor=FakePredictor(), control=control
        )
        self.made.append(core)
        return core


@pytest.fixture
def make(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Make]:
    monkeypatch.setattr(replica_module, "UsageSpool", QuietSpool)
    monkeypatch.setattr(replica_module, "REFRESH_S", 3600.0)
    m = Make(tmp_path)
    yield m
    for core in m.made:
        control = core.control
        assert isinstance(control, FakeControl)
        control.down = False
        core.close()


def control_of(core: ReplicaCore) -> FakeControl:
    assert isinstance(core.control, FakeControl)
    return core.control


def admit(core: ReplicaCore, authorization: str | None) -> Caller | Reply:
    """What the ingress does with a request's Authorization header."""
    return asyncio.run(core.admit(authorization))


def caller(result: Caller | Reply) -> Caller:
    assert isinstance(result, Caller), result
    return result


def refused(result: Caller | Reply) -> tuple[int, str, dict[str, str]]:
    assert isinstance(result, Reply), result
    return result.status, json.loads(result.body)["error"]["code"], result.headers


# -- who gets in -----------------------------------------------------------------------------------


def test_consumer_and_member_keys_are_let_in_others_are_401(make: Make) -> None:
    core = make()
    assert caller(admit(core, f"Bearer {TOKEN}")) == Caller(7, "acme", "k1")
    assert caller(admit(core, f"Bearer {MEMBER}")).consumer_id is None
    status, code, headers = refused(admit(core, "Bearer gck_k1_wrong"))
    assert (status, code) == (401, "unauthorized")
    assert headers["content-type"] == "application/json" and "retry-after" not in headers
    assert refused(admit(core, None))[0] == 401


def test_rate_limited_reply_is_429_with_a_retry_after_header(make: Make) -> None:
    core = make()
    caller(admit(core, f"Bearer {TOKEN}"))
    status, code, headers = refused(admit(core, f"Bearer {TOKEN}"))
    assert (status, code) == (429, "rate_limited")
    assert headers["retry-after"] == "1"


def test_exhausted_quota_reply_says_when_it_resets(make: Make) -> None:
    core = make(FakeControl([key("k1", "s3cret", 7, "acme", quota=2)]))
    for _ in range(2):
        who = caller(admit(core, f"Bearer {TOKEN}"))
        core.record(who, "predict", 200, 1.0, 3.0)
    reply = admit(core, f"Bearer {TOKEN}")
    assert isinstance(reply, Reply) and reply.status == 429
    error = json.loads(reply.body)["error"]
    assert error["code"] == "quota_exhausted" and "resets on" in error["message"]
    assert int(reply.headers["retry-after"]) >= 1


def test_a_quota_call_waits_for_a_lease_and_fails_closed_without_one(make: Make) -> None:
    control = FakeControl([key("k1", "s3cret", 7, "acme", quota=50)])
    core = make(control)
    control.down = True
    status, code, headers = refused(admit(core, f"Bearer {TOKEN}"))
    assert (status, code, headers["retry-after"]) == (503, "quota_unavailable", "1")
    control.down = False
    assert caller(admit(core, f"Bearer {TOKEN}")).leased
    assert control.leased == {7: 50}


def test_until_the_keys_are_fetched_callers_get_503_then_get_in(make: Make) -> None:
    control = FakeControl([key("k1", "s3cret", 7, "acme")])
    control.down = True
    core = make(control)
    status, code, headers = refused(admit(core, f"Bearer {TOKEN}"))
    assert (status, code, headers["retry-after"]) == (503, "starting", "1")
    control.down = False
    assert core.refresh() is True
    assert caller(admit(core, f"Bearer {TOKEN}")).name == "acme"


def test_failing_refresh_keeps_the_keys_it_had(make: Make) -> None:
    core = make()
    control_of(core).down = True
    assert core.refresh() is False
    assert caller(admit(core, f"Bearer {TOKEN}")).consumer_id == 7


def test_a_key_made_after_the_snapshot_is_looked_up_again(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replica_module, "UNKNOWN_KEY_REFRESH_S", 0.05)
    core = make()
    control = control_of(core)
    control.keys.append(key("k9", "fresh", 9, "newco"))
    before = control.access_calls
    assert caller(admit(core, "Bearer gck_k9_fresh")).name == "newco"
    assert control.access_calls == before + 1
    # A known key never costs a lookup.
    caller(admit(core, f"Bearer {MEMBER}"))
    assert control.access_calls == before + 1


def test_a_new_key_while_the_control_plane_is_down_is_503_to_retry_not_401(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replica_module, "UNKNOWN_KEY_REFRESH_S", 0.0)
    core = make()
    control = control_of(core)
    control.keys.append(key("k9", "fresh", 9, "newco"))
    control.down = True
    status, code, headers = refused(admit(core, "Bearer gck_k9_fresh"))
    assert (status, code, headers["retry-after"]) == (503, "keys_unconfirmed", "1")
    control.down = False  # the SDK's retry then gets in; a made-up key is still 401
    assert caller(admit(core, "Bearer gck_k9_fresh")).name == "newco"
    assert refused(admit(core, "Bearer gck_nope_x"))[:2] == (401, "unauthorized")


def test_a_key_lookup_waits_for_the_background_fetch_that_began_after_the_call(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The background loop's fetch, begun after the call came in but not yet answered, may
    hold the key: the lookup waits for it rather than refusing with the older table."""
    monkeypatch.setattr(replica_module, "UNKNOWN_KEY_REFRESH_S", 60.0)  # no fetch of its own
    core = make()
    control = control_of(core)
    control.keys.append(key("k9", "fresh", 9, "newco"))
    began, answer = threading.Event(), threading.Event()
    fetch = control.access

    def slow_access() -> AccessSnapshot:
        began.set()
        answer.wait(5)
        return fetch()

    control.access = slow_access  # type: ignore[method-assign]

    async def main() -> bool:
        since = time.monotonic()
        background = threading.Thread(target=core.refresh)
        background.start()
        await asyncio.to_thread(began.wait, 5)
        threading.Timer(0.2, answer.set).start()
        await core._refreshed_since(since)
        knows = core.access.knows("k9")
        await asyncio.to_thread(background.join, 5)
        return knows

    assert asyncio.run(main()) is True


# -- metering --------------------------------------------------------------------------------------


def test_every_served_request_is_shipped_as_one_usage_record(make: Make) -> None:
    core = make()
    acme = caller(core.authorize(f"Bearer {TOKEN}"))
    team = caller(core.authorize(f"Bearer {MEMBER}"))
    core.record(acme, "predict", 200, 3.0, 12.3456)
    core.record(acme, "predict", 422, 5.0, 1.0)
    core.record(team, "predict", 200, 1.0, 2.0)
    core.spool.flush()
    records = control_of(core).records
    assert len(records) == 3 and len({r["id"] for r in records}) == 3
    first = records[0]
    assert (first["consumer_id"], first["consumer_name"]) == (7, "acme")
    assert (first["model_version_id"], first["model_label"]) == (42, "returns:3")
    assert (first["role"], first["route"], first["status"]) == ("primary", "predict", 200)
    assert (first["units"], first["unit"], first["latency_ms"]) == (3.0, "row", 12.346)
    assert first["cold_start"] is False
    assert records[1]["units"] == 0.0  # a refused request is not billed for units
    assert (records[2]["consumer_id"], records[2]["consumer_name"]) == (None, "member:ann")
    # Each batch carries the replica's gauges.
    gauges = control_of(core).batches[0].gauges
    assert [g.replica for g in gauges] == [core.replica] and gauges[0].role == "primary"


def test_a_canary_replica_meters_as_canary(make: Make) -> None:
    core = make(role="canary")
    core.record(Caller(7, "acme", "k1"), "predict", 200, 1.0, 1.0)
    core.spool.flush()
    assert [r["role"] for r in control_of(core).records] == ["canary"]
    assert core.replica.startswith("shop-canary-")


def test_usage_waits_in_the_spool_while_the_control_plane_is_down(make: Make) -> None:
    core = make()
    control = control_of(core)
    control.down = True
    core.record(Caller(7, "acme", "k1"), "predict", 200, 1.0, 1.0)
    with pytest.raises(httpx.ConnectError):
        core.spool.flush()
    control.down = False
    core.close()  # shutdown ships what is left
    assert len(control.records) == 1 and control.closed


def test_shadow_answers_are_shipped_apart_and_truncated(make: Make) -> None:
    core = make(role="shadow")
    reply = Reply(200, b"x" * (OUTPUT_CHARS + 50))
    primary = {"status": 200, "latency_ms": 4.0, "output": "y" * (OUTPUT_CHARS + 50)}
    core.record_shadow(reply, 9.0, primary, reply.body)
    core.spool.flush()
    batch = control_of(core).batches[0]
    assert batch.records == [] and len(batch.shadow) == 1
    shadow = batch.shadow[0]
    assert (shadow.model_label, shadow.status, shadow.primary_latency_ms) == ("returns:3", 200, 4.0)
    assert len(shadow.output) == OUTPUT_CHARS and len(shadow.primary_output) == OUTPUT_CHARS


# -- cold starts and gauges ----------------------------------------------------------------------


def test_a_request_that_waited_for_the_replica_is_metered_as_a_cold_start(make: Make) -> None:
    core = make()
    assert core.gauges().cold_start_ms is None  # nothing waited yet
    core.cold_start_ms = 1234.0  # what the ingress measured for a request the router held
    core.record(Caller(7, "acme", "k1"), "predict", 200, 1.0, 1300.0, cold=True)
    core.record(Caller(7, "acme", "k1"), "predict", 200, 1.0, 5.0)
    core.spool.flush()
    assert [r["cold_start"] for r in control_of(core).records] == [True, False]
    assert control_of(core).batches[0].gauges[0].cold_start_ms == 1234.0


def test_usage_ids_of_one_call_share_its_name_but_each_computation_is_its_own(
    make: Make,
) -> None:
    core = make()
    retry = Caller(7, "acme", "k1", request_key="call-1", request_hash="ab" * 32)
    for _ in range(2):
        core.record(retry, "predict", 200, 1.0, 3.0)
    core.record(Caller(7, "acme", "k1"), "predict", 200, 1.0, 3.0)
    core.spool.flush()
    ids = [r["id"] for r in control_of(core).records]
    assert len(set(ids)) == 3  # computed twice: billed twice, never folded into one
    assert ids[0][:20] == ids[1][:20]  # the ledger can still tell they were one call


def test_only_the_first_request_of_a_replica_started_from_zero_is_a_cold_start(
    make: Make,
) -> None:
    woken = make()
    woken.started_from_zero_at = time.time() - 7.5  # its worker process began 7.5 s ago
    waited = woken.first_request_waited()
    assert waited is not None and 7400 < waited < 60_000
    assert woken.first_request_waited() is None  # the next ones did not wait

    scaled_out = make()  # another replica was running when this one started
    assert scaled_out.first_request_waited() is None

    idle = make()  # started from zero, but its first request came long after it was up
    idle.started_from_zero_at = time.time() - 100
    idle.ready_at = time.monotonic() - replica_module.COLD_WINDOW_S - 1
    assert idle.first_request_waited() is None


def test_gauges_report_in_flight_and_batch_sizes_since_the_last_look(make: Make) -> None:
    core = make()
    core.in_flight = 3
    core.batch_sizes[4] += 2
    core.batch_sizes[1] += 1
    g = core.gauges()
    assert (g.in_flight, g.batch_sizes, g.role) == (3, {4: 2, 1: 1}, "primary")
    assert core.gauges().batch_sizes == {}  # counted once


def test_gauges_say_which_engine_runs_the_model_and_the_server_keeps_it_per_role(
    make: Make,
) -> None:
    core = make()
    assert core.gauges().engine is None  # a recipe with no choice of engine says nothing
    core.predictor.engine = "transformers-cpu"  # type: ignore[attr-defined]
    gauges = LiveGauges()
    gauges.observe("chat", UsageBatch(gauges=[core.gauges()]))
    assert gauges.engines("chat") == {"primary": "transformers-cpu"}
    assert gauges.engines("other") == {}


@pytest.mark.parametrize("recipe", [None, "script"])
def test_a_version_without_a_serving_recipe_cannot_be_loaded(
    tmp_path: Path, recipe: str | None
) -> None:
    with pytest.raises(ValueError, match="has no recipe that serves it"):
        load_predictor(spec(tmp_path), model(recipe=recipe))
