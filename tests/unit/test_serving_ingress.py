"""A replica's HTTP ingress and the data plane's router, without Ray: the official ``openai``
client against a real ``ModelServer`` (``GET /models``, bounded prompts), model errors kept out
of answers, OpenAI streams capped per key and stopped when the key is revoked, and a router
that limits bodies before reading them and reaches only the applications its table names.

The replica's core (keys, metering) is a small fake with the same methods: what is tested here
is the ingress, not the key table (tests/unit/test_serving_replica.py, test_serving_access.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import httpx2
import openai
import pytest
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gureum.serving import deployment
from gureum.serving.access import Caller
from gureum.serving.capture import new_request_id, who_of
from gureum.serving.deployment import ModelServer
from gureum.serving.openai_compat import MAX_PROMPT_CHARS
from gureum.serving.replica import Reply, error_reply
from gureum.serving.router import EndpointRouter
from gureum.serving.spec import ModelRef, TrafficConfig

KEY = "gck_k1_s3cret"
LABEL = "shop:1"
BASE = "http://data-plane.test/v1/endpoints/shop"
SECRET_TEXT = "/home/gureum/.gureum/credentials.json: token gk_1_abcdef"


class Scripted:
    """A text predictor with a fixed answer; ``fail`` makes it raise with a revealing text,
    ``after_piece`` runs after each streamed piece (to revoke a key mid-stream)."""

    def __init__(self) -> None:
        self.fail = False
        self.after_piece: Any = None
        self.pieces = ["Linen", ".", " Wool", "."]

    def predict(self, inputs: list[Any]) -> list[Any]:
        if self.fail:
            raise RuntimeError(SECRET_TEXT)
        usage = {"prompt_tokens": 3, "completion_tokens": 2}
        return [{"text": "Linen.", "usage": usage, "finish_reason": "stop"} for _ in inputs]

    def stream(self, item: Any) -> Scripted.Live:
        return Scripted.Live(self)

    class Live:
        def __init__(self, owner: Scripted) -> None:
            self.owner = owner
            self.prompt_tokens, self.completion_tokens = 3, 0
            self.finish_reason: str | None = None

        def __iter__(self) -> Iterator[str]:
            for piece in self.owner.pieces:
                if self.owner.fail:
                    raise RuntimeError(SECRET_TEXT)
                self.completion_tokens += 1
                yield piece
                if self.owner.after_piece is not None:
                    self.owner.after_piece(self.completion_tokens)
            self.finish_reason = "stop"


class FakeCore:
    """What ModelServer uses of ReplicaCore: one consumer key ``k1``, records kept."""

    def __init__(self, predictor: Scripted, recipe: str = "text-generator") -> None:
        self.spec = SimpleNamespace(endpoint="shop", max_request_bytes=MAX_PROMPT_CHARS * 8)
        self.model = ModelRef(version_id=1, label=LABEL, recipe=recipe, files=[])
        self.predictor = predictor
        self.access = SimpleNamespace(
            knows=lambda key_id: key_id in self.keys,
            stale=lambda: self.stale,
            give_back=lambda caller: None,
        )
        self.keys = {"k1"}
        self.stale = False
        self.in_flight = 0
        self.cold_start_ms: float | None = None
        self.batch_sizes: Counter[int] = Counter()
        self.records: list[tuple[str, int]] = []
        # No capture configured: unsigned request ids, nothing kept.
        self.capture = SimpleNamespace(
            request_id=lambda caller: new_request_id(None, "shop", who_of(caller)),
            keep=lambda *call: False,
        )

    async def admit(self, authorization: str | None) -> Caller | Reply:
        if authorization == f"Bearer {KEY}" and "k1" in self.keys:
            return Caller(7, "acme", "k1")
        return error_reply(401, "unauthorized", "this key is unknown, revoked or not for this")

    def idempotent(self, caller: Caller, request_key: str | None, body: bytes | None) -> Caller:
        return caller

    def remember(self, caller: Caller, reply: Reply) -> None:
        pass

    def first_request_waited(self) -> float | None:
        return None

    def record(self, caller: Caller, route: str, status: int, *rest: Any, **kw: Any) -> None:
        self.records.append((route, status))

    def close(self) -> None:
        pass


def make_server(core: FakeCore, streams: int = 4) -> ModelServer:
    """A ModelServer as Ray Serve holds it after ``reconfigure``, minus Ray."""
    s = ModelServer.__new__(ModelServer)
    s._core = core  # type: ignore[assignment]
    s._handles = {}
    s._predict_ms = float("inf")
    s._streams = Counter()
    s._loaded_at = 1_700_000_000
    s.traffic = TrafficConfig(model=core.model, max_batch_size=1, max_streams_per_key=streams)
    return s


def asgi_of(server: ModelServer) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        response = await server(Request(scope, receive))
        await response(scope, receive, send)

    return app


@pytest.fixture
def predictor() -> Scripted:
    return Scripted()


@pytest.fixture
def core(predictor: Scripted) -> FakeCore:
    return FakeCore(predictor)


def client_for(server: ModelServer, key: str = KEY) -> openai.AsyncOpenAI:
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=asgi_of(server)))
    return openai.AsyncOpenAI(base_url=BASE, api_key=key, http_client=http, max_retries=0)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- OpenAI routes: models, bounded prompts ------------------------------------------------------


def test_the_openai_client_lists_and_retrieves_the_endpoints_model(core: FakeCore) -> None:
    async def go() -> None:
        async with client_for(make_server(core)) as client:
            page = await client.models.list()
            assert [(m.id, m.object, m.owned_by) for m in page.data] == [(LABEL, "model", "shop")]
            model = await client.models.retrieve(LABEL)
            assert (model.id, model.created) == (LABEL, 1_700_000_000)
            with pytest.raises(openai.NotFoundError):
                await client.models.retrieve("other:1")
            # The label it lists is a model name its completions accept.
            answer = await client.chat.completions.create(
                model=LABEL, messages=[{"role": "user", "content": "hi"}]
            )
            assert answer.choices[0].message.content == "Linen."
        async with client_for(make_server(core), key="gck_k9_nope") as stranger:
            with pytest.raises(openai.AuthenticationError):
                await stranger.models.list()

    run(go())
    assert [r for r in core.records if r[0].startswith("models")] == []  # no model ran


def test_models_answer_get_only_and_only_for_text_generators(predictor: Scripted) -> None:
    async def go() -> None:
        s = make_server(FakeCore(predictor))
        posted = await s._ingress("models", "POST", {"authorization": f"Bearer {KEY}"}, b"", None)
        assert posted.status_code == 405
        tabular = make_server(FakeCore(predictor, recipe="tabular"))
        r = await tabular._ingress("models", "GET", {"authorization": f"Bearer {KEY}"}, b"", None)
        assert r.status_code == 404 and json.loads(bytes(r.body))["error"]["code"] == "not_found"

    run(go())


def test_a_multi_megabyte_prompt_is_refused_not_echoed(core: FakeCore) -> None:
    huge = "x" * (3 * 1024 * 1024)

    async def go() -> None:
        async with client_for(make_server(core)) as client:
            with pytest.raises(openai.APIStatusError) as refused:
                await client.completions.create(model=LABEL, prompt=huge)
            assert refused.value.status_code == 413
            body = refused.value.response.json()
            assert body["error"]["code"] == "payload_too_large"
            assert len(refused.value.response.content) < 1000
            with pytest.raises(openai.BadRequestError) as echo:
                await client.completions.create(model=LABEL, prompt="hi", echo=True)
            assert "echo" in echo.value.response.json()["error"]["message"]
            # A role the size of the prompt is not quoted back whole either.
            with pytest.raises(openai.BadRequestError) as role:
                await client.chat.completions.create(
                    model=LABEL,
                    messages=[{"role": "y" * 100_000, "content": "hi"}],  # type: ignore[misc, list-item]
                )
            assert len(role.value.response.content) < 1000

    run(go())


# -- model errors -----------------------------------------------------------------------------


def test_a_model_error_is_answered_with_a_request_id_and_logged_in_full(
    core: FakeCore, predictor: Scripted, caplog: pytest.LogCaptureFixture
) -> None:
    predictor.fail = True
    logging.getLogger("ray.serve.gureum").addHandler(caplog.handler)
    caplog.set_level(logging.ERROR, logger="ray.serve.gureum")

    async def go() -> Response:
        s = make_server(core)
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
        headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
        return await s._ingress("chat/completions", "POST", headers, body, None)

    try:
        r = run(go())
    finally:
        logging.getLogger("ray.serve.gureum").removeHandler(caplog.handler)
    error = json.loads(bytes(r.body))["error"]
    assert r.status_code == 500 and error["code"] == "model_error"
    rid = error["details"]["request_id"]
    assert rid.startswith("req_") and rid in error["message"] and r.headers["x-request-id"] == rid
    assert "credentials" not in bytes(r.body).decode() and "RuntimeError" not in error["message"]
    logged = "\n".join(rec.getMessage() + (rec.exc_text or "") for rec in caplog.records)
    assert rid in logged and SECRET_TEXT in caplog.text


# -- streams: a cap per key, the key looked up again ----------------------------------------------


def stream_request(s: ModelServer, key: str = KEY) -> Any:
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    return s._ingress("chat/completions", "POST", headers, body, None)


async def drain(response: Response) -> bytes:
    assert isinstance(response, StreamingResponse)
    body_iterator: AsyncIterator[Any] = response.body_iterator
    return b"".join([c if isinstance(c, bytes) else c.encode() async for c in body_iterator])


def test_a_key_holds_at_most_max_streams_per_key_open(core: FakeCore) -> None:
    async def go() -> None:
        s = make_server(core, streams=2)
        first, second = await stream_request(s), await stream_request(s)
        assert isinstance(first, StreamingResponse) and isinstance(second, StreamingResponse)
        third = await stream_request(s)
        assert third.status_code == 429
        assert json.loads(bytes(third.body))["error"]["code"] == "too_many_streams"
        assert b"[DONE]" in await drain(first)  # a finished stream frees its place
        fourth = await stream_request(s)
        assert isinstance(fourth, StreamingResponse)
        # A stream whose client left before it began is freed by the response's background
        # task (the generator never ran).
        assert second.background is not None and fourth.background is not None
        await second.background()
        await fourth.background()
        assert s._streams == Counter()
        assert (await stream_request(s)).status_code == 200

    run(go())


@pytest.mark.parametrize("how", ["revoked", "stale"])
def test_a_key_revoked_mid_stream_stops_the_stream(
    core: FakeCore, predictor: Scripted, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Revoked (the refreshed key table no longer has it), or no longer known to be valid (the
    table is older than max_key_staleness_s): the stream stops."""
    monkeypatch.setattr(deployment, "KEY_RECHECK_S", 0.0)

    def revoke_after(n: int) -> None:
        if n == 2 and how == "revoked":
            core.keys.discard("k1")
        elif n == 2:
            core.stale = True

    predictor.after_piece = revoke_after

    async def go() -> None:
        async with client_for(make_server(core)) as client:
            stream = await client.chat.completions.create(
                model=LABEL, messages=[{"role": "user", "content": "hi"}], stream=True
            )
            got = []
            with pytest.raises(openai.APIError, match="revoked"):
                async for chunk in stream:
                    got.append(chunk.choices[0].delta.content)
            assert got[1:] == ["Linen", "."]  # the role chunk, then two pieces, then stopped

    run(go())
    assert core.records[-1] == ("chat/completions", 401)


