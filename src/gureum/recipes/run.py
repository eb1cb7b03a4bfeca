"""Run a recipe as a plain Python process, through the same calls a platform job makes.

    python -m gureum.recipes.run --recipe image-generator --data DIR --out DIR --param epochs=5

``--data`` is a plain folder, labelled and split as a push of it would be, unless
``--manifest`` gives the platform's manifest JSON for it. Checkpoints, metrics, log and
artifacts go under ``--out``; running the same command again resumes from the last checkpoint.
The result (metrics, model folder, artifacts) is printed as JSON. Exit status: 0 done,
2 refused (bad recipe, parameter or dataset), 130 stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from gureum.recipes.base import Cancelled, RecipeError
from gureum.recipes.context import LocalRunContext
from gureum.recipes.dataset import LocalDataset
from gureum.recipes.registry import names, train_and_evaluate

EXIT_REFUSED = 2
EXIT_STOPPED = 130


def parse_param(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gureum.recipes.run", description="Train and evaluate a recipe."
    )
    p.add_argument("--recipe", required=True, help=f"one of: {', '.join(names())}")
    p.add_argument("--data", required=True, type=Path, help="folder holding the dataset files")
    p.add_argument("--out", required=True, type=Path, help="folder for checkpoints and artifacts")
    p.add_argument("--param", action="append", default=[], type=parse_param, metavar="KEY=VALUE")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--manifest", type=Path, help="the platform's manifest JSON for --data")
    p.add_argument("--validation-ratio", type=float, default=0.2)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=None, help="seconds before stopping")
    p.add_argument("--quiet", action="store_true", help="do not echo the log to stderr")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.manifest is not None:
            ds = LocalDataset.from_manifest(args.data, json.loads(args.manifest.read_text()))
        else:
            ds = LocalDataset.from_folder(args.data, args.validation_ratio, args.split_seed)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    ctx = LocalRunContext(
        args.out,
        device=args.device,
        timeout_s=args.timeout,
        echo=None if args.quiet else sys.stderr,
    )
    try:
        result = train_and_evaluate(ctx, args.recipe, dict(args.param), ds)
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except Cancelled as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return EXIT_STOPPED
    print(json.dumps(result.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
