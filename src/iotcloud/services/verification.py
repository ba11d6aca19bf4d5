"""App tokens, captchas, and verification codes sent by SMS or e-mail.

Codes are single-use, expire, allow a bounded number of wrong guesses, and a phone (or e-mail
address) receives a bounded number of codes per hour. Only a digest of each code is stored.

E-mail codes live beside SMS codes in ``sms_codes``, under the key `email_code_key` of the
address (``@`` and a digest of it, which no phone number can equal), and follow the same
``IOTCLOUD_SMS_CODE_*`` rules: one table, one set of limits, one purge.
"""

from __future__ import annotations

import hashlib
import html
import logging
import secrets
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession

from iotcloud.config import Settings
from iotcloud.domain.accounts import FieldInvalid, check_email, check_phone
from iotcloud.domain.clock import Clock, iso_utc
from iotcloud.errors import (
    AppAuthInvalid,
    CodeExpired,
    CodeInvalid,
    EmailUnavailable,
    FormInvalid,
    PhoneUnavailable,
    Throttled,
    TokenExpired,
    TokenInvalid,
    UserNotFound,
)
from iotcloud.notify.captcha import CaptchaRenderer
from iotcloud.notify.mail import Mail, Mailer
from iotcloud.notify.sms import SmsMessage, SmsSender
from iotcloud.services.apps import App, AppService
from iotcloud.services.credentials import (
    digest,
    new_captcha_answer,
    new_numeric_code,
    new_token,
    same_secret,
)
from iotcloud.storage.accounts import (
    AppTokenRepository,
    CodeRepository,
    NonceRepository,
    UserRepository,
)
from iotcloud.storage.database import Database
from iotcloud.storage.models import AppTokenRow, CaptchaRow, SmsCodeRow

log = logging.getLogger(__name__)

_EMAIL_KEY_DIGITS = 23  # "@" + 23 hex digits fill the 24 characters of sms_codes.phone


def email_code_key(email: str) -> str:
    """Where the codes of a (normalised) e-mail address are kept in ``sms_codes.phone``: ``@``
    and the first 92 bits of its SHA-256, so neither the address nor a phone number fits."""
    return "@" + hashlib.sha256(email.encode()).hexdigest()[:_EMAIL_KEY_DIGITS]


class CaptchaNotFound(CodeInvalid):
    """Unknown, used or expired captcha id."""


