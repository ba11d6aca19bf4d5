"""Composition root: builds the components for a role and owns their lifecycles."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from typing import Any, cast

import httpx
from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import (
    HTTPScope,
    LifeSpanReceive,
    LifeSpanScope,
    LifeSpanSend,
    Message,
    Receive,
    Scope,
    Send,
)
from prometheus_client.core import Metric

from iotcloud import runtime
from iotcloud.api import broker_auth as broker_auth_routes
from iotcloud.api import console, openapi, ops
from iotcloud.api.admin.routes import ROUTER as ADMIN_ROUTER
from iotcloud.api.errors import EXCEPTION_HANDLERS
from iotcloud.api.gizwits import accounts as gizwits_accounts
from iotcloud.api.gizwits import app_devices, devdata, reset_page, system
from iotcloud.api.gizwits import bindings as gizwits_bindings
from iotcloud.api.gizwits import control as gizwits_control
from iotcloud.api.gizwits import devices as gizwits_devices
from iotcloud.api.gizwits import products as gizwits_products
from iotcloud.api.gizwits import scheduler as gizwits_scheduler
from iotcloud.api.gizwits import ws as gizwits_ws
from iotcloud.api.tencent import ROUTER as TENCENT_ROUTER
from iotcloud.api.tencent import with_tencent_errors
from iotcloud.api.throttle import Throttle
from iotcloud.config import ConfigError, Settings
from iotcloud.domain.clock import Clock, SystemClock
from iotcloud.gateway.broker import BrokerAdapter
from iotcloud.gateway.embedded import EmbeddedBroker
from iotcloud.gateway.external import BrokerTarget, CredentialMode, ExternalBroker
from iotcloud.gateway.rabbitmq import ManagementTarget, RabbitBroker
from iotcloud.gateway.service import DeviceGateway
from iotcloud.metrics import (
    UNMATCHED_ROUTE,
    Metrics,
    counter,
    gauge,
    labelled_counter,
    labelled_gauge,
)
from iotcloud.notify.captcha import CaptchaRenderer
from iotcloud.notify.mail import Mailer, OutboxMailer, SmtpMailer, SmtpTarget
from iotcloud.notify.oauth import ThirdPartyVerifier, parse_providers
from iotcloud.notify.sms import OutboxSmsSender, SmsSender, WebhookSmsSender
from iotcloud.scheduler.engine import EngineConfig, SchedulerEngine
from iotcloud.scheduler.store import AttemptResult, ClaimedAttempt
from iotcloud.services.accounts import AccountService, CurrentUser, TokensRevoked
from iotcloud.services.apps import AppService
from iotcloud.services.auth_cache import AuthCache
from iotcloud.services.bindings import BindingChange, BindingService
from iotcloud.services.broker_auth import BrokerAuthService, parse_networks
from iotcloud.services.bus import ProcessBus
from iotcloud.services.console import ConsoleService
from iotcloud.services.control import ControlService
from iotcloud.services.credentials import PasswordHasher
from iotcloud.services.devices import DeviceService
from iotcloud.services.password_reset import PasswordResetService
from iotcloud.services.products import ProductService
from iotcloud.services.realtime import RealtimeHub
from iotcloud.services.registry import Services
from iotcloud.services.schedule_admin import ScheduleAdminService
from iotcloud.services.scheduler import SchedulerService
from iotcloud.services.telemetry import TelemetryService
from iotcloud.services.things import ThingService
from iotcloud.services.user_admin import UserAdminService
from iotcloud.services.verification import VerificationService
from iotcloud.storage.accounts import (
    AppTokenRepository,
    CodeRepository,
    NonceRepository,
    UserTokenRepository,
)
from iotcloud.storage.database import Database
from iotcloud.storage.rate_limits import RateLimitRepository
from iotcloud.storage.telemetry import TelemetryRepository

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL = 600.0
MAX_BODY_BYTES = 256 * 1024


def build_mailer(settings: Settings) -> Mailer:
    if settings.smtp_url:
        try:
            target = SmtpTarget.parse(settings.smtp_url)
        except ValueError as exc:
            raise ConfigError(f"IOTCLOUD_SMTP_URL: {exc}") from exc
        return SmtpMailer(target, settings.mail_from)
    return OutboxMailer(settings.outbox_dir / "mail", settings.mail_from)


def build_sms(settings: Settings, http: httpx.AsyncClient) -> SmsSender:
    if settings.sms_webhook_url:
        return WebhookSmsSender(settings.sms_webhook_url, http)
    return OutboxSmsSender(settings.outbox_dir / "sms.jsonl")


def build_broker(settings: Settings, gateway: DeviceGateway) -> BrokerAdapter:
    """The embedded broker (also serving MQTT over TLS when TLS is set), or the adapter for the
    external one at ``IOTCLOUD_MQTT_URL``."""
    if not settings.mqtt_url:
        return EmbeddedBroker(
            settings.http_host,
            settings.mqtt_port,
            gateway,
            gateway,
            tls=settings.tls_context(),
            tls_port=settings.mqtts_port,
            max_connections=settings.mqtt_max_connections,
            backlog=lambda: gateway.backlog,
        )
    try:
        target = BrokerTarget.parse(settings.mqtt_url)
    except ValueError as exc:
        raise ConfigError(f"IOTCLOUD_MQTT_URL: {exc}") from exc
    if settings.mqtt_broker == "rabbitmq":
        try:
            management = ManagementTarget.parse(settings.rabbitmq_management_url)
        except ValueError as exc:
            raise ConfigError(f"IOTCLOUD_RABBITMQ_MANAGEMENT_URL: {exc}") from exc
        return RabbitBroker(
            target,
            settings.amqp_url,
            management,
            gateway,
            prefetch=settings.rabbitmq_prefetch,
        )
    mode: CredentialMode = "none" if settings.mqtt_credentials == "none" else "dynsec"
    return ExternalBroker(
        target, gateway, gateway, credentials=mode, sync_interval=settings.mqtt_sync_seconds
    )


def edge_stats(broker: BrokerAdapter, gateway: DeviceGateway) -> dict[str, Any]:
    """The device edge's counters since start (monotonic) and its queues now."""
    connections = getattr(broker, "connection_count", None)
    return {
        "broker": {
            **dataclasses.asdict(broker.stats),
            "connections": connections if connections is not None else len(broker.connected_dids()),
            "online": len(broker.connected_dids()),
        },
        "gateway": dataclasses.asdict(gateway.stats),
        "ingest": {
            "reports": {**dataclasses.asdict(gateway.reports.stats), "backlog": gateway.backlog},
            "presence": dataclasses.asdict(gateway.presence.stats),
        },
        # collector pauses since serve() tuned the collector (empty before, or in tests)
        "gc": runtime.pauses.snapshot() if runtime.pauses.installed else {},
    }


