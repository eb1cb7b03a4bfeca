"""Drift of an endpoint's live inputs from its model's training data (issue 12, item 5).

Numbers only: shares, means and indices, never a customer's values (viewers read them).
PSI below 0.1 is stable, 0.1 to 0.25 moderate, from 0.25 drift.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from gureum.schemas.common import Out

DriftVerdict = Literal["stable", "moderate", "drift"]


class FeatureDrift(Out):
    """One feature: a table's column; a picture statistic (``brightness``, ``red_mean``,
    ``embedding_pc1``, ...); a prompt's ``length_chars`` or ``tokens``."""

    name: str
    kind: Literal["numeric", "categorical"]
    psi: float
    verdict: DriftVerdict
    # Two-sample Kolmogorov-Smirnov p-value of a numeric feature (small: the distributions
    # differ; with many samples even a harmless shift is small, so PSI gives the verdict).
    ks_pvalue: float | None = None
    reference_mean: float | None = None
    live_mean: float | None = None
    count: int = 0  # live samples with a value
    missing_share: float = 0.0
    invalid: int = 0  # live values of the wrong type (text where a number belongs)
    out_of_range_share: float | None = None  # of the live values, outside training min..max
    unseen_share: float | None = None  # of the live values, categories training never had


class DriftQuality(Out):
    """Data-quality checks of the live samples."""

    samples: int = 0
    schema_violations: int = 0  # not rows + unknown columns + values of the wrong type
    not_rows: int = 0
    unknown_columns: dict[str, int] = Field(default_factory=dict)
    invalid_values: dict[str, int] = Field(default_factory=dict)
    undecodable_share: float | None = None  # image classifiers: inputs no picture decodes from
    empty_share: float | None = None  # text generators: prompts with no text


class DriftReference(Out):
    """The training data the live inputs are compared with."""

    dataset: str  # NAME:V, the version the served model was trained on
    samples: int  # rows, pictures or texts read (a fixed-seed sample of a large split)
    total: int  # of the training split


class DriftOut(Out):
    endpoint: str
    model: str  # the served (primary) version, NAME:V
    recipe: str
    window_s: int
    since: datetime
    until: datetime
    captured_calls: int  # captured calls with inputs in the window (the newest read)
    samples: int  # live rows, pictures or prompts in them
    min_samples: int
    enough: bool
    # The largest PSI of any feature and its verdict; None without enough samples.
    score: float | None
    verdict: DriftVerdict | None
    message: str
    reference: DriftReference
    features: list[FeatureDrift] = Field(default_factory=list)
    quality: DriftQuality = Field(default_factory=DriftQuality)


class DriftPoint(Out):
    """One bucket of a drift history: the window's score as the drift report computes it."""

    since: datetime
    until: datetime
    captured_calls: int
    samples: int
    score: float | None  # None below min_samples
    verdict: DriftVerdict | None
    # PSI of the features that drifted most over the whole history (at most a few).
    features: dict[str, float] = Field(default_factory=dict)


class DriftHistoryOut(Out):
    """The drift score over consecutive windows ending now, oldest first (computed on demand
    from the captured calls, a bounded sample of each window)."""

    endpoint: str
    model: str
    recipe: str
    window_s: int  # the whole span
    bucket_s: int  # each point's window
    min_samples: int
    calls_per_bucket: int  # captured calls read at most per bucket (the newest)
    reference: DriftReference
    points: list[DriftPoint]
