"""text-generator: a byte-level GPT from scratch, and LoRA fine-tuning of a tiny GPT-2 built
here from nothing (random weights, a tokenizer trained on the sample corpus; no hub)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

from gureum import samples
from gureum.recipes import (
    BadInput,
    InvalidParams,
    LocalDataset,
    LocalRunContext,
    ModelMismatch,
    RecipeError,
    get_recipe,
    prepare,
    train_and_evaluate,
)
from gureum.recipes.gpt import TinyGPT
from gureum.recipes.hf_lora import quiet
from gureum.recipes.text_generator import LanguageModel, Steps, TextPredictor

TINY_GPT = {
    "epochs": 2,
    "steps_per_epoch": 15,
    "batch_size": 8,
    "block_size": 32,
    "n_layer": 1,
    "n_head": 2,
    "n_embd": 32,
    "sample_tokens": 20,
    "eval_windows": 20,
}
EOS = "<|endoftext|>"


class WorkerDied(Exception):
    pass


class DiesAfterEpoch(LocalRunContext):
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        super().save_checkpoint(state)
        if state["epoch"] == 1:
            raise WorkerDied


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> LocalDataset:
    root = tmp_path_factory.mktemp("text")
    samples.write("text", root, count=120)
    return LocalDataset.from_folder(root)


@pytest.fixture(scope="module")
def gpt_run(
    corpus: LocalDataset, tmp_path_factory: pytest.TempPathFactory
) -> tuple[LocalRunContext, Any]:
    ctx = LocalRunContext(tmp_path_factory.mktemp("gpt"))
    return ctx, train_and_evaluate(ctx, "text-generator", TINY_GPT, corpus)


@pytest.fixture(scope="module")
def tiny_gpt2(corpus: LocalDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    lines = (corpus.root / "corpus.txt").read_text().splitlines()
    return build_tiny_gpt2(lines, tmp_path_factory.mktemp("tiny-gpt2"))


def build_tiny_gpt2(lines: list[str], folder: Path) -> Path:
    """A 2-layer GPT-2 with random weights and a byte-level BPE tokenizer trained on ``lines``,
    saved as a Hugging Face folder (no hub)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer)
    with quiet():
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS)
        tokenizer.save_pretrained(folder)
        eos = tokenizer.eos_token_id
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_layer=2,
            n_embd=32,
            n_head=2,
            n_positions=64,
            bos_token_id=eos,
            eos_token_id=eos,
        )
        torch.manual_seed(0)
        GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


# -- the byte-level GPT ------------------------------------------------------------------------


def test_gpt_learns_and_measures_held_out_perplexity(
    gpt_run: tuple[LocalRunContext, Any],
) -> None:
    ctx, result = gpt_run
    losses = [m["val_loss"] for m in ctx.metrics() if "val_loss" in m]
    assert len(losses) == 2 and losses[1] < losses[0] < 5.6  # below uniform over 256 bytes
    m = result.evaluation.metrics
    assert 1.0 < m["perplexity"] < 256
    assert m["bits_per_byte"] == pytest.approx(m["val_loss"] / 0.6931, rel=1e-3)
    details = result.evaluation.details
    assert details["mode"] == "gpt" and details["split_by_line"] is True
    sample_text = (ctx.artifacts_dir / "samples.txt").read_text()
    assert sample_text.startswith("### ") and len(details["samples"]) == 3


def test_gpt_predicts_prompts_repeatably(gpt_run: tuple[LocalRunContext, Any]) -> None:
    _, result = gpt_run
    predictor = get_recipe("text-generator").load(result.train.model_dir)
    ask = {"prompt": "This dress", "max_tokens": 12, "temperature": 0.9, "seed": 5}
    first, again = predictor.predict([ask, ask])
    assert first == again and first["prompt"] == "This dress"
    assert len(first["text"].encode("utf-8", errors="replace")) >= 1
    greedy = predictor.predict(["The ", {"prompt": "The ", "temperature": 0}])
    assert greedy[0]["prompt"] == "The "
    assert first["finish_reason"] == "length"  # bytes have no end-of-text
    assert first["usage"] == {"prompt_tokens": len(b"This dress"), "completion_tokens": 12}
    with pytest.raises(BadInput, match="max_tokens"):
        predictor.predict([{"prompt": "x", "max_tokens": 0}])
    with pytest.raises(BadInput, match="prompt"):
        predictor.predict([42])


