"""App users: sign-up in every Gizwits variant, sign-in, tokens, profile changes, logout."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from iotcloud.config import Settings
from iotcloud.domain import accounts as rules
from iotcloud.domain.clock import Clock
from iotcloud.errors import (
    EmailUnavailable,
    FormInvalid,
    IotCloudError,
    LoginFailed,
    NothingChanged,
    PhoneUnavailable,
    TokenExpired,
    TokenInvalid,
    UserInvalid,
    UsernameUnavailable,
    UserNotFound,
)
from iotcloud.notify.mail import Mail, Mailer
from iotcloud.notify.oauth import ThirdPartyIdentity, ThirdPartyVerifier
from iotcloud.services.apps import App
from iotcloud.services.auth_cache import AuthCache
from iotcloud.services.credentials import PasswordHasher, digest, new_token, new_uid
from iotcloud.services.validation import checked
from iotcloud.services.verification import VerificationService
from iotcloud.storage.accounts import UserRepository, UserTokenRepository
from iotcloud.storage.database import Database
from iotcloud.storage.models import UserRow

log = logging.getLogger(__name__)

#: Token digests looked up in one query (under every database's bound-parameter limit).
TOKEN_BATCH = 500


@dataclass(frozen=True)
class IssuedToken:
    """What sign-up and sign-in return: ``expire_at`` in Unix seconds."""

    uid: str
    token: str
    expire_at: int


@dataclass(frozen=True)
class UserProfile:
    uid: str
    is_anonymous: bool
    username: str | None
    phone: str | None
    email: str | None
    name: str | None
    gender: str | None
    birthday: str | None
    address: str | None
    lang: str | None
    remark: str | None


@dataclass(frozen=True)
class CurrentUser:
    """The user behind a request's user token, as loaded when the token was checked."""

    app_id: int
    user_id: int
    uid: str
    token_digest: str
    profile: UserProfile
    token_expires: datetime


@dataclass(frozen=True)
class TokensRevoked:
    """User tokens this process just revoked (the change is committed): the one with
    ``digest``, or, when it is None, every token of ``user_id`` but ``kept``. ``reason`` says
    why, in words for the user who held them."""

    user_id: int
    reason: str
    digest: str | None = None
    kept: str | None = None


@dataclass(frozen=True)
class UserChange:
    """A ``PUT /app/users`` body; ``None`` means the field was not sent."""

    username: str | None = None
    password: str | None = None
    phone: str | None = None
    code: str | None = None
    old_pwd: str | None = None
    new_pwd: str | None = None
    email: str | None = None
    profile: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class UserRecord:
    """A user as their own app shows them (Tencent ``AppGetUser``), read fresh from the store:
    ``name`` is the nickname (the Gizwits profile ``name``), ``avatar`` a picture's URL."""

    uid: str
    username: str | None
    phone: str | None
    email: str | None
    name: str | None
    avatar: str | None
    has_password: bool
    created_at: datetime
    updated_at: datetime


TEMPERATURE_UNITS: tuple[str, ...] = ("celsius", "fahrenheit")


@dataclass(frozen=True)
class UserSettings:
    """A user's app settings (Tencent ``AppGetUserSetting``). Everything but the zone is kept in
    ``users.settings`` (values never stored keep these defaults); ``time_zone`` is
    ``users.time_zone``, an IANA name, or None when the user chose none (then the server's
    ``IOTCLOUD_TIMEZONE`` applies, see :meth:`AccountService.time_zone`)."""

    wechat_push: bool = False
    device_message_push: bool = True
    family_message_push: bool = True
    notify_message_push: bool = True
    temperature_unit: str = "celsius"
    region: str = ""
    time_zone: str | None = None


