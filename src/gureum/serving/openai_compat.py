"""OpenAI-compatible ``/chat/completions``, ``/completions`` and ``/models`` for text generators.

Only the shaping of requests and responses lives here (no HTTP server, no torch), so that the
official ``openai`` client works against an endpoint unchanged: its request fields are read,
its response and server-sent-event shapes are written exactly, and anything we cannot honour
(``n`` > 1, log-probabilities, tools, ...) is refused with a 400 instead of silently ignored.
Fields that only tune sampling in ways our models do not offer (``top_p``, penalties, ``user``)
are accepted and ignored, as many OpenAI-compatible servers do.

A plain language model has no chat format, so a conversation becomes one prompt, one line per
message and an open turn for the answer::

    system: You are terse.
    user: Name a fabric.
    assistant:

Prompts are capped at ``MAX_PROMPT_CHARS`` (a 413) and never echoed back (``echo`` is refused),
so a completion's answer is bounded by what the model generates, not by what the caller sent.

Sampling follows OpenAI's defaults (temperature 1, a fresh random seed unless ``seed`` is
given), not ``/predict``'s (temperature 0.8, seed 0).
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from gureum.serving.units import PayloadError, count_units, read_json

CHAT = "chat/completions"
COMPLETIONS = "completions"
MODELS = "models"
ROUTES = (CHAT, COMPLETIONS)
# Our text generators read a context of at most a few thousand characters: a longer prompt is
# only cost (tokenizing, holding it), so it is refused before the model sees it.
MAX_PROMPT_CHARS = 256 * 1024
# How much of a caller's value an error message quotes back.
SHOWN_CHARS = 40
RECIPE = "text-generator"
DEFAULT_MAX_TOKENS = 64
DEFAULT_TEMPERATURE = 1.0
MAX_STOPS = 4
ROLES = ("system", "developer", "user", "assistant")
DONE = b"data: [DONE]\n\n"
EVENT_STREAM = "text/event-stream"


class PieceStream(Protocol):
    """One generation read piece by piece (``TextPredictor.stream``), counting tokens."""

    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None

    def __iter__(self) -> Iterator[str]: ...


@runtime_checkable
class StreamingPredictor(Protocol):
    def stream(self, item: Any) -> PieceStream: ...


def _bad(message: str) -> PayloadError:
    return PayloadError(400, "bad_request", message)


def _show(value: Any) -> str:
    """A caller's value quoted in an error, cut short: an error must not echo a large input."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}..."


def _bounded(prompt: str) -> str:
    if len(prompt) > MAX_PROMPT_CHARS:
        raise PayloadError(
            413,
            "payload_too_large",
            f"the prompt is {len(prompt)} characters; at most {MAX_PROMPT_CHARS} are read",
        )
    return prompt


