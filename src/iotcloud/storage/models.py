"""Tables. Times are stored as UTC; secrets (tokens, codes) only as SHA-256 digests."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    Time,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

PK = BigInteger().with_variant(Integer(), "sqlite")
JSON_TYPE = JSON().with_variant(postgresql.JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        instant: datetime = value
        if instant.tzinfo is None:
            return instant.replace(tzinfo=UTC)
        return instant.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class AppRow(Base):
    """An application (Gizwits appid / appsecret) that users sign in to."""

    __tablename__ = "apps"

    id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    appid: Mapped[str] = mapped_column(String(64), unique=True)
    secret: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    secret_rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class UserRow(Base):
    """An app user. Every identity (username, e-mail, phone, phone_id, third party) is unique
    within its app; NULLs do not collide."""

    __tablename__ = "users"
    __table_args__ = (
        UniqueConstraint("app_id", "username"),
        UniqueConstraint("app_id", "email"),
        UniqueConstraint("app_id", "phone"),
        UniqueConstraint("app_id", "phone_id"),
        UniqueConstraint("app_id", "auth_src", "auth_uid"),
    )

    id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    uid: Mapped[str] = mapped_column(String(32), unique=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    username: Mapped[str | None] = mapped_column(String(64), nullable=True)
    email: Mapped[str | None] = mapped_column(String(254), nullable=True)
    phone: Mapped[str | None] = mapped_column(String(24), nullable=True)
    phone_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    auth_src: Mapped[str | None] = mapped_column(String(32), nullable=True)
    auth_uid: Mapped[str | None] = mapped_column(String(128), nullable=True)
    password_hash: Mapped[str | None] = mapped_column(String(256), nullable=True)
    is_anonymous: Mapped[bool] = mapped_column(Boolean, default=False)
    name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    gender: Mapped[str | None] = mapped_column(String(1), nullable=True)
    birthday: Mapped[str | None] = mapped_column(String(10), nullable=True)
    address: Mapped[str | None] = mapped_column(String(256), nullable=True)
    lang: Mapped[str | None] = mapped_column(String(8), nullable=True)
    remark: Mapped[str | None] = mapped_column(Text, nullable=True)
    avatar: Mapped[str | None] = mapped_column(String(512), nullable=True)
    # IANA zone (Tencent timers without ``TimeZone`` use it) and the Tencent user settings
    time_zone: Mapped[str | None] = mapped_column(String(64), nullable=True)
    settings: Mapped[dict[str, Any] | None] = mapped_column(JSON_TYPE, nullable=True)
    is_disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class UserTokenRow(Base):
    """A user session token (opaque to clients; only its digest is stored)."""

    __tablename__ = "user_tokens"
    __table_args__ = (Index("ix_user_tokens_user_id_expires_at", "user_id", "expires_at"),)

    id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AppTokenRow(Base):
    """An app token from ``POST /app/request_token``."""

    __tablename__ = "app_tokens"

    id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class CaptchaRow(Base):
    """A captcha challenge; the answer is kept to render the image and compare, then burnt."""

    __tablename__ = "captchas"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    answer: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    used: Mapped[bool] = mapped_column(Boolean, default=False)


class SmsCodeRow(Base):
    """A verification code sent to a phone. Only the newest live code of a phone is accepted."""

    __tablename__ = "sms_codes"
    __table_args__ = (
        Index("ix_sms_codes_app_id_phone_created_at", "app_id", "phone", "created_at"),
    )

    id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    phone: Mapped[str] = mapped_column(String(24))
    digest: Mapped[str] = mapped_column(String(64))
    purpose: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    consumed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class PasswordResetRow(Base):
    """A one-time password-reset link sent by e-mail."""

    __tablename__ = "password_resets"

    id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ProductRow(Base):
    """A product: its keys and the datapoint JSON it was imported from, kept as imported."""

    __tablename__ = "products"

    id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    product_key: Mapped[str] = mapped_column(String(32), unique=True)
    product_secret: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(256))
    protocol_type: Mapped[str] = mapped_column(String(16))
    definition: Mapped[str] = mapped_column(Text)
    # open | signed | preprovisioned: how its devices may register themselves
    registration: Mapped[str] = mapped_column(String(16), default="open", server_default="open")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class DeviceRow(Base):
    """A device of a product. One did per (product, MAC): a device registering again keeps it.

    ``name`` is unique within the product: a Gizwits device is named by its MAC, a
    data-template (Tencent) device by its ``DeviceName``, and has no MAC but a ``psk`` (the
    base64 device key its MQTT password is signed with).
    """

    __tablename__ = "devices"
    __table_args__ = (
        UniqueConstraint("product_id", "mac"),
        UniqueConstraint("product_id", "name"),
    )

    id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    did: Mapped[str] = mapped_column(String(22), unique=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id", ondelete="RESTRICT"))
    mac: Mapped[str | None] = mapped_column(String(12), nullable=True)
    name: Mapped[str] = mapped_column(String(48))
    passcode: Mapped[str] = mapped_column(String(32))
    psk: Mapped[str | None] = mapped_column(String(64), nullable=True)
    is_disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    is_online: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    last_online_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_offline_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    mcu_soft_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    mcu_hard_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    wifi_soft_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    wifi_hard_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # operator | registered | signed: who created it (an operator, or the device itself)
    origin: Mapped[str] = mapped_column(
        String(16), default="registered", server_default="registered"
    )
    # when it last registered with a different passcode (a new ownership), if ever
    owner_since: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class DeviceLatestRow(Base):
    """The newest value of every data point a device reported (merged across partial reports)."""

    __tablename__ = "device_latest"

    device_id: Mapped[int] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    attrs: Mapped[dict[str, Any]] = mapped_column(JSON_TYPE)
    # data point -> when it was last reported (Unix ms); NULL for rows older than the column
    attr_times: Mapped[dict[str, int] | None] = mapped_column(JSON_TYPE, nullable=True)


class DeviceHistoryRow(Base):
    """One report's values, for history and aggregation."""

    __tablename__ = "device_history"
    __table_args__ = (
        Index("ix_device_history_device_id_at", "device_id", "at"),
        Index("ix_device_history_at", "at"),
    )

    id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    attrs: Mapped[dict[str, Any]] = mapped_column(JSON_TYPE)