class AccountService:
    """Every operation is one unit of work: a failure leaves no user, token or used code behind.

    ``on_tokens_revoked``, when set, hears of every sign-out and password change once it is
    committed (the WebSocket API ends the sessions of those tokens from it); its failures are
    logged and never reach the caller. Other processes learn of revocations only from the
    database.
    """

    def __init__(
        self,
        db: Database,
        clock: Clock,
        settings: Settings,
        hasher: PasswordHasher,
        codes: VerificationService,
        third_party: ThirdPartyVerifier,
        mailer: Mailer,
        auth_cache: AuthCache[CurrentUser],
    ) -> None:
        self.auth_cache = auth_cache
        self.on_tokens_revoked: Callable[[TokensRevoked], None] | None = None
        self.on_user_changed: Callable[[int], None] | None = None
        self.db = db
        self.clock = clock
        self.settings = settings
        self.hasher = hasher
        self.codes = codes
        self.third_party = third_party
        self.mailer = mailer

    # -- sign-up ------------------------------------------------------------------------------

    async def create_anonymous(
        self, app: App, phone_id: str, lang: str | None = None
    ) -> IssuedToken:
        """Idempotent per ``phone_id``: the same phone_id always maps to the same uid."""
        phone_id = checked(rules.check_phone_id, phone_id)
        for _ in range(2):  # a concurrent create of the same phone_id wins once; then we find it
            try:
                async with self.db.session() as session:
                    users = UserRepository(session)
                    user = await users.by_field(app.id, "phone_id", phone_id)
                    if user is None:
                        user = await users.save(
                            self._new_user(app, phone_id=phone_id, is_anonymous=True, lang=lang)
                        )
                    return await self._issue(session, user)
            except UsernameUnavailable:
                continue
        raise UserInvalid("phone_id is being registered concurrently; retry")

    async def create_with_username(
        self, app: App, username: str, password: str, lang: str | None = None
    ) -> IssuedToken:
        username = checked(rules.check_username, username)
        password_hash = await self._hash_new(password, "password")
        async with self.db.session() as session:
            users = UserRepository(session)
            if await users.identity_taken(app.id, "username", username):
                raise UsernameUnavailable(f"username {username} is taken")
            user = await users.save(
                self._new_user(app, username=username, password_hash=password_hash, lang=lang)
            )
            return await self._issue(session, user)

    async def create_with_email(
        self, app: App, email: str, password: str, lang: str | None = None
    ) -> IssuedToken:
        email = checked(rules.check_email, email)
        password_hash = await self._hash_new(password, "password")
        async with self.db.session() as session:
            users = UserRepository(session)
            if await users.identity_taken(app.id, "email", email):
                raise EmailUnavailable(f"email {email} is taken")
            user = await users.save(
                self._new_user(app, email=email, password_hash=password_hash, lang=lang)
            )
            issued = await self._issue(session, user)
        await self._notify(
            Mail(
                to=email,
                subject=f"Welcome to {app.name}",
                text=f"Your {app.name} account {email} is ready. You can sign in now.\n",
            )
        )
        return issued

    async def create_with_phone(
        self, app: App, phone: str, code: str, password: str | None, lang: str | None = None
    ) -> IssuedToken:
        """Phone + SMS code, with a password or password-free."""
        phone = checked(rules.check_phone, phone)
        password_hash = await self._hash_new(password, "password") if password is not None else None
        async with self.db.session() as session:
            users = UserRepository(session)
            if await users.identity_taken(app.id, "phone", phone):
                raise PhoneUnavailable(f"phone {phone} is taken")
            await self.codes.consume_code(session, app, phone, code)
            user = await users.save(
                self._new_user(app, phone=phone, password_hash=password_hash, lang=lang)
            )
            return await self._issue(session, user)

    async def create_with_third_party(
        self, app: App, identity: ThirdPartyIdentity, lang: str | None = None
    ) -> IssuedToken:
        """Verified with the provider; signing up twice signs the same user in again."""
        for name, value in (("authData.uid", identity.uid), ("authData.token", identity.token)):
            if not 1 <= len(value) <= 512:
                raise FormInvalid(f"{name}: must be 1 to 512 characters")
        if len(identity.uid) > 128:
            raise FormInvalid("authData.uid: must be at most 128 characters")
        await self.third_party.verify(identity)
        for _ in range(2):
            try:
                async with self.db.session() as session:
                    users = UserRepository(session)
                    user = await users.by_third_party(app.id, identity.src, identity.uid)
                    if user is None:
                        user = await users.save(
                            self._new_user(
                                app, auth_src=identity.src, auth_uid=identity.uid, lang=lang
                            )
                        )
                    return await self._issue(session, user)
            except UsernameUnavailable:
                continue
        raise UserInvalid("this identity is being registered concurrently; retry")

    async def register_with_code(
        self, app: App, field: str, value: str, code: str, password: str
    ) -> str:
        """A new user with a password whose ``field`` (``phone`` or ``email``, normalised by
        the caller) was proven by a code sent there; returns the uid. No token is issued (the
        Tencent sign-up answers only ``UserID``). 9018/9022 when taken, 9010/9009 for the code;
        the code is used up only when the user is made."""
        password_hash = await self._hash_new(password, "Password")
        async with self.db.session() as session:
            users = UserRepository(session)
            if await users.identity_taken(app.id, field, value):
                raise _TAKEN[field](f"{field} {value} is already registered in this app")
            await self._consume_code(session, app, field, value, code)
            user = await users.save(
                self._new_user(
                    app,
                    password_hash=password_hash,
                    phone=value if field == "phone" else None,
                    email=value if field == "email" else None,
                )
            )
            return user.uid

    # -- sign-in and tokens -------------------------------------------------------------------

    async def sign_in(self, app: App, field: str, value: str, password: str) -> IssuedToken:
        """Sign in the user whose ``field`` (``phone`` or ``email``, normalised) is ``value``:
        9005 when there is none (Tencent tells ``ErrorUserNotExists`` apart), 9020 when the
        password is wrong or the user has none."""
        async with self.db.session() as session:
            user = await UserRepository(session).by_field(app.id, field, value)
        if user is None:
            raise UserNotFound(f"no user with this {field} in this app")
        if not await self.hasher.verify(user.password_hash, password):
            raise LoginFailed("Password: wrong")
        async with self.db.session() as session:
            return await self._issue(session, user)

    async def sign_in_with_code(self, app: App, field: str, value: str, code: str) -> IssuedToken:
        """Sign in the user whose ``field`` is ``value`` with a code sent to it (the code is
        used up); 9005 when there is no such user, 9010/9009 for the code."""
        async with self.db.session() as session:
            user = await UserRepository(session).by_field(app.id, field, value)
            if user is None:
                raise UserNotFound(f"no user with this {field} in this app")
            await self._consume_code(session, app, field, value, code)
            return await self._issue(session, user)

    async def _consume_code(
        self, session: AsyncSession, app: App, field: str, value: str, code: str
    ) -> None:
        if field == "phone":
            await self.codes.consume_code(session, app, value, code)
        elif field == "email":
            await self.codes.consume_email_code(session, app, value, code)
        else:
            raise ValueError(f"codes are sent to a phone or an email, not a {field}")

    async def login(self, app: App, identity: str, password: str) -> IssuedToken:
        """Sign in with a username, e-mail or phone in ``identity``; 9020 on any mismatch."""
        kind = rules.login_identity_kind(identity)
        key = identity.lower() if kind == "email" else identity
        async with self.db.session() as session:
            user = await UserRepository(session).by_field(app.id, kind, key)
        password_hash = user.password_hash if user is not None else None
        if not await self.hasher.verify(password_hash, password) or user is None:
            raise LoginFailed("username or password is wrong")
        async with self.db.session() as session:
            return await self._issue(session, user)

    async def authenticate(self, app: App, token: str | None) -> CurrentUser:
        """The user behind ``token`` in ``app``; raises 9004 (unknown) or 9006 (expired)."""
        if not token:
            raise TokenInvalid("X-Gizwits-User-token missing")
        return await self._token_user(token, app.id)

    async def authenticate_token(self, token: str) -> CurrentUser:
        """The user behind ``token`` in the app the token was issued for (Tencent's
        ``AccessToken`` names no app); raises 9004 (empty, unknown) or 9006 (expired)."""
        if not token:
            raise TokenInvalid("user token missing")
        return await self._token_user(token, None)

    async def _token_user(self, token: str, app_id: int | None) -> CurrentUser:
        """The user behind a non-empty ``token`` (of app ``app_id`` unless None), through the
        auth cache; raises 9004 or 9006."""
        token_digest = digest(token)
        cached = self.auth_cache.get(token_digest)
        if cached is None:
            epoch = self.auth_cache.epoch
            async with self.db.session() as session:
                found = await UserTokenRepository(session).user_for(token_digest)
            if found is None:
                raise TokenInvalid("user token unknown or revoked")
            row, user = found
            if user.is_disabled:  # its tokens were revoked; one issued in a race is refused
                raise TokenInvalid("user token revoked: the user is disabled")
            current = CurrentUser(
                app_id=user.app_id,
                user_id=user.id,
                uid=user.uid,
                token_digest=token_digest,
                profile=_profile(user),
                token_expires=row.expires_at,
            )
            expires = row.expires_at
            self.auth_cache.put(token_digest, user.id, expires, current, epoch)
        else:
            current, expires = cached
        if app_id is not None and current.app_id != app_id:
            raise TokenInvalid("user token unknown or revoked")
        if expires <= self.clock.now():
            raise TokenExpired("user token expired; sign in again")
        return current

    async def logout(self, current: CurrentUser) -> None:
        async with self.db.session() as session:
            await UserTokenRepository(session).revoke(current.token_digest)
        self.tokens_revoked(TokensRevoked(current.user_id, "signed out", current.token_digest))

    def tokens_revoked(self, revoked: TokensRevoked) -> None:
        """Tell this process of a committed revocation: the auth cache forgets the tokens and
        ``on_tokens_revoked`` hears of it."""
        if revoked.digest is not None:
            self.auth_cache.drop_token(revoked.digest)
        else:
            self.auth_cache.drop_user(revoked.user_id)
        if self.on_tokens_revoked is None:
            return
        try:
            self.on_tokens_revoked(revoked)
        except Exception:  # the revocation stands whether or not anybody could be told
            log.exception("telling of revoked tokens of user %d failed", revoked.user_id)

    def user_changed(self, user_id: int) -> None:
        """Tell this process that a user's profile changed (committed): checked tokens of the
        user are read again; ``on_user_changed`` hears of it."""
        self.auth_cache.drop_user(user_id)
        if self.on_user_changed is not None:
            self.on_user_changed(user_id)

    async def token_expiries(self, digests: Collection[str]) -> dict[str, datetime]:
        """When each live token among the token ``digests`` expires; revoked and unknown ones
        are absent. Read from the database (never the cache), in one query per
        ``TOKEN_BATCH`` tokens."""
        found: dict[str, datetime] = {}
        ordered = list(digests)
        async with self.db.session() as session:
            tokens = UserTokenRepository(session)
            for start in range(0, len(ordered), TOKEN_BATCH):
                found.update(await tokens.expiries(ordered[start : start + TOKEN_BATCH]))
        return found

    # -- changes ------------------------------------------------------------------------------

    async def update(self, app: App, current: CurrentUser, change: UserChange) -> datetime:
        """Apply one ``PUT /app/users`` variant plus profile fields; returns ``updatedAt``.

        Variants: ``old_pwd+new_pwd``; ``username+password`` and ``phone+password+code`` (only for
        anonymous users); ``phone+code``; ``email``. Raises 9015 for other combinations, 9999 when
        nothing would change.
        """
        sent = {name for name in _CREDENTIAL_FIELDS if getattr(change, name) is not None}
        variant = _VARIANTS.get(frozenset(sent))
        if variant is None:
            raise FormInvalid(_explain_combination(sent))
        if not sent and not change.profile:
            raise FormInvalid("nothing to update: send at least one field")
        profile = {
            name: checked(rules.PROFILE_CHECKS[name], value)
            for name, value in change.profile.items()
        }
        new_hash: str | None = None
        if variant == "password":
            assert change.new_pwd is not None
            new_hash = await self._hash_new(change.new_pwd, "new_pwd")
        elif variant in {"anonymous_username", "anonymous_phone"}:
            assert change.password is not None
            new_hash = await self._hash_new(change.password, "password")

        now = self.clock.now()
        async with self.db.session() as session:
            users = UserRepository(session)
            user = await session.get(UserRow, current.user_id)
            if user is None:
                raise UserNotFound("the user was deleted")
            changed = False
            if variant == "password":
                assert change.old_pwd is not None
                assert change.new_pwd is not None
                if not await self.hasher.verify(user.password_hash, change.old_pwd):
                    raise LoginFailed("old_pwd is wrong")
                changed = change.old_pwd != change.new_pwd
                user.password_hash = new_hash
                # Other sessions end; the one that changed the password stays signed in.
                await UserTokenRepository(session).revoke_all(
                    user.id, except_digest=current.token_digest
                )
            elif variant in {"anonymous_username", "anonymous_phone"}:
                if not user.is_anonymous:
                    raise UserInvalid(
                        "username/phone with password can only be set on an anonymous user"
                    )
                if variant == "anonymous_username":
                    assert change.username is not None
                    username = checked(rules.check_username, change.username)
                    if await users.identity_taken(
                        app.id, "username", username, except_user=user.id
                    ):
                        raise UsernameUnavailable(f"username {username} is taken")
                    user.username = username
                else:
                    assert change.phone is not None
                    assert change.code is not None
                    phone = checked(rules.check_phone, change.phone)
                    if await users.identity_taken(app.id, "phone", phone, except_user=user.id):
                        raise PhoneUnavailable(f"phone {phone} is taken")
                    await self.codes.consume_code(session, app, phone, change.code)
                    user.phone = phone
                user.password_hash = new_hash
                user.is_anonymous = False
                changed = True
            elif variant == "phone":
                assert change.phone is not None
                assert change.code is not None
                phone = checked(rules.check_phone, change.phone)
                if phone != user.phone:
                    if await users.identity_taken(app.id, "phone", phone, except_user=user.id):
                        raise PhoneUnavailable(f"phone {phone} is taken")
                    await self.codes.consume_code(session, app, phone, change.code)
                    user.phone = phone
                    changed = True
            elif variant == "email":
                assert change.email is not None
                email = checked(rules.check_email, change.email)
                if email != user.email:
                    if await users.identity_taken(app.id, "email", email, except_user=user.id):
                        raise EmailUnavailable(f"email {email} is taken")
                    user.email = email
                    changed = True
            for name, value in profile.items():
                if getattr(user, name) != value:
                    setattr(user, name, value)
                    changed = True
            if not changed:
                raise NothingChanged("the new values equal the stored ones")
            user.updated_at = now
            await users.save(user)
        if variant == "password":
            self.tokens_revoked(
                TokensRevoked(
                    current.user_id, "the password was changed", kept=current.token_digest
                )
            )
        else:
            self.user_changed(current.user_id)
        return now

    # -- the Tencent app's profile, password and settings --------------------------------------

    async def user_record(self, current: CurrentUser) -> UserRecord:
        """``current`` as stored now (not as cached with the token). Raises 9005 if deleted."""
        async with self.db.session() as session:
            user = await self._stored(session, current)
        return UserRecord(
            uid=user.uid,
            username=user.username,
            phone=user.phone,
            email=user.email,
            name=user.name,
            avatar=user.avatar,
            has_password=user.password_hash is not None,
            created_at=user.created_at,
            updated_at=user.updated_at,
        )

    async def update_name_and_avatar(
        self, current: CurrentUser, *, name: str | None = None, avatar: str | None = None
    ) -> None:
        """Set the nickname (``name``, the profile name the Gizwits API shows too) and/or the
        avatar URL; None keeps a value, ``""`` clears it. The caller checks the values. Setting
        the stored values again is no error (``updated_at`` moves only on a change)."""
        async with self.db.session() as session:
            user = await self._stored(session, current)
            changed = False
            for column, value in (("name", name), ("avatar", avatar)):
                if value is None:
                    continue
                stored = value or None
                if getattr(user, column) != stored:
                    setattr(user, column, stored)
                    changed = True
            if changed:
                user.updated_at = self.clock.now()
                await session.flush()
        self.user_changed(current.user_id)

    async def change_password(self, current: CurrentUser, password: str, new_password: str) -> None:
        """Replace the password, given the current one (the rules of ``PUT /app/users``
        ``old_pwd``/``new_pwd``): every other session of the user ends, the calling one stays.

        Raises ``FormInvalid`` naming ``new_password`` when it breaks the password rule,
        ``LoginFailed`` (9020) when ``password`` is not the current one (a user without a
        password has none to give), then ``FormInvalid`` when the new one equals it.
        """
        new_hash = await self._hash_new(new_password, "new_password")
        async with self.db.session() as session:
            user = await self._stored(session, current)
            if not await self.hasher.verify(user.password_hash, password):
                raise LoginFailed("password: is not the current password")
            if password == new_password:
                raise FormInvalid("new_password: equals the current password")
            user.password_hash = new_hash
            user.updated_at = self.clock.now()
            await UserTokenRepository(session).revoke_all(
                user.id, except_digest=current.token_digest
            )
        self.tokens_revoked(
            TokensRevoked(current.user_id, "the password was changed", kept=current.token_digest)
        )

    async def user_settings(self, current: CurrentUser) -> UserSettings:
        """The user's settings; defaults for what was never set."""
        async with self.db.session() as session:
            return _settings(await self._stored(session, current))

    async def update_settings(
        self, current: CurrentUser, changes: Mapping[str, Any]
    ) -> UserSettings:
        """Apply ``changes`` (`UserSettings` field name -> new value, already checked; an
        unknown name is a programming error: ``ValueError``) and return the settings after."""
        known = {f.name for f in dataclasses.fields(UserSettings)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"no such user settings: {sorted(unknown)}")
        async with self.db.session() as session:
            user = await self._stored(session, current)
            after = dataclasses.replace(_settings(user), **changes)
            stored = dataclasses.asdict(after)
            user.time_zone = stored.pop("time_zone")
            user.settings = stored
            user.updated_at = self.clock.now()
            await session.flush()
        self.auth_cache.drop_user(current.user_id)
        return after

    async def time_zone(self, current: CurrentUser) -> str:
        """The IANA zone of ``current``'s wall-clock times: their own, else
        ``IOTCLOUD_TIMEZONE``."""
        async with self.db.session() as session:
            user = await self._stored(session, current)
        return user.time_zone or self.settings.timezone

    async def _stored(self, session: AsyncSession, current: CurrentUser) -> UserRow:
        user = await session.get(UserRow, current.user_id)
        if user is None:
            raise UserNotFound("the user was deleted")
        return user

    # -- internals ----------------------------------------------------------------------------

    def _new_user(self, app: App, *, is_anonymous: bool = False, **values: object) -> UserRow:
        lang = values.get("lang")
        if isinstance(lang, str):
            checked(rules.check_lang, lang)
        now = self.clock.now()
        return UserRow(
            uid=new_uid(),
            app_id=app.id,
            is_anonymous=is_anonymous,
            created_at=now,
            updated_at=now,
            **values,
        )

    async def _hash_new(self, password: str, field: str) -> str:
        checked(
            lambda v: rules.check_password(v, self.settings.password_min_length, field), password
        )
        return await self.hasher.hash(password)

    async def _issue(self, session: AsyncSession, user: UserRow) -> IssuedToken:
        """A new token for ``user``; 9026 when an operator disabled the user (every sign-in
        and sign-up that finds an existing user ends here, after its own checks)."""
        if user.is_disabled:
            raise UserInvalid("the user is disabled")
        token, token_digest = new_token()
        now = self.clock.now()
        await UserTokenRepository(session).add(
            user.id,
            token_digest,
            now,
            self.settings.user_token_ttl,
            keep=self.settings.user_tokens_per_user,
        )
        return IssuedToken(
            uid=user.uid, token=token, expire_at=int(now.timestamp()) + self.settings.user_token_ttl
        )

    async def _notify(self, mail: Mail) -> None:
        try:
            await self.mailer.send(mail)
        except IotCloudError as exc:  # a welcome mail is a courtesy; sign-up already succeeded
            log.warning("welcome mail to %s not sent: %s", mail.to, exc)