def build_metrics(
    broker: BrokerAdapter,
    gateway: DeviceGateway,
    engine: SchedulerEngine,
    clock: Clock,
    auth_cache: AuthCache[CurrentUser],
) -> Metrics:
    """This process's metrics: the measured ones, and the components' own counters read at
    scrape time (see `iotcloud.metrics`)."""
    metrics = Metrics()

    def edge() -> Iterator[Metric]:
        stats = broker.stats
        yield gauge(
            "iotcloud_devices_connected",
            "Device sessions this process's broker connection knows of now.",
            len(broker.connected_dids()),
        )
        yield counter(
            "iotcloud_device_reports",
            "Device reports (Gizwits 0x0091 and data-template property reports) taken in.",
            gateway.stats.reports,
        )
        yield counter(
            "iotcloud_device_reports_shed",
            "Device messages dropped at the edge because ingestion was too far behind, and "
            "reports the ingest queue dropped.",
            stats.shed + gateway.reports.stats.dropped,
        )
        yield counter("iotcloud_broker_connects", "Device sessions started.", stats.connects)
        yield counter(
            "iotcloud_broker_auth_failures", "Device CONNECTs refused.", stats.auth_failures
        )
        yield labelled_counter(
            "iotcloud_device_acl_denials",
            "Device publishes and subscriptions the ACL refused.",
            "action",
            [("publish", stats.denied_publish), ("subscribe", stats.denied_subscribe)],
        )
        yield labelled_gauge(
            "iotcloud_queue_depth",
            "Items waiting in this process's queues.",
            "queue",
            [
                ("reports", gateway.backlog),
                ("presence", gateway.presence.backlog),
            ],
        )
        yield labelled_counter(
            "iotcloud_commands",
            "Commands sent to devices, by outcome.",
            "result",
            sorted(gateway.command_results.items()),
        )

    def scheduler() -> Iterator[Metric]:
        totals = engine.totals
        yield labelled_counter(
            "iotcloud_schedule_runs",
            "Scheduled runs and attempts this process recorded, by result (succeed and "
            "failed: runs finished; retry: attempts to be retried; missed: occurrences past "
            "the grace window; given_up: runs finished without an attempt).",
            "result",
            [
                ("succeed", totals.succeeded),
                ("failed", totals.failed),
                ("retry", totals.will_retry),
                ("missed", totals.missed),
                ("given_up", totals.given_up + totals.exhausted),
            ],
        )

    def caches() -> Iterator[Metric]:
        yield labelled_counter(
            "iotcloud_cache_requests",
            "Lookups in this process's caches of checked user tokens, by result.",
            "result",
            [("hit", auth_cache.hits), ("miss", auth_cache.misses)],
        )

    for source in (edge, scheduler, caches):
        metrics.sources.add(source)

    def lateness(attempt: ClaimedAttempt, result: AttemptResult) -> None:
        if result.stored and len(attempt.attempts) == 1:
            late = (clock.now() - attempt.scheduled_at).total_seconds()
            metrics.schedule_lateness.observe(max(0.0, late))

    engine.add_listener(lateness)
    return metrics


