"""The ``iotcloud`` command: serve, migrate, and operator commands acting on the same database."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import logging
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from iotcloud.api.admin.views import (
    device_credentials_view,
    device_view,
    named_device_credentials_view,
    product_credentials_view,
    product_view,
)
from iotcloud.config import ConfigError, Settings
from iotcloud.domain.clock import SystemClock, iso_utc
from iotcloud.domain.registration import POLICIES
from iotcloud.errors import DeviceNotFound, FormInvalid, IotCloudError
from iotcloud.logs import JsonLogFormatter
from iotcloud.services.apps import App, AppService
from iotcloud.services.device_tail import DeviceTail, TailEvent, tail_event_view
from iotcloud.services.devices import DeviceService, ImportReport, read_device_csv
from iotcloud.services.products import ProductService
from iotcloud.services.schedule_admin import (
    AttemptView,
    ScheduleAdminService,
    run_view,
    schedule_detail_view,
    schedule_summary_view,
)
from iotcloud.services.user_admin import (
    UserAdminService,
    UserSummary,
    user_detail_view,
    user_summary_view,
)
from iotcloud.simulator import (
    Fleet,
    FleetConfig,
    SimulatorError,
    fetch_datapoints,
    load_datapoints,
    normalise_mac_prefix,
)
from iotcloud.storage.database import Database

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

_SETTING_OPTIONS: list[tuple[str, type, str]] = [
    ("http-port", int, "HTTP port (IOTCLOUD_HTTP_PORT, default 8080)"),
    ("mqtt-port", int, "MQTT port (IOTCLOUD_MQTT_PORT, default 1883)"),
    ("data-dir", str, "data directory (IOTCLOUD_DATA_DIR, default ./data)"),
    ("database-url", str, "database URL (IOTCLOUD_DATABASE_URL, default SQLite in the data dir)"),
    ("mqtt-url", str, "external broker URL (IOTCLOUD_MQTT_URL, default embedded broker)"),
    ("public-host", str, "host name handed to apps and devices (IOTCLOUD_PUBLIC_HOST)"),
    ("timezone", str, "default time zone (IOTCLOUD_TIMEZONE, default UTC)"),
    ("env", str, "production or development (IOTCLOUD_ENV)"),
]


def settings_options(func: F) -> F:
    """Add the shared settings flags; they override the IOTCLOUD_* environment."""
    for flag, kind, text in reversed(_SETTING_OPTIONS):
        func = click.option(f"--{flag}", type=kind, default=None, help=text)(func)
    return func


def load_settings(options: dict[str, Any]) -> Settings:
    overrides = {
        flag.replace("-", "_"): options.pop(flag.replace("-", "_"), None)
        for flag, _, _ in _SETTING_OPTIONS
    }
    roles = options.pop("role", None)
    if roles:  # --role api --role gateway, or --role api,gateway
        overrides["role"] = ",".join(roles)
    try:
        return Settings.load(**overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except (IotCloudError, ConfigError) as exc:
        detail = getattr(exc, "detail", None) or str(exc)
        raise click.ClickException(detail) from exc


def configure_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])


@click.group()
@click.version_option(package_name="iotcloud")
def main() -> None:
    """iotcloud: a self-hostable IoT device cloud (Gizwits and Tencent IoT Explorer compatible)."""


def _graceful_server_class() -> type[Any]:
    import uvicorn
    from uvicorn.lifespan.off import LifespanOff

    class GracefulServer(uvicorn.Server):
        """SIGTERM/SIGINT finish in-flight requests, stop the components, then exit 0.

        ``followers`` (each a server and its bound sockets) serve the same app on more listeners
        with their lifespan off: they start once this server's lifespan has started the
        components, a signal to this server stops them too, every listener drains at once, and
        the components stop after the last one has. ``failed`` tells a follower that did not
        start.
        """

        def __init__(
            self,
            config: uvicorn.Config,
            followers: Sequence[tuple[GracefulServer, list[socket.socket]]] = (),
        ) -> None:
            super().__init__(config)
            self.followers = list(followers)
            self.leads = True
            self.failed = False
            self.listening = asyncio.Event()
            self._follower_tasks: list[asyncio.Task[None]] = []
            for follower, _ in self.followers:
                follower.leads = False

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if not self.leads:  # the leading server's handler stops this one
                yield
                return
            previous = {
                sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
            }
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            for follower, _ in self.followers:
                follower.handle_exit(sig, frame)

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                self.listening.set()
            for follower, bound in self.followers:
                task = asyncio.create_task(follower.serve(bound), name="uvicorn listener")
                self._follower_tasks.append(task)
                listening = asyncio.create_task(follower.listening.wait())
                await asyncio.wait({task, listening}, return_when=asyncio.FIRST_COMPLETED)
                listening.cancel()
                if not follower.started:
                    self.failed = self.should_exit = True
                    return

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            for follower, _ in self.followers:
                follower.should_exit = True
            # drain every listener at once, then stop the components once
            lifespan, self.lifespan = self.lifespan, LifespanOff(self.config)
            ended = await asyncio.gather(
                super().shutdown(sockets), *self._follower_tasks, return_exceptions=True
            )
            for result in ended:
                if isinstance(result, BaseException):
                    self.failed = True
                    logging.getLogger(__name__).error(
                        "a listener failed to shut down", exc_info=result
                    )
            if not self.force_exit:
                await lifespan.shutdown()

    return GracefulServer


def _uvicorn_config(app: Any, settings: Settings, *, tls: bool) -> Any:
    """The uvicorn settings of one listener of ``app``: plain HTTP on ``http_port``, whose server
    runs the app's lifespan, or with ``tls`` HTTPS and WSS on ``https_port`` (lifespan off: the
    same app, already started). Both come from here so that they cannot drift apart."""
    import uvicorn

    from iotcloud.api.http_limits import http_protocol_class
    from iotcloud.api.ws_transport import SOCKET_MAX_BYTES, WebSocketTransport

    context = settings.tls_context() if tls else None
    return uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.https_port if tls else settings.http_port,
        loop="uvloop",
        http=http_protocol_class(settings),
        ws=WebSocketTransport,
        ws_max_size=SOCKET_MAX_BYTES,
        lifespan="off" if tls else "on",
        log_config=None,
        access_log=False,
        server_header=False,
        # the client's address is read by iotcloud.api.client_address (IOTCLOUD_TRUSTED_PROXIES),
        # not by uvicorn, which would believe X-Forwarded-For from any loopback peer
        proxy_headers=False,
        timeout_graceful_shutdown=10,
        ssl_context_factory=None if context is None else (lambda _config, _default: context),
    )


def _listen(host: str, port: int, setting: str) -> socket.socket:
    """A listening TCP socket on ``host:port``; a port in use is an error naming ``setting``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise click.ClickException(
            f"{setting}: cannot listen on {host}:{port} ({exc.strerror or exc})"
        ) from exc


