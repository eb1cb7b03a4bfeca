"""`gureum endpoints capture | feedback | captured | drift`: what an endpoint keeps of its calls
for retraining, what its consumers said about the answers, and how far its live inputs have
moved from the training data."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

import typer

from gureum.cli.output import Format, OutputOpt, api_errors, console, emit, kv_table, table
from gureum.client import Client
from gureum.schemas.capture import CapturedRecordOut, CaptureOut, FeedbackSummary
from gureum.schemas.drift import DriftOut

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


_WINDOW = re.compile(r"^(\d+)([smhd]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_window(text: str) -> int:
    """``1h``, ``30m``, ``2d``, ``90s`` or plain seconds (``86400``) -> seconds."""
    match = _WINDOW.match(text.strip().lower())
    if match is None or int(match[1]) == 0:
        raise typer.BadParameter(f"{text!r}: give a duration such as 30m, 1h, 7d or 86400")
    return int(match[1]) * _UNIT_S[match[2]]


def _number(value: float | None, digits: int = 3) -> str | None:
    return None if value is None else f"{value:.{digits}f}"


def _percent(value: float | None) -> str | None:
    return None if value is None else f"{value:.1%}"


def _render_drift(d: DriftOut) -> None:
    ref = d.reference
    facts = {
        "endpoint": f"{d.endpoint} ({d.model}, {d.recipe})",
        "training data": f"{ref.dataset}: {ref.samples} of {ref.total} training samples",
        "window": f"{d.since:%Y-%m-%d %H:%M} to {d.until:%Y-%m-%d %H:%M} UTC",
        "live": f"{d.samples} samples in {d.captured_calls} captured calls",
        "score": f"{d.score:.3f} (largest PSI)" if d.score is not None else "-",
        "verdict": d.verdict or "none",
        "summary": d.message,
    }
    console.print(kv_table(facts))
    q = d.quality
    checks = {
        "schema violations": q.schema_violations,
        "unknown columns": ", ".join(f"{k} ({n})" for k, n in q.unknown_columns.items()),
        "wrong types": ", ".join(f"{k} ({n})" for k, n in q.invalid_values.items()),
        "undecodable pictures": _percent(q.undecodable_share),
        "empty prompts": _percent(q.empty_share),
    }
    shown = {k: v for k, v in checks.items() if v not in (None, "", 0)}
    if shown:
        console.print(kv_table(shown))
    if not d.features:
        return
    rows = [
        {
            "feature": f.name,
            "psi": f"{f.psi:.3f}",
            "verdict": f.verdict,
            "ks p": _number(f.ks_pvalue),
            "train mean": _number(f.reference_mean),
            "live mean": _number(f.live_mean),
            "missing": _percent(f.missing_share),
            "out of range": _percent(f.out_of_range_share),
            "unseen": _percent(f.unseen_share),
        }
        for f in sorted(d.features, key=lambda f: -f.psi)
    ]
    console.print(table(rows))
    console.print("PSI: below 0.1 stable, 0.1 to 0.25 moderate, from 0.25 drift")


def drift_cmd(
    name: NameArg,
    window: Annotated[
        str,
        typer.Option(
            "--window", help="how far back to read captured calls: 30m, 1h, 7d or seconds"
        ),
    ] = "24h",
    output: OutputOpt = Format.table,
) -> None:
    """How far E's live inputs (its captured calls) have moved from its training data."""
    seconds = parse_window(window)
    with api_errors(output), Client() as client:
        out = client.endpoints.drift(name, window_s=seconds)
    emit(out.model_dump(mode="json"), output, lambda _: _render_drift(out))


def register(endpoints: typer.Typer) -> None:
    endpoints.command("capture")(capture_cmd)
    endpoints.command("feedback")(feedback_cmd)
    endpoints.command("captured")(captured_cmd)
    endpoints.command("drift")(drift_cmd)
