"""`datasets curate` on the control plane (issue 12, item 3): captured calls and their feedback
become the next dataset version in the shape the endpoint's recipe trains on, merged with the
base, deduplicated, with lineage; the held-out side stays the base's. Captured calls are
written as replicas write them (batch objects in the real artifact store, index rows and
feedback through the internal routes). No Ray. SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from gureum.client.errors import BadRequestError, ForbiddenError
from gureum.config import Settings
from gureum.recipes.dataset import DataFile, LocalDataset, SplitRule
from gureum.recipes.tabular import load_rows
from gureum.recipes.textdata import load_text
from gureum.schemas.capture import CapturedIn, FeedbackIn
from gureum.server.db.base import utcnow
from gureum.storage.store import ArtifactStore
from tests.integration.test_consumers_api import member_key
from tests.integration.test_endpoints_api import Env, make_env

HEADER = ["price", "garment", "returned"]


@pytest.fixture
def env(settings: Settings) -> Iterator[Env]:
    yield from make_env(settings)


def _store(env: Env) -> ArtifactStore:
    store: ArtifactStore = env.cloud.app.state.store
    return store


def _register(env: Env, model: str, recipe: str, dataset: str, **params: Any) -> None:
    data = f"{model}-{recipe}".encode()
    digest = hashlib.sha256(data).hexdigest()
    assert env.http.put(f"/v1/blobs/{digest}", content=data).status_code in (200, 201)
    body = {
        "files": [{"path": "model.joblib", "sha256": digest, "size": len(data)}],
        "recipe": recipe,
        "params": params,
        "dataset": dataset,
    }
    r = env.http.post(f"/v1/models/{model}/versions", json=body)
    assert r.status_code == 201, r.text


class Traffic:
    """Captured calls of one endpoint as its replicas ship them."""

    def __init__(self, env: Env, endpoint: str) -> None:
        self.env, self.endpoint = env, endpoint
        self.n = 0

    def calls(
        self,
        items: list[tuple[Any, Any]],
        route: str = "predict",
        consumer: str = "member:admin",
        version_id: int | None = None,
    ) -> list[str]:
        """(input, output) pairs -> their request ids, in one batch object; answered by the
        serving version unless ``version_id`` says which (a canary's)."""
        ids, lines = [], []
        for body, answer in items:
            self.n += 1
            rid = f"req-{self.endpoint}-{self.n:06d}"
            ids.append(rid)
            line = {"request_id": rid, "route": route, "status": 200, "input": body}
            if answer is not None:
                line["output"] = answer
            lines.append(json.dumps(line).encode() + b"\n")
        ep = self.env.row(self.endpoint)
        info = _store(self.env).write_blob(ep.workspace_id, [b"".join(lines)], max_bytes=10**8)
        records = [
            CapturedIn(
                request_id=rid,
                time=utcnow(),
                consumer_id=None,
                consumer_name=consumer,
                model_version_id=version_id or ep.version_id,
                route=route,
                status=200,
                object=info.sha256,
                line=i,
                size=len(lines[i]),
                has_inputs=True,
                has_outputs=True,
            )
            for i, rid in enumerate(ids)
        ]
        r = self.env.replica(self.endpoint).post(
            f"/v1/internal/endpoints/{self.endpoint}/captured",
            json={"records": [x.model_dump(mode="json") for x in records]},
        )
        assert r.status_code == 200, r.text
        return ids

    def feedback(self, rid: str, **given: Any) -> None:
        item = FeedbackIn(
            id=f"fb-{rid}",
            time=utcnow(),
            request_id=rid,
            consumer_id=None,
            consumer_name="member:admin",
            **given,
        )
        r = self.env.replica(self.endpoint).post(
            f"/v1/internal/endpoints/{self.endpoint}/usage",
            json={"feedback": [item.model_dump(mode="json")]},
        )
        assert r.status_code == 200, r.text


def _push_table(env: Env, tmp: Path, rows: list[list[Any]]) -> None:
    folder = tmp / "orders"
    folder.mkdir()
    with open(folder / "orders.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([HEADER, *rows])
    env.cloud.client().datasets.push("orders", folder)


def _local(env: Env, name: str, version: int, tmp: Path) -> LocalDataset:
    """The version as a job's recipe sees it: its files and its manifest."""
    client = env.cloud.client()
    ver = client.datasets.version(name, version)
    root = tmp / f"{name}-{version}"
    client.datasets.pull(name, version, root)
    files = tuple(
        DataFile(f.path, f.kind, f.label, f.split) for f in client.datasets.files(name, version)
    )
    return LocalDataset(root, files, ver.kind, ver.schema_, name, SplitRule.from_record(ver.split))


def _curated_rows(env: Env, name: str, version: int) -> list[dict[str, str]]:
    client = env.cloud.client()
    path = next(p for p in client.datasets.version(name, version).source["files_added"])
    sha = next(f.sha256 for f in client.datasets.files(name, version) if f.path == path)
    with _store(env).open_blob(env.row().workspace_id, sha) as fh:
        return list(csv.DictReader(io.StringIO(fh.read().decode())))


# -- tabular --------------------------------------------------------------------------------------


def test_tabular_calls_become_rows_labels_corrected_duplicates_dropped_held_out_fixed(
    env: Env, tmp_path: Path
) -> None:
    base_rows = [
        [10 + i, "dress" if i % 2 else "shirt", "no" if i % 3 else "yes"] for i in range(40)
    ]
    _push_table(env, tmp_path, base_rows)
    _register(env, "returns", "tabular", "orders:1", target="returned")
    env.deploy("returns:1")
    traffic = Traffic(env, "shop")
    corrected = traffic.calls(
        [
            (
                {"inputs": [{"price": 99, "garment": "coat", "email": "[redacted]"}]},
                {"outputs": [{"prediction": "no"}]},
            ),
            ({"input": {"price": 77, "garment": "hat"}}, {"outputs": [{"prediction": "yes"}]}),
            (
                {"inputs": [{"price": 10, "garment": "shirt"}]},  # base row 0, same label
                {"outputs": [{"prediction": "yes"}]},
            ),
            (
                {"inputs": [{"price": 5, "garment": "sock"}, {"price": 6, "garment": "sock"}]},
                {"outputs": [{"prediction": "no"}, {"prediction": "yes"}]},
            ),
        ]
    )[0]
    traffic.feedback(corrected, rating=2, label="yes")  # the consumer says it was returned

    client = env.cloud.client()
    ver = client.datasets.curate("orders", from_endpoint="shop", message="week 49")
    assert (ver.dataset, ver.version, ver.message) == ("orders", 2, "week 49")
    src = ver.source
    assert src is not None and src["endpoint"] == "shop" and src["base"] == "orders:1"
    assert src["model"] == "returns:1" and src["records"] == 4
    assert (src["samples_added"], src["duplicates_dropped"]) == (4, 1)
    assert src["filters"] == {"min_rating": None, "labelled_only": False}
    rows = _curated_rows(env, "orders", 2)
    assert rows[0] == {"price": "99", "garment": "coat", "returned": "yes"}  # correction wins
    assert {"price": "77", "garment": "hat", "returned": "yes"} in rows
    assert [r["returned"] for r in rows if r["garment"] == "sock"] == ["no", "yes"]

    # The recipe's own split: the base's validation rows exactly, every curated row trains.
    base_train, base_val = load_rows(_local(env, "orders", 1, tmp_path))
    train, val = load_rows(_local(env, "orders", 2, tmp_path))
    assert val == base_val and len(train) == len(base_train) + 4
    assert ver.split["train_only"] == src["files_added"]

    labelled = client.datasets.curate("orders", from_endpoint="shop", labelled_only=True)
    assert labelled.source is not None and labelled.source["samples_added"] == 1
    assert labelled.source["base"] == "orders:1"  # the served model's data, not orders:2


def test_filters_that_leave_nothing_make_no_version(env: Env, tmp_path: Path) -> None:
    _push_table(env, tmp_path, [[1, "dress", "no"], [2, "shirt", "yes"]])
    _register(env, "returns", "tabular", "orders:1", target="returned")
    env.deploy("returns:1")
    rid = Traffic(env, "shop").calls(
        [({"input": {"price": 3, "garment": "hat"}}, {"outputs": [{"prediction": "no"}]})]
    )[0]
    Traffic(env, "shop").feedback(rid, rating=2)
    client = env.cloud.client()
    with pytest.raises(BadRequestError) as err:
        client.datasets.curate("orders", from_endpoint="shop", min_rating=3)
    assert "no captured call" in str(err.value)
    later = utcnow().replace(year=utcnow().year + 1)
    with pytest.raises(BadRequestError):
        client.datasets.curate("orders", from_endpoint="shop", since=later)
    assert [v.version for v in client.datasets.versions("orders")] == [1]
    r = env.http.post("/v1/datasets/orders/curate", json={"from_endpoint": "shop", "min_rating": 9})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    viewer = env.cloud.client(member_key(env.cloud, "vic", "viewer"))
    with pytest.raises(ForbiddenError):
        viewer.datasets.curate("orders", from_endpoint="shop")


# -- pictures -------------------------------------------------------------------------------------


def _png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


def _push_pictures(env: Env, tmp: Path, per_class: int = 4) -> list[bytes]:
    folder = tmp / "pics"
    made = []
    for c, cls in enumerate(("dress", "shirt")):
        (folder / cls).mkdir(parents=True)
        for i in range(per_class):
            data = _png((c * 100, i * 20, 7))
            (folder / cls / f"{i}.png").write_bytes(data)
            made.append(data)
    env.cloud.client().datasets.push("pics", folder)
    return made


def test_pictures_go_under_their_class_and_never_under_a_consumers_path(
    env: Env, tmp_path: Path
) -> None:
    base = _push_pictures(env, tmp_path)
    _register(env, "kinds", "image-classifier", "pics:1")
    env.deploy("kinds:1", name="kinds")
    new, other, evil = _png((1, 2, 3)), _png((4, 5, 6)), _png((7, 8, 9))
    ws = env.row("kinds").workspace_id
    big = _store(env).write_blob(ws, [base64.b64encode(other)], max_bytes=10**6)
    b64 = base64.b64encode
    traffic = Traffic(env, "kinds")
    ids = traffic.calls(
        [
            ({"inputs": [b64(new).decode()]}, {"outputs": [{"label": "dress"}]}),
            (
                {"inputs": [{"image": {"$blob": big.sha256, "size": big.size}}]},
                {"outputs": [{"label": "dress"}]},
            ),
            ({"inputs": [b64(evil).decode()]}, {"outputs": [{"label": "shirt"}]}),
            ({"inputs": [b64(base[0]).decode()]}, {"outputs": [{"label": "dress"}]}),
        ]
    )
    traffic.feedback(ids[1], label="shirt")  # corrected
    traffic.feedback(ids[2], label="../../etc")  # not a class: left out
    ver = env.cloud.client().datasets.curate("pics", from_endpoint="kinds")
    assert ver.source is not None
    assert (ver.source["samples_added"], ver.source["duplicates_dropped"]) == (2, 1)
    assert ver.source["left_out"] == 1
    files = {f.path: f for f in env.cloud.client().datasets.files("pics", 2)}
    added = sorted(p for p in files if "captured-" in p)
    assert [p.split("/")[0] for p in added] == ["dress", "shirt"]
    assert all(files[p].split == "train" and files[p].label == p.split("/")[0] for p in added)
    base_files = env.cloud.client().datasets.files("pics", 1)
    assert all(files[f.path].split == f.split for f in base_files)  # the base's sides kept


def test_a_generator_learns_from_a_capped_share_of_its_best_rated_pictures(
    env: Env, tmp_path: Path
) -> None:
    _push_pictures(env, tmp_path, per_class=6)
    _register(env, "garments", "image-generator", "pics:1")
    env.deploy("garments:1", name="gen")
    traffic = Traffic(env, "gen")
    made = [_png((200, i, 50)) for i in range(6)]
    ids = traffic.calls(
        [
            (
                {"inputs": [{"class": "dress"}]},
                {"outputs": [{"class": "dress", "images": [base64.b64encode(p).decode()]}]},
            )
            for p in made
        ]
    )
    for rid, rating in zip(ids, (5, 4, 4, 3, 1, 5), strict=True):
        traffic.feedback(rid, rating=rating)
    ver = env.cloud.client().datasets.curate("pics", from_endpoint="gen")
    assert ver.source is not None and ver.source["filters"]["min_rating"] == 4
    train = sum(1 for f in env.cloud.client().datasets.files("pics", 1) if f.split == "train")
    cap = int(train * 0.25 / 0.75)
    assert ver.source["samples_added"] == min(cap, 4)
    files = [f for f in env.cloud.client().datasets.files("pics", 2) if "generated-" in f.path]
    assert len(files) == min(cap, 4) and all(f.split == "train" for f in files)


# -- text -----------------------------------------------------------------------------------------


def test_text_calls_become_jsonl_training_rows_with_corrected_completions(
    env: Env, tmp_path: Path
) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "corpus.txt").write_text("\n".join(f"line {i} of the corpus" for i in range(30)))
    env.cloud.client().datasets.push("corpus", folder)
    _register(env, "writer", "text-generator", "corpus:1")
    env.deploy("writer:1", name="writer")
    traffic = Traffic(env, "writer")
    ids = traffic.calls(
        [
            ({"prompt": "a red"}, {"choices": [{"text": " dress"}]}),
            ({"prompt": "a blue"}, {"choices": [{"text": " shirt"}]}),
            ({"prompt": "line 3 of"}, {"choices": [{"text": " the corpus"}]}),  # in the base
        ],
        route="completions",
    )
    traffic.feedback(ids[1], target=" checked shirt")
    ver = env.cloud.client().datasets.curate("corpus", from_endpoint="writer")
    assert ver.source is not None and ver.source["duplicates_dropped"] == 1
    ds = _local(env, "corpus", 2, tmp_path)
    added = ver.source["files_added"][0]
    rows = [json.loads(x) for x in (ds.root / added).read_text().splitlines()]
    assert rows == [{"text": "a red dress"}, {"text": "a blue checked shirt"}]
    splits = load_text(ds, "text-generator")
    assert "a red dress" in splits.train and "a red dress" not in splits.validation
    assert load_text(_local(env, "corpus", 1, tmp_path), "x").validation == splits.validation
