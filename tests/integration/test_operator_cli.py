"""The operator's commands for users, schedules and live device traffic, against a running
``iotcloud serve`` and its database (SQLite and PostgreSQL): what an operator types, what an app
then notices, and what a real MQTT device's traffic looks like in ``device tail``."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from queue import Empty, Queue
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from iotcloud.codecs import P0Codec
from iotcloud.domain.clock import SystemClock
from iotcloud.services.schedule_admin import ScheduleAdminService
from iotcloud.storage.database import Database
from iotcloud.storage.models import ScheduleRow
from tests.accounts import User, bind, sign_up
from tests.devices import MqttDevice, Product, eventually, import_product, register, until_online
from tests.errors import assert_error
from tests.server import IOTCLOUD, RunningServer, run_cli

EVERY_DAY = "mon,tue,wed,thu,fri,sat,sun"

# The commands' queries run on both databases in tests/contract/test_{user,schedule}_admin.py and
# test_device_tail.py; here, what an operator sees at the terminal, on one.
pytestmark = pytest.mark.backend("sqlite")


@pytest.fixture(scope="module")
def pet_house(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Product:
    return import_product(server, tmp_path_factory.mktemp("products"), "pet_house.json")


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        yield client


def cli_json(server: RunningServer, *args: str) -> Any:
    return json.loads(server.cli(*args, "--json").stdout)


def cli_wide(server: RunningServer, columns: int, *args: str) -> str:
    env = {**server.env, "COLUMNS": str(columns)}
    out = run_cli(env, *args, cwd=server.data_dir).stdout
    assert all(len(line) <= columns for line in out.splitlines()), out
    return out


def refused(server: RunningServer, *args: str, code: int = 1) -> str:
    """Run a command that must fail with status ``code``; its message, never a traceback."""
    result = server.cli(*args, check=False)
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stderr


async def signed_in(http: httpx.AsyncClient, user: User) -> httpx.Response:
    return await http.get("/app/bindings", headers=user.headers())


# -- users ---------------------------------------------------------------------------------------


async def test_user_list_show_disable_enable_and_sign_out(
    server: RunningServer, app: dict[str, str], pet_house: Product, http: httpx.AsyncClient
) -> None:
    user = sign_up(server, app["appid"])
    did, mac = register(server, pet_house)
    await bind(server, user, did)
    username = (await http.get("/app/users", headers=user.headers())).json()["username"]

    [listed] = cli_json(server, "user", "list", "--query", username.upper())
    assert listed["uid"] == user.uid
    assert (listed["appid"], listed["device_count"], listed["is_disabled"]) == (
        app["appid"],
        1,
        False,
    )
    shown = server.cli("user", "show", user.uid, "--json").stdout
    assert user.token not in shown
    detail = json.loads(shown)
    assert [(d["did"], d["mac"]) for d in detail["devices"]] == [(did, mac)]
    assert len(detail["sessions"]) == 1

    disabled = cli_json(server, "user", "disable", user.uid)
    assert disabled["is_disabled"] is True

    async def token_refused() -> bool:
        return (await signed_in(http, user)).status_code != 200

    # the command runs outside the server: its auth cache notices within its lifetime
    await eventually(token_refused)
    assert_error(await signed_in(http, user), 9004, 400)
    login = {"username": username, "password": "pw-123456"}
    refused_login = await http.post(
        "/app/login", json=login, headers={"X-Gizwits-Application-Id": app["appid"]}
    )
    assert_error(refused_login, 9026, 400, "disabled")
    assert cli_json(server, "user", "show", user.uid)["sessions"] == []

    assert cli_json(server, "user", "enable", user.uid)["is_disabled"] is False
    again = await http.post(
        "/app/login", json=login, headers={"X-Gizwits-Application-Id": app["appid"]}
    )
    assert again.status_code == 200, again.text
    fresh = User(app["appid"], user.uid, again.json()["token"])
    assert (await signed_in(http, fresh)).status_code == 200

    assert cli_json(server, "user", "signout", user.uid) == {"uid": user.uid, "revoked": 1}

    async def fresh_refused() -> bool:
        return (await signed_in(http, fresh)).status_code != 200

    await eventually(fresh_refused)


def test_user_tables_fit_the_terminal_and_errors_name_the_problem(
    server: RunningServer, app: dict[str, str]
) -> None:
    user = sign_up(server, app["appid"])
    narrow = cli_wide(server, 60, "user", "list", "--appid", app["appid"])
    assert user.uid in narrow
    wide = cli_wide(server, 200, "user", "list", "--appid", app["appid"])
    assert user.uid in wide
    assert app["appid"] in wide
    assert user.uid in cli_wide(server, 60, "user", "show", user.uid)

    assert "no user with uid 'nobody-here'" in refused(server, "user", "disable", "nobody-here")
    assert "--limit" in refused(server, "user", "list", "--limit", "0", code=2)


# -- schedules -----------------------------------------------------------------------------------


async def make_overdue(server: RunningServer, schedule_id: str, due: datetime) -> None:
    """Pretend the server was down: the schedule's next occurrence was due at ``due``."""
    async with Database(server.database_url) as db, db.session() as session:
        await session.execute(
            update(ScheduleRow).where(ScheduleRow.public_id == schedule_id).values(next_due_at=due)
        )


