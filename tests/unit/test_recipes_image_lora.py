"""image-lora in-process (issue 15): LoRA on a tiny Stable-Diffusion-shaped pipeline built from
configs trains only its adapters (a few percent of the UNet), saves them as safetensors beside
a config that names the base, generates PNGs from prompts with them, and refuses out-of-range
requests with the limits; a prompt over the text encoder's length is cut and says so."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from gureum import samples
from gureum.recipes import InvalidParams, LocalDataset, LocalRunContext, get_recipe
from gureum.recipes.base import BadInput, DatasetMismatch, OverBudget, parse_params
from gureum.recipes.hf_folder import NotHuggingFace
from gureum.recipes.image_lora import ImageLora, TextToImagePredictor
from gureum.recipes.image_lora_params import check_diffusers
from gureum.recipes.lora_captions import captioned
from gureum.recipes.sd_tiny import save_tiny_pipeline

NAME = "image-lora"
REF = "tiny-sd:1"
SMALL: dict[str, Any] = {
    "base_model": REF,
    "epochs": 2,
    "batch_size": 4,
    "max_steps": 2,
    "lr": 0.01,
    "sample_steps": 2,
    "time_budget_s": 60,
}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("sd") / "tiny-sd")


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> LocalDataset:
    """Garment pictures: the dresses captioned by a metadata.jsonl beside them (file names
    relative to it, as diffusers' ImageFolder reads them), the others by their class folder."""
    root = tmp_path_factory.mktemp("garments")
    samples.write("garments", root, count=10)
    rows = [
        {"file_name": p.name, "text": f"a {colour} checked dress"}
        for p, colour in zip(sorted((root / "dress").glob("*.png")), ("red", "navy"), strict=True)
    ]
    (root / "dress" / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return LocalDataset.from_folder(root)


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, base: Path, pictures: LocalDataset
) -> tuple[Path, dict[str, float]]:
    ctx = LocalRunContext(tmp_path_factory.mktemp("run"), models={REF: base})
    recipe = get_recipe(NAME)
    out = recipe.train(ctx, pictures, parse_params(NAME, recipe.Params, SMALL))
    return out.model_dir, out.metrics


def pngs(output: dict[str, Any]) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(s))) for s in output["images"]]


def test_captions_come_from_the_caption_files(pictures: LocalDataset) -> None:
    captions = {f.path: text for f, text in captioned(pictures, pictures.select("image"))}
    assert len(captions) == 10
    assert captions["dress/0000.png"] == "a red checked dress"
    assert captions["dress/0001.png"] == "a navy checked dress"
    assert captions["shirt/0000.png"] == "shirt"  # no caption file: the class name


def test_the_garments_sample_captions_each_picture_by_what_was_drawn(tmp_path: Path) -> None:
    summary = samples.write("garments", tmp_path / "g", count=15, seed=2, captions=True)
    assert summary.files == 15 + 5  # the pictures and a metadata.jsonl per class
    ds = LocalDataset.from_folder(tmp_path / "g")
    pairs = captioned(ds, ds.select("image"))
    assert len(pairs) == 15
    words = {"striped", "dotted", "checked"}
    for f, text in pairs:
        assert text.endswith(str(f.label)) and text != f.label, text
        assert text.startswith("a ") or f.label == "trousers"
    assert any(set(text.split()) & words for _, text in pairs)  # patterns are named
    plain = tmp_path / "plain"
    samples.write("garments", plain, count=15, seed=2)  # the same pictures, without captions
    for f, _ in pairs:
        assert (plain / f.path).read_bytes() == (tmp_path / "g" / f.path).read_bytes()
    with pytest.raises(samples.SampleError, match="only garments"):
        samples.write("digits", tmp_path / "d", count=3, captions=True)


