"""Drift statistics: how far live inputs have moved from the data a model was trained on.

Pure functions over samples (numpy, scipy, Pillow to decode pictures); the drift service reads
the samples and turns the results into its answer.

The measure is the Population Stability Index over buckets of the reference:
``PSI = sum((live - ref) * ln(live / ref))`` over the buckets' shares. The usual reading:

- PSI < 0.1: stable, no meaningful change;
- 0.1 <= PSI < 0.25: moderate change, worth a look;
- PSI >= 0.25: significant drift, the model sees data unlike its training data.

Numbers are bucketed at the reference's deciles (10 bins), categories by their own shares
(categories the training data never had are a bucket of their own), and a missing value is
a bucket in both. Every share is smoothed with ``EPSILON`` so that an empty bucket on one side
does not make the index infinite. For numbers the two-sample Kolmogorov-Smirnov p-value is
given as well: it tests the whole distribution, but with thousands of samples even a
harmless shift is "significant", so the verdict is the PSI's and the p-value a second opinion.
"""

from __future__ import annotations

import io
import math
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image
from scipy.stats import ks_2samp

Floats = npt.NDArray[np.float64]
Verdict = Literal["stable", "moderate", "drift"]

STABLE_BELOW = 0.1
DRIFT_FROM = 0.25
EPSILON = 1e-4
BINS = 10
# Categories beyond the most common ones share one bucket ("other"): an id-like column would
# otherwise make thousands of buckets of one sample each.
MAX_CATEGORIES = 50
# Pictures are compared at this size (pixels a side), after converting them to RGB.
THUMB = 32
# The embedding of a picture: its RGB thumbnail at this size, flattened.
EMBED = 8
PRINCIPAL_COMPONENTS = 2
BRIGHTNESS_BINS = 16
CHANNELS = ("red", "green", "blue")


def verdict(psi: float) -> Verdict:
    """stable below 0.1, moderate below 0.25, drift from 0.25."""
    if psi < STABLE_BELOW:
        return "stable"
    return "moderate" if psi < DRIFT_FROM else "drift"


def psi(reference: npt.ArrayLike, live: npt.ArrayLike, epsilon: float = EPSILON) -> float:
    """PSI of two vectors of bucket counts or shares over the same buckets (see above for
    the thresholds). Each side is made shares, smoothed with ``epsilon`` and renormalised;
    two identical distributions give exactly 0."""
    ref = _smooth(np.asarray(reference, dtype=np.float64), epsilon)
    now = _smooth(np.asarray(live, dtype=np.float64), epsilon)
    return max(0.0, float(np.sum((now - ref) * np.log(now / ref))))


def _smooth(counts: Floats, epsilon: float) -> Floats:
    total = counts.sum()
    shares = counts / total if total > 0 else np.full(counts.shape, 1.0 / max(counts.size, 1))
    shares = shares + epsilon
    out: Floats = shares / shares.sum()
    return out


def _share(n: int, of: int) -> float:
    return n / of if of else 0.0


# -- one feature ---------------------------------------------------------------------------------


@dataclass
class Feature:
    """One feature's drift and the quality of its live values (shares are of live samples,
    out of range of the live values present)."""

    name: str
    kind: Literal["numeric", "categorical"]
    psi: float
    ks_pvalue: float | None = None
    reference_mean: float | None = None
    live_mean: float | None = None
    count: int = 0  # live samples with a value
    missing_share: float = 0.0
    invalid: int = 0  # live values of the wrong type (a number column given text)
    out_of_range_share: float | None = None  # outside the reference's min..max
    unseen_share: float | None = None  # categories the training data never had

    @property
    def verdict(self) -> Verdict:
        return verdict(self.psi)


@dataclass(frozen=True)
class NumericReference:
    """A numeric feature of the training data: decile cut points and the share of each bin
    (the last share is the missing values'), with the sample kept for the KS test."""

    edges: Floats
    shares: Floats
    sample: Floats
    count: int
    minimum: float | None
    maximum: float | None
    mean: float | None


def numeric_reference(values: npt.ArrayLike, bins: int = BINS) -> NumericReference:
    """``values`` with NaN for a missing one. Cut points are the reference's quantiles; tied
    values (a column of few distinct numbers) make fewer, wider bins."""
    x = np.asarray(values, dtype=np.float64)
    present = x[np.isfinite(x)]
    if present.size:
        inner = np.quantile(present, np.linspace(0.0, 1.0, bins + 1)[1:-1])
        edges: Floats = np.unique(inner)
        low, high, mean = float(present.min()), float(present.max()), float(present.mean())
    else:
        edges, low, high, mean = np.empty(0), None, None, None
    return NumericReference(edges, _numeric_counts(edges, x), present, int(x.size), low, high, mean)


