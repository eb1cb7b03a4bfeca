"""A job's resource request in Ray's terms, and whether (and why not) it fits.

Ray places the work; we only need to say what each worker asks for and, before anything is
queued, whether some node could ever hold one worker: a request no node can satisfy is refused
at submission instead of waiting forever. The same arithmetic names what a queued job waits for
("waiting for 2 CPUs").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gureum.schemas.jobs import Resources

GiB = 1024**3
ACCELERATOR_PREFIX = "accelerator_type:"
# Ray's own marker amount for an accelerator_type request.
ACCELERATOR_AMOUNT = 0.001
_EPS = 1e-9


def demand(r: Resources) -> dict[str, float]:
    """One worker's request as Ray resource names -> amounts."""
    out: dict[str, float] = {}
    if r.cpus:
        out["CPU"] = r.cpus
    if r.gpus:
        out["GPU"] = r.gpus
    if r.memory_gb:
        out["memory"] = r.memory_gb * GiB
    if r.accelerator_type:
        out[ACCELERATOR_PREFIX + r.accelerator_type] = ACCELERATOR_AMOUNT
    out.update(r.custom)
    return out


def ray_options(r: Resources) -> dict[str, Any]:
    """Keyword options for ``.options(...)`` of a Ray task or actor."""
    opts: dict[str, Any] = {"num_cpus": r.cpus, "num_gpus": r.gpus}
    if r.memory_gb:
        opts["memory"] = int(r.memory_gb * GiB)
    if r.accelerator_type:
        opts["accelerator_type"] = r.accelerator_type
    if r.custom:
        opts["resources"] = dict(r.custom)
    return opts


def train_resources(r: Resources) -> dict[str, float]:
    """``resources_per_worker`` for Ray Train's ScalingConfig (accelerator type goes apart)."""
    out: dict[str, float] = {"CPU": r.cpus, "GPU": r.gpus}
    if r.memory_gb:
        out["memory"] = r.memory_gb * GiB
    out.update(r.custom)
    return out


def _amount(name: str, value: float) -> str:
    if name == "memory":
        return f"{value / GiB:g} GiB memory"
    if name.startswith(ACCELERATOR_PREFIX):
        return f"an accelerator of type {name.removeprefix(ACCELERATOR_PREFIX)}"
    unit = {"CPU": "CPU", "GPU": "GPU"}.get(name, name)
    plural = "" if abs(value - 1) < _EPS or not unit.isupper() else "s"
    return f"{value:g} {unit}{plural}"


def shortfall(need: Mapping[str, float], have: Mapping[str, float]) -> list[str]:
    """What of ``need`` ``have`` lacks, in words; empty when it fits."""
    return [
        _amount(name, amount)
        for name, amount in need.items()
        if amount > 0 and have.get(name, 0.0) + _EPS < amount
    ]


def scaled(need: Mapping[str, float], n: int) -> dict[str, float]:
    return {k: v * n for k, v in need.items()}


@dataclass(frozen=True)
class NodeInfo:
    """One alive node's total resources, as Ray reports them."""

    node_id: str
    total: Mapping[str, float]


def unplaceable(r: Resources, workers: int, nodes: list[NodeInfo]) -> str | None:
    """Why no node of the cluster could ever run one worker of this job; None if one can.

    ``workers`` is checked against the whole cluster too: N workers need N slots somewhere.
    """
    if not nodes:
        return None  # nothing known about the cluster yet; the queue will say what it waits for
    need = demand(r)
    fits = [n for n in nodes if not shortfall(need, n.total)]
    if not fits:
        largest = max(nodes, key=lambda n: n.total.get("CPU", 0.0))
        missing = shortfall(need, largest.total)
        sizes = ", ".join(_node_size(n) for n in nodes[:5])
        return (
            f"no node of the cluster can ever provide one worker's {', '.join(missing)} "
            f"(nodes: {sizes})"
        )
    slots = sum(_slots(need, n.total) for n in fits)
    if slots < workers:
        return (
            f"{workers} workers need {workers} slots of {describe(need)}; "
            f"the whole cluster has {slots}"
        )
    return None


def _slots(need: Mapping[str, float], total: Mapping[str, float]) -> int:
    counts = [
        int((total.get(k, 0.0) + _EPS) // v)
        for k, v in need.items()
        if v > 0 and not k.startswith(ACCELERATOR_PREFIX)
    ]
    return min(counts) if counts else 1_000_000


def describe(need: Mapping[str, float]) -> str:
    return ", ".join(_amount(k, v) for k, v in need.items()) or "nothing"


def _node_size(n: NodeInfo) -> str:
    parts = [f"{n.total.get('CPU', 0):g} CPU"]
    if n.total.get("GPU"):
        parts.append(f"{n.total['GPU']:g} GPU")
    parts += [
        k.removeprefix(ACCELERATOR_PREFIX) for k in n.total if k.startswith(ACCELERATOR_PREFIX)
    ]
    return "/".join(parts)


def whole_job(r: Resources, workers: int) -> Resources:
    """The resources of ``workers`` workers as one task's (so all land on one node)."""
    if workers == 1:
        return r
    n = workers
    return r.model_copy(
        update={
            "cpus": r.cpus * n,
            "gpus": r.gpus * n,
            "memory_gb": r.memory_gb * n if r.memory_gb else None,
            "custom": {k: v * n for k, v in r.custom.items()},
        }
    )
