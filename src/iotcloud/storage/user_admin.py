"""Operator queries about app users: search across every app, a user's bindings and live
sessions, and disabling a user.

These reads cross apps (an operator sees every user), unlike the app-facing repositories in
`iotcloud.storage.accounts`, which are always scoped to one app. Each repository wraps one
``AsyncSession`` (one unit of work).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from iotcloud.storage.models import (
    AppRow,
    BindingRow,
    DeviceRow,
    ProductRow,
    UserRow,
    UserTokenRow,
)


@dataclass(frozen=True)
class UserListing:
    """A user with the appid it belongs to and how many devices it is bound to."""

    user: UserRow
    appid: str
    device_count: int


@dataclass(frozen=True)
class UserBinding:
    """One of a user's bindings with its device and the device's product."""

    binding: BindingRow
    device: DeviceRow
    product: ProductRow


def like_pattern(text: str) -> str:
    """A case-folded ``LIKE`` pattern matching ``text`` anywhere (``\\`` escapes ``%`` and
    ``_``, so they match themselves)."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class UserAdminRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def search(
        self, query: str, appid: str | None, limit: int, offset: int
    ) -> list[UserListing]:
        """Users whose uid, username, e-mail or phone contains ``query`` (case-insensitive;
        every user when it is empty), of app ``appid`` when given; newest first."""
        devices = (
            select(func.count(BindingRow.id))
            .where(BindingRow.user_id == UserRow.id)
            .correlate(UserRow)
            .scalar_subquery()
        )
        statement = select(UserRow, AppRow.appid, devices).join(AppRow, AppRow.id == UserRow.app_id)
        if query:
            pattern = like_pattern(query)
            statement = statement.where(
                or_(
                    *(
                        func.lower(column).like(pattern, escape="\\")
                        for column in (UserRow.uid, UserRow.username, UserRow.email, UserRow.phone)
                    )
                )
            )
        if appid is not None:
            statement = statement.where(AppRow.appid == appid)
        statement = (
            statement.order_by(UserRow.created_at.desc(), UserRow.id.desc())
            .limit(limit)
            .offset(offset)
        )
        rows = await self.session.execute(statement)
        return [UserListing(user, app, int(count or 0)) for user, app, count in rows]

    async def by_uid(self, uid: str) -> UserListing | None:
        """The user with ``uid`` (unique across apps)."""
        row = (
            await self.session.execute(
                select(UserRow, AppRow.appid)
                .join(AppRow, AppRow.id == UserRow.app_id)
                .where(UserRow.uid == uid)
            )
        ).first()
        if row is None:
            return None
        user, appid = row
        count = await self.session.scalar(
            select(func.count(BindingRow.id)).where(BindingRow.user_id == user.id)
        )
        return UserListing(user, appid, int(count or 0))

    async def bindings(self, user_id: int) -> list[UserBinding]:
        """The user's bindings, newest first."""
        rows = await self.session.execute(
            select(BindingRow, DeviceRow, ProductRow)
            .join(DeviceRow, DeviceRow.id == BindingRow.device_id)
            .join(ProductRow, ProductRow.id == DeviceRow.product_id)
            .where(BindingRow.user_id == user_id)
            .order_by(BindingRow.created_at.desc(), BindingRow.id.desc())
        )
        return [UserBinding(*row) for row in rows]

    async def live_tokens(self, user_id: int, now: datetime) -> Sequence[UserTokenRow]:
        """The user's tokens not yet expired at ``now``, newest first."""
        rows = await self.session.scalars(
            select(UserTokenRow)
            .where(UserTokenRow.user_id == user_id, UserTokenRow.expires_at > now)
            .order_by(UserTokenRow.created_at.desc(), UserTokenRow.id.desc())
        )
        return rows.all()

    async def set_disabled(self, user_id: int, disabled: bool, now: datetime) -> None:
        await self.session.execute(
            update(UserRow)
            .where(UserRow.id == user_id)
            .values(is_disabled=disabled, updated_at=now)
        )

    async def revoke_tokens(self, user_id: int, now: datetime) -> int:
        """Delete every token of the user; how many were still live at ``now``."""
        live = await self.session.scalar(
            select(func.count(UserTokenRow.id)).where(
                UserTokenRow.user_id == user_id, UserTokenRow.expires_at > now
            )
        )
        await self.session.execute(delete(UserTokenRow).where(UserTokenRow.user_id == user_id))
        return int(live or 0)