@dataclass
class TextRequest:
    """One parsed OpenAI request; ``spec()`` is the text predictor's input for it."""

    chat: bool
    prompt: str
    # A chat's messages: a model with its own chat format builds the prompt from them.
    messages: list[dict[str, str]] | None = None
    model: str | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    seed: int = 0
    stop: tuple[str, ...] = ()
    wants_stream: bool = False
    include_usage: bool = False
    id: str = ""
    created: int = 0
    _live: PieceStream | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.id = self.id or f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = self.created or int(time.time())

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prompt": self.prompt,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
            "stop": list(self.stop),
        }
        if self.messages is not None:
            out["messages"] = self.messages
        return out

    predict_input = spec

    def response(self, output: Mapping[str, Any], model: str) -> tuple[dict[str, Any], float]:
        """The non-streaming answer for the predictor's output, and the units it used."""
        usage = output.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens", 0))
        completion_tokens = int(usage.get("completion_tokens", 0))
        reason = str(output.get("finish_reason") or "length")
        build = chat_completion if self.chat else text_completion
        text = str(output["text"])
        body = build(self.id, self.created, model, text, reason, prompt_tokens, completion_tokens)
        return body, count_units(RECIPE, [self.spec()], [output])

    def stream(self, predictor: object, model: str) -> Iterator[bytes]:
        """Server-sent events of the answer as it is generated, ending with ``[DONE]``.

        Starts the generation now, so bad input raises here (before any byte is sent); the
        returned iterator generates as it is read. Exceptions while generating propagate to
        the reader (the server decides how to end the stream).
        """
        if not isinstance(predictor, StreamingPredictor):
            raise PayloadError(400, "bad_request", "this model cannot stream; send stream=false")
        self._live = predictor.stream(self.spec())
        return self._events(self._live, model)

    def units(self) -> float:
        """Tokens generated so far by ``stream`` (prompt plus completion; 0 before it starts)."""
        live = self._live
        return float(live.prompt_tokens + live.completion_tokens) if live is not None else 0.0

    def _events(self, live: PieceStream, model: str) -> Iterator[bytes]:
        extra: dict[str, Any] = {"usage": None} if self.include_usage else {}
        head = (self.id, self.created, model)
        if self.chat:
            yield sse(chat_chunk(*head, {"role": "assistant", "content": ""}, **extra))
        for piece in live:
            if self.chat:
                yield sse(chat_chunk(*head, {"content": piece}, **extra))
            else:
                yield sse(completion_chunk(*head, piece, **extra))
        reason = live.finish_reason or "length"
        if self.chat:
            yield sse(chat_chunk(*head, {}, reason, **extra))
        else:
            yield sse(completion_chunk(*head, "", reason, **extra))
        if self.include_usage:
            counts = usage(live.prompt_tokens, live.completion_tokens)
            yield sse(usage_chunk(*head, self.chat, counts))
        yield DONE


# -- requests ---------------------------------------------------------------------------------


def parse_request(route: str, body: bytes, content_type: str | None) -> TextRequest:
    """Read a request body for ``route`` (``chat/completions`` or ``completions``)."""
    data = read_json(body, content_type)
    if route == CHAT:
        return parse_chat(data)
    if route == COMPLETIONS:
        return parse_completion(data)
    raise PayloadError(404, "not_found", f"no OpenAI route {_show(route)}; use one of {ROUTES}")


def parse_chat(data: Any) -> TextRequest:
    body = _object(data)
    messages = chat_messages(body.get("messages"))
    prompt = _bounded(chat_prompt(messages))
    return TextRequest(chat=True, prompt=prompt, messages=messages, **_common(body))


def parse_completion(data: Any) -> TextRequest:
    body = _object(data)
    for name in ("echo", "logprobs", "suffix"):
        if body.get(name):
            raise _bad(f'"{name}" is not supported')
    best_of = body.get("best_of")
    if best_of is not None and best_of != 1:
        raise _bad('"best_of" must be 1: one completion per request')
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _bad('"prompt" must be a string (or a list of one string)')
    return TextRequest(chat=False, prompt=_bounded(prompt), **_common(body))


def chat_messages(messages: Any) -> list[dict[str, str]]:
    """The conversation checked, each message as ``{"role", "content"}`` with text content."""
    if not isinstance(messages, list) or not messages:
        raise _bad('"messages" must be a non-empty list of {"role", "content"} objects')
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise _bad(f'messages[{i}] must be an object with "role" and "content"')
        role = msg.get("role")
        if role not in ROLES:
            raise _bad(f"messages[{i}].role must be one of {', '.join(ROLES)}; got {_show(role)}")
        out.append({"role": str(role), "content": _content(msg.get("content"), i, role)})
    return out


