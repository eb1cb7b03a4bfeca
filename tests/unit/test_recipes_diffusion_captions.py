"""image-diffusion conditioned on captions (issue 15, ``conditioning=caption``): the word
vocabulary of the training captions travels with the model, prompts and negative prompts steer
the samples, a prompt over the caption length is truncated and says so, and the replica's
request path serves it; a class-conditional model refuses a prompt with the reason."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from gureum import samples
from gureum.recipes import LocalDataset, LocalRunContext, get_recipe
from gureum.recipes.base import BadInput, DatasetMismatch, parse_params
from gureum.recipes.diffusion_text import PAD, UNK, Vocab, build_vocab
from gureum.recipes.image_diffusion import DiffusionPredictor, ImageDiffusion
from tests.unit.test_recipes_diffusion import TINY, _replica

NAME = "image-diffusion"
CAPTIONS = {**TINY, "conditioning": "caption", "text_dim": 16, "max_caption_tokens": 6}


@pytest.fixture(scope="module")
def captioned(tmp_path_factory: pytest.TempPathFactory) -> LocalDataset:
    root = tmp_path_factory.mktemp("garments-captions")
    samples.write("garments", root, count=40, captions=True)
    return LocalDataset.from_folder(root)


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, captioned: LocalDataset
) -> tuple[LocalRunContext, Path]:
    ctx = LocalRunContext(tmp_path_factory.mktemp("run"))
    recipe = get_recipe(NAME)
    params = parse_params(NAME, recipe.Params, {**CAPTIONS, "epochs": 2})
    return ctx, recipe.train(ctx, captioned, params).model_dir


@pytest.fixture(scope="module")
def predictor(trained: tuple[LocalRunContext, Path]) -> DiffusionPredictor:
    return ImageDiffusion().load(trained[1])


def _pixels(text: str) -> np.ndarray[Any, Any]:
    raw = base64.b64decode(text)
    assert raw.startswith(b"\x89PNG\r\n\x1a\n")
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"), dtype=np.int16)


def test_the_vocabulary_is_the_captions_words_by_frequency_and_cuts_long_text() -> None:
    vocab = build_vocab(["a red dress", "a blue dress", "A red, checked skirt!"], size=4)
    assert vocab == ["a", "dress", "red", "blue"]  # ties alphabetical
    v = Vocab(vocab, max_tokens=3)
    short = v.encode("Red dress")
    assert (short.ids, short.truncated, short.unknown) == ([4, 3, PAD], False, [])
    long = v.encode("a red checked dress")
    assert (long.ids, long.truncated, long.unknown) == ([2, 4, UNK], True, ["checked"])
    assert v.encode("").ids == [PAD] * 3  # the empty caption: what guidance drops to


def test_the_model_keeps_its_vocabulary_and_draws_pictures_from_prompts(
    trained: tuple[LocalRunContext, Path], predictor: DiffusionPredictor
) -> None:
    config = json.loads((trained[1] / "config.json").read_text())
    assert config["params"]["conditioning"] == "caption"
    assert {"a", "dress", "skirt"} <= set(config["vocab"])
    log = trained[0].log_path.read_text()
    assert "conditioned on captions" in log
    same = {"prompt": "a red checked dress", "count": 2, "seed": 3}
    out = predictor.predict(
        [same, same, {**same, "prompt": "a blue plain skirt"}, {**same, "negative_prompt": "red"}]
    )
    first = out[0]
    assert (first["prompt"], first["format"], first["truncated"], first["warning"]) == (
        "a red checked dress",
        "png",
        False,
        None,
    )
    assert "class" not in first
    assert [_pixels(t).shape for t in first["images"]] == [(16, 16, 3)] * 2
    assert out[1]["images"] == first["images"]  # the same seed and prompt: the same pictures
    assert out[2]["images"] != first["images"]  # another prompt
    assert out[3]["images"] != first["images"]  # a negative prompt steers guidance
    assert out[3]["negative_prompt"] == "red"


def test_a_prompt_over_the_caption_length_is_truncated_and_says_so(
    predictor: DiffusionPredictor,
) -> None:
    words = "a red checked dress with a long collar"
    long, unknown = predictor.predict([{"prompt": words}, {"prompt": "a plaid dress"}])
    assert long["truncated"] is True
    assert "longer than the text encoder's 6 tokens and was truncated" in long["warning"]
    # The words read are the first six: the same pictures as the cut prompt.
    cut = predictor.predict([{"prompt": "a red checked dress with a"}])[0]
    assert (cut["truncated"], cut["images"]) == (False, long["images"])
    assert unknown["truncated"] is False
    assert unknown["warning"] == (
        "words the model never saw in its training captions, read as unknown: plaid"
    )


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"count": 2}, '"prompt" is required: this model is conditioned on captions'),
        ({"prompt": "x" * 4001}, '"prompt" must be a string of at most 4000 characters'),
        ({"prompt": "dress", "steps": 101}, '"steps" must be an integer from 1 to 100'),
        ({"prompt": "dress", "size": 32}, '"size" must be 16'),
    ],
)
def test_bad_caption_requests_are_refused_with_the_limits(
    predictor: DiffusionPredictor, item: dict[str, Any], message: str
) -> None:
    with pytest.raises(BadInput) as err:
        predictor.predict([item])
    assert message in str(err.value)


def test_a_class_name_reads_as_the_prompt_and_the_grids_ask_by_class(
    trained: tuple[LocalRunContext, Path], predictor: DiffusionPredictor
) -> None:
    by_class = predictor.predict([{"class": "dress", "seed": 1}])[0]
    by_prompt = predictor.predict([{"prompt": "dress", "seed": 1}])[0]
    assert by_class["images"] == by_prompt["images"]
    assert (trained[0].artifacts_dir / "samples" / "epoch-0002.png").exists()


def test_the_replica_serves_prompts_billed_per_image(predictor: DiffusionPredictor) -> None:
    s = _replica(predictor)

    def serve(inputs: list[Any]) -> Any:
        body = json.dumps({"inputs": inputs}).encode()
        return asyncio.run(s._serve("predict", body, "application/json"))

    ok = serve([{"prompt": "a red dress " * 5, "count": 2, "steps": 2}, {"prompt": "skirt"}])
    assert (ok.status, ok.units) == (200, 3.0)
    outputs = json.loads(ok.body)["outputs"]
    assert [o["truncated"] for o in outputs] == [True, False]
    assert "was truncated" in outputs[0]["warning"]
    bad = serve([{"prompt": "dress", "guidance": 11}])
    error = json.loads(bad.body)["error"]
    assert (bad.status, error["code"]) == (422, "bad_input")
    assert '"guidance" must be a number from 0 to 10' in error["message"]


def test_evaluation_and_export_work_on_a_caption_model(
    trained: tuple[LocalRunContext, Path], captioned: LocalDataset, tmp_path: Path
) -> None:
    ctx, model_dir = trained
    result = ImageDiffusion().evaluate(ctx, model_dir, captioned)
    assert {"mmd", "class_accuracy", "val_loss"} <= set(result.metrics)
    files = ImageDiffusion().export(model_dir, tmp_path / "out")
    unet = json.loads((tmp_path / "out" / "unet" / "config.json").read_text())
    assert unet["_class_name"] == "UNet2DConditionModel" and unet["cross_attention_dim"] == 16
    assert tmp_path / "out" / "config.json" in files


def test_a_broken_caption_file_is_refused_naming_the_recipe(tmp_path: Path) -> None:
    root = tmp_path / "data"
    samples.write("garments", root, count=10, captions=True)
    next(root.rglob("metadata.jsonl")).write_text("not json\n")
    ds = LocalDataset.from_folder(root)
    recipe = get_recipe(NAME)
    params = parse_params(NAME, recipe.Params, {**CAPTIONS, "epochs": 1})
    with pytest.raises(DatasetMismatch, match=r"image-diffusion: .*metadata.jsonl line 1 is not"):
        recipe.train(LocalRunContext(tmp_path / "run"), ds, params)