def test_gpt_streams_exactly_what_it_predicts(gpt_run: tuple[LocalRunContext, Any]) -> None:
    _, result = gpt_run
    predictor = get_recipe("text-generator").load(result.train.model_dir)
    assert isinstance(predictor, TextPredictor)
    asks: list[Any] = [
        {"prompt": "This dress", "max_tokens": 30, "temperature": 0.9, "seed": 5},
        {"prompt": "", "max_tokens": 10, "temperature": 0},
        # Hot sampling draws near-random bytes: broken UTF-8 that the stream must decode
        # piece by piece exactly as the whole is decoded.
        {"prompt": "Über ", "max_tokens": 60, "temperature": 8.0, "seed": 1},
        "Linen",
    ]
    for ask in asks:
        stream = predictor.stream(ask)
        pieces = list(stream)
        [whole] = predictor.predict([ask])
        assert "".join(pieces) == whole["text"] and all(pieces)
        assert stream.finish_reason == whole["finish_reason"] == "length"
        assert stream.completion_tokens == whole["usage"]["completion_tokens"]
        assert stream.prompt_tokens == whole["usage"]["prompt_tokens"]
    # The same text as the model's own whole-sequence sampling, decoded at once.
    model = predictor.lm.model
    assert isinstance(model, TinyGPT)
    prompt = "Über ".encode()
    ids = model.generate(torch.tensor(list(prompt)), 60, 8.0, torch.Generator().manual_seed(1))
    raw = bytes(ids[len(prompt) :].tolist()).decode("utf-8", errors="replace")
    assert predictor.predict([asks[2]])[0]["text"] == raw and "\ufffd" in raw


def test_gpt_stops_at_a_stop_string_and_meters_what_it_generated(
    gpt_run: tuple[LocalRunContext, Any],
) -> None:
    _, result = gpt_run
    predictor = get_recipe("text-generator").load(result.train.model_dir)
    ask = {"prompt": "The ", "max_tokens": 80, "temperature": 1.0, "seed": 3}
    [full] = predictor.predict([ask])
    stop = full["text"][20:23]
    cut = full["text"].index(stop)
    [stopped] = predictor.predict([{**ask, "stop": ["never-there", stop]}])
    assert stopped["text"] == full["text"][:cut] and stopped["finish_reason"] == "stop"
    assert cut < stopped["usage"]["completion_tokens"] < 80  # generation ended early
    assert "".join(predictor.stream({**ask, "stop": stop})) == stopped["text"]
    # A stream the client leaves half way is metered for what was generated, no more.
    stream = predictor.stream({**ask, "max_tokens": 500})
    pieces = iter(stream)
    next(pieces), next(pieces)
    pieces.close()
    assert 2 <= stream.completion_tokens < 10 and stream.finish_reason is None
    with pytest.raises(RuntimeError, match="only once"):
        iter(stream)


@pytest.mark.parametrize(
    ("ask", "says"),
    [
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "max_tokens": True}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 5000}, "max_tokens"),
        ({"prompt": "x", "temperature": -1}, "temperature"),
        ({"prompt": "x", "temperature": float("nan")}, "temperature"),
        ({"prompt": "x", "seed": "7"}, "seed"),
        ({"prompt": "x", "stop": ""}, "stop"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": "x", "stop": 3}, "stop"),
        ({"text": "x"}, "prompt"),
        (None, "prompt"),
    ],
)
def test_streaming_refuses_bad_input_before_generating(
    gpt_run: tuple[LocalRunContext, Any], ask: Any, says: str
) -> None:
    _, result = gpt_run
    predictor = get_recipe("text-generator").load(result.train.model_dir)
    with pytest.raises(BadInput, match=says):
        predictor.stream(ask)  # raises at once, not when first read
    with pytest.raises(BadInput, match=says):
        predictor.predict(["fine", ask])  # the whole batch is refused before any work


def scripted(pieces: list[str], reason: str = "length") -> TextPredictor:
    """A predictor whose model yields the given pieces, one token each."""

    def stream(prompt: str, max_new: int, temperature: float, seed: int) -> Steps:
        for piece in pieces[:max_new]:
            yield piece, 1
        return reason

    def encode(text: str) -> torch.Tensor:
        return torch.tensor(list(text.encode()), dtype=torch.long)

    def no_loss(model: torch.nn.Module, window: torch.Tensor) -> torch.Tensor:
        raise AssertionError("not trained")

    return TextPredictor(LanguageModel(torch.nn.Identity(), encode, no_loss, stream))