@asynccontextmanager
async def running_services(
    settings: Settings, clock: Clock | None = None, *, migrate: bool = True
) -> AsyncIterator[Services]:
    """Enter every component on one exit stack and yield the services built on them."""
    clock = clock or SystemClock()
    try:
        providers = parse_providers(settings.auth_providers)
    except ValueError as exc:
        raise ConfigError(f"IOTCLOUD_AUTH_PROVIDERS: {exc}") from exc
    async with AsyncExitStack() as stack:
        db = await stack.enter_async_context(Database(settings.resolved_database_url))
        if migrate:
            await db.migrate()
        http = await stack.enter_async_context(
            httpx.AsyncClient(timeout=settings.auth_provider_timeout, follow_redirects=False)
        )
        mailer = build_mailer(settings)
        hasher = PasswordHasher(
            settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_parallelism
        )
        apps = AppService(db, clock)
        verification = VerificationService(
            db, apps, clock, settings, build_sms(settings, http), CaptchaRenderer(), mailer
        )
        auth_cache: AuthCache[CurrentUser] = AuthCache(settings.auth_cache_seconds)
        accounts = AccountService(
            db,
            clock,
            settings,
            hasher,
            verification,
            ThirdPartyVerifier(providers, http),
            mailer,
            auth_cache,
        )
        resets = PasswordResetService(
            db,
            clock,
            settings,
            hasher,
            verification,
            mailer,
            lambda user_id: accounts.tokens_revoked(
                TokensRevoked(user_id, "the password was reset")
            ),
        )
        gateway = await stack.enter_async_context(
            DeviceGateway(
                db,
                clock,
                keep_history=settings.history_retention_days > 0,
                consumer="gateway" in settings.roles,
            )
        )
        broker = await stack.enter_async_context(build_broker(settings, gateway))
        gateway.attach(broker)
        telemetry = TelemetryService(db, clock, settings)
        bindings = BindingService(db, clock)
        products = ProductService(db, clock)
        # passed binding checks are kept as long as checked tokens, and dropped on any change
        control = ControlService(
            bindings,
            telemetry,
            gateway,
            products,
            usable_cache_seconds=settings.auth_cache_seconds,
        )
        # open WebSocket sessions hear of other processes' sign-outs as late as this process's
        # auth cache does (with no caching: within a second)
        realtime = await stack.enter_async_context(
            RealtimeHub(
                gateway,
                bindings,
                clock=clock,
                token_expiries=accounts.token_expiries,
                token_check_seconds=settings.auth_cache_seconds or 1.0,
            )
        )
        # changes made here are applied here and announced to the other processes, which apply
        # them on receipt (see `iotcloud.services.bus`)
        bus = ProcessBus()
        if isinstance(broker, ExternalBroker | RabbitBroker):
            bus.attach(broker.publish_bus)
            broker.bus_receiver = bus.received
        stack.push_async_callback(bus.close)

        def tokens_revoked(revoked: TokensRevoked) -> None:
            realtime.tokens_revoked(revoked)
            bus.announce("tokens_revoked", **dataclasses.asdict(revoked))

        def tokens_revoked_elsewhere(message: Mapping[str, Any]) -> None:
            revoked = TokensRevoked(
                int(message["user_id"]),
                str(message["reason"]),
                message.get("digest"),
                message.get("kept"),
            )
            if revoked.digest is not None:
                auth_cache.drop_token(revoked.digest)
            else:
                auth_cache.drop_user(revoked.user_id)
            realtime.tokens_revoked(revoked)

        accounts.on_tokens_revoked = tokens_revoked
        bus.on("tokens_revoked", tokens_revoked_elsewhere)
        accounts.on_user_changed = lambda user_id: bus.announce("user_changed", user_id=user_id)
        bus.on("user_changed", lambda message: auth_cache.drop_user(int(message["user_id"])))

        # answers to an external broker's device questions; never trusted longer than a checked
        # user token, the bound within which other processes' device changes must apply
        broker_auth = await stack.enter_async_context(
            BrokerAuthService(
                gateway,
                gateway,
                clock,
                cache_seconds=min(settings.broker_auth_cache_seconds, settings.auth_cache_seconds),
                allowed_from=parse_networks(settings.broker_auth_from),
            )
        )

        async def devices_changed(dids: Sequence[str] | None) -> None:
            control.devices_changed(dids)
            broker_auth.devices_changed(dids)
            gateway.forget_devices(dids)
            bus.announce("devices_changed", dids=None if dids is None else list(dids))
            async for page in gateway.credentials(dids):
                await broker.devices_changed(page)

        def devices_changed_elsewhere(message: Mapping[str, Any]) -> None:
            dids = message["dids"]
            changed = None if dids is None else [str(did) for did in dids]
            control.devices_changed(changed)
            broker_auth.devices_changed(changed)
            gateway.forget_devices(changed)

        bus.on("devices_changed", devices_changed_elsewhere)

        async def binding_changed(change: BindingChange) -> None:
            control.binding_changed(change)
            await realtime.binding_changed(change)
            bus.announce("binding_changed", **dataclasses.asdict(change))

        async def binding_changed_elsewhere(message: Mapping[str, Any]) -> None:
            change = BindingChange(
                int(message["user_id"]),
                str(message["uid"]),
                int(message["app_id"]),
                str(message["did"]),
                bool(message["bound"]),
            )
            control.binding_changed(change)
            await realtime.binding_changed(change)

        bindings.on_change = binding_changed
        bus.on("binding_changed", binding_changed_elsewhere)

        async def new_owner(did: str, ended: Sequence[BindingChange]) -> None:
            # the session that signed in with the old passcode must not hear the new owner
            await broker.disconnect_device(did)
            for change in ended:
                await binding_changed(change)

        engine = await stack.enter_async_context(
            SchedulerEngine(db, clock, control, EngineConfig.from_settings(settings))
        )
        device_service = DeviceService(db, clock, settings, devices_changed, new_owner)
        services = Services(
            settings=settings,
            apps=apps,
            accounts=accounts,
            verification=verification,
            password_reset=resets,
            products=products,
            devices=device_service,
            telemetry=telemetry,
            bindings=bindings,
            control=control,
            realtime=realtime,
            scheduler=SchedulerService(db, clock, bindings, control, engine),
            things=ThingService(db, clock, bindings, products),
            edge_stats=lambda: edge_stats(broker, gateway),
            metrics=build_metrics(broker, gateway, engine, clock, auth_cache),
            database=db,
            broker_unready=broker.unready_reason,
            broker_auth=broker_auth,
            user_admin=UserAdminService(db, clock, accounts.tokens_revoked),
            schedule_admin=ScheduleAdminService(db, clock),
            console=ConsoleService(
                db, clock, settings, products, device_service, telemetry, control
            ),
        )
        services.metrics.sources.add(broker_auth.metrics)
        async with asyncio.TaskGroup() as tasks:
            housekeeping = tasks.create_task(
                _housekeeping(db, clock, settings), name="housekeeping"
            )
            scheduling = None
            if settings.scheduler_enabled and "scheduler" in settings.roles:
                scheduling = tasks.create_task(engine.run(), name="scheduler")
            try:
                yield services
            finally:
                housekeeping.cancel()
                if scheduling is not None:
                    scheduling.cancel()


