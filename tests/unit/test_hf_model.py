"""Imported Hugging Face folders served without code (issue 11 item 3): a tiny Llama-style
causal LM, a tiny BERT text classifier and a tiny ViT image classifier, each built here from
nothing (random weights, tokenizers trained on a few lines; no hub) and saved with
``save_pretrained``; loaded by the recipe their architecture names, predicted, and refused
when the folder is not one the platform serves without code."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import base64
import io
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from pydantic import TypeAdapter, ValidationError
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

from gureum import samples
from gureum.client import hub
from gureum.recipes import LocalDataset, LocalRunContext
from gureum.recipes.base import BadInput, DatasetMismatch, ModelMismatch
from gureum.recipes.hf_folder import (
    IMAGE_CLASSIFICATION,
    TEXT_CLASSIFICATION,
    TEXT_GENERATION,
    NotHuggingFace,
    read_config,
    task_of,
)
from gureum.recipes.hf_generate import quiet
from gureum.recipes.hf_model import (
    HfImageClassification,
    HfTextClassification,
    HfTextGeneration,
    text_engine,
)
from gureum.recipes.specs import spec_of
from gureum.recipes.tabular import load_rows

LINES = [
    "The linen dress is light and cool in summer.",
    "A wool coat keeps the cold out in winter.",
    "Cotton shirts are soft and easy to wash.",
    "Silk scarves shine in the evening light.",
] * 5
EOS = "</s>"
LABELS = {0: "negative", 1: "positive"}


def build_tiny_llama(folder: Path) -> Path:
    """A 2-layer Llama with random weights and a byte-level BPE tokenizer of ~300 tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(LINES, trainer)
    with quiet():
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS)  # type: ignore[no-untyped-call]
        tokenizer.save_pretrained(folder)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=128,
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def build_tiny_bert(folder: Path) -> Path:
    """A 1-layer BERT sequence classifier over a word-piece vocabulary of the sample lines."""
    words = sorted({w.strip(".,").lower() for line in LINES for w in line.split()})
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    with quiet():
        tokenizer = BertTokenizer(vocab_file=str(vocab))
        tokenizer.save_pretrained(folder)
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=64,
            id2label=LABELS,
            label2id={v: k for k, v in LABELS.items()},
        )
        torch.manual_seed(0)
        BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def build_tiny_vit(folder: Path) -> Path:
    """A 1-layer ViT on 16x16 pictures with its image processor, three labels."""
    names = {0: "dress", 1: "skirt", 2: "jacket"}  # of the garments sample
    with quiet():
        config = ViTConfig(
            image_size=16,
            patch_size=8,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            id2label=names,
            label2id={v: k for k, v in names.items()},
        )
        torch.manual_seed(0)
        ViTForImageClassification(config).save_pretrained(folder)
        ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    return folder


def pickled_copy(src: Path, dest: Path) -> Path:
    """The same model with its weights as a pickled ``pytorch_model.bin`` instead."""
    shutil.copytree(src, dest)
    state = {}
    from safetensors.torch import load_file

    state = load_file(dest / "model.safetensors")
    (dest / "model.safetensors").unlink()
    torch.save(state, dest / "pytorch_model.bin")
    return dest


def png_b64(color: tuple[int, int, int], size: tuple[int, int] = (24, 20)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_vit(tmp_path_factory.mktemp("vit"))


# -- what a folder is, from its config and file names -------------------------------------


def _config(folder: Path) -> dict[str, Any]:
    return read_config((folder / "config.json").read_bytes())


def test_the_architecture_picks_the_task(llama: Path, bert: Path, vit: Path) -> None:
    for folder, task in ((llama, TEXT_GENERATION), (bert, TEXT_CLASSIFICATION)):
        assert task_of(_config(folder), os.listdir(folder)) == task
    assert task_of(_config(vit), os.listdir(vit)) == IMAGE_CLASSIFICATION
    # GPT-2 names its causal LM class GPT2LMHeadModel.
    gpt2 = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}
    assert task_of(gpt2, ["config.json", "model.safetensors"]) == TEXT_GENERATION