def test_stop_strings_split_across_pieces_are_never_shown() -> None:
    predictor = scripted(["ab", "c<", "/s", "> after"])
    stream = predictor.stream({"prompt": "p", "stop": "</s>"})
    assert list(stream) == ["ab", "c"] and stream.finish_reason == "stop"
    assert stream.completion_tokens == 4  # up to the token that completed the stop string
    # Text that only looked like the start of a stop string is shown once it is known not to be.
    stream = scripted(["x<", "/y", "z"]).stream({"prompt": "p", "stop": ["</s>", "zz"]})
    assert "".join(stream) == "x</yz" and stream.finish_reason == "length"
    # The earliest of several stop strings wins.
    out = scripted(["one two three"]).predict([{"prompt": "", "stop": ["three", "two"]}])
    assert out[0]["text"] == "one " and out[0]["finish_reason"] == "stop"
    # End of text reported by the model is a "stop", as in OpenAI's API.
    assert scripted(["a"], "stop").predict(["p"])[0]["finish_reason"] == "stop"


def test_gpt_resumes_from_its_checkpoint_and_exports(corpus: LocalDataset, tmp_path: Path) -> None:
    recipe = get_recipe("text-generator")
    params = recipe.Params(**TINY_GPT)
    with pytest.raises(WorkerDied):
        recipe.train(DiesAfterEpoch(tmp_path / "run"), corpus, params)
    retry = LocalRunContext(tmp_path / "run")
    out = recipe.train(retry, corpus, params)
    assert out.resumed_from_epoch == 1 and out.epochs_run == 1
    assert "starting epoch 2" in retry.log_path.read_text()
    files = recipe.export(out.model_dir, tmp_path / "export")
    assert sorted(p.name for p in files) == ["config.json", "model.safetensors"]
    fresh = TinyGPT(block_size=32, n_layer=1, n_head=2, n_embd=32)
    load_model(fresh, str(tmp_path / "export" / "model.safetensors"))  # strict: all weights
    assert torch.equal(fresh.tok.weight, fresh.head.weight)


def test_parameters_of_one_mode_are_refused_in_the_other(corpus: LocalDataset) -> None:
    with pytest.raises(InvalidParams, match="lora_r apply to LoRA fine-tuning; give base_model"):
        prepare("text-generator", {"lora_r": "4"}, corpus)
    with pytest.raises(InvalidParams, match="n_layer shape a model trained from scratch"):
        prepare("text-generator", {"base_model": "tiny", "n_layer": "2"}, corpus)
    with pytest.raises(InvalidParams, match="n_embd must be a multiple of n_head"):
        prepare("text-generator", {"n_embd": "30", "n_head": "4"}, corpus)


@pytest.mark.parametrize(
    "base",
    [
        "/srv/gureum/artifacts/workspaces/2/blobs",
        "models/tiny",
        "../tiny",
        "~/tiny",
        "./tiny",
        "tiny:1/..",
        "Tiny",
        "tiny:0",
        "tiny:v1",
        "C:\\tiny",
        "",
    ],
)
def test_a_base_model_is_a_registry_reference_never_a_path(corpus: LocalDataset, base: str) -> None:
    """A path would be read on the worker: another workspace's model folder, or any folder."""
    with pytest.raises(InvalidParams, match="registry, NAME or NAME:VERSION"):
        prepare("text-generator", {"base_model": base}, corpus)
    for ref in ("tiny", "tiny:3", "tiny-gpt2.v1:latest", "tiny:production"):
        assert (
            prepare("text-generator", {"base_model": ref}, corpus)[1].model_dump()["base_model"]
            == ref
        )


# -- LoRA on a registered Hugging Face model ---------------------------------------------------

BASE = "tiny:1"  # the registry reference; the platform fetches its files for the run

LORA = {
    "epochs": 2,
    "steps_per_epoch": 8,
    "batch_size": 4,
    "block_size": 32,
    "lr": 0.01,
    "lora_r": 4,
    "sample_tokens": 8,
    "eval_windows": 10,
}


