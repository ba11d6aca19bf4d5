"""The ``iotcloud`` command: serve, migrate, and operator commands acting on the same database."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from iotcloud.config import ConfigError, Settings
from iotcloud.domain.clock import SystemClock
from iotcloud.errors import IotCloudError
from iotcloud.services.apps import App, AppService
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


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@click.group()
@click.version_option(package_name="iotcloud")
def main() -> None:
    """iotcloud: a self-hostable IoT device cloud (Gizwits and Tencent IoT Explorer compatible)."""


def _graceful_server_class() -> type[Any]:
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """SIGTERM/SIGINT finish in-flight requests, stop the components, then exit 0."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            previous = {
                sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
            }
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return GracefulServer


@main.command()
@settings_options
def serve(**options: Any) -> None:
    """Run the server (embedded mode: SQLite, in-process services; migrates the database)."""
    import uvicorn

    from iotcloud.app import create_app

    settings = load_settings(options)
    configure_logging(settings.log_level)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    server = _graceful_server_class()(config)
    server.run()
    if not server.started:
        sys.exit(1)


@main.command()
@settings_options
def migrate(**options: Any) -> None:
    """Create or upgrade the database schema."""
    settings = load_settings(options)
    configure_logging(settings.log_level)

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


if __name__ == "__main__":  # pragma: no cover
    main()