@pytest.mark.parametrize(
    ("config", "paths", "reason"),
    [
        ({"model_type": "llama"}, ["model.safetensors"], 'names no "architectures"'),
        ({"architectures": "LlamaForCausalLM"}, ["model.safetensors"], "architectures"),
        ({"architectures": ["BertModel"]}, ["model.safetensors"], "of no task served"),
        ({"architectures": ["T5ForConditionalGeneration"]}, ["a.safetensors"], "no task"),
        (
            {"architectures": ["FooForCausalLM"], "auto_map": {"AutoModelForCausalLM": "m.X"}},
            ["model.safetensors"],
            "trust_remote_code",
        ),
        ({"architectures": ["LlamaForCausalLM"]}, ["pytorch_model.bin"], "pytorch_model.bin"),
        ({"architectures": ["LlamaForCausalLM"]}, ["sub/model.safetensors"], "no .safetensors"),
    ],
)
def test_folders_not_served_without_code_say_why(
    config: dict[str, Any], paths: list[str], reason: str
) -> None:
    with pytest.raises(NotHuggingFace, match=reason):
        task_of(config, ["config.json", *paths])


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b"\xff\xfe", "not valid JSON"),
        (b'{"a": "' + b"x" * (1024 * 1024) + b'"}', "at most"),
    ],
)
def test_a_config_that_is_not_a_small_json_object_is_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(NotHuggingFace, match=reason):
        read_config(raw)


# -- text generation ------------------------------------------------------------------------


def test_a_causal_lm_generates_like_the_built_in_text_generator(llama: Path) -> None:
    predictor = HfTextGeneration().load(llama, "cpu")
    assert predictor.engine == "transformers-cpu"
    item = {"prompt": "The linen", "max_tokens": 8, "temperature": 0, "seed": 1}
    first, second = predictor.predict([item, "A wool"])
    assert first["prompt"] == "The linen" and isinstance(first["text"], str)
    assert first["finish_reason"] in ("length", "stop")
    prompt_tokens = len(predictor.lm.encode("The linen"))
    assert first["usage"]["prompt_tokens"] == prompt_tokens > 0
    assert 1 <= first["usage"]["completion_tokens"] <= 8
    assert first["finish_reason"] == "stop" or first["usage"]["completion_tokens"] == 8
    assert second["usage"]["completion_tokens"] <= 64  # the default max_tokens
    # Greedy decoding is repeatable, and a stream shows exactly what predict answers.
    assert predictor.predict([item])[0] == first
    live = predictor.stream(item)
    assert "".join(live) == first["text"] and live.finish_reason == first["finish_reason"]
    assert live.completion_tokens == first["usage"]["completion_tokens"]
    # Billed as the built-in text generator is: prompt plus completion tokens.
    serving = spec_of(TEXT_GENERATION).serving  # type: ignore[union-attr]
    assert serving is not None and serving.openai and serving.unit == "token"
    usage = first["usage"]
    assert serving.count([item], [first]) == usage["prompt_tokens"] + usage["completion_tokens"]


TEMPLATE = (
    "{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools here') }}"
    "{% endif %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_a_chat_is_prompted_in_the_models_own_chat_template(llama: Path, tmp_path: Path) -> None:
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Linen?"}]
    plain = HfTextGeneration().load(llama, "cpu")
    item = {"prompt": "user: Linen?\nassistant:", "messages": chat, "max_tokens": 2}
    # Without a template, the "role: content" prompt the OpenAI route made stands.
    assert plain.predict([item])[0]["prompt"] == item["prompt"]

    templated = tmp_path / "templated"
    shutil.copytree(llama, templated)
    config_file = templated / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "chat_template": TEMPLATE}))
    predictor = HfTextGeneration().load(templated, "cpu")
    out = predictor.predict([item])[0]
    assert out["prompt"] == "<|system|>Be brief.\n<|user|>Linen?\n<|assistant|>"
    assert out["usage"]["prompt_tokens"] == len(predictor.lm.encode(out["prompt"]))
    with pytest.raises(BadInput, match="chat template refused the messages: no tools here"):
        predictor.predict([{**item, "messages": [{"role": "tool", "content": "x"}]}])
    with pytest.raises(BadInput, match="messages"):
        predictor.predict([{**item, "messages": [{"role": "user"}]}])


@pytest.mark.parametrize(
    "item",
    [5, {"prompt": 5}, {"prompt": "a", "max_tokens": 0}, {"prompt": "a", "temperature": -1}],
)
def test_bad_generation_inputs_are_refused_before_generating(llama: Path, item: Any) -> None:
    predictor = HfTextGeneration().load(llama, "cpu")
    with pytest.raises(BadInput):
        predictor.predict(["fine", item])
    with pytest.raises(BadInput):
        predictor.stream(item)


def test_the_engine_is_transformers_unless_vllm_can_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM is chosen only on CUDA and only where it is installed (not on this machine)."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert text_engine(cpu) == "transformers-cpu"
    assert text_engine(cuda) == "transformers-cuda"  # vllm is not installed here
    monkeypatch.setenv("GUREUM_HF_ENGINE", "transformers")
    assert text_engine(cuda) == "transformers-cuda"


