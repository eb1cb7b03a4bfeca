"""`gureum endpoints capture | feedback | captured`: what an endpoint keeps of its calls for
retraining, and what its consumers said about the answers."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from gureum.cli.output import Format, OutputOpt, api_errors, console, emit, kv_table, table
from gureum.client import Client
from gureum.schemas.capture import CapturedRecordOut, CaptureOut, FeedbackSummary

NameArg = Annotated[str, typer.Argument(metavar="E", help="the endpoint's name")]
# Inputs and outputs are shown cut to this many characters in tables.
SNIPPET = 60


def _snippet(value: Any) -> str:
    if value is None:
        return "-"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= SNIPPET else one_line[: SNIPPET - 1] + "…"


def _render_capture(c: CaptureOut) -> None:
    cfg = c.config
    kept = [p for p, on in (("inputs", cfg.inputs), ("outputs", cfg.outputs)) if on]
    last = c.last_captured_at.strftime("%Y-%m-%d %H:%M:%S") if c.last_captured_at else "never"
    facts = {
        "endpoint": c.endpoint,
        "rate": f"{cfg.rate:.4g} of the calls" + ("" if cfg.rate else " (capture off)"),
        "keeps": " and ".join(kept) or "nothing",
        "redacts": ", ".join(cfg.redact) or "-",
        "retention": f"{cfg.retention_days} days" if cfg.retention_days else "no limit",
        "captured": f"{c.captured} calls (last {last})",
        "pending": f"{c.pending} in the replicas' spools",
        "dropped": f"{c.dropped} (spool full)" if c.dropped else "0",
    }
    console.print(kv_table(facts))


def _render_feedback(f: FeedbackSummary) -> None:
    mean = "-" if f.mean_rating is None else f"{f.mean_rating:.2f}"
    histogram = "  ".join(f"{k}: {n}" for k, n in f.ratings.items())
    facts = {
        "endpoint": f.endpoint,
        "calls with feedback": f.count,
        "rated": f"{f.rated} (mean {mean})",
        "ratings": histogram,
        "labelled": f.labelled,
        "captured": f"{f.captured} of them have a captured record",
    }
    console.print(kv_table(facts))
    if not f.recent:
        return
    rows = [
        {
            "time": r.time.strftime("%Y-%m-%d %H:%M:%S"),
            "consumer": r.consumer,
            "rating": r.rating,
            "label": r.label if r.label is not None else r.target,
            "note": _snippet(r.note),
            "captured": "yes" if r.captured else "no",
            "request": r.request_id[:16] + "…",
        }
        for r in f.recent
    ]
    console.print(table(rows))


def _render_captured(records: list[CapturedRecordOut]) -> None:
    if not records:
        console.print("no captured calls: turn capture on with `endpoints capture E --rate R`")
        return
    rows = []
    for r in records:
        fb = r.feedback
        rows.append(
            {
                "time": r.time.strftime("%Y-%m-%d %H:%M:%S"),
                "consumer": r.consumer,
                "model": r.model_label,
                "status": r.status,
                "input": _snippet(r.input) if r.readable else "(unreadable)",
                "output": _snippet(r.output) if r.readable else "(unreadable)",
                "rating": fb.rating if fb else None,
                "label": (fb.label if fb.label is not None else fb.target) if fb else None,
            }
        )
    console.print(table(rows))


def capture_cmd(
    name: NameArg,
    rate: Annotated[
        float | None,
        typer.Option("--rate", min=0, max=1, help="share of the calls to capture, 0 to 1"),
    ] = None,
    inputs: Annotated[
        bool | None, typer.Option("--inputs/--no-inputs", help="keep the calls' inputs")
    ] = None,
    outputs: Annotated[
        bool | None, typer.Option("--outputs/--no-outputs", help="keep the answers")
    ] = None,
    redact: Annotated[
        list[str] | None,
        typer.Option(
            "--redact",
            help="blank this field out before anything is stored (repeat; replaces the list)",
        ),
    ] = None,
    retention_days: Annotated[
        int | None,
        typer.Option("--retention-days", min=1, max=3650, help="keep records this many days"),
    ] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Show or change what E captures for retraining (no option: show it).

    Replicas follow a change within seconds; consumers who opted out are never captured."""
    changes: dict[str, Any] = {
        k: v
        for k, v in {
            "rate": rate,
            "inputs": inputs,
            "outputs": outputs,
            "redact": redact,
            "retention_days": retention_days,
        }.items()
        if v is not None
    }
    with api_errors(output), Client() as client:
        out = (
            client.endpoints.set_capture(name, **changes)
            if changes
            else client.endpoints.capture(name)
        )
    emit(out.model_dump(mode="json"), output, lambda _: _render_capture(out))


def feedback_cmd(name: NameArg, output: OutputOpt = Format.table) -> None:
    """Consumers' ratings and corrections of E's answers: counts, mean, the latest ones."""
    with api_errors(output), Client() as client:
        summary = client.endpoints.feedback(name)
    emit(summary.model_dump(mode="json"), output, lambda _: _render_feedback(summary))


def captured_cmd(
    name: NameArg,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500)] = 50,
    consumer: Annotated[
        str | None, typer.Option("--consumer", help="only this consumer's calls")
    ] = None,
    output: OutputOpt = Format.table,
) -> None:
    """The latest calls E captured, with their inputs, outputs and feedback."""
    with api_errors(output), Client() as client:
        records = client.endpoints.captured(name, limit=limit, consumer=consumer)
    emit(
        [r.model_dump(mode="json") for r in records],
        output,
        lambda _: _render_captured(records),
    )


def register(endpoints: typer.Typer) -> None:
    endpoints.command("capture")(capture_cmd)
    endpoints.command("feedback")(feedback_cmd)
    endpoints.command("captured")(captured_cmd)
