"""The Tencent wire layer on its own: the error-code table, the envelope, the parameter
readers, and error rendering by path in a small Litestar app."""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Litestar, Request, get, post
from litestar.testing import TestClient

from iotcloud import errors
from iotcloud.api.errors import EXCEPTION_HANDLERS
from iotcloud.api.tencent.errors import remember_request_id, with_tencent_errors
from iotcloud.api.tencent.wire import (
    ActionUnknown,
    JsonInvalid,
    RequiredParamMissing,
    error_body,
    optional_int,
    parse_body,
    read_request_id,
    required_str,
    success_body,
    tencent_error,
)
from iotcloud.domain.schedules import ScheduleInvalid
from iotcloud.errors import IotCloudError


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (RequiredParamMissing("Days: is required"), "ErrorRequiredParamNotFound"),
        (JsonInvalid("Data: not JSON"), "InvalidParameterValue.InvalidJSON"),
        (ActionUnknown("Action: 'X'"), "InvalidAction"),
        (errors.TokenInvalid("gone"), "InvalidParameterValue.InvalidAccessToken"),
        (errors.TokenExpired("old"), "InvalidParameterValue.InvalidAccessToken"),
        (errors.FormInvalid("Limit: 1 to 50"), "InvalidParameterValue"),
        (errors.AttrInvalid("Data: attr 'x'"), "InvalidParameterValue"),
        (errors.ProductKeyInvalid("ProductId"), "ResourceNotFound.ProductNotExist"),
        (errors.DeviceNotFound("DeviceName"), "ResourceNotFound.DeviceNotExist"),
        (errors.DeviceNotBound("DeviceName"), "UnauthorizedOperation.DeviceNotBound"),
        (errors.DeviceDisabled("DeviceName"), "ResourceUnavailable.DeviceDisabled"),
        (errors.DeviceOffline("DeviceName"), "ResourceUnavailable.DeviceOffline"),
        (errors.ScheduleNotFound("TimerId"), "ResourceNotFound.TimerNotExist"),
        (errors.Throttled("slow down"), "RequestLimitExceeded"),
        (errors.ServerError("database down"), "InternalError"),
    ],
)
def test_listed_errors_take_their_code_and_keep_their_detail(
    error: IotCloudError, code: str
) -> None:
    assert tencent_error(error) == (code, error.detail)


def test_subclasses_take_the_code_of_their_nearest_listed_parent() -> None:
    assert tencent_error(errors.ProductKeyTaken("product_key: taken"))[0] == "InvalidParameterValue"
    operator = errors.OperatorAuthFailed("no", disabled=True)
    assert tencent_error(operator)[0] == "InvalidParameterValue.InvalidAccessToken"
    assert tencent_error(errors.MailSendFailed("smtp"))[0] == "InternalError"


def test_domain_field_errors_are_invalid_values_naming_the_field() -> None:
    error = ScheduleInvalid("Days", "must be 7 characters of 0 or 1, Sunday to Saturday")
    assert tencent_error(error) == (
        "InvalidParameterValue",
        "Days: must be 7 characters of 0 or 1, Sunday to Saturday",
    )


def test_unlisted_errors_fail_the_operation_and_faults_reveal_nothing() -> None:
    assert tencent_error(errors.UserInvalid()) == ("FailedOperation", "user invalid!")
    code, message = tencent_error(RuntimeError("password=hunter2 in connection string"))
    assert code == "InternalError"
    assert "hunter2" not in message


def test_envelopes() -> None:
    assert success_body("r1", {"Data": {"TimerId": "t"}}) == {
        "Response": {"Data": {"TimerId": "t"}, "RequestId": "r1"}
    }
    assert list(success_body("r1", {"Total": 0})["Response"]) == ["Total", "RequestId"]
    assert error_body("r2", "InvalidAction", "Action: 'X'") == {
        "Response": {
            "Error": {"Code": "InvalidAction", "Message": "Action: 'X'"},
            "RequestId": "r2",
        }
    }


def test_request_ids_are_echoed_or_made_up() -> None:
    assert read_request_id({"RequestId": "req_1"}) == ("req_1", None)
    made, problem = read_request_id({})
    assert problem is None
    assert len(made) == 36
    assert read_request_id({"RequestId": None})[0] != made
    for bad in (5, "", "x" * 129, ["a"]):
        fresh, problem = read_request_id({"RequestId": bad})
        assert len(fresh) == 36
        assert problem is not None
        assert problem.detail is not None
        assert problem.detail.startswith("RequestId:")