# -- classification -------------------------------------------------------------------------


def _check_scores(out: dict[str, Any], labels: set[str]) -> None:
    assert set(out["scores"]) == labels and out["label"] in labels
    assert sum(out["scores"].values()) == pytest.approx(1.0, abs=1e-5)
    assert out["confidence"] == pytest.approx(max(out["scores"].values()))
    assert out["scores"][out["label"]] == out["confidence"]


def test_a_text_classifier_answers_its_labels(bert: Path) -> None:
    predictor = HfTextClassification().load(bert, "cpu")
    outputs = predictor.predict(["a light linen dress", {"text": "the cold winter coat"}])
    assert len(outputs) == 2
    for out in outputs:
        _check_scores(out, {"negative", "positive"})
    # Batched or alone, one text scores the same (padding does not leak into the answer).
    alone = predictor.predict(["a light linen dress"])[0]
    assert alone["scores"]["positive"] == pytest.approx(outputs[0]["scores"]["positive"], 1e-5)
    spec = spec_of(TEXT_CLASSIFICATION)
    assert spec is not None and spec.serving is not None and spec.serving.unit == "input"
    assert spec.serving.count(["a", "b"], outputs) == 2


@pytest.mark.parametrize("item", [5, None, {"txt": "a"}, {"text": ["a"]}, "x" * 100_001])
def test_bad_texts_are_refused(bert: Path, item: Any) -> None:
    with pytest.raises(BadInput):
        HfTextClassification().load(bert, "cpu").predict(["fine", item])


def test_an_image_classifier_answers_its_labels(vit: Path) -> None:
    predictor = HfImageClassification().load(vit, "cpu")
    outputs = predictor.predict([png_b64((200, 30, 30)), {"image": png_b64((0, 0, 250), (8, 8))}])
    assert len(outputs) == 2
    for out in outputs:
        _check_scores(out, {"dress", "skirt", "jacket"})
    spec = spec_of(IMAGE_CLASSIFICATION)
    assert spec is not None and spec.serving is not None and spec.serving.unit == "image"


@pytest.mark.parametrize(
    "item",
    [
        "not base64!",
        base64.b64encode(b"plain text, not a picture").decode(),
        {"image": 3},
        {"img": png_b64((1, 2, 3))},
    ],
)
def test_bad_images_are_refused(vit: Path, item: Any) -> None:
    with pytest.raises(BadInput):
        HfImageClassification().load(vit, "cpu").predict([png_b64((1, 2, 3)), item])


# -- folders that are refused ---------------------------------------------------------------


def test_pickled_weights_are_refused_and_sent_to_the_sandbox(bert: Path, tmp_path: Path) -> None:
    folder = pickled_copy(bert, tmp_path / "bin-only")
    with pytest.raises(ModelMismatch, match=r"pytorch_model\.bin.*sandbox"):
        HfTextClassification().load(folder, "cpu")


def test_a_folder_is_loaded_only_by_the_recipe_of_its_task(bert: Path, llama: Path) -> None:
    with pytest.raises(ModelMismatch, match="served by hf-text-classification"):
        HfTextGeneration().load(bert, "cpu")
    with pytest.raises(ModelMismatch, match="served by hf-text-generation"):
        HfImageClassification().load(llama, "cpu")


