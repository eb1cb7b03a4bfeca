"""Node autoscaling policy: what the cluster should be able to hold, in Ray's terms.

The job controller starts a queued job only once the cluster has room for it, so Ray never sees
a queued job's demand and its autoscaler would never add a node for it. This turns what waits
(queued jobs their workspace's quota and budget would let start, endpoint replicas Ray has not
placed) plus what runs into the resource bundles of ``ray.autoscaler.sdk.request_resources``:
a request for total capacity, not on top of what is in use, which is why running work is in
it too. Ray's autoscaler picks the node types and adds the nodes; when nothing waits the
request is emptied and nodes left idle go away after the autoscaler's idle timeout.

It also says which nodes the autoscaler may add (``available_node_types`` of the cluster's
autoscaling config), so that submission refuses only what no node, present or possible, could
hold. Pure functions: the controller (``server.controllers.nodes``) feeds them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from gureum.compute.resources import NodeInfo, demand, shortfall, whole_job
from gureum.schemas.jobs import SCRIPT_RECIPE, Resources

Bundle = dict[str, float]
# A request beyond this many bundles is cut (lowest priorities last): the autoscaler bin-packs
# every bundle on every update, and a queue that long asks for the largest cluster anyway.
MAX_BUNDLES = 1000
# At most this many nodes of one type are counted as possible for a job's slot check.
MAX_VIRTUAL_PER_TYPE = 64
# Not a schedulable resource: Ray's autoscaler reads it to size a node's object store.
NOT_RESOURCES = frozenset({"object_store_memory"})
_EPS = 1e-9
# Ray's cluster-wide max_workers when a config leaves it out (also each type's default).
RAY_DEFAULT_MAX_WORKERS = 2


class NodeTypesError(ValueError):
    """The autoscaling config cannot be read or has no usable ``available_node_types``."""


@dataclass(frozen=True)
class NodeType:
    """A kind of worker node Ray's autoscaler may add, and how many of it at most."""

    name: str
    resources: Mapping[str, float]
    max_workers: int


