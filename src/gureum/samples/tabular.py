"""Online-shop orders as a CSV whose ``returned`` column follows a known rule plus noise.

Because the rule is ours, a trained model can be judged against it: the size gap, earlier
returns and price push returns up, a good rating pushes them down. ``price`` itself is a
function of garment, fabric and size plus noise, so it also serves as a regression target.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from gureum.samples.base import FileTally, SampleSummary

SIZES = ("XS", "S", "M", "L", "XL")
GARMENT_PRICE = {"shirt": 35.0, "jacket": 120.0, "dress": 85.0, "skirt": 55.0, "trousers": 70.0}
FABRIC_FACTOR = {
    "cotton": 1.0,
    "linen": 1.25,
    "wool": 1.6,
    "denim": 1.15,
    "silk": 2.0,
    "polyester": 0.8,
}
OFTEN_RETURNED = ("dress", "trousers")  # the garments whose fit is hardest to judge online
COLUMNS = [
    "garment",
    "fabric",
    "size",
    "usual_size",
    "price",
    "discount_pct",
    "customer_age",
    "previous_returns",
    "delivery_days",
    "rating",
    "returned",
]
TARGET = "returned"


class TabularSample:
    """garments.csv: numeric and categorical columns and a yes/no target, ``returned``."""

    name = "tabular"
    description = "shop orders (garments.csv) with a learnable yes/no target column 'returned'"
    default_count = 2000

    def generate(self, out: Path, *, count: int, seed: int) -> SampleSummary:
        rng = np.random.default_rng(seed)
        garments = rng.choice(list(GARMENT_PRICE), size=count)
        fabrics = rng.choice(list(FABRIC_FACTOR), size=count)
        usual = rng.integers(0, len(SIZES), size=count)
        gap = rng.choice([-2, -1, 0, 1, 2], size=count, p=[0.05, 0.15, 0.6, 0.15, 0.05])
        size = np.clip(usual + gap, 0, len(SIZES) - 1)
        base = np.array(
            [GARMENT_PRICE[g] * FABRIC_FACTOR[f] for g, f in zip(garments, fabrics, strict=True)]
        )
        price = np.round(base * (1 + 0.03 * size) * rng.normal(1.0, 0.08, size=count), 2)
        discount = rng.choice([0, 0, 0, 10, 20, 30, 50], size=count)
        age = rng.integers(18, 71, size=count)
        previous = np.minimum(rng.poisson(1.2, size=count), 10)
        delivery = rng.integers(1, 11, size=count)
        rating = np.round(np.clip(rng.normal(4.0, 0.6, size=count), 1.0, 5.0), 1)

        logit = (
            -3.2
            + 2.5 * np.abs(size - usual)
            + 0.6 * previous
            + 0.02 * (price - 70)
            + 1.0 * np.isin(garments, OFTEN_RETURNED)
            - 1.2 * (rating - 4.0)
            + 0.15 * (delivery - 4)
            - 0.03 * (age - 40)
            + 0.02 * discount
            + rng.normal(0.0, 0.3, size=count)
        )
        returned = rng.random(size=count) < 1 / (1 + np.exp(-logit))

        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(COLUMNS)
        for i in range(count):
            writer.writerow(
                [
                    garments[i],
                    fabrics[i],
                    SIZES[size[i]],
                    SIZES[usual[i]],
                    f"{price[i]:.2f}",
                    int(discount[i]),
                    int(age[i]),
                    int(previous[i]),
                    int(delivery[i]),
                    f"{rating[i]:.1f}",
                    "yes" if returned[i] else "no",
                ]
            )
        tally = FileTally()
        tally.write_text(out / "garments.csv", buf.getvalue())
        return SampleSummary(
            name=self.name,
            path=str(out),
            files=tally.files,
            bytes=tally.bytes,
            seed=seed,
            columns=COLUMNS,
            details={
                "rows": count,
                "target": TARGET,
                "positive_rate": round(float(returned.mean()), 3),
                "regression_target": "price",
            },
        )
