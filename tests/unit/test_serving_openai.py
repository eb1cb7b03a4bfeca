"""The OpenAI-compatible surface of a text endpoint: requests read as OpenAI's are, answers and
server-sent events written so that the official ``openai`` client parses them unchanged.

The client talks to a small in-process handler built from the same pure functions a replica
uses, in front of a real (tiny, briefly trained) text generator.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
from openai.types import Completion, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from gureum import samples
from gureum.recipes import LocalDataset, LocalRunContext, get_recipe
from gureum.recipes.text_generator import TextPredictor
from gureum.serving import openai_compat
from gureum.serving.openai_compat import TextRequest, chat_messages, chat_prompt, parse_request
from gureum.serving.units import PayloadError, error_body

JSON = "application/json"
MODEL = "shop:1"
CHAT = "chat/completions"
USER = [{"role": "user", "content": "hi"}]
TINY = {
    "epochs": 1,
    "steps_per_epoch": 3,
    "batch_size": 4,
    "block_size": 16,
    "n_layer": 1,
    "n_head": 2,
    "n_embd": 16,
    "eval_windows": 5,
}


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> TextPredictor:
    root = tmp_path_factory.mktemp("corpus")
    samples.write("text", root, count=40)
    recipe = get_recipe("text-generator")
    out = recipe.train(
        LocalRunContext(tmp_path_factory.mktemp("run")),
        LocalDataset.from_folder(root),
        recipe.Params(**TINY),
    )
    loaded = recipe.load(out.model_dir)
    assert isinstance(loaded, TextPredictor)
    return loaded


@pytest.fixture
def client(predictor: TextPredictor) -> Iterator[openai.OpenAI]:
    """The official client, wired to a handler that answers as a replica does."""

    def handle(request: httpx2.Request) -> httpx2.Response:
        assert request.headers["authorization"] == "Bearer gk_test"
        route = request.url.path.removeprefix("/v1/endpoints/shop/")
        try:
            req = parse_request(route, request.content, request.headers.get("content-type"))
            if req.wants_stream:
                chunks = req.stream(predictor, MODEL)
                return httpx2.Response(
                    200, headers={"content-type": openai_compat.EVENT_STREAM}, content=chunks
                )
            [output] = predictor.predict([req.spec()])
            body, _ = req.response(output, MODEL)
            return httpx2.Response(200, json=body)
        except PayloadError as e:
            headers = {"content-type": JSON}
            return httpx2.Response(e.status, headers=headers, content=error_body(e.code, e.message))

    http = httpx2.Client(transport=httpx2.MockTransport(handle))
    with openai.OpenAI(
        base_url="http://data-plane.test/v1/endpoints/shop",
        api_key="gk_test",
        http_client=http,
        max_retries=0,
    ) as c:
        yield c


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def events(chunks: Iterator[bytes]) -> list[Any]:
    """The JSON of each server-sent event, and the final ``[DONE]`` as a string."""
    out: list[Any] = []
    for chunk in chunks:
        text = chunk.decode()
        assert text.startswith("data: ") and text.endswith("\n\n") and text.count("\n") == 2
        payload = text.removeprefix("data: ").strip()
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


class Scripted:
    """A streaming predictor whose generation is fixed: the wire format, exactly."""

    def __init__(self, pieces: list[str], reason: str = "stop") -> None:
        self.pieces, self.reason = pieces, reason
        self.asked: list[Any] = []

    def stream(self, item: Any) -> Scripted.Live:
        self.asked.append(item)
        return Scripted.Live(self.pieces, self.reason)

    class Live:
        def __init__(self, pieces: list[str], reason: str) -> None:
            self.pieces, self.reason = pieces, reason
            self.prompt_tokens, self.completion_tokens = 7, 0
            self.finish_reason: str | None = None

        def __iter__(self) -> Iterator[str]:
            for piece in self.pieces:
                self.completion_tokens += 1
                yield piece
            self.finish_reason = self.reason


# -- reading requests ------------------------------------------------------------------------


def test_a_conversation_becomes_one_prompt_for_a_plain_language_model() -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Name "}, {"type": "text", "text": "a fabric."}],
        },
        {"role": "assistant", "content": "Linen."},
        {"role": "user", "content": "Another."},
    ]
    assert chat_prompt(chat_messages(messages)) == (
        "system: You are terse.\nuser: Name a fabric.\nassistant: Linen.\nuser: Another.\n"
        "assistant:"
    )


def test_requests_take_openai_defaults_and_fields() -> None:
    req = parse_request(CHAT, body(model="x", messages=[{"role": "user", "content": "hi"}]), JSON)
    assert req.chat and req.prompt == "user: hi\nassistant:" and req.model == "x"
    assert (req.max_tokens, req.temperature, req.stop, req.wants_stream) == (64, 1.0, (), False)
    assert req.id.startswith("chatcmpl-") and req.created > 1_700_000_000
    # Without a seed each request samples afresh, as OpenAI's do; with one, repeatably.
    again = parse_request(CHAT, body(messages=[{"role": "user", "content": "hi"}]), JSON)
    assert again.seed != req.seed and again.id != req.id
    fields = {
        "prompt": ["Once"],
        "max_tokens": 5,
        "temperature": 0,
        "seed": 9,
        "stop": "\n",
        "stream": True,
        "stream_options": {"include_usage": True},
        "top_p": 0.5,  # accepted and ignored
        "user": "u1",
    }
    req = parse_request("completions", body(**fields), JSON)
    assert not req.chat and req.id.startswith("cmpl-") and req.include_usage
    assert req.spec() == {
        "prompt": "Once",
        "max_tokens": 5,
        "temperature": 0.0,
        "seed": 9,
        "stop": ["\n"],
    }
    newer = parse_request(CHAT, body(messages=USER, max_completion_tokens=7), JSON)
    assert newer.max_tokens == 7


@pytest.mark.parametrize(
    ("route", "fields", "says"),
    [
        (CHAT, {"messages": USER, "n": 2}, '"n" must be 1'),
        (CHAT, {}, '"messages" must be a non-empty list'),
        (CHAT, {"messages": []}, '"messages" must be a non-empty list'),
        (CHAT, {"messages": ["hi"]}, "messages[0] must be an object"),
        (CHAT, {"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role must be"),
        (CHAT, {"messages": [{"role": "user", "content": None}]}, "must be a string"),
        (
            CHAT,
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "only text parts",
        ),
        (CHAT, {"messages": USER, "max_tokens": 0}, '"max_tokens" must be a positive integer'),
        (CHAT, {"messages": USER, "max_tokens": "5"}, '"max_tokens" must be a positive integer'),
        (CHAT, {"messages": USER, "max_tokens": True}, '"max_tokens" must be a positive integer'),
        (CHAT, {"messages": USER, "temperature": 2.5}, '"temperature" must be a number from 0'),
        (CHAT, {"messages": USER, "temperature": "hot"}, '"temperature" must be a number'),
        (CHAT, {"messages": USER, "seed": 1.5}, '"seed" must be an integer'),
        (CHAT, {"messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "at most 4 strings"),
        (CHAT, {"messages": USER, "stop": [""]}, "non-empty strings"),
        (CHAT, {"messages": USER, "stop": 3}, '"stop" must be a string'),
        (CHAT, {"messages": USER, "stream": "yes"}, '"stream" must be true or false'),
        (CHAT, {"messages": USER, "stream_options": {}}, 'only allowed with "stream": true'),
        (CHAT, {"messages": USER, "stream": True, "stream_options": 1}, '"stream_options" must'),
        (CHAT, {"messages": USER, "tools": [{"type": "function"}]}, "tools"),
        (CHAT, {"messages": USER, "logprobs": True}, '"logprobs" is not supported'),
        (CHAT, {"messages": USER, "response_format": {"type": "json_object"}}, "structured"),
        (CHAT, {"messages": USER, "model": 5}, '"model" must be a string'),
        ("completions", {}, '"prompt" must be a string'),
        ("completions", {"prompt": ["a", "b"]}, '"prompt" must be a string'),
        ("completions", {"prompt": [1, 2, 3]}, '"prompt" must be a string'),
        ("completions", {"prompt": "a", "echo": True}, '"echo" is not supported'),
        ("completions", {"prompt": "a", "best_of": 3}, '"best_of" must be 1'),
        ("completions", {"prompt": "a", "suffix": "z"}, '"suffix" is not supported'),
    ],
)
def test_requests_we_cannot_honour_are_refused_with_400(
    route: str, fields: dict[str, Any], says: str
) -> None:
    with pytest.raises(PayloadError) as info:
        parse_request(route, body(**fields), JSON)
    assert (info.value.status, info.value.code) == (400, "bad_request")
    assert says in info.value.message


def test_bodies_that_are_not_json_objects_or_unknown_routes_are_refused() -> None:
    cases = [
        (CHAT, b'{"messages": [', JSON, 400),
        (CHAT, b"[]", JSON, 400),
        (CHAT, body(messages=USER), "text/plain", 415),
        ("embeddings", body(input="x"), JSON, 404),
    ]
    for route, raw, content_type, status in cases:
        with pytest.raises(PayloadError) as info:
            parse_request(route, raw, content_type)
        assert info.value.status == status


# -- writing answers -------------------------------------------------------------------------


def test_answers_have_openais_shape_and_count_tokens_as_units() -> None:
    output = {
        "prompt": "user: hi\nassistant:",
        "text": " Linen.",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 20, "completion_tokens": 7},
    }
    chat = parse_request(CHAT, body(messages=USER), JSON)
    data, units = chat.response(output, MODEL)
    assert units == 27.0
    parsed = ChatCompletion.model_validate(data)
    assert parsed.id == chat.id and parsed.object == "chat.completion" and parsed.model == MODEL
    assert parsed.choices[0].message.content == " Linen." and parsed.choices[0].message.role
    assert parsed.choices[0].finish_reason == "stop"
    assert parsed.usage is not None and parsed.usage.total_tokens == 27
    done = parse_request("completions", body(prompt="x"), JSON)
    data, units = done.response({**output, "finish_reason": "length"}, MODEL)
    parsed_text = Completion.model_validate(data)
    assert parsed_text.object == "text_completion" and parsed_text.choices[0].text == " Linen."
    assert parsed_text.choices[0].finish_reason == "length" and units == 27.0


def test_chat_stream_sends_role_then_pieces_then_reason_then_done() -> None:
    req = parse_request(CHAT, body(messages=USER, stream=True, seed=3), JSON)
    model = Scripted(["Li", "nen", "."])
    assert req.units() == 0.0
    chunks = req.stream(model, MODEL)
    assert model.asked == [req.spec()]  # generation started before any byte was read
    got = events(chunks)
    assert got[-1] == "[DONE]"
    parsed = [ChatCompletionChunk.model_validate(e) for e in got[:-1]]
    assert all(p.id == req.id and p.model == MODEL and p.created == req.created for p in parsed)
    assert parsed[0].choices[0].delta.role == "assistant"
    assert [p.choices[0].delta.content for p in parsed[1:4]] == ["Li", "nen", "."]
    assert [p.choices[0].finish_reason for p in parsed] == [None, None, None, None, "stop"]
    assert parsed[-1].choices[0].delta.content is None and "usage" not in got[-2]
    assert req.units() == 7 + 3


def test_completion_stream_with_usage_ends_with_a_usage_chunk() -> None:
    req = parse_request(
        "completions",
        body(prompt="x", stream=True, stream_options={"include_usage": True}),
        JSON,
    )
    got = events(req.stream(Scripted(["a", "b"], "length"), MODEL))
    assert got[-1] == "[DONE]"
    # Pieces carry "finish_reason": null, as OpenAI's do (the client reads them unvalidated).
    assert [e["choices"][0]["text"] for e in got[:3]] == ["a", "b", ""]
    assert [e["choices"][0]["finish_reason"] for e in got[:3]] == [None, None, "length"]
    assert all(e["object"] == "text_completion" and e["usage"] is None for e in got[:3])
    last, totals = Completion.model_validate(got[2]), Completion.model_validate(got[3])
    assert last.id == totals.id == req.id and totals.choices == [] and totals.usage is not None
    assert (totals.usage.prompt_tokens, totals.usage.completion_tokens) == (7, 2)


def test_a_model_that_cannot_stream_is_refused() -> None:
    req = parse_request("completions", body(prompt="x", stream=True), JSON)
    with pytest.raises(PayloadError, match="cannot stream"):
        req.stream(object(), MODEL)


def test_an_error_event_is_raised_by_the_openai_client() -> None:
    def handle(request: httpx2.Request) -> httpx2.Response:
        first = openai_compat.sse(openai_compat.chat_chunk("c1", 1, MODEL, {"role": "assistant"}))
        stream = [first, openai_compat.sse_error("model_error", "the model failed")]
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=stream)

    http = httpx2.Client(transport=httpx2.MockTransport(handle))
    with openai.OpenAI(base_url="http://x.test/v1", api_key="k", http_client=http) as c:
        stream = c.chat.completions.create(model="m", messages=USER, stream=True)
        with pytest.raises(openai.APIError, match="the model failed"):
            list(stream)


# -- the official client against a real model ------------------------------------------------


def test_openai_chat_client_gets_the_models_answer(
    client: openai.OpenAI, predictor: TextPredictor
) -> None:
    answer = client.chat.completions.create(
        model="shop",
        messages=USER,
        max_tokens=12,
        temperature=0.9,
        seed=4,
    )
    [expected] = predictor.predict(
        [{"prompt": "user: hi\nassistant:", "max_tokens": 12, "temperature": 0.9, "seed": 4}]
    )
    assert answer.model == MODEL and answer.object == "chat.completion"
    assert answer.choices[0].message.content == expected["text"]
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == len(b"user: hi\nassistant:")
    assert answer.usage.completion_tokens == 12


def test_openai_chat_client_streams_the_same_answer(client: openai.OpenAI) -> None:
    ask: dict[str, Any] = {"model": "shop", "messages": USER, "max_tokens": 20, "seed": 8}
    whole = client.chat.completions.create(**ask)
    chunks = list(
        client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage == whole.usage


def test_openai_completions_client_streams_and_stops(client: openai.OpenAI) -> None:
    whole = client.completions.create(model="shop", prompt="The ", max_tokens=40, seed=2)
    full = whole.choices[0].text
    stop = full[10:12]
    cut = client.completions.create(model="shop", prompt="The ", max_tokens=40, seed=2, stop=[stop])
    assert cut.choices[0].text == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model="shop", prompt="The ", max_tokens=40, seed=2, stop=[stop], stream=True
    )
    pieces = [c.choices[0].text for c in streamed]
    assert "".join(pieces) == cut.choices[0].text


def test_openai_client_sees_our_400_as_a_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="shop", messages=USER, n=2)
    assert info.value.status_code == 400
    assert '"n" must be 1' in str(info.value)


def test_request_fields_are_what_the_client_sends() -> None:
    """Guards the field names we read against what this client version actually sends."""
    seen: list[dict[str, Any]] = []

    def handle(request: httpx2.Request) -> httpx2.Response:
        seen.append(json.loads(request.content))
        return httpx2.Response(400, json={"error": {"code": "x", "message": "stop here"}})

    http = httpx2.Client(transport=httpx2.MockTransport(handle))
    with (
        openai.OpenAI(base_url="http://x.test/v1", api_key="k", http_client=http) as c,
        pytest.raises(openai.BadRequestError),
    ):
        c.chat.completions.create(
            model="m",
            messages=USER,
            max_completion_tokens=3,
            stop="\n",
            seed=1,
        )
    req: TextRequest = openai_compat.parse_chat(seen[0])
    assert (req.max_tokens, req.stop, req.seed) == (3, ("\n",), 1)


def test_prompts_are_capped_and_errors_quote_little_of_the_input() -> None:
    at_cap = "x" * openai_compat.MAX_PROMPT_CHARS
    assert parse_request("completions", body(prompt=at_cap), JSON).prompt == at_cap
    for route, fields in (
        ("completions", {"prompt": at_cap + "x"}),
        ("completions", {"prompt": ["y" * (3 * 1024 * 1024)]}),
        (CHAT, {"messages": [{"role": "user", "content": at_cap}]}),
        (CHAT, {"messages": [{"role": "user", "content": "z"}] * 40_000}),
    ):
        with pytest.raises(PayloadError) as e:
            parse_request(route, body(**fields), JSON)
        assert (e.value.status, e.value.code) == (413, "payload_too_large")
        assert len(e.value.message) < 200
    with pytest.raises(PayloadError) as role:
        parse_request(CHAT, body(messages=[{"role": "r" * 100_000, "content": "hi"}]), JSON)
    assert role.value.status == 400 and len(role.value.message) < 200


def test_the_model_list_is_openais_shape() -> None:
    listed = openai_compat.model_list(MODEL, 1_700_000_000, "shop")
    assert listed["object"] == "list"
    models = [Model.model_validate(m) for m in listed["data"]]
    assert [(m.id, m.object, m.created, m.owned_by) for m in models] == [
        (MODEL, "model", 1_700_000_000, "shop")
    ]
