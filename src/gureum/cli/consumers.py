"""`gureum consumers | plans`: the workspace's customers, their keys and plans, over the SDK."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from gureum.cli.output import Format, OutputOpt, api_errors, console, emit, err_console, fail, table
from gureum.client import Client
from gureum.schemas.consumers import parse_quota, parse_rate

consumers = typer.Typer(
    help="Consumers: customers who call your endpoints with their own keys.", no_args_is_help=True
)
keys = typer.Typer(
    help="A consumer's keys: create (shown once), list, revoke.", no_args_is_help=True
)
plans = typer.Typer(
    help="Plans: prices, rate limits, quotas, allowed endpoints.", no_args_is_help=True
)
consumers.add_typer(keys, name="keys")

UNLIMITED = ("unlimited", "none")
CONSUMER_COLUMNS = (
    "name",
    "plan",
    "rate",
    "quota",
    "per request",
    "per unit",
    "endpoints",
    "state",
)
PLAN_COLUMNS = ("name", "rate", "quota", "per request", "per unit", "endpoints")
KEY_COLUMNS = ("key_id", "consumer", "created_at", "revoked_at")

RateOpt = Annotated[
    str | None,
    typer.Option("--rate-limit", help="requests per second: 10/s, 100/min, 1000/h or 10"),
]
QuotaOpt = Annotated[str | None, typer.Option("--quota", help="requests per month: 1000/month")]
PerRequestOpt = Annotated[
    float | None, typer.Option("--price-per-request", min=0, help="charged per served request")
]
PerUnitOpt = Annotated[
    float | None,
    typer.Option("--price-per-unit", min=0, help="charged per image, token or row returned"),
]
CurrencyOpt = Annotated[str | None, typer.Option("--currency", help="ISO code, e.g. USD")]
EndpointOpt = Annotated[
    list[str] | None,
    typer.Option("--endpoint", help="an endpoint the plan allows (repeat); none: all"),
]


def _client() -> Client:
    return Client()


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


def _at(row: dict[str, Any]) -> dict[str, Any]:
    """Timestamps to the second, in UTC, so tables stay narrow."""
    return {
        k: v[:19].replace("T", " ") if k.endswith("_at") and isinstance(v, str) else v
        for k, v in row.items()
    }


def _limits(plan: dict[str, Any]) -> dict[str, Any]:
    """A plan as people read it, in short columns that fit a terminal."""
    rate, quota = plan["rate_limit"], plan["monthly_quota"]
    return {
        "name": plan["name"],
        "rate": "unlimited" if rate is None else f"{rate:g}/s",
        "quota": "unlimited" if quota is None else f"{quota}/month",
        "per request": f"{plan['price_per_request']:g} {plan['currency']}",
        "per unit": f"{plan['price_per_unit']:g} {plan['currency']}",
        "endpoints": ", ".join(plan["endpoints"]) or "all",
    }


def _consumer_row(data: dict[str, Any]) -> dict[str, Any]:
    state = "disabled" if data["disabled"] else f"{data['active_keys']} key(s)"
    if not data.get("capture", True):
        state += ", not captured"
    return {
        **_limits(data["plan"]),
        "name": data["name"],
        "plan": data["plan"]["name"],
        "state": state,
    }


def _show(data: Any, output: Format, columns: Sequence[str], shape: Any = _at) -> None:
    rows = [shape(r) for r in (data if isinstance(data, list) else [data])]
    emit(data, output, lambda _: console.print(table(rows, columns)))


def _rate(text: str | None, output: Format, *, clearable: bool = False) -> float | None:
    if text is None or (clearable and text.lower() in UNLIMITED):
        return None
    try:
        return parse_rate(text)
    except ValueError as exc:
        fail(str(exc), output, "invalid_option", exit_code=2)


def _quota(text: str | None, output: Format, *, clearable: bool = False) -> int | None:
    if text is None or (clearable and text.lower() in UNLIMITED):
        return None
    try:
        return parse_quota(text)
    except ValueError as exc:
        fail(str(exc), output, "invalid_option", exit_code=2)


def _plan_fields(
    output: Format,
    rate_limit: str | None,
    quota: str | None,
    price_per_request: float | None,
    price_per_unit: float | None,
    currency: str | None,
    endpoint: list[str] | None,
    *,
    clearable: bool = False,
) -> dict[str, Any]:
    """The plan options given on the command line, as SDK keyword arguments."""
    fields: dict[str, Any] = {}
    if rate_limit is not None:
        fields["rate_limit"] = _rate(rate_limit, output, clearable=clearable)
    if quota is not None:
        fields["monthly_quota"] = _quota(quota, output, clearable=clearable)
    given = {
        "price_per_request": price_per_request,
        "price_per_unit": price_per_unit,
        "currency": currency.upper() if currency else None,
        "endpoints": endpoint or None,
    }
    fields.update({k: v for k, v in given.items() if v is not None})
    return fields


def _render_secret(row: dict[str, Any], columns: Sequence[str], token: str) -> None:
    console.print(table([row], columns))
    console.print("[bold yellow]Store this key now; it will not be shown again:[/bold yellow]")
    console.print(token, soft_wrap=True, highlight=False)


# -- consumers -----------------------------------------------------------------------------------


@consumers.command("create")
def create(
    name: str,
    plan: Annotated[str | None, typer.Option("--plan", help="an existing plan's name")] = None,
    rate_limit: RateOpt = None,
    quota: QuotaOpt = None,
    price_per_request: PerRequestOpt = None,
    price_per_unit: PerUnitOpt = None,
    currency: CurrencyOpt = None,
    endpoint: EndpointOpt = None,
    email: Annotated[str | None, typer.Option("--email", help="contact address")] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Create a consumer and its first key (printed this once). Without --plan, the limits and
    prices given make a plan of its own (default: free, unlimited, every endpoint)."""
    fields = _plan_fields(
        output, rate_limit, quota, price_per_request, price_per_unit, currency, endpoint
    )
    with api_errors(output), _client() as c:
        created = _dump(c.consumers.create(name, plan=plan, email=email, **fields))
    if output is Format.json:
        err_console.print("Store this key now; it will not be shown again.")
    emit(
        created,
        output,
        lambda d: _render_secret(
            {**_consumer_row(d), "key id": d["key_id"]}, (*CONSUMER_COLUMNS, "key id"), d["token"]
        ),
    )