def test_lora_fine_tunes_a_local_hugging_face_model(
    corpus: LocalDataset, tiny_gpt2: Path, tmp_path: Path
) -> None:
    ctx = LocalRunContext(tmp_path / "run", models={BASE: tiny_gpt2})
    params = {**LORA, "base_model": BASE}
    result = train_and_evaluate(ctx, "text-generator", params, corpus)
    model_dir = result.train.model_dir
    assert (model_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert (model_dir / "tokenizer" / "tokenizer.json").is_file()
    config = json.loads((model_dir / "config.json").read_text())
    # Lineage names the registry version; the model carries the base's files itself.
    assert config["mode"] == "lora" and config["base_model"] == BASE
    assert (model_dir / "base" / "model.safetensors").read_bytes() == (
        tiny_gpt2 / "model.safetensors"
    ).read_bytes()
    losses = [m["val_loss"] for m in ctx.metrics() if "val_loss" in m]
    assert losses[1] < losses[0]
    assert result.evaluation.metrics["perplexity"] > 1.0
    assert result.evaluation.details["mode"] == "lora"

    out = get_recipe("text-generator").predict(model_dir, [{"prompt": "The", "max_tokens": 5}])
    assert out[0]["prompt"] == "The" and isinstance(out[0]["text"], str)

    # Token by token with the key/value cache: the same text as predict, counted in the
    # tokenizer's tokens.
    predictor = get_recipe("text-generator").load(model_dir)
    assert isinstance(predictor, TextPredictor)
    for ask in (
        {"prompt": "The dress", "max_tokens": 12, "temperature": 1.5, "seed": 2},
        {"prompt": "", "max_tokens": 6, "temperature": 0},
    ):
        stream = predictor.stream(ask)
        pieces = list(stream)
        [whole] = predictor.predict([ask])
        assert "".join(pieces) == whole["text"] and whole == predictor.predict([ask])[0]
        assert stream.completion_tokens == whole["usage"]["completion_tokens"] <= 12
        assert whole["usage"]["prompt_tokens"] == predictor.count_tokens(ask["prompt"])
        assert stream.finish_reason == whole["finish_reason"]
        assert whole["finish_reason"] in ("stop", "length")
        if whole["finish_reason"] == "length":
            assert whole["usage"]["completion_tokens"] == ask["max_tokens"]

    # Export merges the adapter into the base: a plain HF folder that loads on its own and
    # differs from the base where the adapter learned something.
    get_recipe("text-generator").export(model_dir, tmp_path / "export")
    with quiet():
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "export" / "hf")
        base = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    name = "transformer.h.0.attn.c_attn.weight"
    merged_w, base_w = merged.state_dict()[name], base.state_dict()[name]
    assert merged_w.shape == base_w.shape and not torch.allclose(merged_w, base_w)


def test_lora_resume_checkpoints_only_the_adapter(
    corpus: LocalDataset, tiny_gpt2: Path, tmp_path: Path
) -> None:
    recipe = get_recipe("text-generator")
    params = recipe.Params(**{**LORA, "base_model": BASE})
    first = DiesAfterEpoch(tmp_path, models={BASE: tiny_gpt2})
    with pytest.raises(WorkerDied):
        recipe.train(first, corpus, params)
    state = first.load_checkpoint()
    assert state is not None and state["model"]
    assert all("lora_" in k for k in state["model"])
    out = recipe.train(LocalRunContext(tmp_path, models={BASE: tiny_gpt2}), corpus, params)
    assert out.resumed_from_epoch == 1


def test_lora_refuses_a_missing_base_or_a_too_long_context(
    corpus: LocalDataset, tiny_gpt2: Path, tmp_path: Path
) -> None:
    recipe = get_recipe("text-generator")
    (tmp_path / "empty").mkdir()
    ctx = LocalRunContext(tmp_path, models={BASE: tiny_gpt2, "empty:1": tmp_path / "empty"})
    missing = recipe.Params(**{**LORA, "base_model": "other:1"})
    with pytest.raises(RecipeError, match="base model other:1 was not provided to this run"):
        recipe.train(ctx, corpus, missing)
    not_hf = recipe.Params(**{**LORA, "base_model": "empty:1"})
    with pytest.raises(RecipeError, match="not a Hugging Face model folder"):
        recipe.train(ctx, corpus, not_hf)
    too_long = recipe.Params(**{**LORA, "base_model": BASE, "block_size": 64})
    with pytest.raises(RecipeError, match="at most 64 positions"):
        recipe.train(ctx, corpus, too_long)


@pytest.mark.parametrize(
    "config",
    [
        {"mode": "lora", "base_model": "{base}"},
        {"mode": "lora"},
        {"mode": "gpt", "base_model": "/etc"},
    ],
)
def test_a_model_whose_config_names_a_path_as_base_is_refused(
    tiny_gpt2: Path, tmp_path: Path, config: dict[str, str]
) -> None:
    """What this recipe once wrote (an absolute path), or what an uploader chose: loading,
    evaluating and exporting never follow it."""
    model_dir = tmp_path / "model"
    body = {k: v.format(base=tiny_gpt2.resolve()) for k, v in config.items()}
    model_dir.mkdir()
    (model_dir / "config.json").write_text(
        json.dumps({"recipe": "text-generator", "params": {**LORA}, **body})
    )
    recipe = get_recipe("text-generator")
    with pytest.raises(ModelMismatch, match="never a path"):
        recipe.load(model_dir)
    with pytest.raises(ModelMismatch, match="never a path"):
        recipe.export(model_dir, tmp_path / "export")
