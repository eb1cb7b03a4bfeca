"""`gureum models import --predictor`: what is refused before anything is uploaded, and the
job's script that turns the pushed weights into the model's files."""

from __future__ import annotations

import os
import runpy
from pathlib import Path
from typing import Any

import pytest

from gureum.client.predictor_import import COPY, ENTRYPOINT, import_predictor
from gureum.client.upload import LocalPathError


class Untouched:
    """Stands for the datasets and jobs APIs: nothing may be called."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"{name} was called before the local checks passed")


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({}, "has no predictor.py"),
        ({"predictor.py": "x", ENTRYPOINT: "y"}, f"holds {ENTRYPOINT}"),
        ({"predictor.py": "x", "__weights_missing__": ""}, "does not exist"),
    ],
)
def test_refused_before_any_upload(tmp_path: Path, layout: dict[str, str], message: str) -> None:
    code = tmp_path / "code"
    code.mkdir()
    weights = tmp_path / "weights.safetensors"
    for name, text in layout.items():
        if name != "__weights_missing__":
            (code / name).write_text(text)
    if "__weights_missing__" not in layout:
        weights.write_bytes(b"w")
    with pytest.raises(LocalPathError, match=message):
        import_predictor(Untouched(), Untouched(), "m", weights, code)  # type: ignore[arg-type]


def test_the_jobs_script_copies_the_weights_into_the_model_and_registers_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, model = tmp_path / "data", tmp_path / "model"
    (data / "sub").mkdir(parents=True)
    (data / "w.safetensors").write_bytes(b"weights")
    (data / "sub" / "config.json").write_text("{}")
    model.mkdir()
    registered: list[bool] = []
    import gureum.run as run

    monkeypatch.setattr(os, "environ", {**os.environ, "GUREUM_DATA_DIR": str(data)})
    monkeypatch.setattr(run, "model_dir", lambda: model)
    monkeypatch.setattr(run, "register_model", lambda **_: registered.append(True))
    script = tmp_path / ENTRYPOINT
    script.write_text(COPY)
    runpy.run_path(str(script))
    assert (model / "w.safetensors").read_bytes() == b"weights"
    assert (model / "sub" / "config.json").read_text() == "{}"
    assert registered == [True]
