"""text-generator: a small byte-level GPT trained from scratch, or LoRA fine-tuning of a Hugging
Face causal LM of the job's own workspace registry (``base_model=NAME[:VERSION]``).

A base model is never a path: the server resolves the reference in the job's workspace, the
platform fetches that version's files for the run (``ctx.models``), and the fine-tuned model
carries them in its ``base/`` folder, so loading it (serving, evaluation, export) reads only the
version's own files. ``config.json`` names the base as the registry reference it came from.

Both modes train on random windows of the training text, measure the held-out text (perplexity
per token, and bits per byte, which compares across tokenizers) and write sample generations
to ``samples.txt`` in the artifacts.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import math
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gureum.recipes import gpt
from gureum.recipes.base import (
    BadInput,
    DatasetMismatch,
    EvalOutput,
    ModelConfig,
    RecipeBase,
    RecipeError,
    RunContext,
    TrainOutput,
    export_files,
)
from gureum.recipes.dataset import LocalDataset
from gureum.recipes.io_schemas import MAX_STOPS
from gureum.recipes.params import BASE_DIR, MAX_TOKENS, TextParams, check_text_dataset, lora_base
from gureum.recipes.params import TEXT_GENERATOR as NAME
from gureum.recipes.specs import SPECS
from gureum.recipes.textdata import load_text
from gureum.recipes.training import (
    WEIGHTS_FILE,
    fit,
    is_main,
    load_weights,
    resolve_device,
    save_weights,
    seed_everything,
    world,
)

SAMPLE_PROMPTS = 3


# One generation step: the text it makes visible (may be empty while a character is incomplete)
# and the tokens it sampled; the generator returns why it ended ("stop" or "length").
Steps = Generator[tuple[str, int], None, str]


@dataclass
class LanguageModel:
    """What the shared loop needs from either kind of model."""

    model: nn.Module
    encode: Callable[[str], torch.Tensor]
    window_loss: Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (B, T+1) tokens
    stream: Callable[[str, int, float, int], Steps]  # prompt, max tokens, temperature, seed
    # The model's own chat format (a Hugging Face tokenizer's chat template): a chat's
    # messages -> its prompt. Without one, chats use the "role: content" prompt.
    chat: Callable[[list[dict[str, str]]], str] | None = None

    def generate(self, prompt: str, max_new: int, temperature: float, seed: int) -> str:
        return "".join(piece for piece, _ in self.stream(prompt, max_new, temperature, seed))


def _gpt_lm(model: gpt.TinyGPT, device: torch.device) -> LanguageModel:
    def window_loss(m: nn.Module, w: torch.Tensor) -> torch.Tensor:
        logits = m(w[:, :-1])  # m may be the DistributedDataParallel wrapper
        return F.cross_entropy(logits.reshape(-1, gpt.VOCAB), w[:, 1:].reshape(-1))

    def stream(prompt: str, max_new: int, temperature: float, seed: int) -> Steps:
        ids = gpt.encode(prompt).to(device)
        if not len(ids):
            ids = gpt.encode("\n").to(device)
        gen = torch.Generator().manual_seed(seed)
        # Bytes arrive one at a time; the incremental decoder holds a partial character back
        # and decodes exactly as ``bytes.decode(errors="replace")`` does on the whole.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for byte in model.sample(ids, max_new, temperature, gen):
            yield decoder.decode(bytes([byte])), 1
        rest = decoder.decode(b"", final=True)
        if rest:
            yield rest, 0
        return "length"  # a byte model has no end-of-text token

    return LanguageModel(model, gpt.encode, window_loss, stream)


def _hf_lm(model: nn.Module, tokenizer: Any, device: torch.device) -> LanguageModel:
    # optional, heavy: only when a base model is used
    from gureum.recipes import hf_generate

    def stream(prompt: str, max_new: int, temperature: float, seed: int) -> Steps:
        return hf_generate.stream(model, tokenizer, prompt, max_new, temperature, seed, device)

    return LanguageModel(
        model,
        lambda text: hf_generate.encode(tokenizer, text),
        hf_generate.window_loss,
        stream,
        hf_generate.chat_format(tokenizer),
    )


def _base_folder(ctx: RunContext, ref: str | None) -> Path | None:
    """Where the run's context materialised the base model ``ref`` (None: no base model).

    The platform fetches the registry version the server resolved (``ctx.models``); a recipe
    never opens a folder a parameter names."""
    if ref is None:
        return None
    models: Mapping[str, Path] = getattr(ctx, "models", None) or {}
    folder = models.get(ref)
    if folder is None:
        raise RecipeError(
            f"{NAME}: base model {ref} was not provided to this run (the platform fetches the "
            f"registry version base_model names; a local run passes models={{{ref!r}: FOLDER}})"
        )
    return Path(folder)


def _windows(tokens: torch.Tensor, size: int, count: int) -> torch.Tensor:
    """Up to ``count`` non-overlapping (size + 1)-token windows, evenly spread: fixed, so one
    model and one text always give one perplexity."""
    n = (len(tokens) - 1) // size
    if n < 1:
        return tokens[: size + 1].unsqueeze(0) if len(tokens) > 1 else tokens.new_zeros((0, 2))
    picks = np.linspace(0, n - 1, num=min(n, count)).round().astype(np.int64)
    return torch.stack([tokens[i * size : i * size + size + 1] for i in picks])


@torch.no_grad()
def _held_out(lm: LanguageModel, windows: torch.Tensor, device: torch.device) -> float:
    """Mean loss (nats per predicted token) over the windows."""
    if not len(windows):
        return float("nan")
    lm.model.eval()
    total = 0.0
    for i in range(0, len(windows), 32):
        chunk = windows[i : i + 32].to(device)
        total += float(lm.window_loss(lm.model, chunk)) * len(chunk)
    return total / len(windows)


@dataclass(frozen=True)
class Generation:
    """One validated request for text; ``predict`` and ``stream`` accept the same inputs."""

    prompt: str
    max_tokens: int = 64
    temperature: float = 0.8
    seed: int = 0
    stop: tuple[str, ...] = ()

    @classmethod
    def parse(cls, item: Any) -> Generation:
        """A prompt, or ``{"prompt", "max_tokens", "temperature", "seed", "stop"}``."""
        spec = {"prompt": item} if isinstance(item, str) else item
        if not isinstance(spec, dict) or not isinstance(spec.get("prompt"), str):
            raise BadInput('each input must be a prompt or {"prompt": "...", ...}')
        max_tokens = spec.get("max_tokens", cls.max_tokens)
        temperature, seed = spec.get("temperature", cls.temperature), spec.get("seed", cls.seed)
        if not _is_int(max_tokens) or not 1 <= max_tokens <= MAX_TOKENS:
            raise BadInput(f'"max_tokens" must be an integer from 1 to {MAX_TOKENS}')
        if not isinstance(temperature, int | float) or isinstance(temperature, bool):
            raise BadInput('"temperature" must be a number >= 0 (0 is greedy)')
        if not temperature >= 0 or math.isinf(temperature):
            raise BadInput('"temperature" must be a number >= 0 (0 is greedy)')
        if not _is_int(seed):
            raise BadInput('"seed" must be an integer')
        stop = spec.get("stop")
        stops = [stop] if isinstance(stop, str) else [] if stop is None else stop
        if not isinstance(stops, list) or len(stops) > MAX_STOPS:
            raise BadInput(f'"stop" must be a string or a list of at most {MAX_STOPS} strings')
        if not all(isinstance(x, str) and x for x in stops):
            raise BadInput('"stop" strings must be non-empty')
        return cls(spec["prompt"], max_tokens, float(temperature), seed, tuple(stops))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class TextStream:
    """The text of one generation, piece by piece as it is sampled.

    Counts tokens as it goes (``prompt_tokens``, ``completion_tokens``), so a stream the client
    abandons half way is still metered for what was generated. Stop strings end generation
    early; text that might be the start of one is held back until it is known not to be, so no
    piece of a stop string is ever shown. ``finish_reason`` is "stop" (end of text or a stop
    string) or "length" (``max_tokens`` reached), as in OpenAI's API; None until the end.
    """

    def __init__(self, lm: LanguageModel, gen: Generation) -> None:
        self.generation = gen
        self.prompt_tokens = len(lm.encode(gen.prompt))
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self._steps = lm.stream(gen.prompt, gen.max_tokens, gen.temperature, gen.seed)
        self._read = False

    def __iter__(self) -> Iterator[str]:
        if self._read:
            raise RuntimeError("a TextStream can be read only once")
        self._read = True
        return self._pieces()

    def _pieces(self) -> Iterator[str]:
        stops, held = self.generation.stop, ""
        try:
            while True:
                try:
                    piece, tokens = next(self._steps)
                except StopIteration as end:
                    self.finish_reason = str(end.value)
                    break
                self.completion_tokens += tokens
                held += piece
                cut = min((i for i in (held.find(s) for s in stops) if i >= 0), default=-1)
                if cut >= 0:
                    held, self.finish_reason = held[:cut], "stop"
                    break
                keep = _partial_stop(held, stops)
                if len(held) > keep:
                    yield held[: len(held) - keep]
                    held = held[len(held) - keep :]
            if held:
                yield held
        finally:
            self._steps.close()


def _messages(value: Any) -> list[dict[str, str]]:
    ok = (
        isinstance(value, list)
        and value
        and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in value
        )
    )
    if not ok:
        raise BadInput('"messages" must be a non-empty list of {"role", "content"} strings')
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _partial_stop(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that begins some stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


class TextPredictor:
    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` as this model reads it (UTF-8 bytes for the byte-level GPT)."""
        return len(self.lm.encode(text))

    def stream(self, item: Any) -> TextStream:
        """Validate now (``BadInput`` before any text is sent), generate while iterated. An
        input with ``messages`` (a chat) is prompted in the model's own chat format, if any."""
        gen = Generation.parse(item)
        messages = item.get("messages") if isinstance(item, dict) else None
        if messages is not None and self.lm.chat is not None:
            gen = dataclasses.replace(gen, prompt=self.lm.chat(_messages(messages)))
        return TextStream(self.lm, gen)

    def predict(self, inputs: list[Any]) -> list[Any]:
        """A prompt, or ``{"prompt", "max_tokens", "temperature", "seed", "stop"}`` ->
        ``{"prompt", "text", "finish_reason", "usage": {"prompt_tokens",
        "completion_tokens"}}``; the text is exactly what ``stream`` yields for that input."""
        streams = [self.stream(item) for item in inputs]  # refuse a bad batch before any work
        out = []
        for s in streams:
            text = "".join(s)
            out.append(
                {
                    "prompt": s.generation.prompt,
                    "text": text,
                    "finish_reason": s.finish_reason,
                    "usage": {
                        "prompt_tokens": s.prompt_tokens,
                        "completion_tokens": s.completion_tokens,
                    },
                }
            )
        return out


