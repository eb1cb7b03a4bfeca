"""The boundary to Ray Serve: apply an application, delete it, read what runs.

Behind a Protocol so that the endpoint controller is tested with a fake; the real one drives Ray
Serve in HAProxy mode (see compute.local_ray for the environment the cluster starts with).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from dataclasses import dataclass
from typing import Protocol, cast

from ray import serve
from ray.exceptions import ActorAlreadyExistsError
from ray.serve import Deployment
from ray.serve.context import _get_global_client
from ray.serve.schema import ServeInstanceDetails

from gureum.compute.ray_backend import connect
from gureum.schemas.endpoints import Autoscaling, ReplicaResources
from gureum.serving.deployment import ModelServer, state_name
from gureum.serving.router import EndpointRouter
from gureum.serving.spec import ReplicaSpec, TrafficConfig

GiB = 1024**3
DEPLOYMENT = "server"
# Endpoint applications are named from endpoint ids (app_name), never from user-chosen names,
# so no endpoint name can collide with the router or with another endpoint's applications.
ROUTER_APP = "gureum-router"
APP_PREFIX = "ep-"
# How often replicas report load to the autoscaler and the window it averages over: short,
# so that a burst is answered by new replicas within seconds, and the load of a burst that
# ended stops counting soon after (the downscale delay then decides).
METRICS_INTERVAL_S = 0.5
LOOK_BACK_S = 3.0
# Requests a replica accepts at once, as a multiple of its target (Ray Serve's own default is
# 5 for a target of 2): a replica that accepts many more hoards a burst's requests while new
# replicas start, and the autoscaler, which counts them, sees no queue to scale on.
MAX_ONGOING_PER_TARGET = 2.5
START_TRIES = 5


@dataclass
class AppSpec:
    name: str
    route_prefix: str | None
    replica: ReplicaSpec
    traffic: TrafficConfig
    resources: ReplicaResources
    autoscaling: Autoscaling
    # None: from the autoscaling settings and the batch size (max_ongoing_requests()).
    max_ongoing_requests: int | None = None


@dataclass
class AppState:
    # Ray Serve's application status: DEPLOYING, RUNNING, DEPLOY_FAILED, UNHEALTHY, DELETING...
    status: str
    message: str
    running: int
    # What the application's user_config records as its endpoint (None: not one of ours).
    endpoint_id: int | None = None
    owner: str | None = None
    # An endpoint application of a gureum before Serve applications were named by endpoint id
    # (named like the endpoint, its user_config a TrafficConfig without endpoint_id).
    legacy: bool = False
    route_prefix: str | None = None
    # Replicas Ray has not placed on a node yet (STARTING without a node: no room, or a node
    # still to come), and since when the oldest waits (epoch seconds): the pool preempts
    # training jobs for them (server/controllers/pool.py).
    starting: int = 0
    starting_since: float | None = None
    # Replicas in any state (waiting, starting, running, draining: each holds or asks for
    # room): how many more autoscaling may still add (the pool keeps room for them).
    replicas: int = 0


@dataclass(frozen=True)
class Route:
    """What the router knows of an endpoint: its application, how long a request may wait for
    a replica, and the largest body it reads for it."""

    app: str
    bound_s: float
    max_request_bytes: int


def app_name(endpoint_id: int, role: str = "primary") -> str:
    return (
        f"{APP_PREFIX}{endpoint_id}" if role == "primary" else f"{APP_PREFIX}{endpoint_id}--{role}"
    )


class ServingBackend(Protocol):
    @property
    def data_url(self) -> str: ...

    def apply(self, app: AppSpec) -> None: ...

    def delete(self, name: str) -> None: ...

    def route(self, routes: dict[str, Route]) -> None:
        """Tell the router which endpoints exist (by name), their applications, how long a
        request may wait for one and how large its body may be."""

    def states(self) -> dict[str, AppState]: ...


def actor_options(res: ReplicaResources) -> dict[str, object]:
    opts: dict[str, object] = {"num_cpus": res.cpus, "num_gpus": res.gpus}
    if res.memory_gb is not None:
        opts["memory"] = int(res.memory_gb * GiB)
    if res.accelerator_type is not None:
        opts["accelerator_type"] = res.accelerator_type
    return opts


def max_ongoing_requests(a: Autoscaling, max_batch_size: int = 1) -> int:
    """What one replica accepts at once: the setting, else 2.5 x the target (at least a full
    batch, so that batching still fills its batches)."""
    if a.max_ongoing_requests is not None:
        return a.max_ongoing_requests
    return max(math.ceil(MAX_ONGOING_PER_TARGET * a.target_ongoing_requests), max_batch_size, 1)


def autoscaling_config(a: Autoscaling) -> dict[str, object]:
    return {
        "min_replicas": a.min_replicas,
        # A new application starts one replica even when it may scale to zero: the deploy
        # then proves that the version loads.
        "initial_replicas": max(1, a.min_replicas),
        "max_replicas": a.max_replicas,
        "target_ongoing_requests": a.target_ongoing_requests,
        "upscale_delay_s": a.upscale_delay_s,
        "downscale_delay_s": a.downscale_delay_s,
        "downscale_to_zero_delay_s": a.idle_timeout_s,
        "metrics_interval_s": METRICS_INTERVAL_S,
        "look_back_period_s": LOOK_BACK_S,
    }


# Ray Serve's deployment config registers a module with cloudpickle and unregisters it again
# (``_serialize_request_router_cls``), which is not thread-safe: two definitions at once in one
# process (a controller tick and a starting server, as tests run them) raised "is not registered
# for pickle by value". One definition at a time per process.
_DEFINING = threading.Lock()


class RayServeBackend:
    def __init__(self, address: str, host: str, port: int) -> None:
        connect(address)
        for attempt in range(START_TRIES):
            try:
                serve.start(http_options={"host": host, "port": port})
                break
            except ActorAlreadyExistsError:
                # Another API server started Ray Serve at the same moment: join it instead.
                if attempt == START_TRIES - 1:
                    raise
                time.sleep(0.5)
        # Ray Serve keeps the options of whoever started it on this cluster first (an earlier
        # server, another tool): report the port it really listens on.
        client = _get_global_client()
        actual = client.http_config.port if client is not None else port
        self._url = f"http://{host}:{actual}"
        # The router is deployed by the leading endpoint controller's first tick: a server
        # joining as a follower must not reset the leader's routes.

    @property
    def data_url(self) -> str:
        return self._url

    def apply(self, app: AppSpec) -> None:
        with _DEFINING:
            self._apply(app)

    def _apply(self, app: AppSpec) -> None:
        deployment = cast(Deployment, serve.deployment(ModelServer)).options(
            name=DEPLOYMENT,
            ray_actor_options=actor_options(app.resources),
            autoscaling_config=autoscaling_config(app.autoscaling),
            user_config=app.traffic.model_dump(),
            max_ongoing_requests=app.max_ongoing_requests
            or max_ongoing_requests(app.autoscaling, app.traffic.max_batch_size),
            graceful_shutdown_timeout_s=30.0,
            health_check_period_s=5.0,
            # Same version (what the replica loads): Ray Serve reconfigures the running
            # replicas in place for traffic, batching and autoscaling changes; a new one
            # rolls them over.
            version=hashlib.sha256(app.replica.model_dump_json().encode()).hexdigest()[:16],
            _internal=True,
        )
        serve._run(  # the public serve.run waits for the application to be running
            deployment.bind(app.replica.model_dump()),
            _blocking=False,
            name=app.name,
            route_prefix=app.route_prefix,
        )

    def delete(self, name: str) -> None:
        serve.delete(name, _blocking=False)

    def route(self, routes: dict[str, Route]) -> None:
        table = {
            name: {"app": r.app, "bound_s": r.bound_s, "max_request_bytes": r.max_request_bytes}
            for name, r in routes.items()
        }
        with _DEFINING:
            router = cast(Deployment, serve.deployment(EndpointRouter)).options(
                name="router",
                ray_actor_options={"num_cpus": 0},
                num_replicas=1,
                max_ongoing_requests=10_000,
                user_config={"endpoints": table},
                version="router-1",
                _internal=True,
            )
            serve._run(router.bind(), _blocking=False, name=ROUTER_APP, route_prefix="/")

    def states(self) -> dict[str, AppState]:
        client = _get_global_client(raise_if_no_controller_running=False)
        if client is None:
            return {}
        # serve.status() is built from these details too; they also carry each user_config.
        details = ServeInstanceDetails(**client.get_serve_details())
        out = {}
        for name, app in details.applications.items():
            dep = app.deployments.get(DEPLOYMENT)
            running = sum(1 for r in dep.replicas if state_name(r.state) == "RUNNING") if dep else 0
            # The deployment's message carries the replica's error; the app's only says it failed.
            message = (dep.message if dep and dep.message else "") or app.message
            user_config = dep.deployment_config.user_config if dep else None
            endpoint_id, owner = _recorded(user_config)
            legacy = _legacy(user_config)
            waiting = [
                r.start_time_s
                for r in (dep.replicas if dep else [])
                if state_name(r.state) == "STARTING" and r.node_id is None
            ]
            out[name] = AppState(
                state_name(app.status),
                message,
                running,
                endpoint_id,
                owner,
                legacy,
                app.route_prefix,
                len(waiting),
                min(waiting, default=None),
                len(dep.replicas) if dep else 0,
            )
        return out


def _legacy(user_config: object) -> bool:
    return (
        isinstance(user_config, dict)
        and isinstance(user_config.get("model"), dict)
        and "version_id" in user_config["model"]
        and "endpoint_id" not in user_config
    )


def _recorded(user_config: object) -> tuple[int | None, str | None]:
    """The endpoint an application says it serves, from its user_config (TrafficConfig)."""
    if not isinstance(user_config, dict):
        return None, None
    ep, owner = user_config.get("endpoint_id"), user_config.get("owner")
    return (
        ep if isinstance(ep, int) and not isinstance(ep, bool) else None,
        owner if isinstance(owner, str) else None,
    )