def test_required_strings() -> None:
    assert required_str({"Days": "1000000"}, "Days") == "1000000"
    for params in ({}, {"Days": None}):
        with pytest.raises(RequiredParamMissing, match=r"^Days: is required$"):
            required_str(params, "Days")
    with pytest.raises(errors.FormInvalid, match=r"^Days: must be a string$"):
        required_str({"Days": 1000000}, "Days")


@pytest.mark.parametrize(
    ("params", "expected"),
    [({}, 20), ({"Limit": None}, 20), ({"Limit": 1}, 1), ({"Limit": 50}, 50)],
)
def test_optional_ints_default_when_absent(params: dict[str, Any], expected: int) -> None:
    assert optional_int(params, "Limit", 20, 1, 50) == expected


@pytest.mark.parametrize("value", [0, 51, True, False, "5", 5.0, [5]])
def test_optional_ints_are_strict(value: Any) -> None:
    with pytest.raises(errors.FormInvalid, match=r"^Limit: must be an integer from 1 to 50$"):
        optional_int({"Limit": value}, "Limit", 20, 1, 50)


def test_bodies_must_be_json_objects() -> None:
    assert parse_body(b' {"Action": "AppGetTimerList"} ') == {"Action": "AppGetTimerList"}
    for text in (b"", b"  ", b"{", b"Action=x", b"{'a': 1}"):
        with pytest.raises(JsonInvalid, match=r"^body: "):
            parse_body(text)
    for text in (b"[]", b"1", b'"x"', b"null"):
        with pytest.raises(errors.FormInvalid, match=r"^body: must be a JSON object$"):
            parse_body(text)


# -- rendering by path -----------------------------------------------------------------------------


@post("/api/exploreropen/tokenapi", status_code=200)
async def refusing(request: Request[Any, Any, Any]) -> None:
    remember_request_id(request, "req_9")
    raise errors.ScheduleNotFound("TimerId: none")


@post("/api/exploreropen/crash", status_code=200)
async def crashing() -> None:
    raise RuntimeError("secret detail")


@get("/app/thing")
async def gizwits_refusing() -> None:
    raise errors.ScheduleNotFound("no schedule")


@pytest.fixture
def client() -> Any:
    app = Litestar(
        route_handlers=[refusing, crashing, gizwits_refusing],
        exception_handlers=with_tencent_errors(EXCEPTION_HANDLERS),
        request_max_body_size=16,
        logging_config=None,
    )
    with TestClient(app) as test_client:
        yield test_client


def test_errors_under_the_tencent_prefix_answer_the_envelope(client: TestClient[Any]) -> None:
    reply = client.post("/api/exploreropen/tokenapi")
    assert reply.status_code == 200
    assert reply.json() == error_body("req_9", "ResourceNotFound.TimerNotExist", "TimerId: none")
    crash = client.post("/api/exploreropen/crash")
    assert crash.status_code == 200
    assert crash.json()["Response"]["Error"]["Code"] == "InternalError"
    assert "secret" not in crash.text


def test_routing_errors_under_the_prefix_keep_their_status(client: TestClient[Any]) -> None:
    wrong = client.get("/api/exploreropen/tokenapi")
    assert (wrong.status_code, wrong.json()["Response"]["Error"]["Code"]) == (405, "InvalidAction")
    assert "POST" in wrong.headers["allow"]
    missing = client.post("/api/exploreropen/appapi")
    assert (missing.status_code, missing.json()["Response"]["Error"]["Code"]) == (
        404,
        "InvalidAction",
    )
    assert len(missing.json()["Response"]["RequestId"]) == 36


def test_other_paths_keep_the_gizwits_shape(client: TestClient[Any]) -> None:
    reply = client.get("/app/thing")
    assert reply.status_code == 404
    assert reply.json() == {
        "error_code": 9030,
        "error_message": "scheduler not found!",
        "detail_message": "no schedule",
    }
    assert client.get("/api/exploreropenx").json()["error_code"] == 9015


def test_the_app_handlers_must_include_a_catch_all() -> None:
    with pytest.raises(ValueError, match="Exception"):
        with_tencent_errors({IotCloudError: EXCEPTION_HANDLERS[IotCloudError]})