def chat_prompt(messages: list[dict[str, str]]) -> str:
    """The conversation as one prompt for a model without a chat format of its own:
    ``"role: content"`` lines, then ``"assistant:"``. A model with one (a Hugging Face
    tokenizer's chat template) formats ``messages`` itself."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def _content(content: Any, i: int, role: str) -> str:
    if isinstance(content, str):
        return content
    if content is None and role == "assistant":
        return ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise _bad(f"messages[{i}].content: only text parts are supported")
            if not isinstance(part.get("text"), str):
                raise _bad(f'messages[{i}].content: a text part needs a "text" string')
            parts.append(part["text"])
        return "".join(parts)
    raise _bad(f"messages[{i}].content must be a string or a list of text parts")


def _object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise _bad("the body must be a JSON object")
    return data


def _common(body: dict[str, Any]) -> dict[str, Any]:
    """The fields both routes share, checked; keyword arguments for ``TextRequest``."""
    if body.get("tools") or body.get("functions"):
        raise _bad("tools and function calling are not supported")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise _bad('"logprobs" is not supported')
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        raise _bad('"response_format" must be text: structured output is not supported')
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad('"model" must be a string')
    n = body.get("n")
    if n is not None and n != 1:
        raise _bad('"n" must be 1: one choice per request')
    out: dict[str, Any] = {"model": model}
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        if not _is_int(limit) or limit < 1:
            raise _bad('"max_tokens" must be a positive integer')
        out["max_tokens"] = limit
    temperature = body.get("temperature")
    if temperature is not None:
        if not _is_number(temperature) or not 0 <= temperature <= 2:
            raise _bad('"temperature" must be a number from 0 to 2')
        out["temperature"] = float(temperature)
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise _bad('"seed" must be an integer')
    out["seed"] = seed if seed is not None else secrets.randbelow(2**31)
    out["stop"] = _stops(body.get("stop"))
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad('"stream" must be true or false')
    out["wants_stream"] = bool(stream)
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise _bad('"stream_options" is only allowed with "stream": true')
        if not isinstance(options, dict) or not isinstance(
            options.get("include_usage", False), bool
        ):
            raise _bad('"stream_options" must be an object like {"include_usage": true}')
        out["include_usage"] = bool(options.get("include_usage", False))
    return out


def _stops(stop: Any) -> tuple[str, ...]:
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > MAX_STOPS:
        raise _bad(f'"stop" must be a string or a list of at most {MAX_STOPS} strings')
    if not all(isinstance(s, str) and s for s in stops):
        raise _bad('"stop" must hold non-empty strings')
    return tuple(stops)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# -- responses --------------------------------------------------------------------------------


def model_object(label: str, created: int, owned_by: str) -> dict[str, Any]:
    """OpenAI's ``Model``: the id a caller may pass as ``model`` (the version's label)."""
    return {"id": label, "object": "model", "created": created, "owned_by": owned_by}


def model_list(label: str, created: int, owned_by: str) -> dict[str, Any]:
    """``GET /models``: an endpoint serves one model version at a time."""
    return {"object": "list", "data": [model_object(label, created, owned_by)]}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_completion(
    id: str,
    created: int,
    model: str,
    text: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def text_completion(
    id: str,
    created: int,
    model: str,
    text: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_chunk(
    id: str,
    created: int,
    model: str,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One ``chat.completion.chunk``: the first carries the role, the last the finish reason."""
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [choice],
        **extra,
    }


def completion_chunk(
    id: str,
    created: int,
    model: str,
    text: str,
    finish_reason: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    return {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [choice],
        **extra,
    }


def usage_chunk(
    id: str, created: int, model: str, chat: bool, counts: dict[str, int]
) -> dict[str, Any]:
    """The extra last chunk of ``stream_options.include_usage``: no choices, the usage."""
    return {
        "id": id,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [],
        "usage": counts,
    }


def sse(data: Mapping[str, Any]) -> bytes:
    """One server-sent event, as OpenAI writes them: ``data: {json}`` and a blank line."""
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def sse_error(code: str, message: str) -> bytes:
    """An error inside a stream already answered 200; the openai client raises it."""
    return sse({"error": {"code": code, "message": message, "details": None}})