async def test_schedule_list_show_and_runs_failed_and_missed_first(
    server: RunningServer, app: dict[str, str], pet_house: Product, http: httpx.AsyncClient
) -> None:
    user = sign_up(server, app["appid"])
    did, _ = register(server, pet_house)  # never online: every command to it fails
    await bind(server, user, did)
    soon = (datetime.now(UTC) + timedelta(hours=2)).strftime("%H:%M")
    ids = []
    for _ in range(2):
        body = {
            "time": soon,
            "repeat": EVERY_DAY,
            "task": [{"did": did, "product_key": pet_house.product_key, "attrs": {"LED_R": 9}}],
            "retry_count": 0,
            "retry_task": "all",
        }
        reply = await http.post("/app/scheduler", headers=user.headers(), json=body)
        assert reply.status_code == 201, reply.text
        ids.append(reply.json()["id"])
    failing, downtime = ids
    now = datetime.now(UTC)
    await make_overdue(server, failing, now - timedelta(seconds=1))
    await make_overdue(server, downtime, now - timedelta(days=1, hours=1))

    async with Database(server.database_url) as db:
        admin = ScheduleAdminService(db, SystemClock())

        async def settled() -> bool:
            runs = await admin.runs(limit=1000)
            statuses = {(r.schedule_id, r.status) for r in runs}
            return (failing, "failed") in statuses and (downtime, "missed") in statuses

        await eventually(settled, wait=60)

    listed = cli_json(server, "schedule", "list", "--user", user.uid)
    assert {s["schedule_id"] for s in listed} == {failing, downtime}
    assert all(s["rule"].endswith(f" {soon} UTC") for s in listed)
    assert {s["last_status"] for s in listed} == {"failed", "missed"}
    by_device = cli_json(server, "schedule", "list", "--device", did)
    assert {s["schedule_id"] for s in by_device} == {failing, downtime}

    shown = cli_json(server, "schedule", "show", failing)
    assert shown["tasks"] == [
        {"did": did, "product_key": pet_house.product_key, "attrs": {"LED_R": 9}}
    ]
    assert len(shown["upcoming"]) == 5

    runs = cli_json(server, "schedule", "runs", failing)
    assert [r["status"] for r in runs] == ["failed"]
    assert runs[0]["attempts"][0]["detail"] == {did: False}
    every = cli_json(server, "schedule", "runs", "--limit", "1000")
    problems = [r["status"] in ("failed", "missed") for r in every]
    assert problems == sorted(problems, reverse=True)  # failed and missed come first

    assert failing in cli_wide(server, 60, "schedule", "list", "--user", user.uid)
    assert "failed" in cli_wide(server, 200, "schedule", "runs", failing)
    assert failing in cli_wide(server, 60, "schedule", "show", failing)
    assert "no schedule 'nope'" in refused(server, "schedule", "runs", "nope")


# -- device tail ---------------------------------------------------------------------------------


class Tail:
    """``iotcloud device tail`` as a child process; ``lines`` receives its output lines."""

    def __init__(self, server: RunningServer, *args: str) -> None:
        self.process = subprocess.Popen(
            [*IOTCLOUD, "device", "tail", *args],
            env=server.env,
            cwd=server.data_dir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: Queue[str] = Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    async def next_matching(self, wanted: Any) -> str:
        """The next output line for which ``wanted(line)`` is true (30 s at most)."""
        async with asyncio.timeout(30):
            while True:
                try:
                    line = self.lines.get_nowait()
                except Empty:
                    await asyncio.sleep(0.05)
                    continue
                if wanted(line):
                    return line

    def interrupt(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGINT)
        _, err = self.process.communicate(timeout=30)
        return self.process.returncode, err


@pytest.fixture
def tails() -> Iterator[list[Tail]]:
    started: list[Tail] = []
    yield started
    for tail in started:
        if tail.process.poll() is None:
            tail.process.kill()
            tail.process.wait()


async def test_device_tail_shows_reports_and_commands_live(
    server: RunningServer,
    app: dict[str, str],
    pet_house: Product,
    http: httpx.AsyncClient,
    tails: list[Tail],
) -> None:
    user = sign_up(server, app["appid"])
    did, _ = register(server, pet_house)
    await bind(server, user, did)
    codec = P0Codec(pet_house.definition)
    as_json = Tail(server, did, "--json", "--since", "60")
    as_text = Tail(server, did, "--since", "60")
    tails += [as_json, as_text]
    async with MqttDevice.on_server(server, did) as device:
        await until_online(http, user, did)
        online = json.loads(await as_json.next_matching(lambda line: '"online"' in line))
        assert online["direction"] is None

        await device.report(codec, {"LED_R": 42, "Motor_Speed": 3})
        report = json.loads(
            await as_json.next_matching(lambda line: '"report"' in line and "42" in line)
        )
        assert report["direction"] == "up"
        assert report["values"]["LED_R"] == 42
        assert report["values"]["Motor_Speed"] == 3
        text = await as_text.next_matching(lambda line: " report " in line and "LED_R=42" in line)
        assert "<-" in text

        reply = await http.post(
            f"/app/control/{did}",
            headers=user.headers(),
            json={"attrs": {"LED_OnOff": True, "LED_Color": "Purple"}},
        )
        assert reply.status_code == 200, reply.text
        command = json.loads(await as_json.next_matching(lambda line: '"command"' in line))
        assert command["direction"] == "down"
        assert command["values"] == {"LED_OnOff": True, "LED_Color": "Purple"}
        text = await as_text.next_matching(lambda line: " command " in line)
        assert 'LED_Color="Purple"' in text
        assert "->" in text

    offline = json.loads(await as_json.next_matching(lambda line: '"offline"' in line))
    datetime.fromisoformat(offline["at"])
    for tail in (as_json, as_text):
        status, err = tail.interrupt()
        assert status == 0, err
        assert "Traceback" not in err


def test_device_tail_of_an_unknown_device_exits_2(server: RunningServer) -> None:
    unknown = uuid.uuid4().hex[:22]
    assert f"no device with did '{unknown}'" in refused(server, "device", "tail", unknown, code=2)