@main.command()
@settings_options
@click.option(
    "--role",
    multiple=True,
    help="api, gateway or scheduler; repeat or comma-separate (IOTCLOUD_ROLE, default all three)",
)
def serve(**options: Any) -> None:
    """Run the server (embedded mode: SQLite, in-process services; migrates the database).

    With ``IOTCLOUD_TLS_CERT`` and ``IOTCLOUD_TLS_KEY`` it also serves HTTPS and WSS on
    ``IOTCLOUD_HTTPS_PORT`` (the same app) and MQTT over TLS on ``IOTCLOUD_MQTTS_PORT``."""
    settings = load_settings(options)
    configure_logging(settings.log_level, settings.log_format)
    # bound before anything starts: a port in use stops the server before its components
    bound = (
        _listen(settings.http_host, settings.https_port, "IOTCLOUD_HTTPS_PORT")
        if settings.tls_enabled
        else None
    )
    from iotcloud.app import create_app  # after the checks: a bad setting is reported at once

    app = create_app(settings)
    server_class = _graceful_server_class()
    followers: list[tuple[Any, list[socket.socket]]] = []
    if bound is not None:
        followers.append((server_class(_uvicorn_config(app, settings, tls=True)), [bound]))
        logging.getLogger(__name__).info(
            "HTTPS and WSS on %s:%d", settings.http_host, bound.getsockname()[1]
        )
    server = server_class(_uvicorn_config(app, settings, tls=False), followers)
    from iotcloud.runtime import tune_gc  # the application is built: freeze it, then serve

    tune_gc()
    server.run()
    if not server.started or server.failed:
        sys.exit(1)


@main.command()
@settings_options
def migrate(**options: Any) -> None:
    """Create or upgrade the database schema."""
    settings = load_settings(options)
    configure_logging(settings.log_level, settings.log_format)

    async def go() -> None:
        async with Database(settings.resolved_database_url) as db:
            await db.migrate()

    run(go())


@main.group("app")
def app_group() -> None:
    """Manage applications (appid / appsecret)."""


def with_apps(settings: Settings, action: Callable[[AppService], Awaitable[T]]) -> T:
    async def go() -> T:
        async with Database(settings.resolved_database_url) as db:
            await db.migrate()
            return await action(AppService(db, SystemClock()))

    return run(go())


def _emit(as_json: bool, payload: Any, table: Table | None = None) -> None:
    if as_json:
        click.echo(json.dumps(payload, ensure_ascii=False))
    elif table is not None:
        Console().print(table)
    else:
        for key, value in payload.items():
            click.echo(f"{key}: {value}")