class VerificationService:
    def __init__(
        self,
        db: Database,
        apps: AppService,
        clock: Clock,
        settings: Settings,
        sms: SmsSender,
        captcha: CaptchaRenderer,
        mailer: Mailer | None = None,
    ) -> None:
        self.mailer = mailer
        self.db = db
        self.apps = apps
        self.clock = clock
        self.settings = settings
        self.sms = sms
        self.captcha = captcha

    # -- app tokens ---------------------------------------------------------------------------

    async def request_app_token(self, app: App, signature: str) -> tuple[str, datetime]:
        """Issue an app token when ``signature`` is ``md5(appid + appsecret)`` (9038 otherwise)."""
        secret = await self.apps.secret(app)
        expected = hashlib.md5((app.appid + secret).encode(), usedforsecurity=False).hexdigest()
        if not signature or not same_secret(expected, signature.strip().lower()):
            raise AppAuthInvalid("X-Gizwits-Application-Auth must be md5(appid + appsecret)")
        token, token_digest = new_token()
        now = self.clock.now()
        expires = now + timedelta(seconds=self.settings.app_token_ttl)
        async with self.db.session() as session:
            await AppTokenRepository(session).add(
                AppTokenRow(digest=token_digest, app_id=app.id, created_at=now, expires_at=expires)
            )
        return token, expires

    async def check_app_token(self, app: App, token: str | None) -> None:
        """Raise 9004/9006 unless ``token`` is a live app token of ``app``."""
        if not token:
            raise TokenInvalid("X-Gizwits-Application-Token missing")
        async with self.db.session() as session:
            row = await AppTokenRepository(session).by_digest(digest(token))
        if row is None or row.app_id != app.id:
            raise TokenInvalid("X-Gizwits-Application-Token is not a token of this app")
        if row.expires_at <= self.clock.now():
            raise TokenExpired("X-Gizwits-Application-Token expired; request a new one")

    async def use_nonce(self, app: App, timestamp: int, nonce: str) -> None:
        """Spend the (``app``, ``timestamp``, ``nonce``) of a signed call; raises
        `NonceReplayed` (storing nothing) when it was spent before."""
        async with self.db.session() as session:
            await NonceRepository(session).use(app.id, timestamp, nonce, self.clock.now())

    # -- captchas -----------------------------------------------------------------------------

    async def new_captcha(self, app: App) -> str:
        answer = self.settings.dev_captcha_code or new_captcha_answer(self.settings.captcha_length)
        captcha_id = secrets.token_urlsafe(24)
        now = self.clock.now()
        async with self.db.session() as session:
            await CodeRepository(session).add_captcha(
                CaptchaRow(
                    id=captcha_id,
                    app_id=app.id,
                    answer=answer,
                    created_at=now,
                    expires_at=now + timedelta(seconds=self.settings.captcha_ttl),
                    used=False,
                )
            )
        return captcha_id

    async def captcha_png(self, captcha_id: str) -> bytes:
        """The image of a live, unused captcha; raises ``CaptchaNotFound``."""
        async with self.db.session() as session:
            row = await CodeRepository(session).captcha(captcha_id)
        if row is None or row.used or row.expires_at <= self.clock.now():
            raise CaptchaNotFound("captcha unknown, used or expired")
        return await self.captcha.png(row.answer)

    async def _solve_captcha(self, app: App, captcha_id: str, answer: str) -> None:
        """Burn the captcha (one guess each) and raise 9009/9010 unless ``answer`` is right."""
        async with self.db.session() as session:
            codes = CodeRepository(session)
            row = await codes.captcha(captcha_id)
            if row is None or row.app_id != app.id or not await codes.burn_captcha(captcha_id):
                raise CodeInvalid("captcha_id unknown or already used")
            expired = row.expires_at <= self.clock.now()
            right = same_secret(row.answer.upper(), answer.strip().upper())
        if expired:
            raise CodeExpired("captcha expired; request a new one")
        if not right:
            raise CodeInvalid("captcha_code is wrong; request a new captcha")

    # -- SMS codes ----------------------------------------------------------------------------

    async def send_code_with_captcha(
        self, app: App, captcha_id: str, captcha_code: str, phone: str
    ) -> None:
        phone = _phone(phone)
        await self._solve_captcha(app, captcha_id, captcha_code)
        await self.send_code(app, phone)

    async def send_code(
        self,
        app: App,
        phone: str,
        purpose: str | None = None,
        *,
        registered: bool | None = None,
    ) -> None:
        """Send a fresh code to ``phone``; earlier codes stop working. 9041 past the hourly cap.

        ``purpose`` is what the message says the code is for; by default ``register`` for a
        phone no user has, else ``verify``. ``registered`` True requires a user with the phone
        (9005 otherwise), False requires none (9018 otherwise); nothing is stored or sent then.
        """
        phone = _phone(phone)
        now = self.clock.now()
        code = new_numeric_code(self.settings.sms_code_length)
        # Serialised per phone: concurrent sends must not slip past the hourly cap together.
        async with self.db.session(lock=f"sms-code:{app.id}:{phone}") as session:
            purpose = await self._store_code(
                session, app, "phone", phone, phone, code, now, purpose, registered
            )
            # Sent inside the unit of work: if delivery fails, the code is not stored either.
            await self.sms.send(
                SmsMessage(phone=phone, code=code, purpose=purpose, sent_at=iso_utc(now))
            )

    async def verify_code(self, app: App, phone: str, code: str) -> None:
        """Check and consume a code on its own (``PUT /app/verify/codes``)."""
        phone = _phone(phone)
        async with self.db.session() as session:
            await self.consume_code(session, app, phone, code)

    async def consume_code(self, session: AsyncSession, app: App, phone: str, code: str) -> None:
        """Mark the newest code of ``phone`` used in ``session``'s unit of work.

        Every guess is counted first, in a transaction of its own, so the count sticks even when
        the caller's work is rolled back and however many guesses race. Call it before any
        other write of the caller's unit of work. Raises 9010 (wrong, used, or too many guesses)
        or 9009 (expired).
        """
        await self._consume(session, app, phone, code, "phone")

    async def check_code(self, app: App, phone: str, code: str) -> None:
        """Whether ``code`` is the live code of ``phone``, without using it up (Tencent's
        ``AppCheckVerificationCode`` precedes the call that consumes it). The guess counts
        towards the attempt limit. Raises 9010 or 9009 as `consume_code` does."""
        phone = _phone(phone)
        async with self.db.session() as session:
            await self._match(session, app, phone, code, "phone")

    async def _store_code(
        self,
        session: AsyncSession,
        app: App,
        kind: Literal["phone", "email"],
        identity: str,
        key: str,
        code: str,
        now: datetime,
        purpose: str | None,
        registered: bool | None,
    ) -> str:
        """Store a fresh ``code`` for the phone or e-mail ``identity`` (kept under ``key``) in
        ``session``'s unit of work, after the hourly cap (`Throttled`) and the ``registered``
        rule of `send_code`; returns its purpose (by default ``verify`` when a user has the
        identity, else ``register``)."""
        codes = CodeRepository(session)
        cap = self.settings.sms_sends_per_phone_per_hour
        if cap and await codes.sms_sends_since(app.id, key, now - timedelta(hours=1)) >= cap:
            per = "phone" if kind == "phone" else "e-mail address"
            raise Throttled(f"at most {cap} codes per {per} per hour", retry_after=600)
        taken = await UserRepository(session).identity_taken(app.id, kind, identity)
        _require_registered(registered, taken, kind, identity)
        if purpose is None:
            purpose = "verify" if taken else "register"
        await codes.add_sms_code(
            SmsCodeRow(
                app_id=app.id,
                phone=key,
                digest=digest(code),
                purpose=purpose,
                created_at=now,
                expires_at=now + timedelta(seconds=self.settings.sms_code_ttl),
                attempts=0,
            )
        )
        return purpose

    # -- e-mail codes -------------------------------------------------------------------------

    async def send_email_code(
        self, app: App, email: str, purpose: str, *, registered: bool | None = None
    ) -> None:
        """Mail a fresh code to ``email``; earlier codes stop working. The hourly cap, every
        other rule of SMS codes and ``registered`` as in `send_code` apply. If the mail cannot
        be sent, the code is not stored."""
        email = _email(email)
        if self.mailer is None:
            raise FormInvalid("email: this server sends no verification mail")
        key = email_code_key(email)
        now = self.clock.now()
        code = new_numeric_code(self.settings.sms_code_length)
        async with self.db.session(lock=f"mail-code:{app.id}:{key}") as session:
            await self._store_code(
                session, app, "email", email, key, code, now, purpose, registered
            )
            minutes = max(1, self.settings.sms_code_ttl // 60)
            await self.mailer.send(
                Mail(
                    to=email,
                    subject=f"Your {app.name} verification code: {code}",
                    text=(
                        f"Your {app.name} verification code is {code}.\n\n"
                        f"It is valid for {minutes} minutes. If you did not ask for it, ignore "
                        "this mail.\n"
                    ),
                    html=(
                        f"<p>Your {html.escape(app.name)} verification code is "
                        f"<b>{code}</b>.</p><p>It is valid for {minutes} minutes. If you did "
                        "not ask for it, ignore this mail.</p>"
                    ),
                )
            )

    async def check_email_code(self, app: App, email: str, code: str) -> None:
        """`check_code` for an e-mail address: the code stays usable."""
        email = _email(email)
        async with self.db.session() as session:
            await self._match(session, app, email_code_key(email), code, "e-mail address")

    async def consume_email_code(
        self, session: AsyncSession, app: App, email: str, code: str
    ) -> None:
        """`consume_code` for a normalised e-mail address, in ``session``'s unit of work."""
        await self._consume(session, app, email_code_key(email), code, "e-mail address")

    # -- code internals -----------------------------------------------------------------------

    async def _match(
        self, session: AsyncSession, app: App, key: str, code: str, what: str
    ) -> SmsCodeRow:
        """The newest live code row of ``key`` when ``code`` is it; the guess is counted first,
        in a transaction of its own. Raises 9010 or 9009."""
        if not code:
            raise FormInvalid("code: must not be empty")
        row = await CodeRepository(session).newest_sms_code(app.id, key)
        now = self.clock.now()
        if row is None or row.consumed_at is not None:
            raise CodeInvalid(f"no unused code was sent to this {what}; request one")
        if row.expires_at <= now:
            raise CodeExpired("the code expired; request a new one")
        async with self.db.session() as attempt:
            allowed = await CodeRepository(attempt).count_attempt(
                row.id, self.settings.sms_code_max_attempts
            )
        if not allowed:
            raise CodeInvalid("too many wrong codes; request a new one")
        if not same_secret(row.digest, digest(code.strip())):
            raise CodeInvalid("the code is wrong")
        return row

    async def _consume(
        self, session: AsyncSession, app: App, key: str, code: str, what: str
    ) -> None:
        row = await self._match(session, app, key, code, what)
        if not await CodeRepository(session).consume_sms_code(row.id, self.clock.now()):
            raise CodeInvalid("this code was just used")


def _require_registered(registered: bool | None, taken: bool, field: str, value: str) -> None:
    if registered is True and not taken:
        raise UserNotFound(f"no user with {field} {value} in this app")
    if registered is False and taken:
        error = PhoneUnavailable if field == "phone" else EmailUnavailable
        raise error(f"{field} {value} is already registered in this app")


def _email(value: str) -> str:
    try:
        return check_email(value)
    except FieldInvalid as exc:
        raise FormInvalid(str(exc)) from exc


def _phone(value: str) -> str:
    try:
        return check_phone(value)
    except FieldInvalid as exc:
        raise FormInvalid(str(exc)) from exc