def test_a_model_error_mid_stream_is_an_error_event_with_a_request_id(
    core: FakeCore, predictor: Scripted
) -> None:
    async def go() -> bytes:
        s = make_server(core)
        response = await stream_request(s)
        predictor.fail = True
        return await drain(response)

    data = run(go()).decode()
    assert '"code":"model_error"' in data and "req_" in data and "credentials" not in data
    assert core.records[-1] == ("chat/completions", 500)


# -- the router ------------------------------------------------------------------------------------


class FakeHandle:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, int]] = []
        self.fail = fail
        self.http = SimpleNamespace(remote=self._remote)

    def _remote(self, path: str, method: str, headers: Any, body: bytes, at: float) -> Any:
        self.calls.append((path, len(body)))

        async def answer() -> tuple[int, bytes, dict[str, str]]:
            if self.fail:
                raise RuntimeError(f"ActorDiedError: {SECRET_TEXT}")
            return 200, b'{"ok":true}', {"content-type": "application/json"}

        return answer()


def router_with(handles: dict[str, FakeHandle]) -> tuple[EndpointRouter, list[str]]:
    router = EndpointRouter()
    router.reconfigure(
        {
            "endpoints": {
                "shop": {"app": "ep-7", "bound_s": 5.0, "max_request_bytes": 2048},
                "big": {"app": "ep-8", "bound_s": 5.0, "max_request_bytes": 1 << 20},
            }
        }
    )
    looked_up: list[str] = []

    def handle(app: str) -> Any:
        looked_up.append(app)
        return handles.get(app)

    router._handle = handle  # type: ignore[method-assign]
    return router, looked_up