@app_group.command("create")
@click.option("--name", required=True, help="display name of the app")
@click.option("--appid", default=None, help="keep an existing appid (default: generated)")
@click.option("--appsecret", default=None, help="keep an existing appsecret (default: generated)")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@settings_options
def app_create(
    name: str, appid: str | None, appsecret: str | None, as_json: bool, **options: Any
) -> None:
    """Create an app and print its appid and appsecret."""
    settings = load_settings(options)
    creds = with_apps(settings, lambda apps: apps.create(name, appid, appsecret))
    _emit(as_json, {"appid": creds.appid, "appsecret": creds.appsecret})


def _app_dict(app: App) -> dict[str, Any]:
    return {"appid": app.appid, "name": app.name, "created_at": app.created_at.isoformat()}


@app_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@settings_options
def app_list(as_json: bool, **options: Any) -> None:
    """List apps."""
    settings = load_settings(options)
    apps = with_apps(settings, lambda svc: svc.list())
    table = Table("appid", "name", "created")
    for app in apps:
        table.add_row(app.appid, app.name, app.created_at.isoformat(timespec="seconds"))
    _emit(as_json, [_app_dict(app) for app in apps], table)


@app_group.command("show")
@click.argument("appid")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@settings_options
def app_show(appid: str, as_json: bool, **options: Any) -> None:
    """Show one app, including its secret."""
    settings = load_settings(options)

    async def show(svc: AppService) -> dict[str, Any]:
        app = await svc.get(appid)
        return {**_app_dict(app), "appsecret": await svc.secret(app)}

    _emit(as_json, with_apps(settings, show))


@app_group.command("rotate-secret")
@click.argument("appid")
@click.option("--appsecret", default=None, help="the new secret (default: generated)")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@settings_options
def app_rotate(appid: str, appsecret: str | None, as_json: bool, **options: Any) -> None:
    """Replace an app's secret; the old one stops working at once."""
    settings = load_settings(options)
    creds = with_apps(settings, lambda svc: svc.rotate_secret(appid, appsecret))
    _emit(as_json, {"appid": creds.appid, "appsecret": creds.appsecret})


# -- products and devices ------------------------------------------------------------------------


def with_catalog(
    settings: Settings, action: Callable[[ProductService, DeviceService], Awaitable[T]]
) -> T:
    """Run ``action`` with the product and device services on the configured database."""

    async def go() -> T:
        async with Database(settings.resolved_database_url) as db:
            await db.migrate()
            clock = SystemClock()
            return await action(ProductService(db, clock), DeviceService(db, clock, settings))

    return run(go())


@main.group("product")
def product_group() -> None:
    """Manage products (Gizwits datapoint definitions, Tencent data templates)."""


