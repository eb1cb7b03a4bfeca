"""The dashboard's action forms as the server renders them (no browser): push a dataset, start a
job (the recipes come from their specs), deploy a version and try an endpoint (a form for its
input kind) for developers and up, none of them for a viewer; and the recipes' parameters with
their defaults. SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from gureum.config import Settings
from gureum.recipes.specs import SPECS
from gureum.web.forms import train_recipes, try_kind
from tests.integration.test_endpoints_api import Env, make_env
from tests.integration.web_helpers import key_of_role, sign_in

FORMS = {
    "/datasets": 'id="upload-form"',
    "/jobs": 'id="train-form"',
    "/models/m/versions/1": 'id="deploy-form" class="stack" data-model="m:1"',
    "/endpoints/shop": 'id="try-form"',
}


@pytest.fixture
def env(settings: Settings) -> Iterator[Env]:
    for e in make_env(settings):
        e.deploy("m:1")
        yield e


def _browser(env: Env, key: str) -> TestClient:
    web = TestClient(env.cloud.app, base_url="http://testserver")
    assert sign_in(web, key).status_code == 303
    return web


def test_a_developer_gets_every_action_form(env: Env) -> None:
    developer, _ = key_of_role(env.http, "builder", "developer")
    web = _browser(env, developer)
    for path, form in FORMS.items():
        page = web.get(path)
        assert page.status_code == 200, (path, page.text)
        assert form in page.text, path
    jobs = web.get("/jobs").text
    offered = re.findall(r'<option value="([a-z-]+)">', jobs.split('id="tr-recipe"', 1)[1])
    assert "image-generator" in offered and "tabular" in offered
    assert "script" not in offered and "onnx" not in offered  # code folders, imports: the CLI
    assert 'src="/static/actions.js' in jobs
    # A tabular endpoint takes rows: the try panel is a JSON box, and says who is metered.
    endpoint = web.get("/endpoints/shop").text
    assert 'data-kind="json"' in endpoint and "member:admin" in endpoint  # the key's user
    assert 'src="/static/try.js' in endpoint and 'src="/static/endpoint_state.js' in endpoint
    assert 'src="/static/upload.js' in web.get("/datasets").text


def test_a_viewer_sees_the_pages_without_any_action_form(env: Env) -> None:
    viewer, _ = key_of_role(env.http, "watcher", "viewer")
    web = _browser(env, viewer)
    for path, form in FORMS.items():
        page = web.get(path)
        assert page.status_code == 200, (path, page.text)
        assert form.split(" ")[0] not in page.text, path
        for script in ("upload.js", "actions.js", "try.js"):
            assert f"/static/{script}" not in page.text, (path, script)


def test_the_job_form_lists_each_recipes_parameters_with_their_defaults() -> None:
    recipes = {r.name: r for r in train_recipes()}
    assert set(recipes) == {
        name for name, spec in SPECS.items() if spec.trainable and not spec.needs_code
    }
    generator = {p.name: p.default for p in recipes["image-generator"].params}
    assert generator["epochs"] == "30" and generator["lr"] == "0.002"
    assert "seed" not in generator  # every recipe has it; not worth a line each
    tabular = {p.name: p.default for p in recipes["tabular"].params}
    assert tabular["target"] == ""  # no default: the member must give it


@pytest.mark.parametrize(
    ("recipe", "kind"),
    [
        ("text-generator", "text"),
        ("image-generator", "class-images"),
        ("image-diffusion", "class-images"),
        ("image-lora", "prompt-images"),
        ("image-classifier", "image-in"),
        ("tabular", "json"),
        ("onnx", "json"),
        (None, "json"),
    ],
)
def test_the_try_panel_asks_for_the_recipes_input(recipe: str | None, kind: str) -> None:
    assert try_kind(recipe) == kind
