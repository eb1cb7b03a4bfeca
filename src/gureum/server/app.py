"""FastAPI factory: every router is mounted under /v1 and answers errors in one JSON shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from gureum import __version__, web
from gureum.compute import node_demand
from gureum.compute.backend import ComputeBackend
from gureum.compute.ray_backend import RayBackend, disconnect
from gureum.compute.resources import NodeInfo
from gureum.config import Settings
from gureum.server.api import ROUTERS
from gureum.server.auth import Authenticator
from gureum.server.controllers.budgets import BudgetController
from gureum.server.controllers.endpoints import EndpointController
from gureum.server.controllers.jobs import JobController
from gureum.server.controllers.nodes import NodeController, ray_request
from gureum.server.controllers.pipelines import PipelineController
from gureum.server.controllers.pool import PoolController
from gureum.server.db.migrate import upgrade
from gureum.server.db.session import Database
from gureum.server.deps import Serving
from gureum.server.errors import install_error_handlers
from gureum.server.leader import Leadership
from gureum.server.limits import BodyLimit, StreamSlots
from gureum.server.openapi import install_openapi
from gureum.server.services.costs import prices_from
from gureum.server.services.endpoint_stats import LiveGauges
from gureum.server.services.endpoints import load_secret
from gureum.server.services.pipeline_steps import Env
from gureum.serving.backend import RayServeBackend, ServingBackend
from gureum.storage.store import ArtifactStore
from gureum.web import api_docs


def create_app(
    settings: Settings | None = None,
    *,
    migrate: bool = True,
    compute: ComputeBackend | None = None,
    serving: ServingBackend | None = None,
) -> FastAPI:
    """``compute`` runs the jobs and ``serving`` the endpoints (tests pass fakes); by default
    the Ray cluster at ``settings.ray_address`` does both, and without one jobs wait in the
    queue and endpoints are recorded but not served."""
    settings = settings or Settings()
    # Nodes Ray's autoscaler may add (a config that cannot be read stops the server here).
    may_add = (
        node_demand.possible_nodes(node_demand.load_node_types(settings.autoscaling_config))
        if settings.autoscaling_config
        else []
    )
    db = Database(settings.resolved_database_url)
    if migrate:
        upgrade(db.engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        connected = app.state.jobs is None and bool(settings.ray_address)
        if connected:
            backend = await to_thread.run_sync(RayBackend, settings.ray_address)
            app.state.jobs = JobController(
                fenced,
                backend,
                app.state.store,
                home=settings.home,
                preempt_hold_s=settings.preempt_hold_s,
                preempt_grace_s=settings.preempt_grace_s,
            )
        if connected:
            ray_serve = await to_thread.run_sync(
                RayServeBackend, settings.ray_address, settings.serve_host, settings.serve_port
            )
            app.state.serving.controller = EndpointController(fenced, ray_serve, settings, secret)
            app.state.serving.cluster = True
        controller: JobController | None = app.state.jobs
        endpoints: EndpointController | None = app.state.serving.controller
        if controller is not None and endpoints is not None and app.state.pool is None:
            app.state.pool = _pool(controller, endpoints, fenced, settings)
        if controller is not None and settings.autoscales:
            controller.may_add = may_add
            if app.state.nodes is None:
                app.state.nodes = _nodes(controller, endpoints, fenced)
        running = [
            c
            for c in (
                controller,
                endpoints,
                app.state.pipelines,
                app.state.budgets,
                app.state.pool,
                app.state.nodes,
            )
            if c
        ]
        for started in running:
            # They tick only while this server leads (one leader per database).
            started.loop.gate = leadership
            leadership.listeners.append(started.wake)
            await to_thread.run_sync(started.start)
        await to_thread.run_sync(leadership.start)
        yield
        for started in running:
            await to_thread.run_sync(started.stop)
        await to_thread.run_sync(leadership.stop)  # hands the lease over at once
        if connected:
            await to_thread.run_sync(disconnect)
        db.dispose()

    app = FastAPI(
        title="gureum",
        version=__version__,
        description="A self-hostable AI cloud: datasets, training, registry, metered model APIs.",
        lifespan=lifespan,
        openapi_url="/v1/openapi.json",
        docs_url=None,  # web/api_docs.py serves it from local assets
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.db = db
    # Of the API servers on one database, the one that leads runs the controllers; they write
    # through ``fenced``, so a deposed leader's late write is refused (server/leader.py).
    app.state.leadership = leadership = Leadership(db)
    fenced = leadership.fenced(db)
    app.state.store = store = ArtifactStore(settings.resolved_artifacts)
    store.sweep_tmp()  # uploads cut off by a crash of an earlier server
    app.state.auth = Authenticator(db)
    app.state.streams = StreamSlots()
    app.state.jobs = (
        JobController(
            fenced,
            compute,
            store,
            home=settings.home,
            preempt_hold_s=settings.preempt_hold_s,
            preempt_grace_s=settings.preempt_grace_s,
        )
        if compute is not None
        else None
    )
    app.state.pool = None  # one pool, serving first: needs both a job and a serving cluster
    app.state.nodes = None  # node autoscaling (Settings.autoscales): needs a job cluster
    secret = load_secret(settings.home / "serving.key")
    app.state.serving = Serving(secret, LiveGauges())
    if serving is not None:
        app.state.serving.controller = EndpointController(fenced, serving, settings, secret)
    app.state.pipelines = PipelineController(_pipeline_env(app, fenced))
    # Budgets need no cluster: they write what the job and endpoint controllers carry out.
    wake = _pipeline_env(app, fenced).wake
    app.state.budgets = BudgetController(fenced, lambda: prices_from(settings), wake)
    install_error_handlers(app)
    app.add_middleware(BodyLimit)
    # Outermost: the scheme and client as the trusted proxy saw them (uvicorn's own copy of
    # this middleware is off, so tests and every way of serving the app get the same).
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.forwarded_allow_ips)
    for router in ROUTERS:
        app.include_router(router, prefix="/v1")
    web.install(app)  # the dashboard at /, signed in with a session cookie
    install_openapi(app)
    app.include_router(api_docs.router)
    return app


def _pool(
    jobs: JobController, endpoints: EndpointController, db: Database, settings: Settings
) -> PoolController:
    """Serving first: endpoint replicas Ray cannot place preempt training jobs, and the job
    queue leaves the room serving needs next free."""
    pool = PoolController(
        db,
        lambda: endpoints.states,
        jobs.backend.available,
        settings,
        jobs.wake,
        nodes=jobs.backend.nodes,
    )
    jobs.reserved = pool.reserved
    return pool


def _nodes(
    jobs: JobController, endpoints: EndpointController | None, db: Database
) -> NodeController:
    """Node autoscaling: queued jobs and waiting replicas ask Ray's autoscaler for nodes."""
    replicas = (lambda: endpoints.states) if endpoints is not None else None
    return NodeController(db, ray_request, replicas=replicas, nodes=jobs.nodes)


def _pipeline_env(app: FastAPI, db: Database) -> Env:
    """What a retrain run's steps reach (writing through the leader's fenced ``db``); the
    job and endpoint controllers are looked up when used, since a cluster is joined only when
    the app starts."""
    state = app.state

    def nodes() -> list[NodeInfo] | None:
        return state.jobs.nodes() if state.jobs is not None else None

    def wake() -> None:
        for controller in (state.jobs, state.serving.controller):
            if controller is not None:
                controller.wake()

    return Env(
        db=db,
        store=state.store,
        settings=state.settings,
        secret=state.serving.secret,
        data_url=lambda: state.serving.data_url,
        live=lambda name: state.serving.live(name),
        nodes=nodes,
        wake=wake,
    )
