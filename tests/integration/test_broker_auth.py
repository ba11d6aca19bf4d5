"""A running ``iotcloud serve`` answering an external broker's questions about real registered
devices, asked exactly as RabbitMQ 3.10's HTTP auth backend and EMQX 5 ask them
(`tests.broker_requests`): who may connect, which queues and topics a device may use, a device
disabled or given a new passcode, malformed questions, and callers that may not ask at all."""

from __future__ import annotations

import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from iotcloud.domain.thing_auth import device_password
from tests import broker_requests as broker
from tests.devices import PASSCODE, Product, import_product, register
from tests.pg import PostgresServer
from tests.server import RunningServer, serving
from tests.thing_devices import SDK_APPID, create_thing_device, import_thing_product

CACHE_SECONDS = 2.0


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    data_dir = Path(tempfile.mkdtemp(prefix="iotcloud-broker-auth-"))
    # the default throttle (100 requests/s per address) stays on: brokers are not throttled
    with serving(data_dir, None, broker_auth_cache_seconds=CACHE_SECONDS) as running:
        yield running


@pytest.fixture(scope="module")
def product(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Product:
    return import_product(server, tmp_path_factory.mktemp("products"), "pet_house.json")


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def ask(http: httpx.Client, question: broker.Question) -> str:
    """A RabbitMQ question's answer, checked to be what RabbitMQ can read."""
    reply = http.get(question.url)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    assert reply.text in ("allow", "deny"), reply.text
    return reply.text


def ask_emqx(http: httpx.Client, question: tuple[str, dict[str, object]]) -> dict[str, object]:
    path, body = question
    reply = http.post(path, json=body)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    answer: dict[str, object] = reply.json()
    return answer


def sample(text: str, name: str, **labels: str) -> float:
    """The value of ``name{labels}`` in a Prometheus exposition (0 when absent)."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)\{(.*)\} (\S+)", line)
        if (
            match
            and match.group(1) == name
            and dict(re.findall(r'(\w+)="([^"]*)"', match.group(2))) == labels
        ):
            return float(match.group(3))
    return 0.0


def counted(http: httpx.Client, kind: str, result: str) -> float:
    return sample(
        http.get("/metrics").text, "iotcloud_broker_auth_requests_total", kind=kind, result=result
    )


def thing_credentials(product_id: str, name: str, psk: str) -> tuple[str, str, str]:
    """``(username, password, client_id)`` of a data-template device, signed as its SDK does."""
    expiry = int(datetime.now(UTC).timestamp()) + 3600
    username = f"{product_id}{name};{SDK_APPID};{uuid.uuid4().hex[:5]};{expiry}"
    return username, device_password(psk, username), product_id + name


# -- a Gizwits device -----------------------------------------------------------------------------


def test_a_device_connects_subscribes_and_publishes_as_rabbitmq_asks(
    server: RunningServer, product: Product, http: httpx.Client
) -> None:
    did, _ = register(server, product)
    questions = (
        broker.rabbitmq_connect(did, PASSCODE, did)
        + broker.rabbitmq_subscribe(did, did, f"app2dev/{did}/#", 0)
        + broker.rabbitmq_subscribe(did, did, f"ser2cli_res/{did}", 1)
        + broker.rabbitmq_subscribe(did, did, f"ser2cli_noti/{product.product_key}", 1)
        + broker.rabbitmq_subscribe(did, did, f"app2dev/{did}/+", 1)
        + broker.rabbitmq_publish(did, did, f"dev2app/{did}")
        + broker.rabbitmq_publish(did, did, f"dev2app/{did}/app-client-1")
        + broker.rabbitmq_publish(did, did, "cli2ser_req")
    )
    assert [ask(http, question) for question in questions] == ["allow"] * len(questions)
    # a clean session deletes its QoS 1 queue left over from before
    queue = broker.subscription_queue(did, 1)
    assert ask(http, broker.rabbitmq_resource(did, did, "queue", queue, "configure")) == "allow"


def test_wrong_passcode_unknown_did_and_a_borrowed_client_id_are_refused(
    server: RunningServer, product: Product, http: httpx.Client
) -> None:
    did, _ = register(server, product)
    other, _ = register(server, product)
    unknown = "Zz" + uuid.uuid4().hex[:20]
    for question in (
        broker.rabbitmq_user(did, "WRONGPASSX", did),
        broker.rabbitmq_user(did, PASSCODE.lower(), did),
        broker.rabbitmq_user(unknown, PASSCODE, unknown),
        broker.rabbitmq_user(did, PASSCODE, other),  # would take over the other's session
        broker.rabbitmq_user(did, PASSCODE, did, vhost="other"),
        broker.rabbitmq_user("guest", "guest", "guest"),
        broker.rabbitmq_vhost(unknown, unknown),
        broker.rabbitmq_topic(unknown, unknown, "write", f"dev2app.{unknown}"),
    ):
        assert ask(http, question) == "deny", question
    assert ask(http, broker.rabbitmq_user(did, PASSCODE, did)) == "allow"


def test_a_device_stays_on_its_own_topics_queues_and_vhost(
    server: RunningServer, product: Product, http: httpx.Client
) -> None:
    did, _ = register(server, product)
    other, _ = register(server, product)
    assert ask(http, broker.rabbitmq_user(did, PASSCODE, did)) == "allow"
    refused = [
        # another device's topics
        broker.rabbitmq_topic(did, did, "write", f"dev2app.{other}"),
        broker.rabbitmq_topic(did, did, "write", f"app2dev.{other}.cloud"),
        broker.rabbitmq_topic(did, did, "read", f"app2dev.{other}.#"),
        broker.rabbitmq_topic(did, did, "read", f"dev2app.{other}"),
        broker.rabbitmq_topic(did, did, "read", f"ser2cli_res.{other}"),
        broker.rabbitmq_topic(did, did, "read", "ser2cli_noti." + "0" * 32),
        # wildcards that reach other devices
        broker.rabbitmq_topic(did, did, "read", "dev2app.#"),
        broker.rabbitmq_topic(did, did, "read", "app2dev.*.#"),
        broker.rabbitmq_topic(did, did, "read", "#"),
        broker.rabbitmq_topic(did, did, "read", f"*.{did}"),
        broker.rabbitmq_topic(did, did, "write", "dev2app.*"),
        # another client's queues, reconfiguring the exchange, other exchanges
        broker.rabbitmq_resource(did, did, "queue", broker.subscription_queue(other, 0), "read"),
        broker.rabbitmq_resource(did, did, "queue", broker.subscription_queue(other, 1), "write"),
        broker.rabbitmq_resource(did, did, "queue", "orders", "configure"),
        broker.rabbitmq_resource(did, did, "exchange", "amq.topic", "configure"),
        broker.rabbitmq_resource(did, did, "exchange", "amq.direct", "write"),
        broker.rabbitmq_topic(did, did, "write", f"dev2app.{did}", exchange="amq.headers"),
        # the client id sent along must be the device's own
        broker.rabbitmq_topic(did, other, "write", f"dev2app.{did}"),
        broker.rabbitmq_resource(did, other, "queue", broker.subscription_queue(did, 0), "read"),
        broker.rabbitmq_vhost(did, other),
        # another virtual host
        broker.rabbitmq_vhost(did, did, vhost="other"),
        broker.rabbitmq_resource(
            did, did, "queue", broker.subscription_queue(did, 0), "read", vhost="other"
        ),
        broker.rabbitmq_topic(did, did, "write", f"dev2app.{did}", vhost="other"),
    ]
    assert [ask(http, question) for question in refused] == ["deny"] * len(refused)


def test_malformed_questions_are_refused_never_failed(
    server: RunningServer, product: Product, http: httpx.Client
) -> None:
    did, _ = register(server, product)
    good = broker.rabbitmq_topic(did, did, "write", f"dev2app.{did}")
    assert ask(http, good) == "allow"
    many = "&".join(f"x{n}=1" for n in range(40))
    for path, query in (
        ("/broker/rabbitmq/user", ""),
        ("/broker/rabbitmq/user", f"username={did}&client_id={did}"),  # no password
        ("/broker/rabbitmq/user", f"username={did}&username={did}&password={PASSCODE}"),
        ("/broker/rabbitmq/user", f"username={did}&password=%ff%fe&client_id={did}"),
        ("/broker/rabbitmq/vhost", f"username={did}"),
        ("/broker/rabbitmq/resource", f"username={did}&vhost=%2F&resource=queue"),
        ("/broker/rabbitmq/topic", good.query.replace("routing_key", "routing")),
        ("/broker/rabbitmq/topic", good.query.replace("resource=topic", "resource=queue")),
        ("/broker/rabbitmq/topic", good.query.replace("permission=write", "permission=all")),
        ("/broker/rabbitmq/topic", good.query.replace(f"map.username={did}", "map.username=x")),
        ("/broker/rabbitmq/topic", good.query.replace("map.vhost=%2F", "map.vhost=x")),
        ("/broker/rabbitmq/topic", good.query + "&" + many),
        ("/broker/rabbitmq/topic", good.query + f"&username={did}"),
    ):
        assert ask(http, broker.Question(path, query)) == "deny", query
    assert http.get("/broker/rabbitmq/user?%%%").text == "deny"
    assert http.post("/broker/rabbitmq/user", content=b"\xff\xfe").text == "deny"


def test_rabbitmq_may_post_its_questions_as_a_form(
    server: RunningServer, product: Product, http: httpx.Client
) -> None:
    did, _ = register(server, product)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for question, expected in (
        (broker.rabbitmq_user(did, PASSCODE, did), "allow"),
        (broker.rabbitmq_user(did, "WRONGPASSX", did), "deny"),
        (broker.rabbitmq_topic(did, did, "read", f"app2dev.{did}.#"), "allow"),
        (broker.rabbitmq_topic(did, did, "read", "dev2app.#"), "deny"),
    ):
        reply = http.post(question.path, content=question.query, headers=form)
        assert (reply.status_code, reply.text) == (200, expected)


# -- devices that change --------------------------------------------------------------------------


def test_a_device_disabled_by_an_operator_is_refused_at_once(
    server: RunningServer, product: Product, http: httpx.Client
) -> None:
    did, _ = register(server, product)
    user = broker.rabbitmq_user(did, PASSCODE, did)
    publish = broker.rabbitmq_topic(did, did, "write", f"dev2app.{did}")
    subscribe = broker.rabbitmq_topic(did, did, "read", f"app2dev.{did}.#")
    queue = broker.rabbitmq_resource(did, did, "queue", broker.subscription_queue(did, 1), "read")
    questions = [user, broker.rabbitmq_vhost(did, did), publish, subscribe, queue]
    assert [ask(http, question) for question in questions] == ["allow"] * 5
    assert ask_emqx(http, broker.emqx_authn(did, PASSCODE, did))["result"] == "allow"

    with server.operator() as operator:
        changed = operator.put(f"/admin/v1/devices/{did}", json={"is_disabled": True})
        assert changed.status_code == 200, changed.text
        assert [ask(http, question) for question in questions] == ["deny"] * 5
        assert ask_emqx(http, broker.emqx_authn(did, PASSCODE, did))["result"] == "deny"
        authz = broker.emqx_authz(did, did, f"dev2app/{did}", "publish")
        assert ask_emqx(http, authz)["result"] == "deny"

        changed = operator.put(f"/admin/v1/devices/{did}", json={"is_disabled": False})
        assert changed.status_code == 200, changed.text
        assert [ask(http, question) for question in questions] == ["allow"] * 5


def test_a_device_disabled_by_another_process_is_refused_within_the_cache_bound(
    server: RunningServer, product: Product, http: httpx.Client
) -> None:
    did, _ = register(server, product)
    user = broker.rabbitmq_user(did, PASSCODE, did)
    publish = broker.rabbitmq_topic(did, did, "write", f"dev2app.{did}")
    assert (ask(http, user), ask(http, publish)) == ("allow", "allow")  # both remembered

    server.cli("device", "disable", did)  # another process: this server hears nothing of it
    disabled_at = time.monotonic()
    deadline = disabled_at + CACHE_SECONDS + 3.0  # the bound, plus slack for a busy machine
    while (ask(http, user), ask(http, publish)) != ("deny", "deny"):
        assert time.monotonic() < deadline, "still admitted past the cache bound"
        time.sleep(0.05)


def test_a_new_passcode_replaces_the_old_one_at_once(
    server: RunningServer, product: Product, http: httpx.Client
) -> None:
    did, mac = register(server, product)
    assert ask(http, broker.rabbitmq_user(did, PASSCODE, did)) == "allow"
    # the device registers again with a new passcode (a factory reset): same did
    reply = http.post(
        "/dev/devices",
        content=f"passcode=NEWPASSCOD&mac={mac}&product_key={product.product_key}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert reply.status_code == 201, reply.text
    assert did in reply.text
    assert ask(http, broker.rabbitmq_user(did, PASSCODE, did)) == "deny"
    assert ask(http, broker.rabbitmq_user(did, "NEWPASSCOD", did)) == "allow"


# -- a data-template (Tencent) device -------------------------------------------------------------


async def test_a_template_device_uses_its_own_thing_topics(
    server: RunningServer, http: httpx.Client
) -> None:
    product_id = await import_thing_product(server)
    lamp = await create_thing_device(server, product_id, "lamp.v2")  # a dot in its name
    other = await create_thing_device(server, product_id, "lamp")
    username, password, client_id = thing_credentials(product_id, lamp.name, lamp.psk)

    allowed = broker.rabbitmq_connect(username, password, client_id)
    for kind in ("property", "event", "action", "service"):
        allowed += broker.rabbitmq_subscribe(
            username, client_id, f"$thing/down/{kind}/{product_id}/{lamp.name}", 1
        )
        allowed += broker.rabbitmq_publish(
            username, client_id, f"$thing/up/{kind}/{product_id}/{lamp.name}"
        )
    assert [ask(http, question) for question in allowed] == ["allow"] * len(allowed)

    refused = [
        broker.rabbitmq_user(username, device_password(other.psk, username), client_id),
        broker.rabbitmq_user(username, password, product_id + other.name),
        broker.rabbitmq_topic(
            username, client_id, "write", f"$thing.up.property.{product_id}.{other.name}"
        ),
        broker.rabbitmq_topic(
            username, client_id, "read", f"$thing.down.property.{product_id}.{other.name}"
        ),
        broker.rabbitmq_topic(username, client_id, "read", f"$thing.down.property.{product_id}.*"),
        broker.rabbitmq_topic(username, client_id, "read", "$thing.down.#"),
        broker.rabbitmq_topic(username, client_id, "write", f"dev2app.{lamp.did}"),
        broker.rabbitmq_resource(
            username, client_id, "queue", broker.subscription_queue(lamp.did, 0), "read"
        ),
    ]
    assert [ask(http, question) for question in refused] == ["deny"] * len(refused)

    assert ask_emqx(http, broker.emqx_authn(username, password, client_id))["result"] == "allow"
    own = f"$thing/up/property/{product_id}/{lamp.name}"
    theirs = f"$thing/down/property/{product_id}/{other.name}"
    assert ask_emqx(http, broker.emqx_authz(username, client_id, own, "publish")) == {
        "result": "allow"
    }
    assert ask_emqx(http, broker.emqx_authz(username, client_id, theirs, "subscribe")) == {
        "result": "deny"
    }


async def test_an_expired_template_user_name_is_refused(
    server: RunningServer, http: httpx.Client
) -> None:
    product_id = await import_thing_product(server)
    lamp = await create_thing_device(server, product_id)
    expiry = int(datetime.now(UTC).timestamp()) - 10
    username = f"{product_id}{lamp.name};{SDK_APPID};abcde;{expiry}"
    client_id = product_id + lamp.name
    question = broker.rabbitmq_user(username, device_password(lamp.psk, username), client_id)
    assert ask(http, question) == "deny"


# -- EMQX -----------------------------------------------------------------------------------------


def test_emqx_authentication(server: RunningServer, product: Product, http: httpx.Client) -> None:
    did, _ = register(server, product)
    other, _ = register(server, product)
    assert ask_emqx(http, broker.emqx_authn(did, PASSCODE, did)) == {
        "result": "allow",
        "is_superuser": False,
    }
    for question in (
        broker.emqx_authn(did, "WRONGPASSX", did),
        broker.emqx_authn(did, PASSCODE, other),
        broker.emqx_authn("Zz" + uuid.uuid4().hex[:20], PASSCODE, did),
    ):
        assert ask_emqx(http, question) == {"result": "deny", "is_superuser": False}
    # a name that is no device's is left to EMQX's next authenticator
    assert ask_emqx(http, broker.emqx_authn("iotcloud", "secret", "iotcloud-1")) == {
        "result": "ignore",
        "is_superuser": False,
    }
    # the body template must carry the client id
    reply = http.post("/broker/emqx/authn", json={"username": did, "password": PASSCODE})
    assert reply.json() == {"result": "deny", "is_superuser": False}
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    reply = http.post(
        "/broker/emqx/authn",
        content=f"username={did}&password={PASSCODE}&clientid={did}",
        headers=form,
    )
    assert reply.json() == {"result": "allow", "is_superuser": False}


def test_emqx_authorization(server: RunningServer, product: Product, http: httpx.Client) -> None:
    did, _ = register(server, product)
    other, _ = register(server, product)
    cases = [
        ("publish", f"dev2app/{did}", "allow"),
        ("publish", f"dev2app/{did}/app-client-1", "allow"),
        ("subscribe", f"app2dev/{did}/#", "allow"),
        ("subscribe", f"ser2cli_noti/{product.product_key}", "allow"),
        ("publish", f"dev2app/{other}", "deny"),
        ("subscribe", f"app2dev/{other}/#", "deny"),
        ("subscribe", "dev2app/#", "deny"),
        ("subscribe", "app2dev/+/#", "deny"),
        ("subscribe", "#", "deny"),
        ("subscribe", f"$share/group/app2dev/{did}/#", "deny"),
        ("publish", f"dev2app.{did}", "deny"),  # EMQX keeps "/": no RabbitMQ keys here
        ("all", f"dev2app/{did}", "deny"),
    ]
    for action, topic, expected in cases:
        answer = ask_emqx(http, broker.emqx_authz(did, did, topic, action))
        assert answer == {"result": expected}, (action, topic)
    assert ask_emqx(http, broker.emqx_authz(did, other, f"dev2app/{did}", "publish")) == {
        "result": "deny"
    }
    assert ask_emqx(http, broker.emqx_authz("iotcloud", "c", "dev2app/x", "publish")) == {
        "result": "ignore"
    }
    for body in (b"[]", b"{", b'{"username": 7}', b'{"username": "%s"}' % did.encode()):
        reply = http.post("/broker/emqx/authz", content=body)
        assert (reply.status_code, reply.json()) == (200, {"result": "deny"})


def test_while_the_registry_is_down_every_question_is_refused_and_counted(
    tmp_path: Path,
) -> None:
    """A PostgreSQL server of this test's own, stopped under a running server with no cache:
    ``deny`` (never an error status, which EMQX would take for ``ignore``), counted as errors,
    and answers again once the database is back."""
    postgres = PostgresServer()
    postgres.start()
    try:
        url = postgres.create_database("brokerauth")
        settings = {"broker_auth_cache_seconds": 0}
        with serving(tmp_path, url, allow_tracebacks=True, **settings) as running:
            product = import_product(running, tmp_path, "pet_house.json")
            did, _ = register(running, product)
            user = broker.rabbitmq_user(did, PASSCODE, did)
            authn = broker.emqx_authn(did, PASSCODE, did)
            authz = broker.emqx_authz(did, did, f"dev2app/{did}", "publish")
            with running.client() as http:
                assert ask(http, user) == "allow"
                postgres.stop_only()
                assert ask(http, user) == "deny"
                assert ask(http, broker.rabbitmq_vhost(did, did)) == "deny"
                assert ask_emqx(http, authn) == {"result": "deny", "is_superuser": False}
                assert ask_emqx(http, authz) == {"result": "deny"}
                assert counted(http, "user", "error") >= 1
                assert counted(http, "vhost", "error") == 1
                assert counted(http, "authn", "error") == 1
                assert counted(http, "authz", "error") == 1
                postgres.start_again()
                deadline = time.monotonic() + 30
                while ask(http, user) != "allow":
                    assert time.monotonic() < deadline, "no answer after the database came back"
                    time.sleep(0.2)
    finally:
        postgres.stop()


# -- who may ask, and how much --------------------------------------------------------------------


def test_brokers_are_not_throttled_like_apps(
    server: RunningServer, product: Product, http: httpx.Client
) -> None:
    did, _ = register(server, product)
    question = broker.rabbitmq_topic(did, did, "write", f"dev2app.{did}")
    # well past the 100/s per address (200 burst) that an app would be held to
    answers = {ask(http, question) for _ in range(400)}
    assert answers == {"allow"}


def test_answers_are_counted(server: RunningServer, product: Product, http: httpx.Client) -> None:
    did, _ = register(server, product)
    before = {
        (kind, result): counted(http, kind, result)
        for kind in ("user", "topic", "authz")
        for result in ("allow", "deny", "ignore")
    }
    ask(http, broker.rabbitmq_user(did, PASSCODE, did))
    ask(http, broker.rabbitmq_user(did, "WRONGPASSX", did))
    ask(http, broker.rabbitmq_topic(did, did, "read", "dev2app.#"))
    ask_emqx(http, broker.emqx_authz("iotcloud", "c", "dev2app/x", "publish"))
    after = {key: counted(http, *key) for key in before}
    assert after[("user", "allow")] - before[("user", "allow")] == 1
    assert after[("user", "deny")] - before[("user", "deny")] == 1
    assert after[("topic", "deny")] - before[("topic", "deny")] == 1
    assert after[("authz", "ignore")] - before[("authz", "ignore")] == 1


def test_a_caller_outside_the_allowed_networks_learns_nothing(tmp_path: Path) -> None:
    with serving(tmp_path / "closed", None, broker_auth_from="10.0.0.0/8,fd00::/8") as closed:
        product = import_product(closed, tmp_path, "pet_house.json")
        did, _ = register(closed, product)
        with closed.client() as http:
            questions = [
                broker.rabbitmq_user(did, PASSCODE, did),
                broker.rabbitmq_user(did, "WRONGPASSX", did),
                broker.rabbitmq_vhost(did, did),
                broker.rabbitmq_resource(did, did, "exchange", "amq.topic", "write"),
                broker.rabbitmq_topic(did, did, "write", f"dev2app.{did}"),
            ]
            for question in questions:
                reply = http.get(question.url)
                assert (reply.status_code, reply.content) == (403, b"")
            for path, body in (
                broker.emqx_authn(did, PASSCODE, did),
                broker.emqx_authz(did, did, f"dev2app/{did}", "publish"),
            ):
                reply = http.post(path, json=body)
                assert (reply.status_code, reply.content) == (403, b"")
            assert counted(http, "user", "forbidden") == 2
            assert counted(http, "vhost", "forbidden") == 1
            assert counted(http, "resource", "forbidden") == 1
            assert counted(http, "topic", "forbidden") == 1
            assert counted(http, "authn", "forbidden") == 1
            assert counted(http, "authz", "forbidden") == 1
            assert counted(http, "user", "allow") == 0