@product_group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--product-secret", default=None, help="keep an existing product_secret (default: generated)"
)
@click.option("--replace", is_flag=True, help="swap the data points of an existing product_key")
@click.option(
    "--registration",
    type=click.Choice(POLICIES),
    default=None,
    help="how its devices may register themselves (default: open; a replaced product keeps its "
    "own)",
)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@settings_options
def product_import(
    file: Path,
    product_secret: str | None,
    replace: bool,
    registration: str | None,
    as_json: bool,
    **options: Any,
) -> None:
    """Import a Gizwits datapoint JSON file or a Tencent data template; print its product_key
    and product_secret.

    The file's own product_key is kept (else one is generated); a data template's product_key
    is its profile.ProductId. An invalid file is refused with the attr (or JSON path) at fault
    named, and nothing is stored.

    --registration: open (devices register themselves with POST /dev/devices; a new passcode
    for a known MAC ends its bindings), signed (only the AES-encrypted registration, keyed with
    the product secret), preprovisioned (only devices created with `device create`/`import`,
    with their own passcode).
    """
    settings = load_settings(options)
    try:
        data = json.loads(file.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise click.ClickException(f"{file}: not a JSON file ({exc})") from exc
    if not isinstance(data, dict):
        raise click.ClickException(f"{file}: must hold a JSON object")
    creds = with_catalog(
        settings,
        lambda products, _: products.import_definition(
            data, product_secret, replace, registration=registration
        ),
    )
    _emit(as_json, product_credentials_view(creds))


@product_group.command("update")
@click.argument("product_key")
@click.option(
    "--registration",
    type=click.Choice(POLICIES),
    required=True,
    help="how its devices may register themselves",
)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@settings_options
def product_update(product_key: str, registration: str, as_json: bool, **options: Any) -> None:
    """Change a product's registration policy (devices keep their dids and passcodes)."""
    settings = load_settings(options)
    product = with_catalog(
        settings, lambda products, _: products.set_registration(product_key, registration)
    )
    _emit(as_json, product_view(product))


@product_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@settings_options
def product_list(as_json: bool, **options: Any) -> None:
    """List products."""
    settings = load_settings(options)
    products = with_catalog(settings, lambda svc, _: svc.list())
    table = Table()
    table.add_column("product_key", no_wrap=True, min_width=32)
    for heading in ("name", "protocol", "registration", "updated"):
        table.add_column(heading)
    for product in products:
        table.add_row(
            product.product_key,
            product.name,
            product.protocol_type,
            product.registration,
            product.updated_at.strftime("%Y-%m-%d %H:%M"),
        )
    _emit(as_json, [product_view(product) for product in products], table)


@product_group.command("show")
@click.argument("product_key")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@settings_options
def product_show(product_key: str, as_json: bool, **options: Any) -> None:
    """Show one product: its secret and its data points."""
    settings = load_settings(options)

    async def show(products: ProductService, _: DeviceService) -> dict[str, Any]:
        product = await products.get(product_key)
        if product.is_data_template:
            return product_view(product, template=await products.template(product_key))
        return product_view(product, await products.definition(product.product_key))

    view = with_catalog(settings, show)
    if as_json:
        _emit(True, view)
        return
    lists = ("attrs", "properties", "events", "actions")
    _emit(False, {key: value for key, value in view.items() if key not in lists})
    if "properties" in view:
        table = Table("property", "name", "type", "mode")
        for prop in view["properties"]:
            table.add_row(prop["id"], prop["name"], prop["type"], prop["mode"])
        for event in view["events"]:
            table.add_row(event["id"], event["name"], f"event ({event['type']})", "")
        for action in view["actions"]:
            table.add_row(action["id"], action["name"], "action", "")
        Console().print(table)
        return
    table = Table("id", "name", "display name", "type", "data type")
    for attr in view["attrs"]:
        table.add_row(
            str(attr["id"]), attr["name"], attr["display_name"], attr["type"], attr["data_type"]
        )
    Console().print(table)


@main.group("device")
def device_group() -> None:
    """Manage devices (did / passcode)."""


@device_group.command("create")
@click.option("--product-key", required=True, help="the product the device belongs to")
@click.option(
    "--mac", default=None, help="Gizwits product: aa:bb:cc:dd:ee:ff, aa-bb-... or aabbccddeeff"
)
@click.option("--name", default=None, help="data-template product: the DeviceName")
@click.option("--psk", default=None, help="data-template product: a base64 key (default: new)")
@click.option("--passcode", default=None, help="keep an existing passcode (default: generated)")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@settings_options
def device_create(
    product_key: str,
    mac: str | None,
    name: str | None,
    psk: str | None,
    passcode: str | None,
    as_json: bool,
    **options: Any,
) -> None:
    """Create a device: by --mac for a Gizwits product (prints did, passcode and MAC), by --name
    for a data-template product (prints did, device_name and psk). An existing MAC or name
    prints the same device."""
    if (mac is None) == (name is None):
        raise click.UsageError("give exactly one of --mac (Gizwits) or --name (data template)")
    if psk is not None and name is None:
        raise click.UsageError("--psk goes with --name: only a data-template device has a psk")
    settings = load_settings(options)
    if name is not None:
        named = with_catalog(
            settings, lambda _, devices: devices.create_named(product_key, name, psk, passcode)
        )
        _emit(as_json, named_device_credentials_view(named))
        return
    assert mac is not None
    creds = with_catalog(settings, lambda _, devices: devices.create(product_key, mac, passcode))
    _emit(as_json, device_credentials_view(creds))


@device_group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@settings_options
def device_import(file: Path, as_json: bool, **options: Any) -> None:
    """Create devices from a CSV file with the header product_key,mac[,passcode] (Gizwits
    products) or product_key,name[,psk] (data-template products).

    Good rows are stored, bad ones reported with their line numbers; rows whose device exists
    already change nothing. Exits with status 1 when any row failed.
    """
    settings = load_settings(options)
    try:
        with file.open(encoding="utf-8-sig", newline="") as handle:
            rows, failures = read_device_csv(handle)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise click.ClickException(f"{file}: cannot read ({exc})") from exc
    except FormInvalid as exc:
        raise click.ClickException(f"{file}: {exc.detail}") from exc
    console = Console(stderr=True)

    async def store(_: ProductService, devices: DeviceService) -> ImportReport:
        if not (console.is_terminal and not as_json and rows):
            return await devices.import_csv(rows)
        with Progress(
            TextColumn("importing devices"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as bar:
            task = bar.add_task("import", total=len(rows))
            return await devices.import_csv(rows, progress=lambda n: bar.advance(task, n))

    report = with_catalog(settings, store)
    failed = sorted([*failures, *report.failed], key=lambda failure: failure.line)
    if as_json:
        _emit(
            True,
            {
                "created": report.created,
                "existing": report.existing,
                "failed": [{"line": f.line, "error": f.error} for f in failed],
            },
        )
    else:
        for failure in failed:
            click.echo(f"{file}:{failure.line}: {failure.error}", err=True)
        click.echo(
            f"created {report.created}, already existing {report.existing}, failed {len(failed)}"
        )
    if failed:
        sys.exit(1)


@device_group.command("show")
@click.argument("did")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@settings_options
def device_show(did: str, as_json: bool, **options: Any) -> None:
    """Show one device."""
    settings = load_settings(options)
    device = with_catalog(settings, lambda _, devices: devices.get(did))
    _emit(as_json, device_view(device))


@device_group.command("disable")
@click.argument("did")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@settings_options
def device_disable(did: str, as_json: bool, **options: Any) -> None:
    """Disable a device: it can no longer provision or connect, nor register again."""
    settings = load_settings(options)
    device = with_catalog(settings, lambda _, devices: devices.set_disabled(did, True))
    _emit(as_json, device_view(device))


@device_group.command("enable")
@click.argument("did")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@settings_options
def device_enable(did: str, as_json: bool, **options: Any) -> None:
    """Enable a disabled device again."""
    settings = load_settings(options)
    device = with_catalog(settings, lambda _, devices: devices.set_disabled(did, False))
    _emit(as_json, device_view(device))


@device_group.command("tail")
@click.argument("did")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object per line")
@click.option(
    "--since",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="first show what was stored in the last SECONDS",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05, max=60),
    default=0.5,
    show_default=True,
    help="seconds between looks at the database",
)
@settings_options
def device_tail(did: str, as_json: bool, since: float, interval: float, **options: Any) -> None:
    """Follow a device live: reports (data point values), commands sent to it, its replies,
    presence and events, one line each, until Ctrl-C.

    Reads what the server stores (the frame log), so it works with any number of server
    processes. An unknown DID exits with status 2."""
    settings = load_settings(options)

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            async with Database(settings.resolved_database_url) as db:
                await db.migrate()
                tail = DeviceTail(db, SystemClock(), did)
                await tail.start(timedelta(seconds=since))
                while not stop.is_set():
                    for event in await tail.poll():
                        click.echo(_tail_line(event, as_json))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), interval)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    try:
        run(go())
    except click.ClickException as exc:
        if isinstance(exc.__cause__, DeviceNotFound):
            click.echo(f"Error: {exc.message}", err=True)
            sys.exit(2)
        raise