class TextGenerator(RecipeBase):
    name = NAME
    description = SPECS[NAME].description
    Params = TextParams

    def check_dataset(self, ds: LocalDataset, params: TextParams | None = None) -> None:
        check_text_dataset(ds, params)

    def _build(
        self, params: TextParams, base_dir: Path | None, device: torch.device
    ) -> tuple[LanguageModel, Any]:
        if base_dir is None:
            model = gpt.TinyGPT(
                params.block_size, params.n_layer, params.n_head, params.n_embd, params.dropout
            ).to(device)
            return _gpt_lm(model, device), None
        # optional, heavy: only when a base model is used
        from gureum.recipes import hf_generate, hf_lora

        base, tokenizer = hf_lora.load_base(base_dir, device)
        limit = hf_generate.max_positions(base)
        if limit is not None and params.block_size + 1 > limit:
            raise RecipeError(
                f"{NAME}: block_size {params.block_size} is too long for the base model, "
                f"which takes at most {limit} positions; choose block_size < {limit}"
            )
        tuned = hf_lora.add_lora(base, params.lora_r, params.lora_alpha, params.lora_dropout)
        return _hf_lm(tuned, tokenizer, device), tokenizer

    def train(self, ctx: RunContext, ds: LocalDataset, params: TextParams) -> TrainOutput:
        self.check_dataset(ds, params)
        seed_everything(params.seed)
        device = resolve_device(ctx.device)
        text = load_text(ds, NAME)
        base_dir = _base_folder(ctx, params.base_model)
        lm, tokenizer = self._build(params, base_dir, device)
        tokens, held = lm.encode(text.train), lm.encode(text.validation)
        if len(tokens) <= params.block_size + 1:
            raise RecipeError(
                f"{NAME}: {len(tokens)} training tokens; need more than block_size "
                f"({params.block_size}) + 1"
            )
        ctx.log(f"{NAME}: {len(tokens)} training and {len(held)} held-out tokens")
        val_windows = _windows(held, params.block_size, min(params.eval_windows, 50))
        trainable = [p for p in lm.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=params.learning_rate(), weight_decay=0.01)
        rank, _ = world()
        span = params.block_size + 1

        def batches(epoch: int) -> Any:
            rng = np.random.default_rng([params.seed, epoch, rank])
            for _ in range(params.steps_per_epoch):
                starts = rng.integers(0, len(tokens) - span + 1, size=params.batch_size)
                yield torch.stack([tokens[s : s + span] for s in starts]).to(device)

        def step(m: nn.Module, window: torch.Tensor) -> dict[str, float]:
            loss = lm.window_loss(m, window)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            return {"loss": loss.item(), "samples": len(window)}

        def validate(m: nn.Module) -> dict[str, float]:
            loss = _held_out(lm, val_windows, device)
            return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50.0))}

        result = fit(
            ctx,
            lm.model,
            opt,
            epochs=params.epochs,
            steps_per_epoch=params.steps_per_epoch,
            batches=batches,
            step=step,
            validate=validate,
            trainable_only=params.base_model is not None,
        )
        model_dir = ctx.artifacts_dir / "model"
        if is_main():
            self._save(lm, tokenizer, params, base_dir, model_dir)
        return TrainOutput(model_dir, result.metrics, result.epochs_run, result.resumed_from_epoch)

    def _save(
        self,
        lm: LanguageModel,
        tokenizer: Any,
        params: TextParams,
        base_dir: Path | None,
        model_dir: Path,
    ) -> None:
        info: dict[str, Any] = {"mode": "gpt" if base_dir is None else "lora"}
        if base_dir is None:
            save_weights(lm.model, model_dir)
        else:
            from gureum.recipes import hf_lora  # optional, heavy: only when a base model is used

            hf_lora.save(lm.model, tokenizer, model_dir)
            hf_lora.link_folder(base_dir, model_dir / BASE_DIR)
            info["base_model"] = params.base_model  # lineage: the registry reference
        ModelConfig(NAME, params.model_dump(), info).write(model_dir)

    def _load(self, model_dir: Path, device: str) -> tuple[LanguageModel, ModelConfig]:
        cfg = ModelConfig.read(model_dir, NAME)
        dev = resolve_device(device)
        p = cfg.params
        if lora_base(cfg.info) is not None:
            from gureum.recipes import hf_lora  # optional, heavy: only when a base model is used

            model, tokenizer = hf_lora.load_finetuned(model_dir, model_dir / BASE_DIR, dev)
            return _hf_lm(model, tokenizer, dev), cfg
        net = gpt.TinyGPT(
            int(p["block_size"]), int(p["n_layer"]), int(p["n_head"]), int(p["n_embd"])
        )
        loaded = load_weights(net, model_dir, dev)
        assert isinstance(loaded, gpt.TinyGPT)
        return _gpt_lm(loaded, dev), cfg

    def evaluate(self, ctx: RunContext, model_dir: Path, ds: LocalDataset) -> EvalOutput:
        lm, cfg = self._load(model_dir, ctx.device)
        dev = resolve_device(ctx.device)
        text = load_text(ds, NAME)
        tokens = lm.encode(text.validation)
        windows = _windows(tokens, int(cfg.params["block_size"]), int(cfg.params["eval_windows"]))
        if not len(windows):
            raise DatasetMismatch(f"{NAME}: the held-out text is too short to measure")
        loss = _held_out(lm, windows, dev)
        bytes_per_token = len(text.validation.encode()) / max(len(tokens), 1)
        metrics = {
            "val_loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "bits_per_byte": loss / bytes_per_token / math.log(2),
        }
        lines = [line for line in text.validation.splitlines() if line.strip()]
        prompts = [" ".join(line.split()[:3]) for line in lines[:SAMPLE_PROMPTS]] or [""]
        n = int(cfg.params["sample_tokens"])
        samples = [{"prompt": p, "text": lm.generate(p, n, 0.8, i)} for i, p in enumerate(prompts)]
        sample_file = ctx.artifacts_dir / "samples.txt"
        sample_file.write_text(
            "".join(f"### {s['prompt']}\n{s['prompt']}{s['text']}\n\n" for s in samples)
        )
        report = ctx.artifacts_dir / "evaluation.json"
        details = {
            "mode": cfg.info.get("mode"),
            "held_out_windows": int(windows.shape[0]),
            "split_by_line": text.split_by_line,
            "samples": samples,
        }
        report.write_text(json.dumps({"metrics": metrics, **details}, indent=2))
        shown = f"perplexity {metrics['perplexity']:.3f}, {metrics['bits_per_byte']:.3f} bits/byte"
        ctx.log(f"{NAME}: {shown}")
        return EvalOutput(metrics, details, [sample_file, report])

    def load(self, model_dir: Path, device: str = "cpu") -> TextPredictor:
        return TextPredictor(self._load(model_dir, device)[0])

    def export(self, model_dir: Path, dest: Path) -> list[Path]:
        cfg = ModelConfig.read(model_dir, NAME)
        if lora_base(cfg.info) is not None:
            from gureum.recipes import hf_lora  # optional, heavy: only when a base model is used

            files = hf_lora.export_merged(model_dir, model_dir / BASE_DIR, dest)
            return [*files, *export_files(model_dir, dest, ["config.json"])]
        return export_files(model_dir, dest, [WEIGHTS_FILE, "config.json"])