def _numeric_counts(edges: Floats, x: Floats) -> Floats:
    present = x[np.isfinite(x)]
    bins = np.bincount(np.searchsorted(edges, present, side="right"), minlength=edges.size + 1)
    return np.append(bins, x.size - present.size).astype(np.float64)


def numeric_drift(
    name: str, ref: NumericReference, values: npt.ArrayLike, invalid: int = 0
) -> Feature:
    """PSI over the reference's bins (missing values a bin), the KS p-value of the values
    present, the share outside the reference's range. ``values``: NaN where missing."""
    x = np.asarray(values, dtype=np.float64)
    present = x[np.isfinite(x)]
    out_of_range = None
    if ref.minimum is not None and ref.maximum is not None and present.size:
        outside = np.count_nonzero((present < ref.minimum) | (present > ref.maximum))
        out_of_range = _share(int(outside), present.size)
    ks = None
    if present.size and ref.sample.size:
        ks = float(ks_2samp(ref.sample, present).pvalue)
    return Feature(
        name=name,
        kind="numeric",
        psi=psi(ref.shares, _numeric_counts(ref.edges, x)) if x.size else 0.0,
        ks_pvalue=ks,
        reference_mean=ref.mean,
        live_mean=float(present.mean()) if present.size else None,
        count=int(present.size),
        missing_share=_share(x.size - present.size - invalid, x.size),
        invalid=invalid,
        out_of_range_share=out_of_range,
    )


@dataclass(frozen=True)
class CategoricalReference:
    """A categorical feature of the training data: its most common categories, the share
    of each, then of the other categories it had, then of missing values."""

    categories: tuple[str, ...]
    shares: Floats
    seen: frozenset[str]
    count: int


def categorical_reference(
    values: Sequence[str | None], max_categories: int = MAX_CATEGORIES
) -> CategoricalReference:
    counts = Counter(v for v in values if v is not None)
    top = tuple(
        c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_categories]
    )
    kept = [counts[c] for c in top]
    other = sum(counts.values()) - sum(kept)
    missing = len(values) - sum(counts.values())
    shares = np.array([*kept, other, 0, missing], dtype=np.float64)
    return CategoricalReference(top, shares, frozenset(counts), len(values))


def categorical_drift(
    name: str, ref: CategoricalReference, values: Sequence[str | None], invalid: int = 0
) -> Feature:
    """PSI over the reference's categories, the other ones it had, categories it never had
    (unseen: their own bucket) and missing values. ``values``: None where missing."""
    index = {c: i for i, c in enumerate(ref.categories)}
    other, unseen, missing = len(index), len(index) + 1, len(index) + 2
    counts = np.zeros(len(index) + 3)
    for v in values:
        if v is None:
            counts[missing] += 1
        elif v in index:
            counts[index[v]] += 1
        else:
            counts[other if v in ref.seen else unseen] += 1
    present = len(values) - int(counts[missing])
    return Feature(
        name=name,
        kind="categorical",
        psi=psi(ref.shares, counts) if values else 0.0,
        count=present,
        missing_share=_share(int(counts[missing]) - invalid, len(values)),
        invalid=invalid,
        unseen_share=_share(int(counts[unseen]), present),
    )


# -- results -------------------------------------------------------------------------------------


@dataclass
class Quality:
    """Data-quality checks of the live samples, as SageMaker Model Monitor makes them."""

    samples: int = 0
    # Inputs that are not rows (objects), columns the model does not know, wrong types.
    not_rows: int = 0
    unknown_columns: dict[str, int] = field(default_factory=dict)
    invalid_values: dict[str, int] = field(default_factory=dict)
    undecodable_share: float | None = None  # pictures that would not decode
    empty_share: float | None = None  # prompts with no text

    @property
    def schema_violations(self) -> int:
        return (
            self.not_rows + sum(self.unknown_columns.values()) + sum(self.invalid_values.values())
        )


@dataclass
class Drift:
    features: list[Feature]
    quality: Quality

    @property
    def score(self) -> float | None:
        """The largest PSI of any feature (None without features)."""
        return max((f.psi for f in self.features), default=None)


# -- tables --------------------------------------------------------------------------------------