def load_node_types(path: Path | str) -> list[NodeType]:
    """The worker node types of a Ray autoscaler config (cluster launcher YAML, or any YAML
    with ``available_node_types``); the head's type is left out (the head is a node already),
    and so are types the autoscaler may add none of."""
    try:
        data = yaml.safe_load(Path(path).expanduser().read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise NodeTypesError(f"cannot read the autoscaling config {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("available_node_types"), dict):
        raise NodeTypesError(f"the autoscaling config {path} has no available_node_types")
    head = data.get("head_node_type")
    ceiling: Any = data.get("max_workers", RAY_DEFAULT_MAX_WORKERS)
    out: list[NodeType] = []
    for name, spec in data["available_node_types"].items():
        if name == head or not isinstance(spec, dict):
            continue
        try:
            resources = {
                str(k): float(v)
                for k, v in (spec.get("resources") or {}).items()
                if k not in NOT_RESOURCES
            }
            most = min(int(spec.get("max_workers", ceiling)), int(ceiling))
        except (TypeError, ValueError) as exc:
            raise NodeTypesError(f"node type {name!r} in {path}: {exc}") from None
        if most > 0:
            out.append(NodeType(str(name), resources, most))
    return out


def possible_nodes(types: Sequence[NodeType]) -> list[NodeInfo]:
    """The nodes the autoscaler may add, as if present (for "could this ever run" checks)."""
    return [
        NodeInfo(node_id=f"{t.name} (a node type the autoscaler may add)", total=t.resources)
        for t in types
        for _ in range(min(t.max_workers, MAX_VIRTUAL_PER_TYPE))
    ]


# -- what waits and what runs --------------------------------------------------------------------


@dataclass(frozen=True)
class JobLoad:
    """A job as the policy sees it: queued, or active (starting or running)."""

    job_id: str
    workspace_id: int
    resources: Resources
    workers: int
    active: bool
    recipe: str = ""


@dataclass(frozen=True)
class Limits:
    """A workspace's quota (``Workspace.max_*``); None: no limit."""

    max_cpus: float | None = None
    max_gpus: float | None = None
    max_concurrent_jobs: int | None = None


@dataclass
class _Used:
    cpus: float = 0.0
    gpus: float = 0.0
    jobs: int = 0

    def add(self, job: JobLoad) -> None:
        self.cpus += job.resources.cpus * job.workers
        self.gpus += job.resources.gpus * job.workers
        self.jobs += 1


def quota_allows(limits: Limits | None, used: _Used, job: JobLoad) -> bool:
    """Whether the workspace's quota lets ``job`` start next to what it already runs (the job
    controller's own rule: what it would hold back must not ask for a node)."""
    if limits is None:
        return True
    r, n = job.resources, job.workers
    if limits.max_concurrent_jobs is not None and used.jobs + 1 > limits.max_concurrent_jobs:
        return False
    if limits.max_cpus is not None and used.cpus + r.cpus * n > limits.max_cpus + _EPS:
        return False
    return not (limits.max_gpus is not None and used.gpus + r.gpus * n > limits.max_gpus + _EPS)


def job_bundles(job: JobLoad) -> list[Bundle]:
    """What one job holds on Ray: a bundle per worker, or one for all of a script job's ranks
    (they run as one task in one sandbox, ``compute.supervisor.one_node``)."""
    if job.recipe == SCRIPT_RECIPE and job.workers > 1:
        return [demand(whole_job(job.resources, job.workers))]
    return [demand(job.resources) for _ in range(job.workers)]


def jobs_demand(
    jobs: Iterable[JobLoad],
    limits: Mapping[int, Limits],
    held: Iterable[int] = (),
) -> list[Bundle]:
    """Bundles for every active job, then for each queued job (in queue order: ``jobs`` as
    the job controller orders its queue) that its workspace's quota admits next to the jobs
    before it and whose workspace's budget does not hold it."""
    jobs = list(jobs)
    held = set(held)
    used: dict[int, _Used] = {}
    out: list[Bundle] = []
    for job in jobs:
        if job.active:
            used.setdefault(job.workspace_id, _Used()).add(job)
            out += job_bundles(job)
    for job in jobs:
        if job.active or job.workspace_id in held:
            continue
        u = used.setdefault(job.workspace_id, _Used())
        if quota_allows(limits.get(job.workspace_id), u, job):
            u.add(job)  # the jobs after it count it, as when the controller starts them
            out += job_bundles(job)
    return out


def replicas_demand(replicas: Iterable[tuple[Mapping[str, float], int]]) -> list[Bundle]:
    """A bundle per replica, running or waiting for a node: (one replica's need, count)."""
    return [dict(need) for need, count in replicas for _ in range(max(count, 0))]


def fits_somewhere(bundle: Mapping[str, float], nodes: Sequence[NodeInfo]) -> bool:
    return any(not shortfall(bundle, n.total) for n in nodes)


def request(
    bundles: Iterable[Mapping[str, float]],
    nodes: Sequence[NodeInfo] = (),
    limit: int = MAX_BUNDLES,
) -> list[Bundle]:
    """The bundles to ask Ray's autoscaler for, in order: empty values dropped, bundles no
    node present or possible (``nodes``, when known) could hold left out (Ray would only
    warn about them on every update), at most ``limit``."""
    out: list[Bundle] = []
    for b in bundles:
        clean = {k: float(v) for k, v in b.items() if v > 0}
        if not clean or (nodes and not fits_somewhere(clean, nodes)):
            continue
        out.append(clean)
        if len(out) >= limit:
            break
    return out


def summary(bundles: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The bundles' resources added up (for logs)."""
    total: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            total[k] = total.get(k, 0.0) + float(v)
    return total
