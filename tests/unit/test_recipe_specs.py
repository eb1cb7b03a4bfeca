"""Recipes describe themselves (issue 11, item 1): one ``RecipeSpec`` per recipe names its
parameters, dataset check, serving schemas, billing unit and counter; the server's submission
checks, the data plane's schema and metering read it, and importing it imports no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from pydantic import BaseModel, Field

from gureum.recipes import (
    DatasetMismatch,
    LocalDataset,
    ModelMismatch,
    RecipeParams,
    registry,
    specs,
)
from gureum.recipes import io_schemas as io
from gureum.recipes.spec import RecipeSpec, ServingSpec, images, per_input, tokens
from gureum.server.errors import Unprocessable
from gureum.server.services import jobs
from gureum.serving import openai_compat, units
from gureum.serving.openapi_dataplane import document

HEAVY = ("torch", "sklearn", "transformers", "onnxruntime", "diffusers")
# The billing contract of the built-in recipes a plan's prices are written against.
BILLING = {
    "image-generator": ("image", images),
    "image-classifier": ("image", per_input),
    "text-generator": ("token", tokens),
    "tabular": ("row", per_input),
    "image-diffusion": ("image", images),
    "image-lora": ("image", images),
}
TEXT_MANIFEST: dict[str, Any] = {
    "name": "notes",
    "kind": "text",
    "schema": {},
    "split": {"unit": "file", "validation_ratio": 0.2, "seed": 0},
    "files": [
        {"path": "a.txt", "sha256": "0" * 64, "size": 5, "kind": "text", "split": "train"},
        {"path": "b.txt", "sha256": "1" * 64, "size": 5, "kind": "text", "split": "validation"},
    ],
}


def _imported_after(statement: str) -> list[str]:
    code = f"import sys\n{statement}\nprint(__import__('json').dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    return [m for m in HEAVY if m in loaded]


def test_importing_the_specs_imports_no_torch_sklearn_or_transformers() -> None:
    assert _imported_after("import gureum.recipes.specs") == []
    assert _imported_after("import gureum.recipes") == []
    # Control: importing an implementation does load torch, so the check above can fail.
    assert "torch" in _imported_after("import gureum.recipes.image_classifier")


def test_the_servers_job_checks_and_the_data_plane_schema_import_no_torch() -> None:
    statement = (
        "import gureum.server.services.jobs, gureum.server.services.base_models, "
        "gureum.serving.openapi_dataplane, gureum.serving.units"
    )
    assert _imported_after(statement) == []


@pytest.mark.parametrize("name", sorted(BILLING))
def test_every_built_in_recipe_spec_names_params_check_unit_and_counter(name: str) -> None:
    spec = specs.SPECS[name]
    assert spec.trainable and not spec.needs_code
    assert spec.params is not None and issubclass(spec.params, RecipeParams)
    assert spec.params.model_config.get("extra") == "forbid"
    assert callable(spec.check_dataset)
    assert spec.serving is not None
    assert (spec.serving.unit, spec.serving.count) == BILLING[name]
    assert spec.serving.input_schema is not None and spec.serving.output_schema is not None
    assert spec.serving.openai == (name == "text-generator")
    # The implementation uses the very classes the spec names: one definition, not two.
    recipe = registry.get_recipe(name)
    assert recipe.Params is spec.params
    assert recipe.description == spec.description
    assert bool(getattr(recipe, "unpickles_model", False)) == spec.unpickles_model


def test_the_script_recipe_trains_from_its_own_code_and_is_not_served() -> None:
    spec = specs.SPECS["script"]
    assert spec.trainable and spec.needs_code and spec.serving is None
    assert spec.params is not None and spec.check_dataset is not None
    assert "script" not in registry.names()
    params = registry.check_params("script", {"entrypoint": "train.py", "lr": 0.1})
    assert params.model_dump() == {"seed": 0, "entrypoint": "train.py", "args": [], "lr": 0.1}
    spec.check_dataset(LocalDataset.from_manifest(Path("/nonexistent"), TEXT_MANIFEST), params)


@pytest.mark.parametrize(
    "name", ["image-classifier", "image-generator", "image-diffusion", "tabular"]
)
def test_a_spec_dataset_check_refuses_a_text_dataset_from_the_manifest_alone(name: str) -> None:
    ds = LocalDataset.from_manifest(Path("/nonexistent"), TEXT_MANIFEST)
    check = specs.SPECS[name].check_dataset
    assert check is not None
    with pytest.raises(DatasetMismatch, match=name):
        check(ds, None)


def test_the_text_generator_spec_accepts_text_and_names_its_base_model_parameter() -> None:
    spec = specs.SPECS["text-generator"]
    assert spec.check_dataset is not None and spec.base_model is not None
    spec.check_dataset(LocalDataset.from_manifest(Path("/nonexistent"), TEXT_MANIFEST), None)
    assert spec.base_model.param == "base_model" and spec.base_model.folder == "base"
    assert spec.base_model.named_in({"base_model": "tiny:2", "mode": "lora"}) == "tiny:2"
    assert spec.base_model.named_in({"mode": "gpt"}) is None
    with pytest.raises(ModelMismatch, match="never a path"):
        spec.base_model.named_in({"base_model": "/etc/secrets", "mode": "lora"})


def test_submission_refuses_an_unknown_recipe_with_422_listing_the_known_ones() -> None:
    with pytest.raises(Unprocessable) as err:
        jobs._recipe("gan")
    assert (err.value.status, err.value.code) == (422, "invalid_request")
    assert "unknown recipe 'gan'; choose one of: image-generator" in err.value.message


def test_submission_refuses_an_unknown_parameter_with_422_naming_it() -> None:
    spec = jobs._recipe("text-generator")
    with pytest.raises(Unprocessable) as err:
        jobs._check(spec, {"epochz": 3}, TEXT_MANIFEST)
    assert (err.value.status, err.value.code) == (422, "invalid_request")
    assert "text-generator: unknown parameter 'epochz'" in err.value.message


def test_submission_refuses_a_dataset_the_spec_check_refuses_with_422() -> None:
    spec = jobs._recipe("tabular")
    with pytest.raises(Unprocessable, match="tabular needs CSV files") as err:
        jobs._check(spec, {"target": "price"}, TEXT_MANIFEST)
    assert err.value.status == 422
    params = jobs._check(jobs._recipe("text-generator"), {"epochs": 2}, TEXT_MANIFEST)
    assert params.epochs == 2 and params.n_layer == 4  # defaults filled in, as stored


def test_io_bounds_agree_with_the_serving_code_that_enforces_them() -> None:
    assert io.MAX_STOPS == openai_compat.MAX_STOPS
    assert (io.INT64_MIN, io.INT64_MAX) == (units.INT64_MIN, units.INT64_MAX)


# -- adding a recipe: one module plus one registry entry ------------------------------------


class EchoParams(RecipeParams):
    repeat: int = Field(1, ge=1, le=3)


class EchoInput(BaseModel):
    word: str = Field(min_length=1)


class EchoOutput(BaseModel):
    words: list[str]


def check_echo_dataset(ds: LocalDataset, params: EchoParams | None = None) -> None:
    if ds.kind != "text":
        raise DatasetMismatch(f"echo needs text; got {ds.describe()}")


def letters(inputs: list[Any], outputs: list[Any]) -> float:
    return float(sum(len(i["word"]) for i in inputs))


class Echo:
    """A whole recipe in a few lines: what the platform reads from the spec stays in the spec."""

    name = "echo"
    description = "repeats words"
    Params = EchoParams


ECHO = RecipeSpec(
    name="echo",
    description="repeats words",
    implementation=f"{__name__}:Echo",
    serving=ServingSpec(
        unit="letter", count=letters, input_schema=EchoInput, output_schema=EchoOutput
    ),
    params=EchoParams,
    check_dataset=check_echo_dataset,
)


def test_one_new_spec_entry_is_read_by_submission_metering_and_the_schema(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(specs, "SPECS", MappingProxyType({**specs.SPECS, "echo": ECHO}))
    monkeypatch.setattr(registry, "_loaded", dict(registry._loaded))  # forget Echo after
    assert "echo" in registry.names()
    # submission: parameters and dataset checked from the spec
    assert jobs._check(jobs._recipe("echo"), {"repeat": 2}, TEXT_MANIFEST).repeat == 2
    with pytest.raises(Unprocessable, match="parameter 'repeat'"):
        jobs._check(jobs._recipe("echo"), {"repeat": 9}, TEXT_MANIFEST)
    # metering: the spec's unit and counter
    assert units.unit_of("echo") == "letter"
    assert units.count_units("echo", [{"word": "hey"}, {"word": "yo"}], [{}, {}]) == 5.0
    # the data plane's schema: one input and one output as the spec names them
    doc = json.loads(document("echo-endpoint", "echo", "echo-model:1", 4))
    schemas = doc["components"]["schemas"]
    assert schemas["PredictInput"]["properties"]["input"] == {
        "$ref": "#/components/schemas/EchoInput"
    }
    assert schemas["EchoInput"]["properties"]["word"]["minLength"] == 1
    assert "EchoOutput" in schemas
    assert not any(path.endswith("/chat/completions") for path in doc["paths"])
    # the implementation, loaded only when asked for
    assert isinstance(registry.get_recipe("echo"), Echo)


def test_a_recipe_that_only_serves_refuses_a_train_job_with_422(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served_only = RecipeSpec(
        name="echo-served",
        description="repeats words, trained by no job",
        implementation=f"{__name__}:Echo",
        trainable=False,
        serving=ServingSpec(unit="letter", count=letters),
    )
    monkeypatch.setattr(
        specs, "SPECS", MappingProxyType({**specs.SPECS, "echo-served": served_only})
    )
    assert "echo-served" not in registry.names()
    with pytest.raises(Unprocessable, match="'echo-served' only serves models; it does not train"):
        jobs._check(jobs._recipe("echo-served"), {}, TEXT_MANIFEST)
