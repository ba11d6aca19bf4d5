"""App tokens, captchas and SMS verification codes.

Codes are single-use, expire, allow a bounded number of wrong guesses, and a phone receives a
bounded number of codes per hour. Only a digest of each code is stored.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from iotcloud.config import Settings
from iotcloud.domain.accounts import FieldInvalid, check_phone
from iotcloud.domain.clock import Clock, iso_utc
from iotcloud.errors import (
    AppAuthInvalid,
    CodeExpired,
    CodeInvalid,
    FormInvalid,
    Throttled,
    TokenExpired,
    TokenInvalid,
)
from iotcloud.notify.captcha import CaptchaRenderer
from iotcloud.notify.sms import SmsMessage, SmsSender
from iotcloud.services.apps import App, AppService
from iotcloud.services.credentials import (
    digest,
    new_captcha_answer,
    new_numeric_code,
    new_token,
    same_secret,
)
from iotcloud.storage.accounts import AppTokenRepository, CodeRepository, UserRepository
from iotcloud.storage.database import Database
from iotcloud.storage.models import AppTokenRow, CaptchaRow, SmsCodeRow

log = logging.getLogger(__name__)


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
    ) -> None:
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

    async def send_code(self, app: App, phone: str) -> None:
        """Send a fresh code to ``phone``; earlier codes stop working. 9041 past the hourly cap."""
        phone = _phone(phone)
        now = self.clock.now()
        code = new_numeric_code(self.settings.sms_code_length)
        # Serialised per phone: concurrent sends must not slip past the hourly cap together.
        async with self.db.session(lock=f"sms-code:{app.id}:{phone}") as session:
            codes = CodeRepository(session)
            cap = self.settings.sms_sends_per_phone_per_hour
            if cap and await codes.sms_sends_since(app.id, phone, now - timedelta(hours=1)) >= cap:
                raise Throttled(f"at most {cap} codes per phone per hour", retry_after=600)
            registered = await UserRepository(session).identity_taken(app.id, "phone", phone)
            purpose = "verify" if registered else "register"
            await codes.add_sms_code(
                SmsCodeRow(
                    app_id=app.id,
                    phone=phone,
                    digest=digest(code),
                    purpose=purpose,
                    created_at=now,
                    expires_at=now + timedelta(seconds=self.settings.sms_code_ttl),
                    attempts=0,
                )
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
        if not code:
            raise FormInvalid("code: must not be empty")
        codes = CodeRepository(session)
        row = await codes.newest_sms_code(app.id, phone)
        now = self.clock.now()
        if row is None or row.consumed_at is not None:
            raise CodeInvalid("no unused code was sent to this phone; request one")
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
        if not await codes.consume_sms_code(row.id, now):
            raise CodeInvalid("this code was just used")


def _phone(value: str) -> str:
    try:
        return check_phone(value)
    except FieldInvalid as exc:
        raise FormInvalid(str(exc)) from exc