async def _housekeeping(db: Database, clock: Clock, settings: Settings) -> None:
    """Drop expired tokens, captchas, codes and reset links, and telemetry past its retention,
    every few minutes."""
    failing = False
    while True:
        try:
            async with db.session() as session:
                now = clock.now()
                removed = (
                    await UserTokenRepository(session).purge_expired(now)
                    + await AppTokenRepository(session).purge_expired(now)
                    + await CodeRepository(session).purge_expired(now)
                    # a nonce is kept while its Timestamp could still be accepted: at most
                    # the window after it was used, plus the window it may lie ahead
                    + await NonceRepository(session).purge_before(
                        now - timedelta(seconds=2 * settings.tencent_signature_window)
                    )
                    + await TelemetryRepository(session).purge_before(
                        now - timedelta(days=settings.history_retention_days),
                        now - timedelta(days=settings.frame_log_retention_days),
                    )
                    + await RateLimitRepository(session).purge_full()
                )
            if failing:
                log.info("housekeeping recovered")
                failing = False
            if removed:
                log.debug("housekeeping removed %d expired rows", removed)
        except Exception:  # keep the loop alive; log the failure once, and its recovery once
            if not failing:
                log.exception("housekeeping failed; will retry")
                failing = True
        await asyncio.sleep(HOUSEKEEPING_INTERVAL)


