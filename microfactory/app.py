"""Build the FastAPI app: `create_app(settings)`, with no globals set at import time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from microfactory import __version__, resources
from microfactory.accounts.routes import router as accounts_router
from microfactory.accounts.throttle import LoginThrottle
from microfactory.admin import routers as admin_routers
from microfactory.analysis import shutdown_analysis_pool
from microfactory.bookings import wiring as booking_wiring
from microfactory.bookings.wiring import routers as booking_routers
from microfactory.config import Settings
from microfactory.costs.pages import router as costs_pages_router
from microfactory.costs.routes import router as costs_router
from microfactory.dashboard.routes import install_dashboard_handlers
from microfactory.dashboard.routes import router as dashboard_router
from microfactory.db import make_engine, make_sessionmaker
from microfactory.designs.pages import router as design_pages_router
from microfactory.designs.routes import router as designs_router
from microfactory.errors import document_errors, install_error_handlers
from microfactory.events import BUS_KEY, EventBus, JobChanged
from microfactory.fabrication.routes import router as slicer_profiles_router
from microfactory.jobs import lifecycle as job_lifecycle
from microfactory.jobs.explain import explain_failure
from microfactory.jobs.pages import router as job_pages_router
from microfactory.jobs.preparation import Preparer
from microfactory.jobs.routes import router as jobs_router
from microfactory.machines.pages import router as machine_pages_router
from microfactory.machines.routes import router as machines_router
from microfactory.materials.pages import router as materials_pages_router
from microfactory.materials.routes import router as materials_router
from microfactory.middleware import (
    AuthBeforeBody,
    BodySizeLimit,
    LoginGate,
    Metrics,
    RequestMetrics,
)
from microfactory.network import identity as network_identity
from microfactory.network.hub.designs import router as hub_designs_router
from microfactory.network.hub.pages import router as hub_pages_router
from microfactory.network.hub.pipeline import shutdown_check_pool
from microfactory.network.hub.routes import router as hub_router
from microfactory.network.pages import router as network_pages_router
from microfactory.network.requests import subscribers as network_request_subscribers
from microfactory.network.requests.pages import router as network_request_pages_router
from microfactory.network.requests.routes import router as network_requests_router
from microfactory.network.routes import router as network_router
from microfactory.notifications import service as notification_service
from microfactory.notifications import subscribers as notification_subscribers
from microfactory.notifications.pages import router as notification_pages_router
from microfactory.notifications.routes import router as notification_router
from microfactory.runtime import probe as connection_probe
from microfactory.runtime.fleet import Fleet
from microfactory.runtime.queue_runner import QueueRunner
from microfactory.runtime.records import MachineRecords
from microfactory.runtime.remote import (
    JobEventRelay,
    MachineHost,
    QueueWaker,
    RemoteFleet,
    libpq_dsn,
)
from microfactory.scheduler import Scheduler
from microfactory.usage import subscribers as usage_subscribers
from microfactory.usage.pages import router as usage_pages_router
from microfactory.usage.routes import router as usage_router

log = logging.getLogger("microfactory")


class _FleetCollector(Collector):
    """Report machines by state at scrape time, from the fleet's snapshots."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        """Yield the machines-by-state gauge."""
        gauge = GaugeMetricFamily(
            "microfactory_machines", "Machines by live state", labels=["state"]
        )
        counts: dict[str, int] = {}
        for status in self.app.state.fleet.snapshots().values():
            state = status.get("state", "offline")
            counts[state] = counts.get(state, 0) + 1
        for state, n in sorted(counts.items()):
            gauge.add_metric([state], n)
        yield gauge