@consumers.command("list")
def list_(output: OutputOpt = Format.table) -> None:
    """Consumers of your key's workspace with their plans' limits."""
    with api_errors(output), _client() as c:
        rows = [_dump(x) for x in c.consumers.list()]
    _show(rows, output, CONSUMER_COLUMNS, _consumer_row)


@consumers.command("show")
def show(name: str, output: OutputOpt = Format.table) -> None:
    with api_errors(output), _client() as c:
        _show(_dump(c.consumers.get(name)), output, CONSUMER_COLUMNS, _consumer_row)


@consumers.command("update")
def update(
    name: str,
    plan: Annotated[str | None, typer.Option("--plan", help="switch to this plan")] = None,
    rate_limit: Annotated[
        str | None, typer.Option("--rate-limit", help="10/s, 100/min, ... or unlimited")
    ] = None,
    quota: Annotated[str | None, typer.Option("--quota", help="1000/month or unlimited")] = None,
    price_per_request: PerRequestOpt = None,
    price_per_unit: PerUnitOpt = None,
    currency: CurrencyOpt = None,
    endpoint: EndpointOpt = None,
    disabled: Annotated[
        bool | None, typer.Option("--disable/--enable", help="stop or allow its keys")
    ] = None,
    capture: Annotated[
        bool | None,
        typer.Option(
            "--capture/--no-capture", help="allow capture of its calls, or never capture them"
        ),
    ] = None,
    output: OutputOpt = Format.table,
) -> None:
    """Switch a consumer's plan, or change its limits and prices (it gets a plan of its own);
    --no-capture: none of its calls is ever captured."""
    fields = _plan_fields(
        output,
        rate_limit,
        quota,
        price_per_request,
        price_per_unit,
        currency,
        endpoint,
        clearable=True,
    )
    if plan is not None:
        fields["plan"] = plan
    if disabled is not None:
        fields["disabled"] = disabled
    if capture is not None:
        fields["capture"] = capture
    with api_errors(output), _client() as c:
        _show(_dump(c.consumers.update(name, **fields)), output, CONSUMER_COLUMNS, _consumer_row)