async def send(router: EndpointRouter, path: str, body: bytes = b"{}") -> Response:
    chunks = [body[i : i + 1024] for i in range(0, len(body), 1024)] or [b""]
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    # No Content-Length: a chunked upload is counted as it is read.
    scope = {"type": "http", "method": "POST", "path": path, "headers": [], "query_string": b""}
    return await router(Request(scope, receive))


def test_the_router_limits_bodies_before_reading_them_whole() -> None:
    shop = FakeHandle()
    router, _ = router_with({"ep-7": shop, "ep-8": FakeHandle()})

    async def go() -> None:
        r = await send(router, "/v1/endpoints/shop/predict", b"x" * 5000)
        assert r.status_code == 413
        assert json.loads(bytes(r.body))["error"]["code"] == "payload_too_large"
        assert shop.calls == []
        ok = await send(router, "/v1/endpoints/shop/predict", b"x" * 2000)
        assert ok.status_code == 200 and shop.calls == [("/v1/endpoints/shop/predict", 2000)]
        big = await send(router, "/v1/endpoints/big/predict", b"x" * 5000)
        assert big.status_code == 200  # each endpoint's own limit

    run(go())


def test_the_router_reaches_only_the_applications_its_table_names() -> None:
    shop = FakeHandle()
    router, looked_up = router_with({"ep-7": shop, "gureum-router": FakeHandle()})

    async def go() -> None:
        for path in (
            "/v1/endpoints/gureum-router/predict",
            "/v1/endpoints/ep-7/predict",
            "/v1/endpoints/shop--canary/predict",
            "/v1/endpoints/nobody/predict",
            "/elsewhere",
        ):
            r = await send(router, path)
            assert r.status_code == 404, path
            assert json.loads(bytes(r.body))["error"]["code"] == "not_found"
        assert looked_up == []
        assert (await send(router, "/v1/endpoints/shop/predict")).status_code == 200
        assert looked_up == ["ep-7"]

    run(go())


def test_the_routers_failures_carry_a_request_id_not_rays_error_text() -> None:
    router, _ = router_with({"ep-7": FakeHandle(fail=True)})
    r = run(send(router, "/v1/endpoints/shop/predict"))
    error = json.loads(bytes(r.body))["error"]
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert error["code"] == "unavailable" and error["details"]["request_id"] in error["message"]
    assert "credentials" not in bytes(r.body).decode() and "ActorDied" not in error["message"]