def _wire_events(
    sessionmaker: async_sessionmaker[AsyncSession],
    fleet: Fleet,
    relay: JobEventRelay | None = None,
    outbox: notification_service.Outbox | None = None,
) -> EventBus:
    """Create the event bus and subscribe the reactions to the job lifecycle.

    Each session of the app carries the bus, so the lifecycle publishes after its commit.
    """
    bus = EventBus()
    sessionmaker.configure(info={BUS_KEY: bus})
    usage_subscribers.subscribe(bus, sessionmaker)

    def publish_booking(machine_id: int) -> None:
        fleet.publish_booking(machine_id)
        if relay is not None:
            relay.forward_booking(machine_id)  # to the other processes' streams

    booking_wiring.subscribe(bus, sessionmaker, publish_booking)

    def publish_message(user_id: int, kind: str) -> None:  # a new message: the badge moves
        fleet.publish_message(user_id, kind)
        if relay is not None:
            relay.forward_message(user_id, kind)  # the member's page may be on another worker

    notification_subscribers.subscribe(bus, sessionmaker, outbox, explain_failure, publish_message)

    async def to_stream(event: JobChanged) -> None:
        # Only what any member may see: no title, owner or reason on the shared stream.
        payload = {
            "topic": event.topic,
            "machine_id": event.machine_id,
            "from": event.from_state,
            "to": event.to_state,
            "at": event.at.isoformat(),
        }
        fleet.publish_job(event.job_id, payload)
        if relay is not None:
            relay.forward(event.job_id, payload)  # to the other processes' streams

    bus.subscribe("job.*", to_stream)
    return bus


