"""A small text corpus written by us: product descriptions and customer reviews.

The prose is assembled from ``text_words`` with a seeded generator, so it is offline, free of
anyone else's copyright and the same for the same seed. A few hundred kilobytes is enough for a
tiny character-level GPT to pick up the words, the templates and the punctuation.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from gureum.samples import text_words as w
from gureum.samples.base import FileTally, SampleSummary

FEEDBACK_COLUMNS = ["product", "garment", "rating", "sentiment", "text"]
SENTIMENT_BY_RATING = {1: "negative", 2: "negative", 3: "neutral", 4: "positive", 5: "positive"}


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


class _Product:
    """One invented product; its description and its reviews draw on the same facts."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.garment = rng.choice(list(w.GARMENTS))
        self.noun = rng.choice(w.GARMENTS[self.garment])
        self.name = rng.choice(w.NAMES)
        self.label = rng.choice(w.LABELS)
        self.fabric = rng.choice(list(w.FABRICS))
        self.colour = rng.choice(w.COLOURS)
        self.pattern = rng.choice(w.PATTERNS)
        self.fit = rng.choice(w.FITS)

    @property
    def title(self) -> str:
        return f"The {self.name} {self.noun}"

    def fill(self, template: str) -> str:
        rng = self.rng
        features = rng.sample(w.FEATURES[self.garment], 3)
        other = rng.choice([g for g in w.GARMENTS if g != self.garment])
        a_fit = article(self.fit)
        a_item = "a pair of" if self.noun in w.PLURAL_NOUNS else a_fit
        return template.format(
            Name=self.name,
            noun=self.noun,
            fit=self.fit,
            pattern=self.pattern,
            colour=self.colour,
            fabric=self.fabric,
            fact=w.FABRICS[self.fabric],
            occasion=rng.choice(w.OCCASIONS),
            label=self.label,
            a_fit=a_fit,
            a_item=a_item,
            A_item=a_item.capitalize(),
            f1=features[0],
            f2=features[1],
            f3=features[2],
            reason=rng.choice(w.REASONS),
            place=rng.choice(w.PLACES),
            other=rng.choice(w.GARMENTS[other]),
            other_colour=rng.choice([c for c in w.COLOURS if c != self.colour]),
            height=rng.randint(158, 192),
            size=rng.choice(("XS", "S", "M", "L", "XL")),
        )

    def description(self) -> str:
        rng = self.rng
        opening = rng.choice(w.OPENINGS)
        if self.pattern == "plain":
            opening = opening.replace("{pattern} ", "")
        parts = [opening, rng.choice(w.FEATURE_LINES)]
        extras = [w.FABRIC_LINE, w.MADE_LINE, w.PAIR_LINE, rng.choice(w.SIZING), rng.choice(w.CARE)]
        parts += rng.sample(extras, rng.randint(2, 4))
        return " ".join(self.fill(p) for p in parts)

    def review(self) -> dict[str, object]:
        rng = self.rng
        rating = rng.choices((1, 2, 3, 4, 5), (1, 1, 2, 3, 4))[0]
        sentiment = SENTIMENT_BY_RATING[rating]
        lines = rng.sample(w.REVIEWS[sentiment], rng.randint(1, 3))
        return {
            "product": self.title,
            "garment": self.garment,
            "rating": rating,
            "sentiment": sentiment,
            "text": " ".join(self.fill(line) for line in lines),
        }


class TextSample:
    """corpus.txt (one product description per line) and feedback.jsonl (rated reviews)."""

    name = "text"
    description = "product descriptions (corpus.txt) and rated customer reviews (feedback.jsonl)"
    default_count = 800

    def generate(self, out: Path, *, count: int, seed: int) -> SampleSummary:
        rng = random.Random(f"text:{seed}")
        products = [_Product(rng) for _ in range(count)]
        lines = [p.description() for p in products]
        reviews = [products[i % count].review() for i in range(max(1, count // 2))]
        corpus = "\n".join(lines) + "\n"
        feedback = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in reviews)
        tally = FileTally()
        tally.write_text(out / "corpus.txt", corpus)
        tally.write_text(out / "feedback.jsonl", feedback)
        return SampleSummary(
            name=self.name,
            path=str(out),
            files=tally.files,
            bytes=tally.bytes,
            seed=seed,
            columns=FEEDBACK_COLUMNS,
            details={
                "corpus_lines": len(lines),
                "corpus_words": len(corpus.split()),
                "corpus_chars": len(corpus),
                "feedback_rows": len(reviews),
            },
        )
