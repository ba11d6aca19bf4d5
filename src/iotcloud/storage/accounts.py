"""Repositories for apps, users, tokens and verification codes.

Each repository wraps one ``AsyncSession`` (one unit of work). Uniqueness violations are
translated into the domain errors a client sees, so a failed write leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from iotcloud.errors import (
    EmailUnavailable,
    IotCloudError,
    NonceReplayed,
    PhoneUnavailable,
    UsernameUnavailable,
)
from iotcloud.storage.models import (
    ApiNonceRow,
    AppRow,
    AppTokenRow,
    CaptchaRow,
    PasswordResetRow,
    SmsCodeRow,
    UserRow,
    UserTokenRow,
)


class AppIdTaken(IotCloudError):
    """An app with that appid already exists (operator error)."""

    code = 9015


class AppRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, app: AppRow) -> AppRow:
        self.session.add(app)
        try:
            await self.session.flush()
        except IntegrityError as exc:
            raise AppIdTaken(f"appid {app.appid} already exists") from exc
        return app

    async def by_appid(self, appid: str) -> AppRow | None:
        return await self.session.scalar(select(AppRow).where(AppRow.appid == appid))

    async def all(self) -> Sequence[AppRow]:
        return (await self.session.scalars(select(AppRow).order_by(AppRow.id))).all()


_UNIQUE_ERRORS: tuple[tuple[str, type[IotCloudError], str], ...] = (
    ("username", UsernameUnavailable, "username"),
    ("email", EmailUnavailable, "email"),
    ("phone_id", UsernameUnavailable, "phone_id"),
    ("phone", PhoneUnavailable, "phone"),
    ("auth_src", UsernameUnavailable, "authData"),
)


class UserRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def save(self, user: UserRow) -> UserRow:
        """Insert or update ``user``; a taken identity raises its 9018/9019/9022 error."""
        self.session.add(user)
        try:
            await self.session.flush()
        except IntegrityError as exc:
            text = str(exc.orig).lower()
            for column, error, field in _UNIQUE_ERRORS:
                if column in text:
                    raise error(f"{field} is already registered in this app") from exc
            raise
        return user

    async def by_uid(self, app_id: int, uid: str) -> UserRow | None:
        return await self.session.scalar(
            select(UserRow).where(UserRow.app_id == app_id, UserRow.uid == uid)
        )

    async def by_field(self, app_id: int, field: str, value: str) -> UserRow | None:
        column = getattr(UserRow, field)
        return await self.session.scalar(
            select(UserRow).where(UserRow.app_id == app_id, column == value)
        )

    async def by_third_party(self, app_id: int, src: str, auth_uid: str) -> UserRow | None:
        return await self.session.scalar(
            select(UserRow).where(
                UserRow.app_id == app_id, UserRow.auth_src == src, UserRow.auth_uid == auth_uid
            )
        )

    async def identity_taken(
        self, app_id: int, field: str, value: str, *, except_user: int | None = None
    ) -> bool:
        column = getattr(UserRow, field)
        query = select(UserRow.id).where(UserRow.app_id == app_id, column == value)
        if except_user is not None:
            query = query.where(UserRow.id != except_user)
        return (await self.session.scalar(query.limit(1))) is not None


class UserTokenRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, user_id: int, digest: str, now: datetime, ttl: int, keep: int) -> None:
        """Store a new token; beyond ``keep`` live tokens per user the oldest are dropped."""
        self.session.add(
            UserTokenRow(
                digest=digest,
                user_id=user_id,
                created_at=now,
                expires_at=now + timedelta(seconds=ttl),
            )
        )
        await self.session.flush()
        surplus = (
            select(UserTokenRow.id)
            .where(UserTokenRow.user_id == user_id)
            .order_by(UserTokenRow.created_at.desc(), UserTokenRow.id.desc())
            .offset(keep)
        )
        await self.session.execute(delete(UserTokenRow).where(UserTokenRow.id.in_(surplus)))

    async def user_for(self, digest: str) -> tuple[UserTokenRow, UserRow] | None:
        row = (
            await self.session.execute(
                select(UserTokenRow, UserRow)
                .join(UserRow, UserRow.id == UserTokenRow.user_id)
                .where(UserTokenRow.digest == digest)
            )
        ).first()
        return (row[0], row[1]) if row else None

    async def expiries(self, digests: Sequence[str]) -> dict[str, datetime]:
        """The expiry of each stored token among ``digests``; revoked ones are absent."""
        rows = await self.session.execute(
            select(UserTokenRow.digest, UserTokenRow.expires_at).where(
                UserTokenRow.digest.in_(digests)
            )
        )
        return {digest: expires for digest, expires in rows.tuples()}

    async def revoke(self, digest: str) -> None:
        await self.session.execute(delete(UserTokenRow).where(UserTokenRow.digest == digest))

    async def revoke_all(self, user_id: int, *, except_digest: str | None = None) -> None:
        query = delete(UserTokenRow).where(UserTokenRow.user_id == user_id)
        if except_digest is not None:
            query = query.where(UserTokenRow.digest != except_digest)
        await self.session.execute(query)

    async def purge_expired(self, now: datetime) -> int:
        result = await self.session.execute(
            delete(UserTokenRow).where(UserTokenRow.expires_at <= now)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


class AppTokenRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, row: AppTokenRow) -> None:
        self.session.add(row)
        await self.session.flush()

    async def by_digest(self, digest: str) -> AppTokenRow | None:
        return await self.session.scalar(select(AppTokenRow).where(AppTokenRow.digest == digest))

    async def purge_expired(self, now: datetime) -> int:
        result = await self.session.execute(
            delete(AppTokenRow).where(AppTokenRow.expires_at <= now)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


class CodeRepository:
    """Captchas, SMS codes and password-reset links."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add_captcha(self, row: CaptchaRow) -> None:
        self.session.add(row)
        await self.session.flush()

    async def captcha(self, captcha_id: str) -> CaptchaRow | None:
        return await self.session.get(CaptchaRow, captcha_id)

    async def burn_captcha(self, captcha_id: str) -> bool:
        """Mark a captcha used; False if it already was (one guess per captcha, even when
        requests race)."""
        result = await self.session.execute(
            update(CaptchaRow)
            .where(CaptchaRow.id == captcha_id, CaptchaRow.used.is_(False))
            .values(used=True)
        )
        return _changed_one(result)

    async def add_sms_code(self, row: SmsCodeRow) -> None:
        """Store a new code; earlier live codes of the same phone stop being accepted."""
        await self.session.execute(
            update(SmsCodeRow)
            .where(
                SmsCodeRow.app_id == row.app_id,
                SmsCodeRow.phone == row.phone,
                SmsCodeRow.consumed_at.is_(None),
            )
            .values(consumed_at=row.created_at)
        )
        self.session.add(row)
        await self.session.flush()

    async def sms_sends_since(self, app_id: int, phone: str, since: datetime) -> int:
        count = await self.session.scalar(
            select(func.count(SmsCodeRow.id)).where(
                SmsCodeRow.app_id == app_id,
                SmsCodeRow.phone == phone,
                SmsCodeRow.created_at >= since,
            )
        )
        return int(count or 0)

    async def newest_sms_code(self, app_id: int, phone: str) -> SmsCodeRow | None:
        return await self.session.scalar(
            select(SmsCodeRow)
            .where(SmsCodeRow.app_id == app_id, SmsCodeRow.phone == phone)
            .order_by(SmsCodeRow.created_at.desc(), SmsCodeRow.id.desc())
            .limit(1)
        )

    async def count_attempt(self, code_id: int, limit: int) -> bool:
        """Count one guess at a code; False once ``limit`` guesses were made. Atomic."""
        result = await self.session.execute(
            update(SmsCodeRow)
            .where(SmsCodeRow.id == code_id, SmsCodeRow.attempts < limit)
            .values(attempts=SmsCodeRow.attempts + 1)
        )
        return _changed_one(result)

    async def consume_sms_code(self, code_id: int, now: datetime) -> bool:
        """Mark a code used; False if it already was. Atomic."""
        result = await self.session.execute(
            update(SmsCodeRow)
            .where(SmsCodeRow.id == code_id, SmsCodeRow.consumed_at.is_(None))
            .values(consumed_at=now)
        )
        return _changed_one(result)

    async def use_password_reset(self, reset_id: int, now: datetime) -> bool:
        """Mark a reset link used; False if it already was. Atomic."""
        result = await self.session.execute(
            update(PasswordResetRow)
            .where(PasswordResetRow.id == reset_id, PasswordResetRow.used_at.is_(None))
            .values(used_at=now)
        )
        return _changed_one(result)

    async def add_password_reset(self, row: PasswordResetRow) -> None:
        self.session.add(row)
        await self.session.flush()

    async def password_reset(self, digest: str) -> PasswordResetRow | None:
        return await self.session.scalar(
            select(PasswordResetRow).where(PasswordResetRow.digest == digest)
        )

    async def purge_expired(self, now: datetime) -> int:
        removed = 0
        for model, column in (
            (CaptchaRow, CaptchaRow.expires_at),
            (PasswordResetRow, PasswordResetRow.expires_at),
        ):
            result = await self.session.execute(delete(model).where(column <= now))
            removed += int(result.rowcount or 0)  # type: ignore[attr-defined]
        # SMS codes are kept for an hour after expiry: they count towards the hourly send limit.
        result = await self.session.execute(
            delete(SmsCodeRow).where(
                SmsCodeRow.expires_at <= now,
                SmsCodeRow.created_at < now - timedelta(hours=1),
            )
        )
        return removed + int(result.rowcount or 0)  # type: ignore[attr-defined]


class NonceRepository:
    """The (app, ``Timestamp``, ``Nonce``) of each signed ``appapi`` call: each accepted once."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def use(self, app_id: int, timestamp: int, nonce: str, now: datetime) -> None:
        """Record the triple; `NonceReplayed` if it was already used (the unit of work then
        ends, storing nothing). Atomic: of racing requests with the same triple exactly one
        succeeds, as the unique constraint decides."""
        self.session.add(ApiNonceRow(app_id=app_id, timestamp=timestamp, nonce=nonce, used_at=now))
        try:
            await self.session.flush()
        except IntegrityError as exc:
            raise NonceReplayed(
                f"Nonce: {nonce} was already used with Timestamp {timestamp}"
            ) from exc

    async def purge_before(self, cutoff: datetime) -> int:
        """Drop triples used before ``cutoff`` (their Timestamp can no longer be accepted)."""
        result = await self.session.execute(delete(ApiNonceRow).where(ApiNonceRow.used_at < cutoff))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _changed_one(result: Any) -> bool:
    return int(result.rowcount or 0) == 1
