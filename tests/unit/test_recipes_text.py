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
    RecipeError,
    get_recipe,
    prepare,
    train_and_evaluate,
)
from gureum.recipes.gpt import TinyGPT
from gureum.recipes.hf_lora import quiet

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
    """A 2-layer GPT-2 with random weights and a byte-level BPE tokenizer made here."""
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    lines = (corpus.root / "corpus.txt").read_text().splitlines()
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
    with pytest.raises(BadInput, match="max_tokens"):
        predictor.predict([{"prompt": "x", "max_tokens": 0}])
    with pytest.raises(BadInput, match="prompt"):
        predictor.predict([42])


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
        prepare("text-generator", {"base_model": "/x", "n_layer": "2"}, corpus)
    with pytest.raises(InvalidParams, match="n_embd must be a multiple of n_head"):
        prepare("text-generator", {"n_embd": "30", "n_head": "4"}, corpus)


# -- LoRA on a local Hugging Face model --------------------------------------------------------

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
    ctx = LocalRunContext(tmp_path / "run")
    params = {**LORA, "base_model": str(tiny_gpt2)}
    result = train_and_evaluate(ctx, "text-generator", params, corpus)
    model_dir = result.train.model_dir
    assert (model_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert (model_dir / "tokenizer" / "tokenizer.json").is_file()
    config = json.loads((model_dir / "config.json").read_text())
    assert config["mode"] == "lora" and config["base_model"] == str(tiny_gpt2.resolve())
    losses = [m["val_loss"] for m in ctx.metrics() if "val_loss" in m]
    assert losses[1] < losses[0]
    assert result.evaluation.metrics["perplexity"] > 1.0
    assert result.evaluation.details["mode"] == "lora"

    out = get_recipe("text-generator").predict(model_dir, [{"prompt": "The", "max_tokens": 5}])
    assert out[0]["prompt"] == "The" and isinstance(out[0]["text"], str)

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
    params = recipe.Params(**{**LORA, "base_model": str(tiny_gpt2)})
    first = DiesAfterEpoch(tmp_path)
    with pytest.raises(WorkerDied):
        recipe.train(first, corpus, params)
    state = first.load_checkpoint()
    assert state is not None and state["model"]
    assert all("lora_" in k for k in state["model"])
    out = recipe.train(LocalRunContext(tmp_path), corpus, params)
    assert out.resumed_from_epoch == 1


def test_lora_refuses_a_missing_base_or_a_too_long_context(
    corpus: LocalDataset, tiny_gpt2: Path, tmp_path: Path
) -> None:
    recipe = get_recipe("text-generator")
    ctx = LocalRunContext(tmp_path)
    missing = recipe.Params(**{**LORA, "base_model": str(tmp_path / "nothing")})
    with pytest.raises(RecipeError, match="local Hugging Face model folder"):
        recipe.train(ctx, corpus, missing)
    too_long = recipe.Params(**{**LORA, "base_model": str(tiny_gpt2), "block_size": 64})
    with pytest.raises(RecipeError, match="at most 64 positions"):
        recipe.train(ctx, corpus, too_long)
