"""Drift statistics (server/services/drift_stats): PSI, KS and the data-quality checks on
samples made here with fixed seeds; nothing boots."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from gureum.server.services import drift_stats as ds


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# -- PSI and the verdict -------------------------------------------------------------------------


def test_psi_is_the_smoothed_formula_and_zero_for_the_same_shares() -> None:
    assert ds.psi([3, 1], [3, 1]) == 0.0
    assert ds.psi([0.75, 0.25], [6, 2]) == pytest.approx(0.0, abs=1e-12)  # counts or shares
    ref = np.array([0.5, 0.5]) + ds.EPSILON
    now = np.array([0.2, 0.8]) + ds.EPSILON
    ref, now = ref / ref.sum(), now / now.sum()
    expected = float(np.sum((now - ref) * np.log(now / ref)))
    assert ds.psi([0.5, 0.5], [0.2, 0.8]) == pytest.approx(expected)
    # By hand, unsmoothed: 0.3 ln(0.5 / 0.2) + 0.3 ln(0.8 / 0.5) = 0.4159.
    assert expected == pytest.approx(0.3 * math.log(2.5) + 0.3 * math.log(1.6), abs=1e-3)
    # An empty bucket on one side stays finite.
    assert math.isfinite(ds.psi([1, 0], [0, 1])) and ds.psi([1, 0], [0, 1]) > 5


@pytest.mark.parametrize(
    ("value", "verdict"),
    [(0.0, "stable"), (0.099, "stable"), (0.1, "moderate"), (0.249, "moderate"), (0.25, "drift")],
)
def test_verdict_thresholds(value: float, verdict: str) -> None:
    assert ds.verdict(value) == verdict


# -- numbers -------------------------------------------------------------------------------------


def test_numeric_psi_is_zero_for_the_same_sample_and_small_for_another_of_it() -> None:
    train = _rng(0).normal(50, 10, 5000)
    ref = ds.numeric_reference(train)
    assert ref.edges.size == ds.BINS - 1
    same = ds.numeric_drift("price", ref, train)
    assert same.psi == 0.0 and same.verdict == "stable"
    assert same.ks_pvalue == pytest.approx(1.0)
    assert same.live_mean == pytest.approx(ref.mean)
    again = ds.numeric_drift("price", ref, _rng(1).normal(50, 10, 2000))
    assert again.psi < ds.STABLE_BELOW and again.verdict == "stable"
    assert again.ks_pvalue is not None and again.ks_pvalue > 0.01


def test_a_shifted_numeric_distribution_is_drift_by_psi_and_ks() -> None:
    ref = ds.numeric_reference(_rng(0).normal(50, 10, 5000))
    shifted = ds.numeric_drift("price", ref, _rng(2).normal(65, 10, 2000))
    assert shifted.psi > ds.DRIFT_FROM and shifted.verdict == "drift"
    assert shifted.ks_pvalue is not None and shifted.ks_pvalue < 1e-6
    assert shifted.live_mean == pytest.approx(65, abs=1)


def test_numeric_missing_values_are_a_bucket_and_out_of_range_is_counted_exactly() -> None:
    ref = ds.numeric_reference([1.0, 2.0, 3.0, 4.0, math.nan])
    assert (ref.minimum, ref.maximum, ref.count) == (1.0, 4.0, 5)
    live = [0.5, 2.0, 3.0, 9.0, math.nan, math.nan, math.nan, math.nan]
    f = ds.numeric_drift("x", ref, live)
    assert f.count == 4 and f.missing_share == 0.5
    assert f.out_of_range_share == 0.5  # 0.5 and 9.0 of the four values present
    assert f.psi > ds.DRIFT_FROM  # half missing against a fifth


# -- categories ----------------------------------------------------------------------------------


def test_categorical_psi_same_mix_zero_changed_mix_drift_unseen_own_bucket() -> None:
    train = ["dress"] * 60 + ["shirt"] * 30 + ["coat"] * 10
    ref = ds.categorical_reference(train)
    assert ref.categories == ("dress", "shirt", "coat")
    assert ds.categorical_drift("garment", ref, train).psi == 0.0
    changed = ds.categorical_drift("garment", ref, ["dress"] * 10 + ["shirt"] * 20 + ["coat"] * 70)
    assert changed.psi > ds.DRIFT_FROM and changed.unseen_share == 0.0
    new = ds.categorical_drift("garment", ref, ["dress"] * 60 + ["shirt"] * 30 + ["hat"] * 10)
    assert new.unseen_share == pytest.approx(0.1)
    assert new.psi > ds.STABLE_BELOW  # a tenth in a bucket the training data never filled


def test_rare_categories_share_one_bucket_and_are_not_unseen() -> None:
    train = [f"id{i}" for i in range(200)]
    ref = ds.categorical_reference(train, max_categories=5)
    assert len(ref.categories) == 5
    f = ds.categorical_drift("id", ref, train)
    assert f.psi == 0.0 and f.unseen_share == 0.0


# -- tables and their quality checks -------------------------------------------------------------


def _table() -> ds.TableReference:
    rows = [
        {"price": str(10 + i % 50), "garment": ("dress", "shirt")[i % 2], "returned": "no"}
        for i in range(200)
    ]
    return ds.table_reference(rows, ["price", "garment", "returned"])


def test_table_kinds_follow_the_tabular_rule() -> None:
    kinds = ds.column_kinds(
        [{"a": "1", "b": "x", "c": "", "d": "2.5"}, {"a": "", "b": "3", "c": "", "d": "nan"}],
        ["a", "b", "c", "d"],
    )
    assert kinds == {"a": "numeric", "b": "categorical", "c": "categorical", "d": "categorical"}


def test_table_quality_checks_count_exactly() -> None:
    ref = _table()
    live: list[object] = [{"price": 20, "garment": "dress"} for _ in range(40)]
    live += [{"price": "abc", "garment": "shirt"}, {"price": True, "garment": "shirt"}]  # 2 bad
    live += [{"price": None, "garment": "dress"}, {"garment": "dress"}, {"price": ""}]  # 3 missing
    live += [{"price": 500, "garment": "dress", "colour": "red"} for _ in range(4)]  # 4 far off
    live += [{"price": 20, "garment": ["a"], "colour": "red", "size": 3}]  # a list: bad
    live += ["not a row", 7]
    drift = ds.table_drift(ref, live, skip={"returned"})
    q = drift.quality
    assert q.samples == len(live) == 52 and q.not_rows == 2  # 50 rows
    assert q.unknown_columns == {"colour": 5, "size": 1}
    assert q.invalid_values == {"price": 2, "garment": 1}
    assert q.schema_violations == 2 + 6 + 3
    by_name = {f.name: f for f in drift.features}
    assert set(by_name) == {"price", "garment"}  # the target is known, never compared
    price = by_name["price"]
    assert price.invalid == 2 and price.missing_share == pytest.approx(3 / 50)
    assert price.count == 50 - 5 and price.out_of_range_share == pytest.approx(4 / 45)
    garment = by_name["garment"]
    assert garment.invalid == 1 and garment.missing_share == pytest.approx(1 / 50)
    assert garment.count == 48 and garment.unseen_share == 0.0


def test_table_rows_like_the_training_rows_are_stable() -> None:
    ref = _table()
    live = [{"price": 10 + i % 50, "garment": ("dress", "shirt")[i % 2]} for i in range(100)]
    drift = ds.table_drift(ref, live, skip={"returned"})
    assert drift.score is not None and drift.score < ds.STABLE_BELOW
    assert drift.quality.schema_violations == 0


# -- pictures ------------------------------------------------------------------------------------


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8), "RGB").save(buf, format="PNG")
    return buf.getvalue()


def _pictures(seed: int, n: int, shift: tuple[int, int, int] = (0, 0, 0)) -> list[bytes]:
    rng = _rng(seed)
    out = []
    for _ in range(n):
        base = rng.integers(60, 160, size=3) + np.array(shift)
        noise = rng.normal(0, 20, size=(16, 16, 3))
        out.append(_png(np.clip(base + noise, 0, 255)))
    return out


def test_picture_statistics_are_stable_for_alike_pictures_and_see_a_colour_shift() -> None:
    ref = ds.picture_reference(ds.pictures(_pictures(0, 120)))
    assert ref.count == 120 and ref.components.shape[0] == ds.PRINCIPAL_COMPONENTS
    same = ds.picture_drift(ref, ds.pictures(_pictures(0, 120)))
    assert same.score == 0.0
    alike = ds.picture_drift(ref, ds.pictures(_pictures(1, 120)))
    assert alike.score is not None and alike.score < ds.DRIFT_FROM
    bluer = ds.picture_drift(ref, ds.pictures(_pictures(2, 120, shift=(-50, -50, 90))))
    by_name = {f.name: f for f in bluer.features}
    assert by_name["blue_mean"].psi > ds.DRIFT_FROM and by_name["red_mean"].psi > ds.DRIFT_FROM
    assert by_name["blue_mean"].live_mean > by_name["blue_mean"].reference_mean + 60
    assert by_name["blue_mean"].ks_pvalue < 1e-6
    assert by_name["embedding_pc1"].psi > ds.STABLE_BELOW
    assert bluer.quality.undecodable_share == 0.0


def test_undecodable_pictures_are_counted() -> None:
    sample = ds.pictures([*_pictures(0, 3), b"not a picture", None])
    assert (sample.count, sample.undecodable, sample.total) == (3, 2, 5)
    ref = ds.picture_reference(ds.pictures(_pictures(0, 10)))
    assert ds.picture_drift(ref, sample).quality.undecodable_share == pytest.approx(0.4)


def test_a_darker_picture_set_moves_the_brightness_histogram() -> None:
    ref = ds.picture_reference(ds.pictures(_pictures(0, 60)))
    dark = ds.picture_drift(ref, ds.pictures(_pictures(3, 60, shift=(-60, -60, -60))))
    brightness = next(f for f in dark.features if f.name == "brightness")
    assert brightness.psi > ds.DRIFT_FROM
    assert brightness.live_mean < brightness.reference_mean - 40


# -- text ----------------------------------------------------------------------------------------


def _texts(seed: int, n: int, words: tuple[int, int]) -> list[str]:
    rng = _rng(seed)
    vocab = ["red", "linen", "dress", "with", "long", "sleeves", "and", "a", "collar"]
    return [" ".join(rng.choice(vocab, size=rng.integers(*words))) for _ in range(n)]


def test_text_lengths_stable_when_alike_and_drift_when_much_longer() -> None:
    ref = ds.text_reference(_texts(0, 500, (3, 9)))
    alike = ds.text_drift(ref, list(_texts(1, 200, (3, 9))))
    assert alike.score is not None and alike.score < ds.STABLE_BELOW
    longer = ds.text_drift(ref, list(_texts(2, 200, (30, 40))))
    by_name = {f.name: f for f in longer.features}
    assert by_name["length_chars"].psi > ds.DRIFT_FROM and by_name["tokens"].psi > ds.DRIFT_FROM
    assert by_name["tokens"].live_mean == pytest.approx(34.5, abs=1.5)


def test_empty_prompts_and_prompts_that_are_no_text_are_counted() -> None:
    ref = ds.text_reference(_texts(0, 50, (3, 9)))
    drift = ds.text_drift(ref, ["a red dress", "", "   ", None, "a coat"])
    assert drift.quality.samples == 5 and drift.quality.empty_share == pytest.approx(0.4)
    assert drift.quality.invalid_values == {"prompt": 1}
    assert drift.quality.schema_violations == 1
