"""The options `pipelines create` and `pipelines update` share: one declaration each, so the
two commands name, document and type a setting the same way."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer


class ApproveMode(StrEnum):
    auto = "auto"
    manual = "manual"


ScheduleOpt = Annotated[
    str | None, typer.Option("--schedule", metavar="CRON", help='UTC, e.g. "0 3 * * 1"')
]
AfterLabelsOpt = Annotated[
    int | None, typer.Option("--after-labels", metavar="N", help="run after N new ratings")
]
OnDriftOpt = Annotated[
    float | None,
    typer.Option("--on-drift", metavar="SCORE", help="run when the drift score reaches this"),
]
CooldownOpt = Annotated[
    float | None,
    typer.Option("--cooldown-minutes", help="triggers start no run sooner after the last"),
]
CanaryOpt = Annotated[
    float | None, typer.Option("--canary", metavar="PCT", help="the canary's share, %")
]
CanaryMinutesOpt = Annotated[
    float | None, typer.Option("--canary-minutes", metavar="MIN", help="the canary's window")
]
ApproveOpt = Annotated[
    ApproveMode | None,
    typer.Option("--approve", help="manual: a person approves each candidate before canary"),
]
MinRequestsOpt = Annotated[
    int | None, typer.Option("--min-requests", help="canary requests needed to promote")
]
MinFeedbackOpt = Annotated[
    int | None, typer.Option("--min-feedback", help="ratings of canary answers needed")
]
MaxRatingDropOpt = Annotated[
    float | None,
    typer.Option("--max-rating-drop", help="how far the canary's mean rating may fall"),
]
MinRatingOpt = Annotated[
    int | None, typer.Option("--min-rating", help="curate only calls rated at least this")
]
MetricOpt = Annotated[
    str | None, typer.Option("--metric", help="the gate's metric (default: the recipe's)")
]
HigherIsBetterOpt = Annotated[
    bool | None,
    typer.Option("--higher-is-better/--lower-is-better", help="direction of --metric"),
]