_TAKEN: dict[str, type[IotCloudError]] = {"phone": PhoneUnavailable, "email": EmailUnavailable}

_CREDENTIAL_FIELDS = ("username", "password", "phone", "code", "old_pwd", "new_pwd", "email")

_VARIANTS: dict[frozenset[str], str] = {
    frozenset(): "profile",
    frozenset({"old_pwd", "new_pwd"}): "password",
    frozenset({"username", "password"}): "anonymous_username",
    frozenset({"phone", "password", "code"}): "anonymous_phone",
    frozenset({"phone", "code"}): "phone",
    frozenset({"email"}): "email",
}


def _explain_combination(sent: set[str]) -> str:
    names = ", ".join(sorted(sent))
    hints = {
        "old_pwd": "old_pwd needs new_pwd",
        "new_pwd": "new_pwd needs old_pwd",
        "username": "username needs password",
        "code": "code needs phone",
        "phone": "phone needs code",
        "password": "password needs username, or phone and code",
    }
    if len(sent) == 1:
        (only,) = sent
        return hints.get(only, f"{only} cannot be changed on its own")
    return f"these fields cannot be changed together: {names}"


def _profile(user: UserRow) -> UserProfile:
    return UserProfile(
        uid=user.uid,
        is_anonymous=user.is_anonymous,
        username=user.username,
        phone=user.phone,
        email=user.email,
        name=user.name,
        gender=user.gender,
        birthday=user.birthday,
        address=user.address,
        lang=user.lang,
        remark=user.remark,
    )


def _settings(user: UserRow) -> UserSettings:
    """The settings stored with ``user``; a stored value of the wrong type (or none) keeps the
    default, so a settings document written by an older version still reads."""
    defaults = UserSettings()
    stored = user.settings or {}
    values: dict[str, Any] = {}
    for item in dataclasses.fields(UserSettings):
        if item.name == "time_zone":
            continue
        value = stored.get(item.name)
        if isinstance(value, type(getattr(defaults, item.name))):
            values[item.name] = value
    return dataclasses.replace(defaults, time_zone=user.time_zone, **values)
