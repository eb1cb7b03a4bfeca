"""Entry point: one sub-command group per noun."""

from __future__ import annotations

import typer

from gureum.cli import (
    budgets,
    cloud,
    consumers,
    datasets,
    demo,
    endpoints,
    jobs,
    jobs_submit,
    models,
    pipelines,
    plan,
    samples,
    secrets,
    site_settings,
    tenancy,
    usage,
)

app = typer.Typer(
    name="gureum",
    help="gureum: your own AI cloud. Datasets, training, registry and metered model APIs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
cloud.register(app)
demo.register(app)
samples.register(app)
tenancy.register(app)
consumers.register(app)
usage.register(app)
plan.register(app)
app.add_typer(datasets.app, name="datasets")
app.add_typer(models.app, name="models")
app.add_typer(site_settings.app, name="settings")
app.add_typer(secrets.app, name="secrets")
app.add_typer(budgets.app, name="budgets")
jobs.register(app)
jobs_submit.register(app)
endpoints.register(app)
pipelines.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
