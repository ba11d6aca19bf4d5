"""Settings: one typed object, read once from ``IOTCLOUD_*`` environment variables.

CLI flags of the same name override the environment. The object is passed explicitly to the
components that need it; nothing reads the environment after start-up.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, get_args, get_type_hints
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

Environment = Literal["production", "development"]

ENV_PREFIX = "IOTCLOUD_"
ADMIN_TOKEN_MIN = 16


class ConfigError(ValueError):
    """A setting is missing, malformed or unsafe for the chosen environment."""


@dataclass(frozen=True)
class Settings:
    """Every knob of the server. Field ``x`` is read from ``IOTCLOUD_X``.

    Durations are in seconds, rates in requests per second (0 disables a limit).
    """

    http_host: str = "0.0.0.0"  # noqa: S104 - a server is meant to listen on all interfaces
    http_port: int = 8080
    mqtt_port: int = 1883
    data_dir: Path = Path("./data")
    database_url: str = ""  # empty: SQLite file in the data dir
    # empty: the embedded broker; else the external broker the gateway signs in to,
    # mqtt[s]://user:password@host:port (IOTCLOUD_MQTT_PORT is then the port handed to devices)
    mqtt_url: str = field(default="", repr=False)
    # who keeps device credentials in an external broker: "dynsec" (iotcloud, through
    # Mosquitto's dynamic-security plugin) or "none" (the operator)
    mqtt_credentials: str = "dynsec"
    # how often device credentials in an external broker are reconciled with the registry
    mqtt_sync_seconds: float = 30.0
    # which external broker IOTCLOUD_MQTT_URL names: "mosquitto" or "rabbitmq" (a RabbitMQ
    # cluster: presence from its event exchange, reports from a durable queue over AMQP, device
    # accounts checked by iotcloud's HTTP auth endpoints, so nothing is written into the broker)
    mqtt_broker: str = "mosquitto"
    # with rabbitmq: amqp://USER:PASS@host:port/%2F (iotcloud's administrator account)
    amqp_url: str = field(default="", repr=False)
    # with rabbitmq: http://USER:PASS@host:15672, the management plugin's HTTP API
    rabbitmq_management_url: str = field(default="", repr=False)
    # with rabbitmq: device messages one gateway process takes from the shared queue before
    # acknowledging (see docs/decisions.md "Scale-out on RabbitMQ" for the measurement)
    rabbitmq_prefetch: int = 500
    # device connections the embedded MQTT transport holds at most (each is a file descriptor:
    # the process's open-file limit must be higher, see the README)
    mqtt_max_connections: int = 10_000
    public_host: str = "localhost"
    public_url: str = ""  # empty: http://{public_host}:{http_port}
    timezone: str = "UTC"
    env: Environment = "production"
    log_level: str = "INFO"
    # "text" (one line per record, for people) or "json" (one JSON object per line, for log
    # collectors)
    log_format: str = "text"
    # what this process does: "api" (HTTP and WebSocket), "gateway" (consumes device traffic:
    # stores reports, events and presence) and "scheduler" (fires timers), comma-separated;
    # every process also serves /healthz, /readyz and /metrics. Fewer than all three needs an
    # external broker: the embedded transport cannot share its devices with other processes.
    role: str = "api,gateway,scheduler"
    # operator API (/admin/v1): callers send "Authorization: Bearer <admin_token>"; empty turns
    # the operator API off (every call answers 403)
    admin_token: str = field(default="", repr=False)

    # GET /app/devdata/{did}/latest: false (the seed's rule) answers anyone holding an appid
    # and a did; true requires the token of a user bound to the device
    devdata_require_binding: bool = False

    # accounts
    user_token_ttl: int = 7 * 86400
    user_tokens_per_user: int = 100
    # how long a checked token is trusted without a database read (revocations made by this
    # process apply at once; other processes of a scale-out deployment follow within this); also
    # how often the tokens of open WebSocket sessions are looked up (0: every second)
    auth_cache_seconds: float = 5.0
    app_token_ttl: int = 2 * 3600
    password_min_length: int = 6
    # argon2id cost (OWASP minimum profile by default: 19 MiB, 2 passes, 1 lane)
    argon2_time_cost: int = 2
    argon2_memory_kib: int = 19456
    argon2_parallelism: int = 1

    # verification codes
    sms_code_ttl: int = 600
    sms_code_length: int = 6
    sms_code_max_attempts: int = 5
    sms_sends_per_phone_per_hour: int = 5
    captcha_ttl: int = 300
    captcha_length: int = 4
    dev_captcha_code: str = ""
    password_reset_ttl: int = 3600

    # Tencent app API: the envelope of every answer, "response" ({"Response": ...}, as
    # documented) or "sdk" ({"code", "msg", "data"}, as Tencent's own app SDKs parse it); how far
    # a signed appapi call's Timestamp may be from this server's clock, either way (seconds)
    tencent_envelope: str = "response"
    tencent_signature_window: int = 300

    # notification providers
    sms_webhook_url: str = ""  # empty: append to <data dir>/outbox/sms.jsonl
    smtp_url: str = ""  # empty: write .eml files to <data dir>/outbox/mail/
    mail_from: str = "iotcloud <no-reply@localhost>"
    # third-party sign-in: {"qq": {"url": "...", "kind": "qq"}, "wechat": "https://..."}
    auth_providers: Mapping[str, Any] = field(default_factory=dict)
    auth_provider_timeout: float = 5.0

    # telemetry retention (days); history 0 keeps no history at all
    history_retention_days: int = 90
    frame_log_retention_days: int = 7

    # limits of an HTTP request head, enforced before the body is read (bytes of the request
    # line's target; bytes of the whole head, request line included; header fields): beyond
    # them the request is answered 414 or 431 and its connection closed
    http_max_url_bytes: int = 8 * 1024
    http_max_head_bytes: int = 64 * 1024
    http_max_headers: int = 100

    # throttling (token buckets; 0 disables)
    rate_limit_per_app: float = 1000.0
    rate_limit_per_address: float = 100.0
    rate_limit_burst_seconds: float = 2.0
    # whether the buckets hold across every process serving the database (a table in it,
    # leased from in tenths of a second): on, off, or auto (on unless the database is SQLite)
    rate_limit_shared: str = "auto"
    # comma-separated addresses or CIDR networks of reverse proxies / load balancers whose
    # X-Forwarded-For or Forwarded header names the client (empty: the socket peer is the client)
    trusted_proxies: str = ""

    # scheduler (cloud timers): whether this process fires schedules (its API serves them
    # either way); how late an occurrence may still fire after downtime (older ones are logged
    # missed); how long an attempt in flight is owned before another process may take it over;
    # the pause between retries; how long a device has to acknowledge a command; the longest
    # sleep between looks at the database; attempts in flight; days runs are kept (0: forever);
    # how far ahead occurrences are claimed and their commands prepared (0: at the instant)
    scheduler_enabled: bool = True
    scheduler_grace_seconds: float = 900.0
    scheduler_lease_seconds: float = 60.0
    scheduler_retry_interval_seconds: float = 60.0
    scheduler_ack_timeout_seconds: float = 10.0
    scheduler_max_sleep_seconds: float = 10.0
    scheduler_concurrency: int = 20_000
    scheduler_run_retention_days: int = 90
    scheduler_prepare_seconds: float = 10.0

    # broker authentication over HTTP (/broker/rabbitmq/*, /broker/emqx/*): the socket peers
    # that may ask (comma-separated addresses or CIDR networks; empty: nobody), how long an
    # answer is reused (0: never; at most auth_cache_seconds), and the only RabbitMQ virtual
    # host devices may use
    broker_auth_from: str = "127.0.0.0/8,::1"
    broker_auth_cache_seconds: float = 5.0
    rabbitmq_vhost: str = "/"

    # TLS: PEM files of the certificate chain (server certificate first) and of its unencrypted
    # private key; set both or neither. With them the server also serves HTTPS and WSS on
    # https_port and, with the embedded broker, MQTT over TLS on mqtts_port (with an external
    # broker the operator runs TLS there; mqtts_port is only handed to devices)
    tls_cert: str = ""
    tls_key: str = ""
    https_port: int = 8443
    mqtts_port: int = 8883

    @property
    def resolved_database_url(self) -> str:
        """The SQLAlchemy async URL: the configured one, else a SQLite file in the data dir."""
        if self.database_url:
            return normalize_database_url(self.database_url)
        return f"sqlite+aiosqlite:///{(self.data_dir / 'iotcloud.db').resolve()}"

    @property
    def base_url(self) -> str:
        """Where apps and browsers reach this server's HTTP API (no trailing slash)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"http://{self.public_host}:{self.http_port}"

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"

    @property
    def is_development(self) -> bool:
        return self.env == "development"

    @property
    def tls_enabled(self) -> bool:
        """Whether HTTPS and MQTT over TLS are served (``tls_cert`` and ``tls_key`` are set)."""
        return bool(self.tls_cert and self.tls_key)

    def tls_context(self) -> ssl.SSLContext | None:
        """A new server-side context (TLS 1.2 or later) holding ``tls_cert`` and ``tls_key``;
        None when TLS is off. Raises ``ConfigError`` naming the file that cannot be used."""
        if not self.tls_enabled:
            return None
        files = (("IOTCLOUD_TLS_CERT", self.tls_cert), ("IOTCLOUD_TLS_KEY", self.tls_key))
        for name, path in files:
            if not Path(path).is_file():
                raise ConfigError(f"{name}: {path} is not a file")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            # a key that asks for a password would otherwise prompt on the terminal
            context.load_cert_chain(self.tls_cert, self.tls_key, password=_refuse_password)
        except _EncryptedKey as exc:
            raise ConfigError(
                f"IOTCLOUD_TLS_KEY: {self.tls_key} is encrypted; give an unencrypted key "
                "(e.g. `openssl pkey -in KEY -out KEY.plain`) readable only by the server"
            ) from exc
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"IOTCLOUD_TLS_CERT / IOTCLOUD_TLS_KEY: cannot use the certificate chain "
                f"{self.tls_cert} with the private key {self.tls_key}: both must be PEM and the "
                f"key must belong to the first certificate ({exc})"
            ) from exc
        return context

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``), then ``overrides``.

        Overrides whose value is ``None`` are ignored (an unset CLI flag). Raises ``ConfigError``
        for a malformed value or an unsafe combination.
        """
        env = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, hints[f.name], raw)
        for name, value in overrides.items():
            if value is None:
                continue
            if name not in hints:
                raise ConfigError(f"unknown setting {name!r}")
            values[name] = _parse(name, hints[name], value) if isinstance(value, str) else value
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse malformed values and insecure settings outside development."""
        if self.env not in get_args(Environment):
            raise ConfigError(f"IOTCLOUD_ENV must be production or development, not {self.env!r}")
        if self.dev_captcha_code and not self.is_development:
            raise ConfigError(
                "IOTCLOUD_DEV_CAPTCHA_CODE fixes every captcha answer and is refused in "
                "production; unset it or run with IOTCLOUD_ENV=development"
            )
        if self.admin_token and len(self.admin_token) < ADMIN_TOKEN_MIN and not self.is_development:
            raise ConfigError(
                f"IOTCLOUD_ADMIN_TOKEN must be at least {ADMIN_TOKEN_MIN} characters outside "
                "development (e.g. `openssl rand -hex 32`)"
            )
        for name in ("http_port", "mqtt_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"IOTCLOUD_{name.upper()} must be a TCP port, not {port}")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(f"IOTCLOUD_TIMEZONE {self.timezone!r} is not an IANA zone") from exc
        positive = (
            "user_token_ttl",
            "app_token_ttl",
            "sms_code_ttl",
            "captcha_ttl",
            "password_reset_ttl",
            "sms_code_max_attempts",
            "sms_code_length",
            "captcha_length",
            "password_min_length",
            "user_tokens_per_user",
            "http_max_url_bytes",
            "http_max_head_bytes",
            "http_max_headers",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"IOTCLOUD_{name.upper()} must be positive")
        for name in (
            "rate_limit_per_app",
            "rate_limit_per_address",
            "sms_sends_per_phone_per_hour",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"IOTCLOUD_{name.upper()} must not be negative")
        shared_values = {"auto", "on", "off", "true", "false", "yes", "no", "1", "0"}
        if self.rate_limit_shared.strip().lower() not in shared_values:
            raise ConfigError(
                "IOTCLOUD_RATE_LIMIT_SHARED must be auto, on or off, "
                f"not {self.rate_limit_shared!r}"
            )
        for entry in filter(None, (part.strip() for part in self.trusted_proxies.split(","))):
            try:
                ipaddress.ip_network(entry)
            except ValueError as exc:
                raise ConfigError(
                    f"IOTCLOUD_TRUSTED_PROXIES: {entry!r} is not an IP address or CIDR network "
                    f"({exc})"
                ) from exc
        if self.mqtt_credentials not in ("dynsec", "none"):
            raise ConfigError(
                f"IOTCLOUD_MQTT_CREDENTIALS must be dynsec or none, not {self.mqtt_credentials!r}"
            )
        self._validate_broker_kind()
        if self.tencent_envelope not in ("response", "sdk"):
            raise ConfigError(
                f"IOTCLOUD_TENCENT_ENVELOPE must be response or sdk, not {self.tencent_envelope!r}"
            )
        if self.tencent_signature_window <= 0:
            raise ConfigError("IOTCLOUD_TENCENT_SIGNATURE_WINDOW must be positive")
        if self.mqtt_max_connections < 1:
            raise ConfigError("IOTCLOUD_MQTT_MAX_CONNECTIONS must be at least 1")
        if self.mqtt_sync_seconds <= 0:
            raise ConfigError("IOTCLOUD_MQTT_SYNC_SECONDS must be positive")
        if self.history_retention_days < 0 or self.frame_log_retention_days < 1:
            raise ConfigError(
                "IOTCLOUD_HISTORY_RETENTION_DAYS must be >= 0 and "
                "IOTCLOUD_FRAME_LOG_RETENTION_DAYS >= 1"
            )
        if not isinstance(self.auth_providers, Mapping):
            raise ConfigError("IOTCLOUD_AUTH_PROVIDERS must be a JSON object")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"IOTCLOUD_LOG_FORMAT must be text or json, not {self.log_format!r}")
        self._validate_roles()
        self._validate_scheduler()
        self._validate_tls()
        self._validate_broker_auth()

    @property
    def roles(self) -> frozenset[str]:
        """The roles this process runs (`role`, parsed)."""
        return frozenset(part.strip() for part in self.role.split(",") if part.strip())

    def _validate_roles(self) -> None:
        unknown = sorted(self.roles - set(ROLES))
        if unknown or not self.roles:
            raise ConfigError(
                f"IOTCLOUD_ROLE must be one or more of {', '.join(ROLES)} (comma-separated), "
                f"not {self.role!r}"
            )
        if self.roles != set(ROLES) and not self.mqtt_url:
            raise ConfigError(
                f"IOTCLOUD_ROLE {','.join(sorted(self.roles))}: a process with only some roles "
                "needs an external broker (IOTCLOUD_MQTT_URL); the embedded MQTT transport "
                "cannot share its devices with other processes"
            )

    def _validate_broker_auth(self) -> None:
        for entry in filter(None, (part.strip() for part in self.broker_auth_from.split(","))):
            try:
                ipaddress.ip_network(entry)
            except ValueError as exc:
                raise ConfigError(
                    f"IOTCLOUD_BROKER_AUTH_FROM: {entry!r} is not an IP address or CIDR network "
                    f"({exc})"
                ) from exc
        if self.broker_auth_cache_seconds < 0:
            raise ConfigError("IOTCLOUD_BROKER_AUTH_CACHE_SECONDS must not be negative")
        if not self.rabbitmq_vhost:
            raise ConfigError("IOTCLOUD_RABBITMQ_VHOST must not be empty")

    def _validate_tls(self) -> None:
        for name in ("https_port", "mqtts_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"IOTCLOUD_{name.upper()} must be a TCP port, not {port}")
        if bool(self.tls_cert) != bool(self.tls_key):
            given, missing = (
                ("IOTCLOUD_TLS_CERT", "IOTCLOUD_TLS_KEY")
                if self.tls_cert
                else ("IOTCLOUD_TLS_KEY", "IOTCLOUD_TLS_CERT")
            )
            raise ConfigError(
                f"{given} is set but {missing} is not: TLS needs both the certificate chain "
                "and its private key (PEM files), or neither"
            )
        if not self.tls_enabled:
            return
        clashes = [("https_port", "http_port")]
        if not self.mqtt_url:
            clashes.append(("mqtts_port", "mqtt_port"))
        for tls, plain in clashes:
            if getattr(self, tls) and getattr(self, tls) == getattr(self, plain):
                raise ConfigError(
                    f"IOTCLOUD_{tls.upper()} and IOTCLOUD_{plain.upper()} must differ "
                    f"(both are {getattr(self, tls)})"
                )
        self.tls_context()

    def _validate_broker_kind(self) -> None:
        if self.mqtt_broker not in ("mosquitto", "rabbitmq"):
            raise ConfigError(
                f"IOTCLOUD_MQTT_BROKER must be mosquitto or rabbitmq, not {self.mqtt_broker!r}"
            )
        if self.rabbitmq_prefetch < 1:
            raise ConfigError("IOTCLOUD_RABBITMQ_PREFETCH must be at least 1")
        if self.mqtt_broker != "rabbitmq":
            return
        for name, value, schemes in (
            ("IOTCLOUD_MQTT_URL", self.mqtt_url, ("mqtt", "mqtts")),
            ("IOTCLOUD_AMQP_URL", self.amqp_url, ("amqp", "amqps")),
            ("IOTCLOUD_RABBITMQ_MANAGEMENT_URL", self.rabbitmq_management_url, ("http", "https")),
        ):
            if not value:
                raise ConfigError(f"IOTCLOUD_MQTT_BROKER=rabbitmq needs {name}")
            if value.split("://", 1)[0] not in schemes:
                allowed = " or ".join(scheme + "://" for scheme in schemes)
                raise ConfigError(f"{name} must start with {allowed}")

    def _validate_scheduler(self) -> None:
        for name in (
            "scheduler_retry_interval_seconds",
            "scheduler_ack_timeout_seconds",
            "scheduler_max_sleep_seconds",
            "scheduler_concurrency",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"IOTCLOUD_{name.upper()} must be positive")
        if (
            self.scheduler_grace_seconds < 0
            or self.scheduler_run_retention_days < 0
            or self.scheduler_prepare_seconds < 0
        ):
            raise ConfigError(
                "IOTCLOUD_SCHEDULER_GRACE_SECONDS, IOTCLOUD_SCHEDULER_RUN_RETENTION_DAYS and "
                "IOTCLOUD_SCHEDULER_PREPARE_SECONDS must not be negative"
            )
        # an attempt lasts about one acknowledgement timeout; its lease must outlive it, or a
        # second process could take the run over while the first is still sending
        if self.scheduler_lease_seconds < 2 * self.scheduler_ack_timeout_seconds:
            raise ConfigError(
                "IOTCLOUD_SCHEDULER_LEASE_SECONDS must be at least twice "
                "IOTCLOUD_SCHEDULER_ACK_TIMEOUT_SECONDS"
            )


ROLES: Final = ("api", "gateway", "scheduler")


class _EncryptedKey(Exception):
    """The TLS private key asked for a password."""


def _refuse_password() -> bytes:
    raise _EncryptedKey


def normalize_database_url(url: str) -> str:
    """Map plain ``postgresql://`` and ``sqlite://`` URLs onto their async drivers."""
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


def _parse(name: str, hint: Any, raw: str) -> Any:
    kind = hint if isinstance(hint, type) else getattr(hint, "__origin__", None)
    try:
        if hint is bool:
            lowered = raw.strip().lower()
            if lowered not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                raise ValueError(raw)
            return lowered in {"1", "true", "yes", "on"}
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
        if hint is Path:
            return Path(raw)
        if kind is Mapping or str(hint).startswith("collections.abc.Mapping"):
            value = json.loads(raw)
            if not isinstance(value, dict):
                raise ValueError("not a JSON object")
            return value
    except (ValueError, json.JSONDecodeError) as exc:
        raise ConfigError(f"IOTCLOUD_{name.upper()}: cannot read {raw!r} ({exc})") from exc
    return raw