def _tail_line(event: TailEvent, as_json: bool) -> str:
    if as_json:
        return json.dumps(tail_event_view(event), ensure_ascii=False)
    arrow = {"up": "<-", "down": "->"}.get(event.direction or "", "  ")
    parts = [iso_utc(event.at), f"{event.kind:<8}", arrow]
    if event.values is not None:
        parts.append(
            " ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in event.values.items())
        )
    if event.detail:
        parts.append(event.detail)
    return " ".join(parts)


# -- users ---------------------------------------------------------------------------------------

#: Below this many columns tables leave out the less needed columns; from WIDEST on they
#: show every column.
NARROW: Final = 100
WIDEST: Final = 160


def with_admin(settings: Settings, action: Callable[[Database, SystemClock], Awaitable[T]]) -> T:
    """Run ``action`` on the configured database (migrated first)."""

    async def go() -> T:
        async with Database(settings.resolved_database_url) as db:
            await db.migrate()
            return await action(db, SystemClock())

    return run(go())


def _when(instant: datetime | None) -> str:
    return instant.strftime("%Y-%m-%d %H:%M") if instant is not None else "-"


def _id_column(table: Table, heading: str, width: int = 32) -> None:
    """A column of ids that are never wrapped (a uid or schedule id is 32 characters)."""
    table.add_column(heading, no_wrap=True, min_width=width)


@main.group("user")
def user_group() -> None:
    """See and manage app users (search, disable, sign out)."""


@user_group.command("list")
@click.option("--query", "-q", default="", help="part of a uid, username, e-mail or phone")
@click.option("--appid", default=None, help="only users of this app")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@settings_options
def user_list(
    query: str, appid: str | None, limit: int, offset: int, as_json: bool, **options: Any
) -> None:
    """List users, newest first."""
    settings = load_settings(options)
    users = with_admin(
        settings,
        lambda db, clock: UserAdminService(db, clock).search(
            query, appid=appid, limit=limit, offset=offset
        ),
    )
    if as_json:
        _emit(True, [user_summary_view(user) for user in users])
        return
    console = Console()
    wide, widest = console.width >= NARROW, console.width >= WIDEST
    table = Table()
    _id_column(table, "uid")
    if widest:
        table.add_column("appid", no_wrap=True)
    table.add_column("user", overflow="fold")
    table.add_column("devices" if wide else "dev", justify="right")
    if wide:
        table.add_column("state", no_wrap=True)
        table.add_column("created", no_wrap=True)
    for user in users:
        row = [user.uid]
        if widest:
            row.append(user.appid)
        identity = _identity(user)
        if not wide and user.is_disabled:
            identity += " (disabled)"
        row += [identity, str(user.device_count)]
        if wide:
            row += [_user_state(user), _when(user.created_at)]
        table.add_row(*row)
    console.print(table)