def test_trains_only_a_small_adapter_that_names_its_base(
    trained: tuple[Path, dict[str, float]], base: Path
) -> None:
    model_dir, metrics = trained
    config = json.loads((model_dir / "config.json").read_text())
    assert config["recipe"] == NAME and config["base_model"] == REF
    assert (model_dir / "base" / "model_index.json").is_file()
    adapter = load_file(model_dir / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora" in k for k in adapter)
    n_adapter = sum(t.numel() for t in adapter.values())
    assert n_adapter == metrics["trainable_params"] == config["trainable_params"]
    assert n_adapter / metrics["base_unet_params"] < 0.05
    unet_bytes = (base / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    adapter_bytes = (model_dir / "adapter" / "adapter_model.safetensors").stat().st_size
    assert adapter_bytes / unet_bytes < 0.05
    assert any(float(t.abs().sum()) > 0 for k, t in adapter.items() if "lora_B" in k)  # it moved
    assert metrics["val_loss"] == metrics["val_loss"]  # not NaN


def test_generates_pngs_from_a_prompt_with_the_adapter(
    trained: tuple[Path, dict[str, float]], base: Path
) -> None:
    tuned = ImageLora().load(trained[0])
    ask = {"prompt": "a red checked dress", "seed": 3, "steps": 2, "width": 32, "height": 24}
    [out] = tuned.predict([ask])
    assert out["truncated"] is False and out["warning"] is None
    [img] = pngs(out)
    assert img.format == "PNG" and img.size == (32, 24)
    # The same seed gives the same picture alone or batched with other inputs.
    alone = out["images"][0]
    batched = tuned.predict([{**ask, "seed": 9, "count": 2}, ask])
    assert batched[1]["images"][0] == alone and len(batched[0]["images"]) == 2
    # The adapter changed the model: the base alone draws another picture from the same noise.
    plain = ImageLora().load(base)
    assert isinstance(plain, TextToImagePredictor)
    assert plain.predict([ask])[0]["images"][0] != alone


def test_many_inputs_are_denoised_a_few_pictures_at_a_time(
    trained: tuple[Path, dict[str, float]],
) -> None:
    """However many inputs a batch holds, one pipeline call holds at most one input's largest
    count of pictures (latents of thousands of pictures at once would exhaust the replica)."""
    tuned = ImageLora().load(trained[0])
    assert isinstance(tuned, TextToImagePredictor)
    calls: list[int] = []

    class Counting:
        """The pipeline, counting the pictures of each call."""

        def __init__(self, pipe: Any) -> None:
            self.pipe = pipe

        def __call__(self, **kwargs: Any) -> Any:
            calls.append(len(kwargs["prompt"]))
            return self.pipe(**kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.pipe, name)

    tuned.pipe = Counting(tuned.pipe)
    ask = {"prompt": "a red checked dress", "steps": 1, "width": 16, "height": 16}
    outs = tuned.predict([{**ask, "seed": 1, "count": 8}, {**ask, "seed": 2, "count": 8}, ask])
    assert [len(o["images"]) for o in outs] == [8, 8, 1]
    assert calls == [8, 8, 1]
    assert tuned.predict([ask])[0]["images"] == outs[2]["images"]  # chunks draw the same


def test_a_long_prompt_is_truncated_and_says_so(trained: tuple[Path, dict[str, float]]) -> None:
    tuned = ImageLora().load(trained[0])
    [out] = tuned.predict([{"prompt": "a red checked dress " * 20, "steps": 1}])
    assert out["truncated"] is True and "truncated" in out["warning"]
    assert len(pngs(out)) == 1


@pytest.mark.parametrize(
    ("field", "value", "limit"),
    [
        ("steps", 0, "from 1 to 100"),
        ("steps", 101, "from 1 to 100"),
        ("guidance", 10.5, "from 0 to 10"),
        ("guidance", -1, "from 0 to 10"),
        ("width", 20, "multiple of 8 from 16 to 1024"),
        ("height", 2048, "multiple of 8 from 16 to 1024"),
        ("count", 9, "from 1 to 8"),
    ],
)
def test_out_of_range_requests_are_refused_with_the_limits(
    trained: tuple[Path, dict[str, float]], field: str, value: Any, limit: str
) -> None:
    tuned = ImageLora().load(trained[0])
    with pytest.raises(BadInput, match=rf'"{field}" must be .*{limit}'):
        tuned.predict([{"prompt": "a dress", field: value}])


def test_a_generation_past_its_budget_stops(trained: tuple[Path, dict[str, float]]) -> None:
    tuned = ImageLora().load(trained[0])
    with pytest.raises(OverBudget, match="time budget"):
        tuned.predict([{"prompt": "a dress", "steps": 5, "time_budget_s": 1e-6}])


def test_only_safetensors_diffusers_folders_are_bases(base: Path) -> None:
    index = json.loads((base / "model_index.json").read_text())
    paths = [p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()]
    assert check_diffusers(index, paths) == NAME
    pickled = [p.replace(".safetensors", ".bin") if p.startswith("unet/") else p for p in paths]
    with pytest.raises(NotHuggingFace, match="pickle weights"):
        check_diffusers(index, pickled)
    with pytest.raises(NotHuggingFace, match="lists no unet"):
        check_diffusers({k: v for k, v in index.items() if k != "unet"}, paths)
    with pytest.raises(NotHuggingFace, match="_class_name"):
        check_diffusers({"architectures": ["GPT2LMHeadModel"]}, paths)


def test_base_model_is_a_registry_reference_never_a_path() -> None:
    recipe = get_recipe(NAME)
    for bad in ("/etc", "../x", "~/sd"):
        with pytest.raises(InvalidParams, match="base_model"):
            parse_params(NAME, recipe.Params, {**SMALL, "base_model": bad})
    with pytest.raises(InvalidParams, match="base_model"):
        parse_params(NAME, recipe.Params, {"epochs": 1})


def test_pictures_without_captions_are_refused(tmp_path: Path, base: Path) -> None:
    (tmp_path / "pics").mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(tmp_path / "pics" / f"{i}.png")
    Image.new("RGB", (16, 16)).save(tmp_path / "loose.png")
    ds = LocalDataset.from_folder(tmp_path, validation_ratio=0.0)
    ctx = LocalRunContext(tmp_path / "run", models={REF: base})
    recipe = get_recipe(NAME)
    with pytest.raises(DatasetMismatch, match="no caption"):
        recipe.train(ctx, ds, parse_params(NAME, recipe.Params, SMALL))
    assert torch.is_grad_enabled()