@consumers.command("delete")
def delete(name: str, output: OutputOpt = Format.table) -> None:
    """Disable a consumer and revoke its keys; its usage history and invoices stay."""
    with api_errors(output), _client() as c:
        _show(_dump(c.consumers.delete(name)), output, CONSUMER_COLUMNS, _consumer_row)


@consumers.command("forget")
def forget(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Erase a consumer's captured calls and feedback on every endpoint, with the stored bytes
    nothing else uses. The consumer and its keys stay; --no-capture on `update` stops
    capturing its calls from now on."""
    if not yes:
        if output is Format.json or not sys.stdin.isatty():
            fail(f"refusing to erase {name}'s data without --yes", output, "confirmation_required")
        if not typer.confirm(f"Erase every captured call and feedback of {name}?"):
            fail("nothing erased", output, "cancelled")
    with api_errors(output), _client() as c:
        done = _dump(c.consumers.forget(name))
    emit(done, output, _render_forgotten)


def _render_forgotten(d: dict[str, Any]) -> None:
    console.print(
        f"erased {d['records']} captured call(s) and {d['feedback']} feedback of "
        f"{d['consumer']}; removed {d['blobs_removed']} stored object(s)",
        highlight=False,
    )
    console.print(
        f"{d['consumer']} stays a consumer and its keys keep working; "
        f"`gureum consumers update {d['consumer']} --no-capture` stops capturing its calls.",
        highlight=False,
    )


@keys.command("create")
def keys_create(consumer: str, output: OutputOpt = Format.table) -> None:
    """Another key for a consumer, printed this once."""
    with api_errors(output), _client() as c:
        created = _dump(c.consumers.create_key(consumer))
    if output is Format.json:
        err_console.print("Store this key now; it will not be shown again.")
    emit(created, output, lambda d: _render_secret(_at(d), KEY_COLUMNS, d["token"]))


@keys.command("list")
def keys_list(consumer: str, output: OutputOpt = Format.table) -> None:
    """A consumer's keys; never their secrets."""
    with api_errors(output), _client() as c:
        _show([_dump(k) for k in c.consumers.list_keys(consumer)], output, KEY_COLUMNS)


@keys.command("revoke")
def keys_revoke(consumer: str, key_id: str, output: OutputOpt = Format.table) -> None:
    """Revoke a consumer key; replicas refuse it within seconds."""
    with api_errors(output), _client() as c:
        _show(_dump(c.consumers.revoke_key(consumer, key_id)), output, KEY_COLUMNS)


# -- plans ---------------------------------------------------------------------------------------


@plans.command("create")
def plans_create(
    name: str,
    rate_limit: RateOpt = None,
    quota: QuotaOpt = None,
    price_per_request: PerRequestOpt = None,
    price_per_unit: PerUnitOpt = None,
    currency: CurrencyOpt = None,
    endpoint: EndpointOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Create a plan consumers can share (admins)."""
    fields = _plan_fields(
        output, rate_limit, quota, price_per_request, price_per_unit, currency, endpoint
    )
    with api_errors(output), _client() as c:
        _show(_dump(c.plans.create(name, **fields)), output, PLAN_COLUMNS, _limits)


@plans.command("list")
def plans_list(output: OutputOpt = Format.table) -> None:
    with api_errors(output), _client() as c:
        _show([_dump(p) for p in c.plans.list()], output, PLAN_COLUMNS, _limits)


@plans.command("show")
def plans_show(name: str, output: OutputOpt = Format.table) -> None:
    with api_errors(output), _client() as c:
        _show(_dump(c.plans.get(name)), output, PLAN_COLUMNS, _limits)


def register(app: typer.Typer) -> None:
    app.add_typer(consumers, name="consumers")
    app.add_typer(plans, name="plans")
