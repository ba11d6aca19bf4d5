"""Schemathesis fuzzes every operation of the live ``/openapi.json`` against a real server on
SQLite and on PostgreSQL: no answer may be a 5xx, have a status the document does not list,
a content type it does not list, or a body that does not match its schema.

The server is seeded (an app, a user with a token, a Gizwits product with a device bound to the
user), and the generated cases carry that app's and user's credentials and, for half of them,
the real did, product_key and AccessToken, so that the operations are reached past their
authentication, not only refused. Operations that end the session or unbind run last.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.accounts import sign_up
from tests.conftest import TEST_OUTPUT
from tests.server import ADMIN_TOKEN, RunningServer, serving

pytestmark = pytest.mark.timeout(900)

FIXTURES = Path(__file__).parent.parent / "fixtures"
MIN_CASES = 5000
EXAMPLES_PER_OPERATION = int(os.environ.get("IOTCLOUD_FUZZ_EXAMPLES", "85"))
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]
#: operations that end the seeded session or binding: run last, so the others reach past them
LAST = ("DELETE /app/logout", "DELETE /app/bindings", "DELETE /app/{did}/bindings")
#: Tencent Actions never sent with the seeded token (they would end its session or binding)
SPARED_ACTIONS = frozenset({"AppLogoutUser", "AppDeleteDeviceInFamily", "AppUserResetPassword"})


class Seed:
    """What the fuzzed server holds: an app, a user bound to a device of a Gizwits product."""

    def __init__(self, server: RunningServer) -> None:
        app = server.create_app("Fuzz")
        self.appid = app["appid"]
        self.user = sign_up(server, self.appid)
        definition = json.loads((FIXTURES / "datapoints" / "pet_house.json").read_text())
        definition["product_key"] = uuid.uuid4().hex
        with server.operator() as operator:
            reply = operator.post("/admin/v1/products", json=definition)
            assert reply.status_code == 201, reply.text
            self.product_key = reply.json()["product_key"]
            mac = uuid.uuid4().hex[:12]
            reply = operator.post(
                "/admin/v1/devices", json={"product_key": self.product_key, "mac": mac}
            )
            assert reply.status_code == 201, reply.text
            self.did, self.passcode, self.mac = (
                reply.json()[k] for k in ("did", "passcode", "mac")
            )
        with server.client(self.appid, **{"X-Gizwits-User-token": self.user.token}) as http:
            reply = http.post(
                "/app/bindings", json={"devices": [{"did": self.did, "passcode": self.passcode}]}
            )
            assert reply.json()["success"] == [self.did], reply.text

    def headers(self) -> dict[str, str]:
        return {
            **self.user.headers(),
            "Authorization": f"Bearer {ADMIN_TOKEN}",
        }

    def steer(self, case: schemathesis.Case, rng: random.Random) -> None:
        """Give half the cases the real names, so that they reach past the lookups."""
        if rng.random() < 0.5:
            return
        known = {"did": self.did, "product_key": self.product_key}
        for name in case.path_parameters or {}:
            if name in known:
                case.path_parameters[name] = known[name]
        body = case.body
        if isinstance(body, dict):
            if "AccessToken" in body and body.get("Action") not in SPARED_ACTIONS:
                body["AccessToken"] = self.user.token
            if "ProductId" in body:
                body["ProductId"], body["DeviceName"] = self.product_key, self.mac
            if "did" in body:
                body["did"] = self.did
        if case.query:
            for name in ("product_key", "did", "mac"):
                if name in case.query:
                    case.query[name] = {"mac": self.mac, **known}[name]


def fuzz(server: RunningServer, seed: Seed) -> tuple[Counter[str], list[str], int]:
    """Run every operation: the count of cases per operation, the failures found and the
    number of operations."""
    schema = schemathesis.openapi.from_url(server.base_url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    operations.sort(key=lambda op: op.label in LAST)
    session = requests.Session()
    counts: Counter[str] = Counter()
    failures: list[str] = []
    rng = random.Random(14)
    headers = seed.headers()

    def exercise(label: str, strategy: Any) -> None:
        @hypothesis.settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case: schemathesis.Case) -> None:
            seed.steer(case, rng)
            response = case.call(base_url=server.base_url, session=session, headers=headers)
            counts[label] += 1
            try:
                case.validate_response(response, checks=CHECKS, headers=headers)
            except (AssertionError, BaseExceptionGroup) as exc:  # keep going: report them all
                failures.append(f"{label}: {exc}"[:2000])

        run()

    for operation in operations:
        exercise(operation.label, operation.as_strategy())
    return counts, failures, len(operations)


@pytest.fixture
def fuzzed(database_url: str, tmp_path: Path) -> Iterator[tuple[RunningServer, Seed]]:
    with serving(
        tmp_path / "data",
        database_url,
        rate_limit_per_address=0,
        rate_limit_per_app=0,
        allow_tracebacks=True,
    ) as server:
        yield server, Seed(server)
        assert "Traceback" not in server.log(), server.log()[-20000:]


def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    fuzzed: tuple[RunningServer, Seed], capsys: pytest.CaptureFixture[str]
) -> None:
    server, seed = fuzzed
    started = time.monotonic()
    counts, failures, operations = fuzz(server, seed)
    elapsed = time.monotonic() - started
    total = sum(counts.values())
    summary = f"{total} cases over {len(counts)} operations in {elapsed:.0f} s"
    with capsys.disabled():
        print(f"\nschemathesis: {summary}")
    backend = "postgres" if server.database_url.startswith("postgresql") else "sqlite"
    TEST_OUTPUT.mkdir(exist_ok=True)
    (TEST_OUTPUT / f"schemathesis-{backend}.txt").write_text(
        f"{summary}, {len(failures)} failures\n"
    )
    assert not failures, "\n\n".join(failures[:30])
    assert total >= MIN_CASES
    assert len(counts) == operations


@pytest.mark.backend("sqlite")
def test_the_schema_and_its_docs_are_served_from_the_package(server: RunningServer) -> None:
    with server.client() as http:
        schema = http.get("/openapi.json")
        assert schema.status_code == 200
        assert schema.headers["content-type"].startswith("application/json")
        assert schema.json()["openapi"] == "3.1.0"
        assert "/api/exploreropen/tokenapi" in schema.json()["paths"]

        page = http.get("/docs")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "http://" not in page.text  # no CDN
        assert "https://" not in page.text
        assets = re.findall(r'(?:src|href)="(/docs/assets/[^"]+)"', page.text)
        assert "/docs/assets/swagger-ui-bundle.js" in assets
        for asset in assets:
            answer = http.get(asset)
            assert answer.status_code == 200, asset
            assert answer.content, asset
        init = http.get("/docs/assets/init.js").text
        assert '"/openapi.json"' in init

        missing = http.get("/docs/assets/../../etc/passwd")
        assert missing.status_code == 404
        unknown = http.get("/docs/assets/swagger-editor.js")
        assert unknown.status_code == 404
        assert unknown.json()["error_code"] == 9015


def test_a_nul_character_anywhere_is_refused_naming_the_field(server: RunningServer) -> None:
    """PostgreSQL cannot store a NUL in text: every database refuses it alike, at the edge."""
    appid = server.create_app("NUL")["appid"]
    user = sign_up(server, appid)
    with server.client(**user.headers()) as http:
        for method, path, parts, field in [
            ("GET", "/app/devices/%00x", {}, "did"),
            ("GET", "/app/verify/captcha/%00x", {}, "captcha_id"),
            ("POST", "/app/login", {"json": {"username": "a\x00", "password": "b"}}, "username"),
            (
                "POST",
                "/app/bindings",
                {"json": {"devices": [{"did": "\x00", "passcode": "p"}]}},
                "devices[0].did",
            ),
            ("GET", "/app/datapoint?product_key=a%00", {}, "product_key"),
            (
                "POST",
                "/dev/devices",
                {"content": b"product_key=a%00&mac=b&passcode=c"},
                "product_key",
            ),
        ]:
            answer = http.request(method, path, **parts)
            assert answer.status_code == 400, (path, answer.text)
            assert answer.json()["error_code"] == 9015
            assert answer.json()["detail_message"] == f"{field}: must not contain a NUL character"
        tencent = http.post(
            "/api/exploreropen/tokenapi",
            json={"Action": "AppGetUser", "AccessToken": user.token, "RequestId": "r\x00"},
        )
        error = tencent.json()["Response"]["Error"]
        assert error == {
            "Code": "InvalidParameterValue",
            "Message": "RequestId: must not contain a NUL character",
        }