async def catch_up_usage(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """Log the runs whose usage a stop between commit and subscriber left unrecorded."""
    async with sessionmaker() as session:
        missed = await job_lifecycle.unrecorded_runs(session=session)
    for event in missed:
        async with sessionmaker() as session, session.begin():
            await usage_subscribers.record_run(session=session, event=event)
        log.warning("usage of job %s recorded at startup", event.job_id)


def create_app(settings: Settings) -> FastAPI:
    """Build the app for these settings."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        settings.upload_dir.mkdir(parents=True, exist_ok=True)
        # The shop's network identity: an Ed25519 key made on first start (network/).
        await asyncio.to_thread(network_identity.shop_key, settings.data_dir)
        runner = None
        scheduler = None
        preparer: Preparer = app.state.preparer
        bus: EventBus = app.state.events
        bus.start()
        if app.state.job_relay is not None:
            await app.state.job_relay.start()
        host: MachineHost | None = None
        fleet = app.state.fleet
        if isinstance(fleet, RemoteFleet):
            # A web worker: machines are driven by the machine host, reached through NOTIFY.
            await fleet.start()
            app.state.queue_runner = QueueWaker(fleet)
        if settings.run_supervisors:
            # The machine host alone, so two processes never log the same run twice.
            await catch_up_usage(app.state.sessionmaker)
            # Bookings' periodic tasks; a database lease runs them once across processes.
            scheduler = Scheduler(app.state.sessionmaker, settings)
            scheduler.start()
            await app.state.fleet.start(
                app.state.sessionmaker,
                settings.upload_dir,
                unknown_command_policy=settings.unknown_command_policy,
            )
            if settings.auto_dispatch:
                runner = QueueRunner(app.state.sessionmaker, app.state.fleet, settings)
                app.state.queue_runner = runner
                runner.start()
                preparer.on_ready.append(runner.wake)
            await preparer.resume_pending()
            if settings.is_postgresql:
                # Web workers in other processes command these machines through the database.
                host = MachineHost(
                    app.state.fleet,
                    app.state.sessionmaker,
                    libpq_dsn(settings.sync_database_url),
                    on_wake=runner.wake if runner is not None else None,
                )
                await host.start()
        try:
            yield
        finally:
            if host is not None:
                await host.stop()
            if app.state.job_relay is not None:
                await app.state.job_relay.stop()
            if scheduler is not None:
                await scheduler.stop()
            await preparer.stop()
            if runner is not None:
                await runner.stop()
            await app.state.fleet.stop()
            await bus.stop()  # what the last transitions published is delivered first
            await app.state.outbox.stop()  # unsent messages stay due for the next start
            await asyncio.to_thread(shutdown_analysis_pool)
            await asyncio.to_thread(shutdown_check_pool)
            await app.state.engine.dispose()

    app = FastAPI(
        title="microfactory",
        version=__version__,
        description="Operations server for makerspaces and microfactories.",
        lifespan=lifespan,
        # FastAPI's /docs and /redoc pages load their JavaScript from a CDN; the server must
        # work offline, so only the OpenAPI document itself is served.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = make_engine(settings.async_database_url)
    app.state.sessionmaker = make_sessionmaker(app.state.engine)
    app.state.fleet = (
        RemoteFleet(libpq_dsn(settings.sync_database_url))
        if settings.is_postgresql and not settings.run_supervisors
        else Fleet()
    )
    app.state.machine_records = MachineRecords()  # the machine page's job and maintenance
    app.state.probe = connection_probe.probe  # the admin's "Test connection" (runtime/)
    app.state.job_relay = (
        JobEventRelay(libpq_dsn(settings.sync_database_url), app.state.fleet)
        if settings.is_postgresql
        else None
    )
    app.state.outbox = notification_service.Outbox(app.state.sessionmaker, settings)
    app.state.events = _wire_events(
        app.state.sessionmaker, app.state.fleet, app.state.job_relay, app.state.outbox
    )
    # Jobs made from other shops' requests report their progress back (signed updates).
    relay = app.state.job_relay

    def publish_request(request_id: str, member_id: int | None) -> None:  # to every stream
        app.state.fleet.publish_request(request_id, member_id)
        if relay is not None:
            relay.forward_request(request_id, member_id)

    network_request_subscribers.subscribe(
        app.state.events, app.state.sessionmaker, settings, publish_request
    )
    app.state.login_throttle = LoginThrottle.from_settings(settings, app.state.engine)
    app.state.preparer = Preparer(app.state.sessionmaker, settings)
    metrics = Metrics()
    metrics.registry.register(_FleetCollector(app))
    app.state.metrics = metrics

    install_error_handlers(app)
    install_dashboard_handlers(app)

    app.include_router(accounts_router)
    app.include_router(machines_router)
    app.include_router(jobs_router)
    app.include_router(designs_router)
    app.include_router(slicer_profiles_router)
    app.include_router(design_pages_router)
    app.include_router(job_pages_router)
    app.include_router(machine_pages_router)
    app.include_router(dashboard_router)
    for router in admin_routers:  # machines, rates and plans (admins)
        app.include_router(router)
    for router in booking_routers():
        app.include_router(router)
    app.include_router(usage_router)
    app.include_router(usage_pages_router)
    app.include_router(notification_pages_router)
    app.include_router(notification_router)
    app.include_router(costs_router)
    app.include_router(costs_pages_router)
    # The network, shop side (issue 12): keys, profile, capacity report; materials on hand.
    app.include_router(network_router)
    app.include_router(network_pages_router)
    app.include_router(materials_router)
    app.include_router(materials_pages_router)
    app.include_router(hub_router)  # the network: hub side
    app.include_router(hub_pages_router)
    app.include_router(hub_designs_router)  # hubs index public designs by hash (issue 13)
    app.include_router(network_requests_router)  # fabrication requests between shops
    app.include_router(network_request_pages_router)
    app.mount("/static", StaticFiles(directory=resources.web_dir() / "static"), name="static")
    document_errors(app)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        # Browsers ask for it on documents that name no icon (JSON, text): the page's icon.
        return RedirectResponse("/static/favicon.svg", status_code=301)

    @app.get("/healthz", tags=["operations"])
    async def healthz(request: Request) -> JSONResponse:
        """Report liveness and whether the database answers (public)."""
        try:
            async with request.app.state.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:  # the health check reports every failure, whatever it is
            log.warning("health check: database unreachable: %s", exc)
            return JSONResponse({"status": "error", "database": "unreachable"}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok", "version": __version__})

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    async def prometheus_metrics() -> Response:
        """Expose Prometheus metrics (public, like most exporters; holds no personal data)."""
        return Response(generate_latest(metrics.registry), media_type="text/plain; version=0.0.4")

    # Added innermost first. Both gates act when the app first reads the body: the
    # authentication gate (an anonymous body gets 401 unread), then the body limit. Logins
    # from a locked-out address are refused before anything else.
    app.add_middleware(AuthBeforeBody)
    app.add_middleware(
        BodySizeLimit,
        max_body=settings.max_body_bytes,
        max_upload=settings.max_upload_bytes,
        max_photo=settings.max_photo_bytes,
    )
    app.add_middleware(LoginGate)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app


def create_app_from_env() -> FastAPI:
    """Build the app from MICROFACTORY_* settings (uvicorn's factory for `--workers N`)."""
    from microfactory.config import load_settings
    from microfactory.logs import configure_logging

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_json)
    return create_app(settings)