class DeviceEventRow(Base):
    """The frame log (Gizwits ``raw_data``): frames to and from a device, and its presence."""

    __tablename__ = "device_events"
    __table_args__ = (
        Index("ix_device_events_device_id_at", "device_id", "at"),
        Index("ix_device_events_at", "at"),
    )

    id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    kind: Mapped[str] = mapped_column(String(16))
    payload: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    detail: Mapped[str | None] = mapped_column(String(64), nullable=True)


class DeviceThingEventRow(Base):
    """An event a data-template device posted (``event_post``, or one of ``events_post``)."""

    __tablename__ = "device_thing_events"
    __table_args__ = (
        Index("ix_device_thing_events_device_id_at", "device_id", "at"),
        Index("ix_device_thing_events_at", "at"),
    )

    id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    event_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(16))
    params: Mapped[dict[str, Any]] = mapped_column(JSON_TYPE)
    client_token: Mapped[str | None] = mapped_column(String(128), nullable=True)


class ApiNonceRow(Base):
    """A (``Timestamp``, ``Nonce``) pair a signed ``appapi`` call used: accepted once per app."""

    __tablename__ = "api_nonces"
    __table_args__ = (
        UniqueConstraint("app_id", "timestamp", "nonce"),
        Index("ix_api_nonces_used_at", "used_at"),
    )

    id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    timestamp: Mapped[int] = mapped_column(BigInteger)
    nonce: Mapped[str] = mapped_column(String(32))
    used_at: Mapped[datetime] = mapped_column(UTCDateTime())