def _identity(user: UserSummary) -> str:
    names = [value for value in (user.username, user.email, user.phone) if value]
    return " ".join(names) or ("(anonymous)" if user.is_anonymous else "-")


def _user_state(user: UserSummary) -> str:
    return "disabled" if user.is_disabled else "active"


@user_group.command("show")
@click.argument("uid")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@settings_options
def user_show(uid: str, as_json: bool, **options: Any) -> None:
    """Show one user with their bound devices and live sessions."""
    settings = load_settings(options)
    detail = with_admin(settings, lambda db, clock: UserAdminService(db, clock).get(uid))
    view = user_detail_view(detail)
    if as_json:
        _emit(True, view)
        return
    _emit(False, {key: value for key, value in view.items() if key not in ("devices", "sessions")})
    console = Console()
    devices = Table(title="devices")
    _id_column(devices, "did", 22)
    devices.add_column("product", overflow="fold")
    devices.add_column("alias", overflow="fold")
    devices.add_column("online")
    if console.width >= NARROW:
        devices.add_column("mac", no_wrap=True)
        devices.add_column("bound", no_wrap=True)
    for device in detail.devices:
        row = [
            device.did,
            device.product_name or device.product_key,
            device.dev_alias,
            "yes" if device.is_online else "no",
        ]
        if console.width >= NARROW:
            row += [device.mac, _when(device.bound_at)]
        devices.add_row(*row)
    console.print(devices)
    sessions = Table("signed in", "expires", title="sessions")
    for item in detail.sessions:
        sessions.add_row(_when(item.created_at), _when(item.expires_at))
    console.print(sessions)


def _set_user_disabled(uid: str, disabled: bool, as_json: bool, options: dict[str, Any]) -> None:
    settings = load_settings(options)
    user = with_admin(
        settings, lambda db, clock: UserAdminService(db, clock).set_disabled(uid, disabled)
    )
    _emit(as_json, user_summary_view(user))


@user_group.command("disable")
@click.argument("uid")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@settings_options
def user_disable(uid: str, as_json: bool, **options: Any) -> None:
    """Disable a user: every session ends and they can no longer sign in (9026)."""
    _set_user_disabled(uid, True, as_json, options)


@user_group.command("enable")
@click.argument("uid")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@settings_options
def user_enable(uid: str, as_json: bool, **options: Any) -> None:
    """Let a disabled user sign in again."""
    _set_user_disabled(uid, False, as_json, options)


@user_group.command("signout")
@click.argument("uid")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@settings_options
def user_signout(uid: str, as_json: bool, **options: Any) -> None:
    """Sign a user out everywhere: every token they hold stops working."""
    settings = load_settings(options)
    revoked = with_admin(
        settings, lambda db, clock: UserAdminService(db, clock).sign_out_everywhere(uid)
    )
    _emit(as_json, {"uid": uid, "revoked": revoked})


# -- schedules -----------------------------------------------------------------------------------


@main.group("schedule")
def schedule_group() -> None:
    """See every user's schedules, their next firings and their runs."""


@schedule_group.command("list")
@click.option("--user", "uid", default=None, help="only schedules of this uid")
@click.option("--device", "did", default=None, help="only schedules of this device")
@click.option(
    "--enabled/--disabled", "enabled", default=None, help="only enabled (disabled) schedules"
)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@settings_options
def schedule_list(
    uid: str | None,
    did: str | None,
    enabled: bool | None,
    limit: int,
    as_json: bool,
    **options: Any,
) -> None:
    """List schedules, newest first."""
    settings = load_settings(options)
    schedules = with_admin(
        settings,
        lambda db, clock: ScheduleAdminService(db, clock).list(
            uid=uid, did=did, enabled=enabled, limit=limit
        ),
    )
    if as_json:
        _emit(True, [schedule_summary_view(schedule) for schedule in schedules])
        return
    console = Console()
    wide = console.width >= NARROW
    table = Table()
    _id_column(table, "id")
    if wide:
        table.add_column("name", overflow="fold")
        table.add_column("uid", overflow="fold")
    table.add_column("rule", overflow="fold")
    table.add_column("next", overflow="fold")
    table.add_column("last")
    for schedule in schedules:
        row = [schedule.schedule_id]
        if wide:
            row += [schedule.name, schedule.uid]
        row += [
            schedule.rule_text,
            _when(schedule.next_due_at) if schedule.enabled else "off",
            schedule.last_status or "-",
        ]
        table.add_row(*row)
    console.print(table)