def is_number(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def column_kinds(rows: Sequence[Mapping[str, str]], columns: Sequence[str]) -> dict[str, str]:
    """``numeric`` when every non-empty value parses as a finite number (and there is one),
    else ``categorical``: the tabular recipe's own rule for its features."""
    kinds = {}
    for c in columns:
        values = [r.get(c) or "" for r in rows]
        numeric = any(values) and all(is_number(v) for v in values if v != "")
        kinds[c] = "numeric" if numeric else "categorical"
    return kinds


@dataclass(frozen=True)
class TableReference:
    columns: dict[str, NumericReference | CategoricalReference]
    rows: int


def table_reference(rows: Sequence[Mapping[str, str]], columns: Sequence[str]) -> TableReference:
    """Training rows as CSV readers give them (strings, "" when missing)."""
    kinds = column_kinds(rows, columns)
    out: dict[str, NumericReference | CategoricalReference] = {}
    for c in columns:
        values = [r.get(c) or "" for r in rows]
        if kinds[c] == "numeric":
            out[c] = numeric_reference([float(v) if v else math.nan for v in values])
        else:
            out[c] = categorical_reference([v or None for v in values])
    return TableReference(out, len(rows))


def _as_number(value: Any) -> float | None:
    """A live value of a numeric column: a float, NaN when missing, None when invalid."""
    if value is None or value == "":
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _as_category(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def table_drift(ref: TableReference, rows: Sequence[Any], skip: Iterable[str] = ()) -> Drift:
    """Live rows (objects of column -> JSON value, None where missing) against the training
    rows. ``skip``: columns the model does not read (its target): known, not compared."""
    skipped = set(skip)
    quality = Quality(samples=len(rows))
    dicts: list[Mapping[str, Any]] = []
    for row in rows:
        if isinstance(row, Mapping):
            dicts.append(row)
            for key in row:
                if key not in ref.columns and key not in skipped:
                    quality.unknown_columns[str(key)] = quality.unknown_columns.get(str(key), 0) + 1
        else:
            quality.not_rows += 1
    features = []
    for name, col in ref.columns.items():
        if name in skipped:
            continue
        raw = [r.get(name) for r in dicts]
        if isinstance(col, NumericReference):
            numbers = [_as_number(v) for v in raw]
            bad = sum(n is None for n in numbers)
            x = [math.nan if n is None else n for n in numbers]
            feature = numeric_drift(name, col, x, invalid=bad)
        else:
            bad = sum(isinstance(v, dict | list) for v in raw)
            cats = [
                None if v is None or v == "" or isinstance(v, dict | list) else _as_category(v)
                for v in raw
            ]
            feature = categorical_drift(name, col, cats, invalid=bad)
        if bad:
            quality.invalid_values[name] = bad
        features.append(feature)
    return Drift(features, quality)


# -- pictures ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pictures:
    """Statistics of decoded pictures: per picture the mean and standard deviation of each
    RGB channel (0-255) and a small embedding (its 8x8 thumbnail), and a histogram of the
    brightness of every pixel."""

    means: Floats  # (n, 3)
    stds: Floats  # (n, 3)
    embeddings: Floats  # (n, EMBED * EMBED * 3), 0-1
    brightness: Floats  # (BRIGHTNESS_BINS,) pixel counts
    undecodable: int

    @property
    def count(self) -> int:
        """Pictures decoded."""
        return int(self.means.shape[0])

    @property
    def total(self) -> int:
        return self.count + self.undecodable


def _decode(raw: bytes) -> npt.NDArray[np.uint8] | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as src:
                src.draft("RGB", (THUMB * 2, THUMB * 2))
                im = src.convert("RGB").resize((THUMB, THUMB), Image.Resampling.BILINEAR)
    except Exception:  # anything that is no picture Pillow can read
        return None
    return np.asarray(im, dtype=np.uint8)


def pictures(images: Iterable[bytes | None]) -> Pictures:
    """``images``: encoded pictures (PNG, JPEG, ...); None for an input that held none."""
    means, stds, embeds = [], [], []
    brightness = np.zeros(BRIGHTNESS_BINS)
    bad = 0
    for raw in images:
        pixels = _decode(raw) if raw is not None else None
        if pixels is None:
            bad += 1
            continue
        flat = pixels.reshape(-1, 3).astype(np.float64)
        means.append(flat.mean(axis=0))
        stds.append(flat.std(axis=0))
        small = Image.fromarray(pixels).resize((EMBED, EMBED), Image.Resampling.BILINEAR)
        embeds.append(np.asarray(small, dtype=np.float64).reshape(-1) / 255.0)
        luma = flat @ np.array([0.299, 0.587, 0.114])
        brightness += np.histogram(luma, bins=BRIGHTNESS_BINS, range=(0.0, 256.0))[0]
    width = EMBED * EMBED * 3
    return Pictures(
        np.array(means).reshape(-1, 3),
        np.array(stds).reshape(-1, 3),
        np.array(embeds).reshape(-1, width),
        brightness,
        bad,
    )


@dataclass(frozen=True)
class PictureReference:
    channels: dict[str, NumericReference]  # red_mean, ..., blue_std
    brightness: Floats
    brightness_mean: float | None
    centre: Floats  # the mean embedding
    components: Floats  # (k, width): principal directions of the embeddings
    projections: dict[str, NumericReference]  # embedding_pc1, ...
    count: int


def _channel_features(p: Pictures) -> dict[str, Floats]:
    out = {}
    for i, colour in enumerate(CHANNELS):
        out[f"{colour}_mean"] = p.means[:, i]
        out[f"{colour}_std"] = p.stds[:, i]
    return out


def _hist_mean(hist: Floats) -> float | None:
    total = hist.sum()
    if not total:
        return None
    centres = (np.arange(BRIGHTNESS_BINS) + 0.5) * (256.0 / BRIGHTNESS_BINS)
    return float((hist * centres).sum() / total)


def picture_reference(p: Pictures) -> PictureReference:
    """Training pictures' statistics, with the two main directions in which their
    embeddings vary (principal components): live pictures unlike the training ones move
    along them, or away from the centre."""
    channels = {k: numeric_reference(v) for k, v in _channel_features(p).items()}
    width = EMBED * EMBED * 3
    centre = p.embeddings.mean(axis=0) if len(p.embeddings) else np.zeros(width)
    components = np.empty((0, width))
    if len(p.embeddings) >= 3:
        # The covariance is width x width whatever the number of pictures: cheap to decompose.
        _, vectors = np.linalg.eigh(np.cov(p.embeddings, rowvar=False))
        components = vectors[:, ::-1][:, :PRINCIPAL_COMPONENTS].T
    projected = (p.embeddings - centre) @ components.T
    projections = {
        f"embedding_pc{i + 1}": numeric_reference(projected[:, i])
        for i in range(components.shape[0])
    }
    return PictureReference(
        channels,
        p.brightness,
        _hist_mean(p.brightness),
        centre,
        components,
        projections,
        int(p.means.shape[0]),
    )


def picture_drift(ref: PictureReference, live: Pictures) -> Drift:
    """Pixel brightness histogram PSI, PSI and KS of the per-picture channel means and
    deviations and of the embeddings' principal components; undecodable pictures' share."""
    features = [
        Feature(
            name="brightness",
            kind="numeric",
            psi=psi(ref.brightness, live.brightness) if live.brightness.sum() else 0.0,
            reference_mean=ref.brightness_mean,
            live_mean=_hist_mean(live.brightness),
            count=int(live.means.shape[0]),
        )
    ]
    for name, values in _channel_features(live).items():
        features.append(numeric_drift(name, ref.channels[name], values))
    projected = (live.embeddings - ref.centre) @ ref.components.T
    for i, (name, pref) in enumerate(ref.projections.items()):
        features.append(numeric_drift(name, pref, projected[:, i]))
    quality = Quality(samples=live.total, undecodable_share=_share(live.undecodable, live.total))
    return Drift(features, quality)


# -- text ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextReference:
    length: NumericReference  # characters
    tokens: NumericReference  # whitespace-separated tokens
    count: int


def _lengths(texts: Sequence[str]) -> tuple[Floats, Floats]:
    chars = np.array([len(t) for t in texts], dtype=np.float64)
    tokens = np.array([len(t.split()) for t in texts], dtype=np.float64)
    return chars, tokens


def text_reference(texts: Sequence[str]) -> TextReference:
    chars, tokens = _lengths(texts)
    return TextReference(numeric_reference(chars), numeric_reference(tokens), len(texts))


def text_drift(ref: TextReference, prompts: Sequence[str | None]) -> Drift:
    """Prompt length in characters and in whitespace tokens against the training texts';
    the share of empty prompts, and prompts that are no text (schema violations)."""
    texts = [p for p in prompts if isinstance(p, str)]
    chars, tokens = _lengths(texts)
    empty = sum(1 for t in texts if not t.strip())
    quality = Quality(samples=len(prompts), empty_share=_share(empty, len(prompts)))
    invalid = len(prompts) - len(texts)
    if invalid:
        quality.invalid_values["prompt"] = invalid
    features = [
        numeric_drift("length_chars", ref.length, chars),
        numeric_drift("tokens", ref.tokens, tokens),
    ]
    return Drift(features, quality)