class BindingRow(Base):
    """A user's binding to a device: what lets the user see and control it.

    A user belongs to one app, so a binding is scoped to that app too. ``role`` is ``owner`` for
    the first binder of the device within the app and ``guest`` for later ones. ``dev_alias``,
    ``remark`` and ``dev_label`` (a JSON list of strings) are the user's own names for the device.
    """

    __tablename__ = "bindings"
    __table_args__ = (
        UniqueConstraint("user_id", "device_id"),
        Index("ix_bindings_device_id", "device_id"),
    )

    id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))
    dev_alias: Mapped[str] = mapped_column(String(128), default="", server_default="")
    remark: Mapped[str] = mapped_column(String(1024), default="", server_default="")
    dev_label: Mapped[list[str]] = mapped_column(
        JSON_TYPE, default=list, server_default=text("'[]'")
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ScheduleRow(Base):
    """A cloud schedule (Gizwits scheduler, Tencent timer) of one user within one app.

    The recurrence is stored field by field (see `iotcloud.domain.schedules.Recurrence`): ``rule``
    ``once`` (``on_date``), ``daily``, ``weekly`` (``weekdays``, 0 = Monday) or ``month_days``,
    at local wall time ``at_time`` in IANA zone ``time_zone``, bounded by ``start_date`` and
    ``end_date``. ``rearm`` marks a Tencent ``Repeat`` 0 timer: a one-shot whose date is chosen
    afresh (the next of ``weekdays``, any day when empty) whenever it is enabled or changed.

    ``next_due_at`` is the first occurrence not yet handled (UTC); it is NULL exactly when the
    schedule is disabled or will never fire again. ``tasks`` is a JSON list of
    ``{did, product_key, attrs}`` or ``{did, product_key, raw}`` (``raw`` in hex).
    ``device_did`` is the device a per-device schedule belongs to (Gizwits
    ``/app/devices/{did}/scheduler``, Tencent timers); NULL for ``/app/scheduler`` ones.
    """

    __tablename__ = "schedules"
    __table_args__ = (
        Index("ix_schedules_user_id_device_did", "user_id", "device_did"),
        Index("ix_schedules_next_due_at", "next_due_at"),
    )

    id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    dialect: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(128))
    remark: Mapped[str] = mapped_column(String(1024))
    device_did: Mapped[str | None] = mapped_column(String(22), nullable=True)
    rule: Mapped[str] = mapped_column(String(16))
    on_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    weekdays: Mapped[list[int]] = mapped_column(JSON_TYPE)
    month_days: Mapped[list[int]] = mapped_column(JSON_TYPE)
    at_time: Mapped[time] = mapped_column(Time)
    time_zone: Mapped[str] = mapped_column(String(64))
    start_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    end_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    rearm: Mapped[bool] = mapped_column(Boolean)
    enabled: Mapped[bool] = mapped_column(Boolean)
    retry_count: Mapped[int] = mapped_column(Integer)
    retry_task: Mapped[str] = mapped_column(String(8))
    tasks: Mapped[list[dict[str, Any]]] = mapped_column(JSON_TYPE)
    next_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ScheduleRunRow(Base):
    """One occurrence of a schedule: at most one row per (schedule, scheduled instant).

    ``status`` is ``running``, ``succeed``, ``failed`` or ``missed``. A fired run keeps the tasks
    and retry settings it was fired with (``tasks``, ``retry_count``, ``retry_task``; NULL for a
    missed run), every attempt (``attempts``: ``[{at, detail: {did: bool} | null,
    interrupted?}]``, ``detail`` null while the attempt is in flight) and the merged result
    (``detail``). While ``running``, ``next_attempt_at`` is when the engine next has to act on it:
    the next retry, or - while an attempt is in flight under ``lease_owner`` - the instant that
    lease expires and the run counts as abandoned.
    """

    __tablename__ = "schedule_runs"
    __table_args__ = (
        UniqueConstraint("schedule_id", "scheduled_at"),
        Index("ix_schedule_runs_next_attempt_at", "next_attempt_at"),
        Index("ix_schedule_runs_finished_at", "finished_at"),
    )

    id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    schedule_id: Mapped[int] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"))
    scheduled_at: Mapped[datetime] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(16))
    detail: Mapped[dict[str, bool]] = mapped_column(JSON_TYPE)
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(JSON_TYPE)
    tasks: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON_TYPE, nullable=True)
    retry_count: Mapped[int] = mapped_column(Integer)
    retry_task: Mapped[str] = mapped_column(String(8))
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    note: Mapped[str | None] = mapped_column(String(256), nullable=True)


class ConsoleSessionRow(Base):
    """A web console sign-in (operator). Only the SHA-256 ``digest`` of the session cookie is
    stored; a session ends at ``expires_at``, on sign-out (row deleted) or when idle too long
    (``last_seen_at``)."""

    __tablename__ = "console_sessions"

    id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    address: Mapped[str | None] = mapped_column(String(64), nullable=True)
