"""The operator's view of app users: search every app's users, see one with their bound devices
and live sessions, disable or enable them, and sign them out everywhere.

A disabled user can no longer sign in (9026 "user invalid", see `AccountService`) and every
token they held is revoked in the same unit of work, so their apps and WebSocket sessions end.
The revocation is told through ``tokens_revoked`` (the composition root passes
`AccountService.tokens_revoked`, which drops this process's cached checks and announces it on
the process bus, so every process of a deployment applies it at once). An operator command run
outside the server has no bus: running servers then notice within their auth cache's
time-to-live (``IOTCLOUD_AUTH_CACHE_SECONDS``), as they do for ``iotcloud device disable``.

Sessions are shown by when they began and expire; a token (or its digest) never leaves here.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from iotcloud.domain.clock import Clock, iso_utc
from iotcloud.errors import FormInvalid, UserNotFound
from iotcloud.services.accounts import TokensRevoked
from iotcloud.storage.database import Database
from iotcloud.storage.user_admin import UserAdminRepository, UserBinding, UserListing

__all__ = [
    "BoundDeviceView",
    "SessionView",
    "UserAdminService",
    "UserDetail",
    "UserSummary",
    "user_detail_view",
    "user_summary_view",
]

SEARCH_LIMIT_MAX: Final = 1000
QUERY_MAX: Final = 254


@dataclass(frozen=True)
class UserSummary:
    """A user as an operator lists them; ``device_count`` is how many devices they are bound
    to, ``appid`` the app they belong to."""

    uid: str
    appid: str
    username: str | None
    email: str | None
    phone: str | None
    name: str | None
    is_anonymous: bool
    is_disabled: bool
    created_at: datetime
    device_count: int


@dataclass(frozen=True)
class BoundDeviceView:
    """A device the user is bound to; ``dev_alias`` is the user's own name for it."""

    did: str
    mac: str
    product_key: str
    product_name: str
    dev_alias: str
    is_online: bool
    bound_at: datetime


@dataclass(frozen=True)
class SessionView:
    """One live sign-in of the user (a token not yet expired), never the token itself."""

    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class UserDetail:
    user: UserSummary
    devices: list[BoundDeviceView]
    sessions: list[SessionView]


class UserAdminService:
    """Every operation is one unit of work. ``tokens_revoked`` hears of each committed
    revocation (disable, sign out everywhere); its failures are the callee's to log."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        tokens_revoked: Callable[[TokensRevoked], None] | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.tokens_revoked = tokens_revoked

    async def search(
        self, query: str = "", *, appid: str | None = None, limit: int = 50, offset: int = 0
    ) -> builtins.list[UserSummary]:
        """Users whose uid, username, e-mail or phone contains ``query`` (case-insensitive;
        all users when empty), of ``appid`` when given, newest first. ``limit`` 1-1000,
        ``offset`` >= 0; raises ``FormInvalid`` naming the parameter otherwise."""
        if not 1 <= limit <= SEARCH_LIMIT_MAX:
            raise FormInvalid(f"limit: must be 1 to {SEARCH_LIMIT_MAX}")
        if offset < 0:
            raise FormInvalid("offset: must not be negative")
        query = query.strip()
        if len(query) > QUERY_MAX:
            raise FormInvalid(f"query: at most {QUERY_MAX} characters")
        async with self.db.session() as session:
            found = await UserAdminRepository(session).search(query, appid or None, limit, offset)
        return [_summary(listing) for listing in found]

    async def get(self, uid: str) -> UserDetail:
        """The user with their bound devices (newest binding first) and live sessions (newest
        first); raises ``UserNotFound`` (9005)."""
        async with self.db.session() as session:
            users = UserAdminRepository(session)
            listing = await users.by_uid(uid)
            if listing is None:
                raise UserNotFound(f"no user with uid {uid!r}")
            bindings = await users.bindings(listing.user.id)
            tokens = await users.live_tokens(listing.user.id, self.clock.now())
        return UserDetail(
            user=_summary(listing),
            devices=[_bound_device(item) for item in bindings],
            sessions=[SessionView(token.created_at, token.expires_at) for token in tokens],
        )

    async def set_disabled(self, uid: str, disabled: bool) -> UserSummary:
        """Disable (every token revoked at once) or enable the user; doing it twice is no error.
        Raises ``UserNotFound`` (9005)."""
        now = self.clock.now()
        async with self.db.session() as session:
            users = UserAdminRepository(session)
            listing = await users.by_uid(uid)
            if listing is None:
                raise UserNotFound(f"no user with uid {uid!r}")
            await users.set_disabled(listing.user.id, disabled, now)
            if disabled:
                await users.revoke_tokens(listing.user.id, now)
        if disabled:
            self._tell(TokensRevoked(listing.user.id, "the user was disabled"))
        return _summary(listing, is_disabled=disabled)

    async def sign_out_everywhere(self, uid: str) -> int:
        """Revoke every token of the user; returns how many were live. Raises ``UserNotFound``
        (9005)."""
        async with self.db.session() as session:
            users = UserAdminRepository(session)
            listing = await users.by_uid(uid)
            if listing is None:
                raise UserNotFound(f"no user with uid {uid!r}")
            revoked = await users.revoke_tokens(listing.user.id, self.clock.now())
        self._tell(TokensRevoked(listing.user.id, "signed out by the operator"))
        return revoked

    def _tell(self, revoked: TokensRevoked) -> None:
        if self.tokens_revoked is not None:
            self.tokens_revoked(revoked)


def _summary(listing: UserListing, *, is_disabled: bool | None = None) -> UserSummary:
    user = listing.user
    return UserSummary(
        uid=user.uid,
        appid=listing.appid,
        username=user.username,
        email=user.email,
        phone=user.phone,
        name=user.name,
        is_anonymous=user.is_anonymous,
        is_disabled=user.is_disabled if is_disabled is None else is_disabled,
        created_at=user.created_at,
        device_count=listing.device_count,
    )


def _bound_device(item: UserBinding) -> BoundDeviceView:
    return BoundDeviceView(
        did=item.device.did,
        mac=item.device.mac or "",
        product_key=item.product.product_key,
        product_name=item.product.name,
        dev_alias=item.binding.dev_alias,
        is_online=item.device.is_online,
        bound_at=item.binding.created_at,
    )


def user_summary_view(user: UserSummary) -> dict[str, Any]:
    """A user as JSON (``iotcloud user list --json``, the console)."""
    return {
        "uid": user.uid,
        "appid": user.appid,
        "username": user.username,
        "email": user.email,
        "phone": user.phone,
        "name": user.name,
        "is_anonymous": user.is_anonymous,
        "is_disabled": user.is_disabled,
        "created_at": iso_utc(user.created_at),
        "device_count": user.device_count,
    }


def user_detail_view(detail: UserDetail) -> dict[str, Any]:
    """A user with ``devices`` and ``sessions`` as JSON (``iotcloud user show --json``)."""
    return {
        **user_summary_view(detail.user),
        "devices": [
            {
                "did": device.did,
                "mac": device.mac,
                "product_key": device.product_key,
                "product_name": device.product_name,
                "dev_alias": device.dev_alias,
                "is_online": device.is_online,
                "bound_at": iso_utc(device.bound_at),
            }
            for device in detail.devices
        ],
        "sessions": [
            {"created_at": iso_utc(item.created_at), "expires_at": iso_utc(item.expires_at)}
            for item in detail.sessions
        ],
    }