@schedule_group.command("show")
@click.argument("schedule_id")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@settings_options
def schedule_show(schedule_id: str, as_json: bool, **options: Any) -> None:
    """Show one schedule: its rule, tasks, retry settings and next firings."""
    settings = load_settings(options)
    detail = with_admin(
        settings, lambda db, clock: ScheduleAdminService(db, clock).get(schedule_id)
    )
    view = schedule_detail_view(detail)
    if as_json:
        _emit(True, view)
        return
    lists = ("tasks", "upcoming")
    _emit(False, {key: value for key, value in view.items() if key not in lists})
    click.echo("upcoming:" + ("" if view["upcoming"] else " -"))
    for at in view["upcoming"]:
        click.echo(f"  {at}")
    table = Table("did", "command", title="tasks")
    table.columns[0].no_wrap = True
    table.columns[1].overflow = "fold"
    for task in detail.tasks:
        command = task.get("attrs", task.get("raw"))
        table.add_row(str(task.get("did")), json.dumps(command, ensure_ascii=False))
    Console().print(table)


@schedule_group.command("runs")
@click.argument("schedule_id", required=False)
@click.option(
    "--problems-first/--newest-first",
    default=True,
    show_default=True,
    help="failed and missed runs before the rest, or simply newest first",
)
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@settings_options
def schedule_runs(
    schedule_id: str | None, problems_first: bool, limit: int, as_json: bool, **options: Any
) -> None:
    """Show runs of one schedule (of every schedule without an id) with each attempt."""
    settings = load_settings(options)
    runs = with_admin(
        settings,
        lambda db, clock: ScheduleAdminService(db, clock).runs(
            schedule_id, problems_first=problems_first, limit=limit
        ),
    )
    if as_json:
        _emit(True, [run_view(item) for item in runs])
        return
    console = Console()
    wide = console.width >= NARROW
    table = Table()
    table.add_column("due", no_wrap=True)
    table.add_column("schedule", overflow="fold")
    table.add_column("status")
    table.add_column("attempts", overflow="fold")
    if wide:
        table.add_column("note", overflow="fold")
    for item in runs:
        row = [
            _when(item.scheduled_at),
            item.schedule_name or item.schedule_id,
            item.status,
            "\n".join(_attempt_text(attempt) for attempt in item.attempts) or "-",
        ]
        if wide:
            row.append(item.note or "")
        table.add_row(*row)
    console.print(table)


def _attempt_text(attempt: AttemptView) -> str:
    if attempt.detail is None:
        outcome = "in flight"
    else:
        outcome = " ".join(
            f"{did}:{'ok' if ok else 'failed'}" for did, ok in attempt.detail.items()
        )
    if attempt.interrupted:
        outcome += " (interrupted)"
    return f"{attempt.at.strftime('%H:%M:%S')} {outcome}"


# -- simulate ------------------------------------------------------------------------------------