class MeasuredApp(Litestar):
    """Litestar with every HTTP request counted and timed in the process's metrics
    (``iotcloud_http_requests_total``, ``iotcloud_http_request_duration_seconds``): here, around
    the whole application, so that requests no route matched and those a middleware answered
    (throttled, too large) are counted too."""

    async def __call__(
        self,
        scope: Scope | LifeSpanScope,
        receive: Receive | LifeSpanReceive,
        send: Send | LifeSpanSend,
    ) -> None:
        services = self.state.get("services") if scope["type"] == ScopeType.HTTP else None
        if services is None:
            await super().__call__(scope, receive, send)
            return
        http_send = cast(Send, send)
        started = time.perf_counter()
        status = 500  # unless a response starts

        async def measured(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await http_send(message)

        try:
            await super().__call__(scope, receive, measured)
        finally:
            route = cast(str | None, scope.get("path_template")) or UNMATCHED_ROUTE
            method = cast(HTTPScope, scope)["method"]
            metrics = services.metrics
            metrics.http_requests.labels(route, method, str(status)).inc()
            metrics.http_duration.labels(route, method).observe(time.perf_counter() - started)


def create_app(settings: Settings, clock: Clock | None = None) -> Litestar:
    """The ASGI application of this process's roles (``IOTCLOUD_ROLE``): every role serves
    ``/healthz``, ``/readyz`` and ``/metrics``, the ``api`` role everything else; components
    start with its lifespan."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with running_services(settings, clock) as services:
            app.state.services = services
            log.info(
                "iotcloud ready on %s (roles: %s)",
                settings.base_url,
                ", ".join(sorted(settings.roles)),
            )
            yield
        log.info("iotcloud stopped")

    throttle = Throttle.from_settings(settings)
    api_routes: list[Any] = [
        *broker_auth_routes.ROUTES,
        *system.ROUTES,
        *gizwits_accounts.ROUTES,
        *gizwits_devices.ROUTES,
        *gizwits_products.ROUTES,
        *devdata.ROUTES,
        *app_devices.ROUTES,
        *gizwits_bindings.ROUTES,
        *gizwits_control.ROUTES,
        *gizwits_scheduler.ROUTES,
        *gizwits_ws.ROUTES,
        *reset_page.ROUTES,
        ADMIN_ROUTER,
        TENCENT_ROUTER,
        *openapi.ROUTES,
        *console.ROUTES,
    ]
    return MeasuredApp(
        route_handlers=[*ops.ROUTES, *(api_routes if "api" in settings.roles else [])],
        exception_handlers=with_tencent_errors(EXCEPTION_HANDLERS),
        middleware=[throttle.middleware()],
        lifespan=[lifespan, throttle.lifespan],  # the throttle's store after the migration
        openapi_config=None,
        request_max_body_size=MAX_BODY_BYTES,
        logging_config=None,
    )
