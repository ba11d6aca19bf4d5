"""The set of services a request handler may call, built once by the composition root."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from iotcloud.config import Settings
from iotcloud.metrics import Metrics
from iotcloud.services.accounts import AccountService
from iotcloud.services.apps import AppService
from iotcloud.services.bindings import BindingService
from iotcloud.services.broker_auth import BrokerAuthService
from iotcloud.services.console import ConsoleService
from iotcloud.services.control import ControlService
from iotcloud.services.devices import DeviceService
from iotcloud.services.password_reset import PasswordResetService
from iotcloud.services.products import ProductService
from iotcloud.services.realtime import RealtimeHub
from iotcloud.services.schedule_admin import ScheduleAdminService
from iotcloud.services.scheduler import SchedulerService
from iotcloud.services.telemetry import TelemetryService
from iotcloud.services.things import ThingService
from iotcloud.services.user_admin import UserAdminService
from iotcloud.services.verification import VerificationService
from iotcloud.storage.database import Database


@dataclass(frozen=True)
class Services:
    settings: Settings
    apps: AppService
    accounts: AccountService
    verification: VerificationService
    password_reset: PasswordResetService
    products: ProductService
    devices: DeviceService
    telemetry: TelemetryService
    bindings: BindingService
    control: ControlService
    realtime: RealtimeHub
    scheduler: SchedulerService
    things: ThingService
    edge_stats: Callable[[], dict[str, Any]]
    """The device edge's counters: broker, gateway and ingest queues (``GET /admin/v1/stats``)."""
    metrics: Metrics
    """This process's Prometheus metrics (``GET /metrics``)."""
    database: Database
    broker_unready: Callable[[], str | None]
    """None while the MQTT broker carries messages; else why not (``GET /readyz``)."""
    broker_auth: BrokerAuthService
    """Answers an external broker's questions about devices (``/broker/...``)."""
    user_admin: UserAdminService
    """The operator's view of app users (search, disable, sign out everywhere)."""
    schedule_admin: ScheduleAdminService
    """The operator's view of every user's schedules and their runs."""
    console: ConsoleService
    """What only the web console needs: its sessions, overview figures and device pages."""