@main.command()
@click.option("--product-key", required=True, help="the product the virtual devices belong to")
@click.option("--devices", "count", type=click.IntRange(1, 1 << 24), required=True, help="how many")
@click.option(
    "--url",
    default="http://127.0.0.1:8080",
    show_default=True,
    envvar="IOTCLOUD_URL",
    help="the server's HTTP address (IOTCLOUD_URL)",
)
@click.option(
    "--appid",
    default=None,
    envvar="IOTCLOUD_APPID",
    help="an app id, to read the data points from GET /app/datapoint (IOTCLOUD_APPID)",
)
@click.option(
    "--datapoints",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="the product's datapoint JSON file (instead of --appid)",
)
@click.option(
    "--report-interval",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="mean seconds between reports of one device (0: report only on connect and control)",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="stop after this many seconds of running (default: until Ctrl-C / SIGTERM)",
)
@click.option("--protocol", type=click.Choice(["3.1", "3.1.1"]), default="3.1", show_default=True)
@click.option(
    "--mac-prefix",
    default="02a0c0",
    show_default=True,
    help="first 3 bytes of every MAC; the index fills the last 3 (so reruns keep their dids)",
)
@click.option("--mqtt-host", default=None, help="connect here instead of the host the server names")
@click.option("--mqtt-port", type=int, default=None, help="connect here instead of the named port")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 1024),
    default=64,
    show_default=True,
    help="registrations and MQTT handshakes in flight at once",
)
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def simulate(
    product_key: str,
    count: int,
    url: str,
    appid: str | None,
    datapoints: Path | None,
    report_interval: float,
    duration: float | None,
    protocol: str,
    mac_prefix: str,
    mqtt_host: str | None,
    mqtt_port: int | None,
    concurrency: int,
    as_json: bool,
) -> None:
    """Run virtual devices of a product against a server, as firmware would.

    Each device registers (POST /dev/devices; MAC = prefix + index, so a rerun reuses the same
    dids), connects over MQTT to the host and port the server hands out, reports random valid
    values every --report-interval seconds and answers reads and controls. The data points come
    from --datapoints FILE, or from GET /app/datapoint with --appid. Ctrl-C or SIGTERM stops
    cleanly and prints a summary.
    """
    configure_logging("WARNING")
    try:
        prefix = normalise_mac_prefix(mac_prefix)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--mac-prefix") from exc
    if datapoints is None and not appid:
        raise click.UsageError(
            "give --datapoints FILE, or --appid APPID to read the data points from the server "
            "(GET /app/datapoint needs an app id; `iotcloud app create` makes one)"
        )
    console = Console(stderr=True)
    live = console.is_terminal
    started = time.monotonic()
    phase = "starting"
    fleet: Fleet | None = None
    connected_at_end = 0

    async def go() -> None:
        nonlocal phase, connected_at_end
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        work = asyncio.create_task(drive())
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if fleet is not None and not work.done():
                connected_at_end = fleet.connected
            stopper.cancel()
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        failure = None if work.cancelled() else work.exception()
        if failure is not None:
            raise failure
        if stop.is_set():
            phase = "stopped"

    async def drive() -> None:
        nonlocal phase, fleet, connected_at_end
        phase = "fetching data points"
        product = (
            load_datapoints(datapoints, product_key)
            if datapoints is not None
            else await fetch_datapoints(url, appid or "", product_key)
        )
        fleet = Fleet(
            FleetConfig(
                http_url=url,
                product_key=product_key,
                product=product,
                devices=count,
                mac_prefix=prefix,
                protocol=protocol,
                report_interval=report_interval,
                mqtt_host=mqtt_host,
                mqtt_port=mqtt_port,
                connect_concurrency=concurrency,
            )
        )
        phase = "registering"
        if live:
            with _fleet_progress(console) as bar:
                task = bar.add_task("registering", total=count)
                await fleet.register(lambda n: bar.advance(task, n))
        else:
            await fleet.register()
            console.print(f"registered {count} devices", highlight=False)
        phase = "connecting"
        if live:
            await _run_live(console, fleet, duration)
        else:
            first_connects = 0

            def connected(n: int) -> None:
                nonlocal first_connects
                first_connects += n
                if first_connects == count:
                    console.print(f"connected {count} devices", highlight=False)

            await fleet.run(duration, connected)
        connected_at_end = fleet.connected_at_stop
        phase = "finished"

    try:
        asyncio.run(go())
    except SimulatorError as exc:
        raise click.ClickException(str(exc)) from exc
    summary = _simulation_summary(fleet, product_key, phase, time.monotonic() - started)
    summary["devices_connected"] = connected_at_end
    if as_json:
        click.echo(json.dumps(summary))
    else:
        for key, value in summary.items():
            if key != "devices":
                click.echo(f"{key}: {value}")


def _fleet_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


async def _run_live(console: Console, fleet: Fleet, duration: float | None) -> None:
    """Show a bar until every device connected once, then live counters, while the fleet runs."""
    from rich.live import Live

    with _fleet_progress(console) as bar:
        task = bar.add_task("connecting", total=len(fleet.devices))
        runner = asyncio.create_task(fleet.run(duration, lambda n: bar.advance(task, n)))
        while not runner.done() and not bar.finished:
            await asyncio.wait({runner}, timeout=0.2)
    if runner.done():
        await runner
        return
    with Live(_fleet_table(fleet), console=console, refresh_per_second=4) as screen:
        while not runner.done():
            await asyncio.wait({runner}, timeout=0.5)
            screen.update(_fleet_table(fleet))
    await runner


def _fleet_table(fleet: Fleet) -> Table:
    table = Table("connected", "reports sent", "controls answered", "reads answered", "reconnects")
    table.add_row(
        f"{fleet.connected}/{len(fleet.devices)}",
        f"{fleet.reports:,}",
        f"{fleet.controls:,}",
        f"{fleet.reads:,}",
        f"{fleet.reconnects:,}",
    )
    return table


def _simulation_summary(
    fleet: Fleet | None, product_key: str, phase: str, elapsed: float
) -> dict[str, Any]:
    devices = [] if fleet is None else fleet.devices
    return {
        "product_key": product_key,
        "status": phase,
        "seconds": round(elapsed, 1),
        "devices_registered": sum(1 for d in devices if d.did is not None),
        "devices_connected": sum(1 for d in devices if d.stats.connected),  # set by the caller
        "reports_sent": sum(d.stats.reports for d in devices),
        "controls_answered": sum(d.stats.controls for d in devices),
        "reads_answered": sum(d.stats.reads for d in devices),
        "reconnects": sum(d.stats.reconnects for d in devices),
        "errors": sum(d.stats.errors for d in devices),
        "devices": [{"mac": d.mac, "did": d.did} for d in devices if d.did is not None],
    }


if __name__ == "__main__":  # pragma: no cover
    main()
