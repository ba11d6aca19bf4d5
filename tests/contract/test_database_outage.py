"""`Database.session` tells an outage of the database (`DatabaseUnavailable`, 9008 answered
503) from a failing statement or another failure of the unit of work, on both backends."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from iotcloud.errors import DatabaseUnavailable
from iotcloud.storage.database import Database
from tests.pg import free_port


async def test_a_database_that_refuses_connections_is_unavailable() -> None:
    url = f"postgresql+asyncpg://iotcloud@127.0.0.1:{free_port()}/nothing"
    async with Database(url) as db:
        with pytest.raises(DatabaseUnavailable) as raised:
            async with db.session() as session:
                await session.execute(text("SELECT 1"))
    assert isinstance(raised.value.__cause__, ConnectionRefusedError)
    assert (raised.value.code, raised.value.http_status) == (9008, 503)


async def test_a_failing_statement_is_not_an_outage(database_url: str) -> None:
    async with Database(database_url) as db:
        with pytest.raises(Exception) as raised:  # noqa: PT011 (each backend its own)
            async with db.session() as session:
                await session.execute(text("SELECT no_such_column FROM no_such_table"))
    assert not isinstance(raised.value, DatabaseUnavailable)


async def test_a_connection_error_of_other_code_in_the_unit_of_work_is_its_own(
    database_url: str,
) -> None:
    """A mail server refusing a connection within a unit of work is not the database."""
    async with Database(database_url) as db:

        async def send_mail_in_a_unit_of_work() -> None:
            async with db.session() as session:
                await session.execute(text("SELECT 1"))
                raise ConnectionRefusedError("the SMTP server refused the connection")

        with pytest.raises(ConnectionRefusedError):
            await send_mail_in_a_unit_of_work()
