"""Elastic cloud against a fleet bought for the peak, over an hourly demand series.

Pure arithmetic (no database), so it is checked by hand in the unit tests:

- cloud: each hour pays on-demand for what it used; the preemptible part (jobs) pays spot for
  ``spot_share`` of its hours and on-demand for the rest;
- fleet: ceil(peak) CPUs and GPUs, bought at once; until it arrives (``lead_time_months``)
  the cloud serves and is paid; from then on each hour costs the purchase amortised over
  ``amortisation_years`` plus the fleet's power, busy or idle;
- utilisation: the demand's worth at on-demand prices over the fleet's worth for as many
  hours; break-even: the utilisation at which a year of cloud (at the replay's spot mix) costs
  what a year of owning does.
"""

from __future__ import annotations

import math
from datetime import timedelta

from gureum.config import Settings
from gureum.schemas.planner import (
    HOURS_PER_MONTH,
    HOURS_PER_YEAR,
    CloudCost,
    DemandSeries,
    FleetCost,
    PlanComparison,
    PlanPrices,
    PriceOverrides,
)
from gureum.server.services.costs import prices_from

EPS = 1e-9


class NoDemand(ValueError):
    """The series uses no CPU and no GPU in any hour: there is no peak to size a fleet for."""


def resolve_prices(settings: Settings, overrides: PriceOverrides) -> PlanPrices:
    """The settings' prices (on-demand: those of cost reports), each override winning."""
    cost = prices_from(settings)
    defaults = PlanPrices(
        currency=cost.currency,
        on_demand_cpu_hour=cost.cpu_hour,
        on_demand_gpu_hour=cost.gpu_hour,
        spot_cpu_hour=settings.plan_spot_cpu_hour,
        spot_gpu_hour=settings.plan_spot_gpu_hour,
        spot_share=settings.plan_spot_share,
        purchase_per_cpu=settings.plan_purchase_per_cpu,
        purchase_per_gpu=settings.plan_purchase_per_gpu,
        amortisation_years=settings.plan_amortisation_years,
        power_per_cpu_hour=settings.plan_power_per_cpu_hour,
        power_per_gpu_hour=settings.plan_power_per_gpu_hour,
        lead_time_months=settings.plan_lead_time_months,
    )
    return defaults.model_copy(update=overrides.model_dump(exclude_none=True))


def _r(value: float) -> float:
    return round(value, 6)


def _size(peak: float) -> int:
    """Whole units covering the peak (a peak of 2.0000000001 from float sums is 2)."""
    return max(0, math.ceil(peak - EPS))


def compare(series: DemandSeries, p: PlanPrices) -> PlanComparison:
    hours = series.hours
    cpus, gpus = series.cpus, series.gpus
    zeros = [0.0] * hours
    pre_cpus, pre_gpus = series.preemptible_cpus or zeros, series.preemptible_gpus or zeros
    peak_cpus, peak_gpus = max(cpus), max(gpus)
    if peak_cpus <= 0 and peak_gpus <= 0:
        raise NoDemand("no CPU or GPU was used in any hour")

    # Elastic cloud, hour by hour.
    share = p.spot_share
    hourly: list[float] = []
    on_demand = spot = 0.0
    for c, g, pc, pg in zip(cpus, gpus, pre_cpus, pre_gpus, strict=True):
        od = (c - share * pc) * p.on_demand_cpu_hour + (g - share * pg) * p.on_demand_gpu_hour
        sp = share * (pc * p.spot_cpu_hour + pg * p.spot_gpu_hour)
        on_demand += od
        spot += sp
        hourly.append(od + sp)
    cloud_total = on_demand + spot

    # The fleet: usable after the lead time, paid by the hour from then on.
    n_cpus, n_gpus = _size(peak_cpus), _size(peak_gpus)
    purchase = n_cpus * p.purchase_per_cpu + n_gpus * p.purchase_per_gpu
    amortised_hour = purchase / (p.amortisation_years * HOURS_PER_YEAR)
    power_hour = n_cpus * p.power_per_cpu_hour + n_gpus * p.power_per_gpu_hour
    lead = min(hours, round(p.lead_time_months * HOURS_PER_MONTH))
    usable = hours - lead
    lead_cloud = sum(hourly[:lead])
    fleet_total = lead_cloud + (amortised_hour + power_hour) * usable

    # Utilisation and break-even, weighted by on-demand price.
    capacity_hour = n_cpus * p.on_demand_cpu_hour + n_gpus * p.on_demand_gpu_hour
    demand_value = sum(cpus) * p.on_demand_cpu_hour + sum(gpus) * p.on_demand_gpu_hour
    utilisation = demand_value / (capacity_hour * hours) if capacity_hour > 0 else 0.0
    # What the cloud charges per unit of on-demand worth (below 1 with spot).
    rate = cloud_total / demand_value if demand_value > 0 else 1.0
    cloud_capacity_hour = capacity_hour * rate
    break_even = (
        (amortised_hour + power_hour) / cloud_capacity_hour if cloud_capacity_hour > 0 else None
    )

    cheaper = "fleet" if fleet_total < cloud_total - EPS else "cloud"
    owning_year = (amortised_hour + power_hour) * HOURS_PER_YEAR
    cloud_year = cloud_total / hours * HOURS_PER_YEAR
    cheaper_per_year = "fleet" if owning_year < cloud_year - EPS else "cloud"
    return PlanComparison(
        hours=hours,
        peak_cpus=_r(peak_cpus),
        peak_gpus=_r(peak_gpus),
        mean_cpus=_r(sum(cpus) / hours),
        mean_gpus=_r(sum(gpus) / hours),
        cpu_utilisation=_r(sum(cpus) / (n_cpus * hours)) if n_cpus else 0.0,
        gpu_utilisation=_r(sum(gpus) / (n_gpus * hours)) if n_gpus else 0.0,
        utilisation=_r(utilisation),
        break_even_utilisation=_r(break_even) if break_even is not None else None,
        cloud=CloudCost(
            on_demand=_r(on_demand),
            spot=_r(spot),
            total=_r(cloud_total),
            per_year=_r(cloud_year),
        ),
        fleet=FleetCost(
            cpus=n_cpus,
            gpus=n_gpus,
            purchase=_r(purchase),
            usable_from=series.start + timedelta(hours=lead) if usable > 0 else None,
            usable_hours=usable,
            amortisation=_r(amortised_hour * usable),
            power=_r(power_hour * usable),
            cloud_during_lead_time=_r(lead_cloud),
            total=_r(fleet_total),
            per_year=_r(owning_year),
        ),
        cheaper=cheaper,
        savings=_r(abs(cloud_total - fleet_total)),
        cheaper_per_year=cheaper_per_year,
    )