def test_a_config_asking_for_remote_code_is_refused(llama: Path, tmp_path: Path) -> None:
    folder = tmp_path / "remote"
    shutil.copytree(llama, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_evil.py").write_text("raise SystemExit('never imported')\n")
    with pytest.raises(ModelMismatch, match="trust_remote_code"):
        HfTextGeneration().load(folder, "cpu")


def test_an_image_classifier_without_its_processor_is_refused(vit: Path, tmp_path: Path) -> None:
    folder = tmp_path / "no-processor"
    shutil.copytree(vit, folder)
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(ModelMismatch, match=r"preprocessor_config\.json"):
        HfImageClassification().load(folder, "cpu")


def test_the_data_plane_schema_of_a_text_to_classify() -> None:
    """What the endpoint's OpenAPI schema says a text classifier takes (the predictor checks
    the same itself)."""
    spec = spec_of(TEXT_CLASSIFICATION)
    assert spec is not None and spec.serving is not None
    one = TypeAdapter(spec.serving.input_schema)
    assert one.validate_python("a dress") == "a dress"
    assert one.validate_python({"text": "a coat"}).text == "a coat"
    for bad in (5, {"txt": "a"}, "x" * 100_001):
        with pytest.raises(ValidationError):
            one.validate_python(bad)


# -- hf:// references (the pull itself is tested through the CLI, against a closed port) -----


def test_hub_references_name_a_repository_and_an_optional_revision() -> None:
    assert hub.parse("hf://org/tiny-model") == ("org/tiny-model", None)
    assert hub.parse("hf://gpt2@main") == ("gpt2", "main")
    assert hub.parse("hf://Org/M.v2@a1b2c3") == ("Org/M.v2", "a1b2c3")
    for bad in ("hf://", "hf://a/b/c", "hf://a/../b", "hf:///etc", "hf://a b", "hf://a@"):
        with pytest.raises(hub.HubError) as info:
            hub.parse(bad)
        assert (info.value.status, info.value.code) == (400, "bad_request")


def test_an_offline_machine_is_told_so_before_any_download(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with (
        pytest.raises(hub.HubError, match="HF_HUB_OFFLINE is set") as info,
        hub.pulled("hf://org/model"),
    ):
        pass
    assert info.value.code == "hub_unreachable"


# -- evaluation jobs ------------------------------------------------------------------------


def test_a_causal_lm_is_measured_on_held_out_text(llama: Path, tmp_path: Path) -> None:
    samples.write("text", tmp_path / "text", count=60)
    ds = LocalDataset.from_folder(tmp_path / "text")
    out = HfTextGeneration().evaluate(LocalRunContext(tmp_path / "run"), llama, ds)
    m = out.metrics
    assert m["perplexity"] == pytest.approx(math.exp(m["val_loss"]))
    assert m["bits_per_byte"] > 0 and out.details["held_out_windows"] >= 1
    # Random weights predict about uniformly over the ~300-token vocabulary.
    vocab = json.loads((llama / "config.json").read_text())["vocab_size"]
    assert vocab / 2 < m["perplexity"] < vocab * 2
    report = json.loads((tmp_path / "run" / "artifacts" / "evaluation.json").read_text())
    assert report["metrics"] == pytest.approx(m)


def test_an_image_classifier_is_measured_on_validation_images(vit: Path, tmp_path: Path) -> None:
    samples.write("garments", tmp_path / "garments", count=40)
    ds = LocalDataset.from_folder(tmp_path / "garments")
    validation = ds.select("image", "validation")
    known = [f for f in validation if f.label in ("dress", "skirt", "jacket")]
    assert known and len(known) < len(validation)
    out = HfImageClassification().evaluate(LocalRunContext(tmp_path / "run"), vit, ds)
    assert 0.0 <= out.metrics["accuracy"] <= 1.0
    assert out.details["skipped"] == len(validation) - len(known)  # labels it does not know
    matrix = out.details["confusion_matrix"]
    assert sum(map(sum, matrix)) == len(known)
    hits = sum(matrix[i][i] for i in range(len(matrix)))
    assert out.metrics["accuracy"] == pytest.approx(hits / len(known))


def test_a_text_classifier_is_measured_on_a_tables_labelled_texts(
    bert: Path, tmp_path: Path
) -> None:
    labels = sorted(LABELS.values())
    folder = tmp_path / "reviews"
    folder.mkdir()
    rows = [f"{line.replace(',', '')},{labels[i % len(labels)]}" for i, line in enumerate(LINES)]
    (folder / "reviews.csv").write_text("review,mood\n" + "\n".join(rows * 3) + "\n")
    ds = LocalDataset.from_folder(folder, validation_ratio=0.5)
    run = LocalRunContext(tmp_path / "run")
    out = HfTextClassification().evaluate(run, bert, ds, {"target": "mood"})
    predictor = HfTextClassification().load(bert, "cpu")
    texts = [r["review"] for r in load_rows(ds)[1]]
    said = [o["label"] for o in predictor.predict(texts)]
    truth = [r["mood"] for r in load_rows(ds)[1]]
    right = sum(a == b for a, b in zip(said, truth, strict=True))
    assert out.details["samples"] == len(texts) > 0
    assert out.metrics["accuracy"] == pytest.approx(right / len(texts))

    (folder / "reviews.csv").write_text("review,stars,mood\n" + "nice,5,calm\n" * 12)
    two = LocalDataset.from_folder(folder, validation_ratio=0.5)
    with pytest.raises(DatasetMismatch, match=r"params\.text \(one of 'review', 'stars'\)"):
        HfTextClassification().evaluate(run, bert, two, {"target": "mood"})
    assert HfTextClassification().evaluate(run, bert, two, {"target": "mood", "text": "review"})
