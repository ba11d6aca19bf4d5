"""Password reset: a one-time link by e-mail, or a phone + SMS code."""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from datetime import timedelta

from iotcloud.config import Settings
from iotcloud.domain import accounts as rules
from iotcloud.domain.clock import Clock
from iotcloud.errors import CodeExpired, CodeInvalid, FormInvalid, UserNotFound
from iotcloud.notify.mail import Mail, Mailer
from iotcloud.services.apps import App
from iotcloud.services.credentials import PasswordHasher, digest, new_token
from iotcloud.services.verification import VerificationService
from iotcloud.storage.accounts import CodeRepository, UserRepository, UserTokenRepository
from iotcloud.storage.database import Database
from iotcloud.storage.models import PasswordResetRow, UserRow

log = logging.getLogger(__name__)

RESET_PATH = "/account/reset"


class PasswordResetService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        settings: Settings,
        hasher: PasswordHasher,
        codes: VerificationService,
        mailer: Mailer,
        drop_user_sessions: Callable[[int], None],
    ) -> None:
        self.drop_user_sessions = drop_user_sessions
        self.db = db
        self.clock = clock
        self.settings = settings
        self.hasher = hasher
        self.codes = codes
        self.mailer = mailer

    async def send_reset_link(self, app: App, email: str) -> None:
        """Mail a one-time reset link to the user with ``email`` (9005 when there is none).

        If the mail cannot be sent, the link is not stored either.
        """
        try:
            email = rules.check_email(email)
        except rules.FieldInvalid as exc:
            raise FormInvalid(str(exc)) from exc
        token, token_digest = new_token()
        now = self.clock.now()
        ttl = self.settings.password_reset_ttl
        async with self.db.session() as session:
            user = await UserRepository(session).by_field(app.id, "email", email)
            if user is None:
                raise UserNotFound(f"no user with email {email} in this app")
            await CodeRepository(session).add_password_reset(
                PasswordResetRow(
                    digest=token_digest,
                    user_id=user.id,
                    created_at=now,
                    expires_at=now + timedelta(seconds=ttl),
                )
            )
            link = f"{self.settings.base_url}{RESET_PATH}/{token}"
            minutes = ttl // 60
            await self.mailer.send(
                Mail(
                    to=email,
                    subject=f"Reset your {app.name} password",
                    text=(
                        f"Someone asked to reset the password of your {app.name} account.\n\n"
                        f"Open this link within {minutes} minutes to choose a new password:\n"
                        f"{link}\n\nIf it was not you, ignore this mail; nothing changes.\n"
                    ),
                    html=(
                        f"<p>Someone asked to reset the password of your "
                        f'{html.escape(app.name)} account.</p><p><a href="{html.escape(link)}">'
                        f"Choose a new password</a> (valid for {minutes} minutes).</p>"
                        "<p>If it was not you, ignore this mail; nothing changes.</p>"
                    ),
                )
            )

    async def check_link(self, token: str) -> str:
        """The e-mail address a live link resets; raises 9010 (unknown/used) or 9009 (expired)."""
        async with self.db.session() as session:
            row = await CodeRepository(session).password_reset(digest(token))
            if row is None or row.used_at is not None:
                raise CodeInvalid("this reset link is unknown or was already used")
            if row.expires_at <= self.clock.now():
                raise CodeExpired("this reset link expired; ask for a new one")
            user = await session.get(UserRow, row.user_id)
            return (user.email or "") if user else ""

    async def reset_with_link(self, token: str, new_password: str) -> None:
        """Set the password through a mailed link; the link is burnt, all sessions end."""
        try:
            rules.check_password(new_password, self.settings.password_min_length, "new_pwd")
        except rules.FieldInvalid as exc:
            raise FormInvalid(str(exc)) from exc
        new_hash = await self.hasher.hash(new_password)
        async with self.db.session() as session:
            row = await CodeRepository(session).password_reset(digest(token))
            now = self.clock.now()
            if row is None or row.used_at is not None:
                raise CodeInvalid("this reset link is unknown or was already used")
            if row.expires_at <= now:
                raise CodeExpired("this reset link expired; ask for a new one")
            user = await session.get(UserRow, row.user_id)
            if user is None:
                raise UserNotFound("the user was deleted")
            if not await CodeRepository(session).use_password_reset(row.id, now):
                raise CodeInvalid("this reset link was just used")
            user.password_hash = new_hash
            user.updated_at = now
            await UserTokenRepository(session).revoke_all(user.id)
        self.drop_user_sessions(user.id)

    async def reset_with_code(
        self, app: App, field: str, value: str, code: str, new_password: str
    ) -> None:
        """Set the password of the user whose ``field`` (``phone`` or ``email``, normalised by
        the caller) is ``value`` after checking a code sent there; every session of the user
        ends. 9005 when there is no such user, 9010/9009 for the code."""
        try:
            rules.check_password(new_password, self.settings.password_min_length, "Password")
        except rules.FieldInvalid as exc:
            raise FormInvalid(str(exc)) from exc
        new_hash = await self.hasher.hash(new_password)
        async with self.db.session() as session:
            user = await UserRepository(session).by_field(app.id, field, value)
            if user is None:
                raise UserNotFound(f"no user with this {field} in this app")
            if field == "email":
                await self.codes.consume_email_code(session, app, value, code)
            else:
                await self.codes.consume_code(session, app, value, code)
            user.password_hash = new_hash
            user.updated_at = self.clock.now()
            await UserTokenRepository(session).revoke_all(user.id)
        self.drop_user_sessions(user.id)

    async def reset_by_phone(self, app: App, phone: str, code: str, new_password: str) -> None:
        """Set the password of the user with ``phone`` after checking an SMS code."""
        try:
            phone = rules.check_phone(phone)
            rules.check_password(new_password, self.settings.password_min_length, "new_pwd")
        except rules.FieldInvalid as exc:
            raise FormInvalid(str(exc)) from exc
        new_hash = await self.hasher.hash(new_password)
        async with self.db.session() as session:
            user = await UserRepository(session).by_field(app.id, "phone", phone)
            if user is None:
                raise UserNotFound(f"no user with phone {phone} in this app")
            await self.codes.consume_code(session, app, phone, code)
            user.password_hash = new_hash
            user.updated_at = self.clock.now()
            await UserTokenRepository(session).revoke_all(user.id)
        self.drop_user_sessions(user.id)
